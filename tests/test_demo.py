"""msmtfn-demo: the method working on its generated task (fusion beats each modality), a three-row table and
--json, and a second run that reuses data, encoders, cache and finished runs (--fresh rebuilds them)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from predict.demo import DEMO_WARMUP, MODALITIES, TINY_SIZES, run_demo
from predict.demo import main as demo_cli


def _paths(tmp_path: Path) -> tuple[Path, Path, Path]:
    return tmp_path / "data", tmp_path / "cache" / "demo.zarr", tmp_path / "runs"


@pytest.mark.slow  # the shipped demo, ~40 s: `python3 -m pytest -m slow` (figures in docs/benchmarks.md)
def test_fused_model_beats_text_only_and_audio_only_by_20_points(tmp_path, monkeypatch):
    """The shipped demo settings (200 calls, 20 epochs). Text alone can reach 60 %, the voice alone 40 %."""
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(demo_cli, ["--json"])
    assert r.exit_code == 0, r.output
    result = json.loads(r.output)
    assert set(result) == set(MODALITIES)
    acc = {m: result[m]["test"]["5"]["accuracy"] for m in MODALITIES}
    assert acc["both"] - max(acc["text"], acc["audio"]) >= 0.20, acc
    assert acc["text"] <= 0.65 and acc["audio"] <= 0.5, acc  # no single modality can solve it
    for m in MODALITIES:
        assert result[m]["config"]["modality"] == m and "ci95" in result[m]["test"]["5"]
        assert (tmp_path / "runs" / "demo" / m / "metrics.json").is_file()


def test_table_reuse_rebuild_retrain_and_fresh(tmp_path, caplog):
    """One demo folder through a newcomer's sequence: the table names the run folders and explains its columns;
    a second run reuses data, encoders, cache and runs; other --calls rebuild the data and cache, other
    --epochs retrain, never a traceback; --fresh rebuilds everything."""
    data, cache, runs = _paths(tmp_path)
    r = CliRunner().invoke(
        demo_cli,
        [
            "--data-dir",
            str(data),
            "--cache",
            str(cache),
            "--out",
            str(runs),
            "--calls",
            "20",
            "--epochs",
            "1",
            "-q",
        ],
    )
    assert r.exit_code == 0, r.output
    out = r.output
    for name, m in (("fused", "both"), ("text only", "text"), ("audio only", "audio")):
        line = next(ln for ln in out.splitlines() if ln.startswith(name))
        assert str(runs / m) in line
    assert (
        "macro-F1" in out
        and "95% CI" in out
        and "metrics.json" in out
        and "fused − best single modality" in out
    )
    assert "Writing model shards" not in out and "Loading weights" not in out
    assert "epoch 1" not in out, "-q hides our progress bars too"
    trained = json.loads((runs / "both" / "config.json").read_text())["train"]
    assert (
        trained["warmup"] == DEMO_WARMUP and trained["lr"] == TINY_SIZES["lr"]
    )  # the demo's own schedule

    weights = {m: (runs / m / "model.safetensors").stat().st_mtime_ns for m in MODALITIES}
    csv_time = (data / "train.csv").stat().st_mtime_ns

    def hidden_files():  # the encoded features: an unchanged second run extracts nothing (the store's resume)
        return {
            p: p.stat().st_mtime_ns for p in (cache / "audio" / "hidden").rglob("*") if p.is_file()
        }

    store_files = hidden_files()
    assert store_files
    second = run_demo(data, cache, runs, calls=20, epochs=1, progress=False)
    for m in MODALITIES:
        assert second[m].get("resumed") == "finished", "a finished run is reported, not retrained"
        assert (runs / m / "model.safetensors").stat().st_mtime_ns == weights[m]
    assert (data / "train.csv").stat().st_mtime_ns == csv_time and hidden_files() == store_files
    assert (cache.parent / "tiny-encoders").is_dir()

    more = run_demo(data, cache, runs, calls=25, epochs=1, progress=False)
    assert sum(more["both"]["calls"].values()) == 25
    assert "resumed" not in more["both"] and "rebuilding" in caplog.text
    longer = run_demo(data, cache, runs, calls=25, epochs=2, progress=False)
    assert longer["both"]["epochs_run"] == 2 and "retraining" in caplog.text

    fresh = run_demo(data, cache, runs, calls=25, epochs=2, progress=False, fresh=True)
    assert "resumed" not in fresh["both"]
    assert fresh["both"]["test"] == longer["both"]["test"], (
        "the same settings rebuilt give the same numbers"
    )
