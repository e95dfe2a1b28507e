"""msmtfn-sweep: grids, one cache load for all trials, tables computed from the trials, resume after a kill,
failed trials reported while the sweep goes on, and clear errors for bad grids."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import tiny_sweep_base
from synthetic import write_synthetic_store

from train.config import ConfigError, TrainConfig
from train.data import TrainError
from train.loop import fit
from train.sweep import PRESETS, SweepOptions, parse_grid, read_grid, report, run_sweep, trial_dir
from train.sweep_cli import main as sweep_cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ROOT = Path(__file__).resolve().parents[1]

BASE = tiny_sweep_base(epochs=3)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return write_synthetic_store(
        tmp_path_factory.mktemp("sweep") / "c.zarr",
        calls=40,
        segments_per_call=(1, 3),
        audio_frames=10,
        text_tokens=6,
        seed=2,
    ).path


def _grid(tmp_path: Path, body: str, name: str = "g.toml") -> Path:
    p = tmp_path / name
    p.write_text(BASE + body, encoding="utf-8")
    return p


TWO = """
[[trial]]
name = "full"
paper = { acc2 = 76.60, acc5 = 49.04 }

[[trial]]
name = "w/o Bi-GRU"
bigru = false
paper = { acc2 = 73.29 }
"""


def test_tiny_grid_two_seeds_tables_from_trial_metrics(cache, tmp_path):
    out = tmp_path / "sw"
    s = run_sweep(
        SweepOptions(
            cache=str(cache),
            grid=str(_grid(tmp_path, TWO)),
            out=str(out),
            seeds=2,
            device="cpu",
            progress=False,
        )
    )
    assert s["trials_run"] == 4 and not s["failed"]
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert sorted(r["configuration"] for r in rows) == ["full", "w/o Bi-GRU"]
    spec = read_grid(_grid(tmp_path, TWO), seeds=2)
    for r in rows:
        (config,) = [c for c in spec.configurations if c.name == r["configuration"]]
        ms = [
            json.loads((trial_dir(out, config, seed) / "metrics.json").read_text())
            for seed in (0, 1)
        ]
        for t in ("2", "3", "4", "5"):
            for k in ("accuracy", "macro_f1", "weighted_f1"):
                vals = [100 * m["test"][t][k] for m in ms]
                assert float(r[f"{k}_{t}_mean"]) == pytest.approx(np.mean(vals))
                assert float(r[f"{k}_{t}_std"]) == pytest.approx(np.std(vals, ddof=1))
        assert r["seeds_done"] == "2"
    for r in rows:  # validation beside test, from the same trials, never mixed
        (config,) = [c for c in spec.configurations if c.name == r["configuration"]]
        ms = [
            json.loads((trial_dir(out, config, seed) / "metrics.json").read_text())
            for seed in (0, 1)
        ]
        assert float(r["val_accuracy_5_mean"]) == pytest.approx(
            np.mean([100 * m["val"]["5"]["accuracy"] for m in ms])
        )
        half = [
            100
            * (m["test"]["5"]["ci95"]["accuracy"][1] - m["test"]["5"]["ci95"]["accuracy"][0])
            / 2
            for m in ms
        ]
        assert (
            float(r["ci_accuracy_5"]) == pytest.approx(np.mean(half))
            and float(r["ci_accuracy_5"]) > 0
        )
        assert r["selected_on"] == "5: validation macro-F1"
    accs = [float(r["val_accuracy_5_mean"]) for r in rows]
    assert accs == sorted(accs, reverse=True), (
        "sorted by the primary task's mean validation accuracy"
    )
    assert next(r for r in rows if r["configuration"] == "full")["paper_acc2"] == "76.6"
    md = (out / "results.md").read_text()
    assert (
        "| full |" in md
        and "76.60" in md
        and "73.29" in md
        and "±" in md
        and "sorted by val acc5" in md
    )
    assert "| val acc5 | test acc5 | 95% CI ± |" in md and "different validation criteria" not in md
    assert (out / "results.png").stat().st_size > 1000
    trials = list(csv.DictReader(open(out / "trials.csv")))
    assert len(trials) == 4 and {t["status"] for t in trials} == {"done"}
    # the report command rebuilds the same tables
    (out / "results.csv").unlink()
    r = CliRunner().invoke(sweep_cli, ["report", str(out)])
    assert r.exit_code == 0, r.output
    assert list(csv.DictReader(open(out / "results.csv"))) == rows


def test_a_trial_equals_the_same_run_through_msmtfn_train(cache, tmp_path):
    out = tmp_path / "sw"
    grid = _grid(tmp_path, '\n[[trial]]\nname = "text"\nmodality = "text"\n')
    run_sweep(
        SweepOptions(
            cache=str(cache), grid=str(grid), out=str(out), seeds=[3], device="cpu", progress=False
        )
    )
    spec = read_grid(grid, seeds=[3])
    alone = fit(
        TrainConfig.from_dict(
            {
                **spec.configurations[0].settings,
                "cache": str(cache),
                "seed": 3,
                "out": str(tmp_path / "alone"),
                "device": "cpu",
                "progress": False,
            }
        )
    )
    d = trial_dir(out, spec.configurations[0], 3)
    assert (d / "model.safetensors").read_bytes() == (
        Path(alone["run_dir"]) / "model.safetensors"
    ).read_bytes()
    assert json.loads((d / "metrics.json").read_text())["test"] == alone["test"]


def test_resume_after_killing_the_sweep_runs_only_missing_trials(cache, tmp_path):
    grid = _grid(tmp_path, TWO.replace("epochs", "x") + "\n")
    out = tmp_path / "sw"
    args = [
        "--cache",
        str(cache),
        "--grid",
        str(grid),
        "--out",
        str(out),
        "--seeds",
        "2",
        "--device",
        "cpu",
        "-q",
        "--set",
        "epochs=6",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen(
        [sys.executable, "-m", "train.sweep_cli", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 180
    finished: list[Path] = []
    while time.time() < deadline and p.poll() is None:
        finished = list(out.glob("trials/*/*/metrics.json"))
        if finished:
            break
        time.sleep(0.05)
    assert p.poll() is None, p.stderr.read().decode()[-800:]
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    finished = list(out.glob("trials/*/*/metrics.json"))
    assert 1 <= len(finished) < 4
    stamps = {f: f.stat().st_mtime_ns for f in finished}
    r = CliRunner().invoke(sweep_cli, args)  # without --resume: refused, nothing touched
    assert r.exit_code == 1 and "--resume" in r.output
    r = CliRunner().invoke(sweep_cli, [*args, "--resume", "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output)
    assert summary["trials_run"] == 4 - len(finished)
    assert all(f.stat().st_mtime_ns == t for f, t in stamps.items()), (
        "finished trials are never run again"
    )
    assert len(list(out.glob("trials/*/*/metrics.json"))) == 4
    statuses = [t["status"] for t in csv.DictReader(open(out / "trials.csv"))]
    assert statuses.count("done (earlier)") == len(finished)


def test_failed_trial_is_reported_and_the_sweep_goes_on(cache, tmp_path):
    grid = _grid(tmp_path, '\n[[trial]]\nname = "ok"\n\n[[trial]]\nname = "broken"\nheads = 3\n')
    r = CliRunner().invoke(
        sweep_cli,
        [
            "--cache",
            str(cache),
            "--grid",
            str(grid),
            "--out",
            str(tmp_path / "sw"),
            "--seeds",
            "1",
            "--device",
            "cpu",
            "-q",
        ],
    )
    assert r.exit_code == 3, r.output
    trials = {
        t["configuration"]: t["status"]
        for t in csv.DictReader(open(tmp_path / "sw" / "trials.csv"))
    }
    assert (
        trials["ok"] == "done"
        and trials["broken"].startswith("failed:")
        and "divisible" in trials["broken"]
    )
    assert "| ok |" in (tmp_path / "sw" / "results.md").read_text()


def test_every_trial_failed_is_an_error_in_one_line(cache, tmp_path):
    grid = _grid(
        tmp_path,
        '\n[[trial]]\nname = "broken"\nheads = 3\n\n[[trial]]\nname = "broken-too"\nheads = 5\n',
    )
    r = CliRunner().invoke(
        sweep_cli,
        [
            "--cache",
            str(cache),
            "--grid",
            str(grid),
            "--out",
            str(tmp_path / "sw"),
            "--seeds",
            "1",
            "--device",
            "cpu",
            "-q",
        ],
    )
    assert r.exit_code == 1, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(
        "Error: every trial failed (2); the first, broken seed 0:"
    )
    assert "divisible" in lines[0] and "--resume" in lines[0]
    assert (tmp_path / "sw" / "trials" / "broken").is_dir() and (
        tmp_path / "sw" / "trials.csv"
    ).is_file()


def test_grid_product_names_and_bad_grids(tmp_path):
    spec = parse_grid(
        {
            "base": {"epochs": 2},
            "grid": {"lr": [1e-4, 3e-4], "no-bigru": [True, False]},
            "trial": [{"name": "a"}, {"name": "b", "modality": "text"}],
        },
        seeds=3,
    )
    assert len(spec.configurations) == 8 and spec.seeds == (0, 1, 2) and len(spec.trials()) == 24
    assert spec.configurations[0].name == "a | lr=0.0001, bigru=no"
    assert spec.configurations[0].settings == {"epochs": 2, "lr": 1e-4, "bigru": False}
    with pytest.raises(
        ConfigError, match=r"\[grid\]: unknown key 'learning_rate'; valid keys: .*\blr\b"
    ):
        parse_grid({"grid": {"learning_rate": [1e-4]}})
    with pytest.raises(
        ConfigError, match=r"trial 'x': unknown key 'layers'; valid keys: .*cross_layers"
    ):
        parse_grid({"trial": [{"name": "x", "layers": 2}]})
    with pytest.raises(ConfigError, match=r"unknown key 'seed' \(set by msmtfn-sweep itself\)"):
        parse_grid({"base": {"seed": 1}})
    with pytest.raises(ConfigError, match="unknown top-level key 'epochs'"):
        parse_grid({"epochs": 3})
    with pytest.raises(ConfigError, match="lr must be a non-empty list"):
        parse_grid({"grid": {"lr": 1e-3}})
    with pytest.raises(ConfigError, match="modality 'video'"):
        parse_grid({"trial": [{"name": "v", "modality": "video"}]})
    r = CliRunner().invoke(sweep_cli, ["--cache", "nowhere.zarr", "--grid", "nope.toml"])
    assert (
        r.exit_code == 2 and "no such grid file" in r.output and "paper-ablation" in r.output
    )  # bad usage


def test_paper_ablation_preset(cache, tmp_path):
    spec = read_grid("paper-ablation")
    assert read_grid("sweeps/paper-ablation.toml").configurations == spec.configurations
    names = [c.name for c in spec.configurations]
    assert names == [
        "full model",
        "full model + text augmentation",
        "w/o multi-task learning",
        "w/o Bi-GRU",
        "w/o cross-attention",
        "w/o bottleneck",
        "text only",
        "audio only",
    ]
    assert spec.configurations[0].paper == {"acc2": 76.60, "acc5": 49.04}
    # the paper's text augmentation: the cached pinyin-swap copies (the file says how to make them)
    assert spec.configurations[1].settings["augment_variants"] == ["pinyin-swap"]
    assert spec.configurations[2].settings["mtl"] is False and spec.configurations[2].paper == {
        "acc2": 71.23
    }
    # every row is selected on the same validation criterion (the base's task 5), so the ACC2 column compares alike
    assert all(c.settings.get("task", "5") == "5" for c in spec.configurations)
    assert spec.configurations[3].paper == {"acc2": 73.29} and spec.seeds == (0, 1, 2, 3, 4)
    for c in spec.configurations:  # every row is a valid training configuration
        TrainConfig.from_dict({**c.settings, "cache": str(cache)})


def test_bottleneck_lr_preset_crosses_the_two_designs_with_learning_rates_and_warm_ups(cache):
    spec = read_grid("bottleneck-lr")
    combos = {
        (c.settings["bottleneck"], c.settings["lr"], c.settings["warmup"])
        for c in spec.configurations
    }
    assert combos == {
        (b, lr, w) for b in (True, False) for lr in (1e-4, 3e-4, 1e-3) for w in (0.05, 0.2)
    }
    assert len(spec.configurations) == 12 and spec.seeds == (0, 1, 2)
    for c in spec.configurations:
        TrainConfig.from_dict({**c.settings, "cache": str(cache)})
    help_text = "".join(
        CliRunner().invoke(sweep_cli, ["run", "--help"]).output.split()
    )  # wrapped at hyphens
    assert all(name in help_text for name in PRESETS), (
        "every shipped preset is named in --grid's help"
    )


def test_sweep_on_another_cache_is_refused(cache, tmp_path):
    grid = _grid(tmp_path, '\n[[trial]]\nname = "a"\n')
    out = tmp_path / "sw"
    run_sweep(
        SweepOptions(
            cache=str(cache),
            grid=str(grid),
            out=str(out),
            seeds=1,
            device="cpu",
            progress=False,
            overrides={"epochs": 1},
        )
    )
    other = write_synthetic_store(
        tmp_path / "o.zarr",
        calls=20,
        segments_per_call=(1, 2),
        audio_frames=10,
        text_tokens=6,
        seed=7,
    )
    with pytest.raises(TrainError, match="run on another cache"):
        run_sweep(
            SweepOptions(
                cache=str(other.path),
                grid=str(grid),
                out=str(out),
                seeds=1,
                device="cpu",
                resume=True,
                progress=False,
            )
        )
    assert report(out)["rows"][0]["seeds_done"] == 1


def test_sweep_on_a_regression_dataset_reports_mae_and_the_derived_accuracies(tmp_path):
    from test_train_segments import _sentiment_call  # tests/ is on sys.path (conftest's folder)

    store = write_synthetic_store(
        tmp_path / "s.zarr",
        calls=30,
        segments_per_call=(2, 4),
        audio_frames=8,
        audio_dim=16,
        text_tokens=6,
        text_dim=16,
        seed=1,
        fill=_sentiment_call,
        label_scheme="sentiment",
        dataset="mosi",
    )
    grid = tmp_path / "b.toml"
    grid.write_text('[[trial]]\nname = "full"\n\n[[trial]]\nname = "text"\nmodality = "text"\n')
    run_sweep(
        SweepOptions(
            cache=str(store.path),
            grid=str(grid),
            seeds=2,
            device="cpu",
            out=str(tmp_path / "out"),
            progress=False,
            overrides={
                "epochs": 1,
                "d_model": 32,
                "heads": 4,
                "ffn": 64,
                "gru_hidden": 8,
                "head_hidden": 16,
                "cross_layers": 1,
                "bottleneck_layers": 1,
                "threads": 1,
                "plots": False,
            },
        )
    )
    md = (tmp_path / "out" / "results.md").read_text()
    assert (
        "sorted by val MAE score" in md
        and "| val MAE score | test MAE score | 95% CI ± | Corr score | acc2 |" in md
    )
    assert "acc2 non-zero" in md
    assert ":head" not in md
    rows = list(csv.DictReader(open(tmp_path / "out" / "results.csv")))
    maes = [float(r["val_mae_score_mean"]) for r in rows]
    assert maes == sorted(maes) and all(m > 0 for m in maes), "lowest validation MAE first"
    assert "accuracy_2:head_mean" in rows[0]
