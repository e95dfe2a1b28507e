"""msmtfn-sweep's inputs: every grid value, --set and --seeds checked before anything is written (one line, exit
2), --set's true/false words, and --resume refusing trials that were run with other settings."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import tiny_sweep_base
from synthetic import write_synthetic_store

from train.config import ConfigError
from train.sweep import SweepOptions, parse_grid, run_sweep
from train.sweep_cli import _parse_set
from train.sweep_cli import main as sweep_cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BASE = tiny_sweep_base(epochs=2)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return write_synthetic_store(
        tmp_path_factory.mktemp("inputs") / "c.zarr",
        calls=30,
        segments_per_call=(1, 2),
        audio_frames=8,
        text_tokens=6,
        seed=3,
    ).path


def _grid(tmp_path: Path, body: str = '\n[[trial]]\nname = "a"\n') -> Path:
    p = tmp_path / "g.toml"
    p.write_text(BASE + body, encoding="utf-8")
    return p


def _sweep(cache, grid, out, *args):
    return CliRunner().invoke(
        sweep_cli,
        [
            "--cache",
            str(cache),
            "--grid",
            str(grid),
            "--out",
            str(out),
            "--device",
            "cpu",
            "-q",
            *args,
        ],
    )


def _one_line(output: str) -> str:
    lines = [ln for ln in output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in output, output
    return lines[0]


# (grid body, --set, words the one line must hold): a bad value anywhere is named with where it was written
BAD_VALUES = [
    (
        '\n[grid]\nlr = [3e-3, "fast"]\n',
        [],
        ["g.toml: [grid]", "lr", "'fast'"],
    ),  # a type check (config.py)
    ("\n[grid]\nheads = [2, 0]\n", [], ["g.toml: [grid]", "heads", "positive"]),
    (
        '\n[grid]\nmodality = ["txt"]\n',
        [],
        ["g.toml: [grid]", "modality 'txt'", "both, text, audio"],
    ),
    ('\n[[trial]]\nname = "t"\nmodality = "txt"\n', [], ["g.toml: trial 't'", "modality 'txt'"]),
    ("", ["--set", "epochs=zero"], ["--set", "epochs", "'zero'"]),
    ("", ["--set", "heads=0"], ["--set", "heads", "positive"]),
]


@pytest.mark.parametrize("body,extra,words", BAD_VALUES)
def test_a_bad_value_is_one_line_exit_2_before_the_sweep_folder_exists(
    cache, tmp_path, body, extra, words
):
    out = tmp_path / "sw"
    r = _sweep(cache, _grid(tmp_path, body), out, "--seeds", "1", *extra)
    assert r.exit_code == 2, r.output
    line = _one_line(r.output)
    assert all(w in line for w in words), line
    assert not out.exists(), "nothing is created before every trial's settings are checked"


@pytest.mark.parametrize(
    "seeds,words",
    [
        ("2.0", ["seeds = 2.0", "whole number"]),
        ('"12"', ["seeds = '12'", "whole number"]),  # not seeds 1 and 2
        ("true", ["seeds = True"]),  # true is an int in Python, not a count
        ("[0, 0]", ["listed twice"]),
        ("[]", ["seeds = []"]),
        ("[-1]", ["seeds = [-1]"]),
        ("0", ["0 seeds"]),
    ],
)
def test_bad_seeds_in_a_grid_file_are_named(tmp_path, seeds, words):
    with pytest.raises(ConfigError) as e:
        parse_grid(tomllib.loads(f"seeds = {seeds}"), source="g.toml")
    assert str(e.value).startswith("g.toml: seeds") and all(w in str(e.value) for w in words), str(
        e.value
    )
    assert parse_grid({"seeds": [0, 7]}).seeds == (0, 7) and parse_grid({"seeds": 2}).seeds == (
        0,
        1,
    )


def test_bad_grid_file_structure_is_one_line_exit_2(cache, tmp_path):
    for text, words in [
        (
            BASE + '[[trial]]\nname = "t"\npaper = { acc2 = "n/a" }\n',
            ["trial 't'", "paper acc2", "number"],
        ),
        (BASE + '[[trial]]\nname = "t"\npaper = 5\n', ["trial 't': paper must be a table"]),
        ("seeds = 2.0\n" + BASE, ["g.toml: seeds = 2.0"]),
    ]:
        grid = tmp_path / "g.toml"
        grid.write_text(text)
        r = _sweep(cache, grid, tmp_path / "sw")
        assert r.exit_code == 2, r.output
        line = _one_line(r.output)
        assert all(w in line for w in words), line
        assert not (tmp_path / "sw").exists()
    with pytest.raises(ConfigError, match=r"g.toml: \[grid\] must be a table"):
        parse_grid({"grid": 5}, source="g.toml")
    with pytest.raises(ConfigError, match=r"g.toml: trial must be \[\[trial\]\] tables"):
        parse_grid({"trial": 5}, source="g.toml")
    r = _sweep(cache, _grid(tmp_path), tmp_path / "sw", "--seeds", "0")
    assert r.exit_code == 2 and "--seeds: 0 seeds" in _one_line(r.output)


def test_set_reads_command_line_booleans():
    got = _parse_set(
        (
            "bigru=False",
            "mtl=no",
            "cross_attention=YES",
            "bottleneck=true",
            "lr=1e-4",
            "modality=text",
            'augment_variants=["noise"]',
            "task=2",
        )
    )
    assert got == {
        "bigru": False,
        "mtl": False,
        "cross_attention": True,
        "bottleneck": True,
        "lr": 1e-4,
        "modality": "text",
        "augment_variants": ["noise"],
        "task": 2,
    }
    # numbers the command line's own options take but JSON does not
    assert _parse_set(("lr=.001", "epochs=020", "warmup=5.")) == {
        "lr": 0.001,
        "epochs": 20,
        "warmup": 5.0,
    }
    for word in ("False", "no", "NO", "false"):  # no-bigru=False is the Bi-GRU kept, not dropped
        spec = parse_grid({}, overrides=_parse_set((f"no-bigru={word}",)))
        assert spec.configurations[0].settings["bigru"] is True


def test_set_bigru_false_trains_without_the_bi_gru(cache, tmp_path):
    out = tmp_path / "sw"
    r = _sweep(
        cache, _grid(tmp_path), out, "--seeds", "1", "--set", "bigru=False", "--set", "epochs=1"
    )
    assert r.exit_code == 0, r.output
    trial = json.loads((out / "trials" / "a" / "s0" / "config.json").read_text())
    assert trial["train"]["bigru"] is False
    assert (
        json.loads((out / "sweep.json").read_text())["spec"]["configurations"][0]["settings"][
            "bigru"
        ]
        is False
    )


def test_resume_with_other_settings_is_refused_before_anything_is_rewritten(cache, tmp_path):
    grid = _grid(tmp_path, '\n[[trial]]\nname = "a"\n\n[[trial]]\nname = "b"\n')
    out = tmp_path / "sw"
    run_sweep(
        SweepOptions(
            cache=str(cache), grid=str(grid), out=str(out), seeds=1, device="cpu", progress=False
        )
    )
    files = [p for p in out.rglob("*") if p.is_file()]
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files}
    r = _sweep(
        cache, grid, out, "--seeds", "1", "--set", "epochs=1", "--set", "lr=1e-4", "--resume"
    )
    assert r.exit_code == 1, r.output
    line = _one_line(r.output)
    assert (
        "other settings (2 trials in all)" in line
        and "epochs: 2 → 1" in line
        and "lr: 0.0003 → 0.0001" in line
    )
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files} == before, "nothing rewritten"
    assert sorted(p for p in out.rglob("*") if p.is_file()) == sorted(files), "nothing added"
    # what does not change the numbers may differ (state_every, as for msmtfn-train --resume), and more seeds
    # only add trials
    r = _sweep(cache, grid, out, "--seeds", "2", "--set", "state_every=2", "--resume", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["trials_run"] == 2
    assert all(
        (p.read_bytes(), p.stat().st_mtime_ns) == before[p]
        for p in files
        if p.name == "metrics.json"
    )


def test_resume_reruns_a_failed_trial_that_kept_nothing_with_its_new_settings(cache, tmp_path):
    grid = _grid(tmp_path, '\n[[trial]]\nname = "a"\n')
    out = tmp_path / "sw"
    run_sweep(
        SweepOptions(
            cache=str(cache), grid=str(grid), out=str(out), seeds=1, device="cpu", progress=False
        )
    )
    # a trial that failed before its first training state: its config.json (other settings) and nothing else
    failed = out / "trials" / "a" / "s1"
    failed.mkdir()
    meta = json.loads((out / "trials" / "a" / "s0" / "config.json").read_text())
    meta["train"]["batch_calls"] = 64
    (failed / "config.json").write_text(json.dumps(meta))
    r = _sweep(cache, grid, out, "--seeds", "2", "--resume", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["trials_run"] == 1 and (failed / "metrics.json").is_file()
    assert json.loads((failed / "config.json").read_text())["train"]["batch_calls"] == 8
