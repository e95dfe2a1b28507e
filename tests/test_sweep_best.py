"""From a sweep to a model: a sweep folder writes best.json and the link ``best`` naming the trial selected by
validation, ``msmtfn-sweep report`` rewrites them, and :func:`train.sweep.resolve_run` turns a sweep folder (or
its ``best``) into that trial's run folder with a one-line note; sweep log lines name their trial and go around
the progress bar."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import tiny_sweep_base
from synthetic import write_synthetic_store

from train.metrics import selection_score
from train.sweep import (
    BEST,
    Configuration,
    NoFinishedTrial,
    SweepSpec,
    read_grid,
    resolve_run,
    select_best,
    trial_dir,
    write_best,
)
from train.sweep_cli import main as sweep_cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ROOT = Path(__file__).resolve().parents[1]

GRID = (
    tiny_sweep_base(epochs=2)
    + """
[grid]
lr = [0.001, 0.003]
"""
)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return write_synthetic_store(
        tmp_path_factory.mktemp("best") / "c.zarr",
        calls=30,
        segments_per_call=(1, 3),
        audio_frames=8,
        text_tokens=5,
        seed=4,
    ).path


@pytest.fixture(scope="module")
def sweep(cache, tmp_path_factory):
    """A finished 2 x 2 sweep, run as a user types it."""
    tmp = tmp_path_factory.mktemp("sweep")
    (tmp / "g.toml").write_text(GRID, encoding="utf-8")
    out = tmp / "sw"
    r = CliRunner().invoke(
        sweep_cli,
        [
            "--cache",
            str(cache),
            "--grid",
            str(tmp / "g.toml"),
            "--out",
            str(out),
            "--seeds",
            "2",
            "--device",
            "cpu",
            "-q",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "best by validation:" in r.output
    return out


def _trainer_choice(root: Path) -> tuple[str, int]:
    """The best trial as the trainer's own selection_score ranks checkpoints, first in grid order on a tie."""
    spec = read_grid(root.parent / "g.toml", seeds=2)
    best = None
    for config, seed in spec.trials():
        m = json.loads((trial_dir(root, config, seed) / "metrics.json").read_text())
        score = selection_score(m["val"]["5"], "macro_f1", m["val_loss"])
        if best is None or score > best[0]:
            best = (score, config.name, seed)
    return best[1], best[2]


def test_a_sweep_writes_best_by_validation_and_predict_can_resolve_it(sweep):
    rec = json.loads((sweep / BEST).read_text())
    assert (rec["configuration"], rec["seed"]) == _trainer_choice(sweep)
    assert rec["task"] == "5" and rec["metric"] == "macro_f1" and rec["split"] == "valid"
    assert rec["trials_finished"] == rec["trials"] == 4
    chosen = sweep / rec["run_dir"]
    m = json.loads((chosen / "metrics.json").read_text())
    assert rec["value"] == m["val"]["5"]["macro_f1"] and m["config"]["seed"] == rec["seed"]
    assert not Path(rec["run_dir"]).is_absolute()
    assert (sweep / "best").is_symlink() and (sweep / "best").resolve() == chosen.resolve()

    run, note = resolve_run(sweep)
    assert run == chosen and (run / "config.json").is_file()
    assert note == (
        f"sweep {sweep}: using trial {rec['configuration']}/s{rec['seed']} "
        f"(validation macro_f1 of 5 = {rec['value']:.3g})"
    )
    assert resolve_run(sweep / "best") == (
        chosen,
        note,
    )  # the link stands for the sweep's choice too
    assert resolve_run(chosen) == (chosen, None)  # a run folder is itself
    other = tmp = sweep.parent / "elsewhere"
    assert resolve_run(tmp) == (other, None)  # anything else: the caller's own checks speak


