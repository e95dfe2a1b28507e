"""msmtfn-demo touches only what it made: a store of another dataset, the user's other folders under --out and a
data folder it did not generate survive (a refusal is one line, exit 2, before anything is written); bad
--calls/--epochs are one line before any work."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from click.testing import CliRunner
from synthetic import write_synthetic_store

from predict.demo import DemoError, run_demo
from predict.demo import main as demo_cli


def _error_line(output: str) -> str:
    assert "Traceback" not in output, output
    (line,) = [ln for ln in output.splitlines() if ln.startswith("Error")]
    return line


def _snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _args(data: Path, cache: Path, runs: Path, *more: str) -> list[str]:
    return ["--data-dir", str(data), "--cache", str(cache), "--out", str(runs), "-q", *more]


@pytest.mark.parametrize("fresh", [False, True], ids=["run", "fresh"])
def test_a_store_of_another_dataset_is_refused_and_left_byte_for_byte(tmp_path, fresh):
    real = write_synthetic_store(
        tmp_path / "cache" / "real.zarr",
        calls=4,
        dataset="marketcalls",
        audio_frames=4,
        text_tokens=4,
    ).path
    before = _snapshot(real)
    data, runs = tmp_path / "data", tmp_path / "runs"
    r = CliRunner().invoke(
        demo_cli,
        _args(data, real, runs, "--calls", "15", "--epochs", "1", *(["--fresh"] if fresh else [])),
    )
    assert r.exit_code == 2, r.output
    line = _error_line(r.output)
    assert f"--cache {real}" in line and "'marketcalls'" in line and "another --cache" in line
    assert _snapshot(real) == before
    # refused before any work: no data generated, no encoders built beside the store, no runs
    assert not data.exists() and not runs.exists() and not (real.parent / "tiny-encoders").exists()


def test_a_folder_that_is_not_a_store_is_refused(tmp_path):
    cache = tmp_path / "notes"
    cache.mkdir()
    (cache / "todo.txt").write_text("mine")
    with pytest.raises(DemoError, match="is not a cache store"):
        run_demo(
            tmp_path / "data",
            cache,
            tmp_path / "runs",
            calls=15,
            epochs=1,
            fresh=True,
            progress=False,
        )
    assert (cache / "todo.txt").read_text() == "mine"


def test_a_non_demo_run_under_out_and_non_demo_data_are_refused(tmp_path):
    data, cache, runs = tmp_path / "data", tmp_path / "cache" / "demo.zarr", tmp_path / "runs"
    (runs / "both").mkdir(parents=True)  # the user's own msmtfn-train run, trained on another cache
    (runs / "both" / "config.json").write_text(
        json.dumps({"cache": {"settings": {"dataset": "marketcalls"}}})
    )
    r = CliRunner().invoke(demo_cli, _args(data, cache, runs, "--calls", "15", "--epochs", "1"))
    assert r.exit_code == 2, r.output
    assert f"{runs / 'both'}" in _error_line(r.output) and "another --out" in r.output
    assert (runs / "both" / "config.json").is_file() and not cache.exists()

    (runs / "both" / "config.json").unlink()
    data.mkdir()
    (data / "calls.csv").write_text("call_id,audio,label\n")  # the user's data: no demo.json
    r = CliRunner().invoke(demo_cli, _args(data, cache, runs, "--fresh"))
    assert r.exit_code == 2, r.output
    assert f"--data-dir {data}" in _error_line(r.output) and "another --data-dir" in r.output
    assert (data / "calls.csv").is_file()


def test_rebuild_and_fresh_remove_only_the_demos_own_files(tmp_path, caplog):
    """A demo store of other settings is rebuilt and OUT/both|text|audio retrained; OUT's other folders and
    files the user put into the data folder survive that and --fresh."""
    data, cache, runs = tmp_path / "data", tmp_path / "cache" / "demo.zarr", tmp_path / "runs"
    write_synthetic_store(
        cache, calls=4, dataset="demo", audio_frames=4, text_tokens=4
    )  # "other settings"
    (runs / "mine").mkdir(parents=True)
    (runs / "mine" / "metrics.json").write_text("{}")
    with caplog.at_level(logging.WARNING):
        first = run_demo(data, cache, runs, calls=15, epochs=1, progress=False)
    assert "rebuilding" in caplog.text and sum(first["both"]["calls"].values()) == 15
    assert (runs / "mine" / "metrics.json").read_text() == "{}", (
        "a sibling of the demo's runs was deleted"
    )
    (data / "README.txt").write_text("my notes")

    fresh = run_demo(data, cache, runs, calls=15, epochs=1, progress=False, fresh=True)
    assert "resumed" not in fresh["both"], "--fresh retrains"
    assert (runs / "mine" / "metrics.json").read_text() == "{}"
    assert (data / "README.txt").read_text() == "my notes"
    assert (data / "demo.json").is_file() and (data / "train.csv").is_file()


@pytest.mark.parametrize(
    "option, value, expect",
    [
        ("--calls", "10", "--calls 10: the demo needs at least 15 calls"),
        ("--epochs", "0", "--epochs 0: train for at least 1 epoch"),
    ],
)
def test_too_few_calls_or_epochs_are_one_line_before_any_work(tmp_path, option, value, expect):
    data, cache, runs = tmp_path / "data", tmp_path / "cache" / "demo.zarr", tmp_path / "runs"
    r = CliRunner().invoke(demo_cli, _args(data, cache, runs, option, value))
    assert r.exit_code == 2, r.output
    assert expect in _error_line(r.output)
    assert len([ln for ln in r.output.splitlines() if ln.strip()]) == 1, r.output
    assert not data.exists() and not cache.parent.exists() and not runs.exists()


def test_a_retrain_that_cannot_start_keeps_the_demos_runs(tmp_path):
    """The demo's runs are replaced only once the new run passed its start checks: the tiny encoders passed as
    'real' ones get the paper's 12 heads, which do not divide their width 32 — one line, the old runs intact."""
    data, cache, runs = tmp_path / "data", tmp_path / "cache" / "demo.zarr", tmp_path / "runs"
    assert (
        CliRunner()
        .invoke(demo_cli, _args(data, cache, runs, "--calls", "15", "--epochs", "1"))
        .exit_code
        == 0
    )
    before = _snapshot(runs)
    enc = cache.parent / "tiny-encoders"
    r = CliRunner().invoke(
        demo_cli,
        _args(
            data,
            cache,
            runs,
            "--calls",
            "15",
            "--epochs",
            "1",
            "--audio-model",
            str(enc / "audio-tiny-group"),
            "--text-model",
            str(enc / "text-tiny"),
        ),
    )
    assert r.exit_code == 2 and "--heads 12" in _error_line(r.output), r.output
    assert _snapshot(runs) == before


def test_the_demo_says_which_of_its_three_models_is_training(tmp_path):
    data, cache, runs = tmp_path / "data", tmp_path / "cache" / "demo.zarr", tmp_path / "runs"
    r = CliRunner().invoke(demo_cli, _args(data, cache, runs, "--calls", "15", "--epochs", "1"))
    assert r.exit_code == 0, r.output
    said = [ln for ln in r.output.splitlines() if "/3: " in ln]
    assert said == [
        f"training 1/3: fused → {runs / 'both'}",
        f"training 2/3: text only → {runs / 'text'}",
        f"training 3/3: audio only → {runs / 'audio'}",
    ]
    again = CliRunner().invoke(demo_cli, _args(data, cache, runs, "--calls", "15", "--epochs", "1"))
    assert [ln for ln in again.output.splitlines() if "/3: " in ln][
        1
    ] == f"model 2/3: text only → {runs / 'text'} (finished earlier: reported)"