def test_report_rewrites_best_and_without_symlinks_the_file_alone_is_used(sweep, monkeypatch):
    (sweep / BEST).unlink()
    (sweep / "best").unlink()
    r = CliRunner().invoke(sweep_cli, ["report", str(sweep)])
    assert r.exit_code == 0, r.output
    assert (sweep / BEST).is_file() and (sweep / "best").is_symlink()
    rec = json.loads((sweep / BEST).read_text())

    def no_links(*a, **k):
        raise OSError("symlinks are not supported here")

    monkeypatch.setattr(os, "symlink", no_links)
    (sweep / "best").unlink()
    r = CliRunner().invoke(sweep_cli, ["report", str(sweep), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["best"] == rec
    assert not (sweep / "best").exists() and (sweep / BEST).is_file()
    # the README's `--run SWEEP/best` works where no link could be made
    run, note = resolve_run(sweep / "best")
    assert run == sweep / rec["run_dir"] and note.startswith(f"sweep {sweep}: using trial ")
    monkeypatch.undo()
    write_best(sweep)
    assert (sweep / "best").is_symlink()


# ------------------------------------------------------------------ selection rules, on hand-written trial files
def _fake_sweep(
    root: Path, trials: dict[tuple[str, int], dict | None], task: str | None = None
) -> Path:
    names = list(dict.fromkeys(c for c, _ in trials))
    seeds = sorted({s for _, s in trials})
    spec = SweepSpec(
        "fake",
        tuple(Configuration(n, {"lr": i}) for i, n in enumerate(names)),
        tuple(seeds),
        task,
        "g.toml",
    )
    root.mkdir(parents=True)
    (root / "sweep.json").write_text(json.dumps({"spec": spec.to_dict(), "cache": {}}))
    for (name, seed), val in trials.items():
        if val is None:
            continue
        d = trial_dir(root, Configuration(name, {}), seed)
        d.mkdir(parents=True)
        metric = (
            "validation MAE" if "mae" in val else "validation macro-F1 (ties: accuracy, then loss)"
        )
        (d / "metrics.json").write_text(
            json.dumps(
                {
                    "val": {"5": val},
                    "val_loss": val.pop("loss"),
                    "test": {},
                    "selection": {"task": "5", "metric": metric},
                    "kinds": {"5": "regression" if "mae" in val else "class"},
                }
            )
        )
    return root


def test_selection_breaks_ties_as_the_trainer_does_then_by_grid_order(tmp_path):
    f = lambda mf1, acc, loss: {"macro_f1": mf1, "accuracy": acc, "weighted_f1": 0.0, "loss": loss}  # noqa: E731
    root = _fake_sweep(
        tmp_path / "a",
        {
            ("a", 0): f(0.5, 0.6, 1.0),
            ("b", 0): f(0.7, 0.5, 1.0),
            ("c", 0): f(0.7, 0.6, 2.0),
            ("d", 0): f(0.7, 0.6, 1.5),
        },
    )
    assert select_best(root)["configuration"] == "d"  # macro-F1, then accuracy, then the lower loss
    root = _fake_sweep(
        tmp_path / "b",
        {("a", 0): f(0.7, 0.6, 1.0), ("a", 1): f(0.7, 0.6, 1.0), ("b", 0): f(0.7, 0.6, 1.0)},
    )
    rec = select_best(root)
    assert (rec["configuration"], rec["seed"]) == (
        "a",
        0,
    )  # a full tie: the first trial of the grid
    assert rec["run_dir"] == "trials/a/s0"
    root = _fake_sweep(
        tmp_path / "c", {("a", 0): f(0.9, 0.9, 0.1), ("b", 0): None}
    )  # b has not finished
    assert select_best(root)["trials_finished"] == 1


def test_a_regression_sweep_selects_the_lowest_validation_mae(tmp_path):
    g = lambda mae, corr: {"mae": mae, "corr": corr, "loss": mae}  # noqa: E731
    root = _fake_sweep(
        tmp_path / "r", {("a", 0): g(0.9, 0.5), ("b", 0): g(0.6, 0.1), ("c", 0): g(0.6, 0.4)}
    )
    rec = select_best(root)
    assert (rec["configuration"], rec["metric"], rec["value"]) == ("c", "mae", 0.6)


def test_a_sweep_with_no_finished_trial_is_one_clear_error(tmp_path):
    root = _fake_sweep(tmp_path / "none", {("a", 0): None, ("b", 0): None})
    with pytest.raises(NoFinishedTrial) as e:
        resolve_run(root)
    assert isinstance(e.value, OSError) and len(str(e.value).splitlines()) == 1
    assert str(e.value).startswith(f"{root}: a sweep folder with no finished trial yet")
    assert write_best(root) is None and not (root / BEST).exists()


def test_a_stale_best_json_is_not_trusted(tmp_path):
    f = {"macro_f1": 0.5, "accuracy": 0.5, "weighted_f1": 0.5, "loss": 1.0}
    root = _fake_sweep(tmp_path / "s", {("a", 0): dict(f)})
    (root / BEST).write_text(
        json.dumps({"run_dir": "trials/gone/s0", "configuration": "gone", "seed": 0})
    )
    run, note = resolve_run(root)
    assert run == root / "trials/a/s0" and "using trial a/s0" in note


# ------------------------------------------------------------------ log lines of a sweep
@pytest.mark.parametrize("parallel", ["1", "2"])
def test_sweep_log_lines_name_their_trial(cache, tmp_path, caplog, parallel):
    (tmp_path / "g.toml").write_text(GRID, encoding="utf-8")
    with caplog.at_level(logging.INFO):
        r = CliRunner().invoke(
            sweep_cli,
            [
                "--cache",
                str(cache),
                "--grid",
                str(tmp_path / "g.toml"),
                "--out",
                str(tmp_path / "sw"),
                "--device",
                "cpu",
                "--parallel",
                parallel,
            ],
        )
    assert r.exit_code == 0, r.output
    loop = [rec.getMessage() for rec in caplog.records if rec.name == "train.loop"]
    assert loop and all(m.startswith(("[lr=0.001/s0] ", "[lr=0.003/s0] ")) for m in loop), loop
    assert any(m.startswith("[lr=0.003/s0] epoch 2:") for m in loop)
    outside = [rec.getMessage() for rec in caplog.records if rec.name == "train.sweep"]
    assert outside and not any(
        m.startswith("[") for m in outside
    )  # the sweep's own lines are not a trial's
    with caplog.at_level(logging.INFO):
        logging.getLogger("x").info("after the sweep")
    assert (
        caplog.records[-1].getMessage() == "after the sweep"
    )  # outside a trial, nothing is prefixed


def test_sweep_log_lines_do_not_run_into_the_progress_bar(cache, tmp_path):
    """As a user sees it on a terminal: every log line starts a line of its own, not after the bar's text."""
    (tmp_path / "g.toml").write_text(tiny_sweep_base(epochs=1) + "\n[grid]\nlr = [0.001, 0.003]\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "train.sweep_cli",
            "--cache",
            str(cache),
            "--grid",
            str(tmp_path / "g.toml"),
            "--out",
            str(tmp_path / "sw"),
            "--device",
            "cpu",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    shown = [
        line.split("\r")[-1] for line in p.stderr.split("\n")
    ]  # what stays on screen after each \r
    logs = [s for s in shown if "INFO" in s]
    assert any("[lr=0.003/s0] epoch 1:" in s for s in logs), p.stderr[-2000:]
    assert all(s.startswith("INFO ") for s in logs), [s for s in logs if not s.startswith("INFO ")]
    assert "g: " in p.stderr or "trial" in p.stderr  # the bar was drawn


def test_msmtfn_predict_takes_a_sweep_folder_or_its_best(sweep, cache, tmp_path):
    """`msmtfn-predict --run SWEEP` (or SWEEP/best) scores with the trial selected on validation, says which,
    and writes exactly what `--run` of that trial's own folder writes; a sweep with no finished trial is one
    line, exit 1."""
    from predict.cli import main as predict_cli

    chosen, _ = resolve_run(sweep)
    expected = tmp_path / "direct.csv"
    r = CliRunner().invoke(
        predict_cli,
        ["--run", str(chosen), "--cache", str(cache), "--out", str(expected), "--device", "cpu"],
    )
    assert r.exit_code == 0, r.output
    for given in (sweep, sweep / "best"):  # the folder, or its link to the selected trial
        out = tmp_path / f"{Path(given).name}.csv"
        r = CliRunner().invoke(
            predict_cli,
            ["--run", str(given), "--cache", str(cache), "--out", str(out), "--device", "cpu"],
        )
        assert r.exit_code == 0, r.output
        assert f"sweep {sweep}: using trial " in r.output, r.output
        assert out.read_bytes() == expected.read_bytes()
    empty = _fake_sweep(tmp_path / "empty-sweep", {("a", 0): None})
    r = CliRunner().invoke(
        predict_cli, ["--run", str(empty), "--cache", str(cache), "--out", str(tmp_path / "e.csv")]
    )
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error: "), r.output
