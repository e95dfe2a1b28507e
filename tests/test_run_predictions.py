"""One inference path: a run's predictions_{valid,test}.csv come from the same function as msmtfn-predict
--cache, reproduce exactly, and the figures computed from the files equal metrics.json."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from synthetic import random_call, write_synthetic_store

from predict.cli import main as predict_cli
from train.config import TrainConfig
from train.loop import fit

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = dict(
    d_model=32,
    heads=4,
    ffn=64,
    gru_hidden=16,
    head_hidden=32,
    cross_layers=1,
    bottleneck_layers=1,
    dropout=0.1,
    progress=False,
    device="cpu",
    plots=False,
    epochs=3,
    patience=3,
    lr=2e-3,
)


def _rows(path: Path) -> list[dict]:
    return list(csv.DictReader(open(path, encoding="utf-8")))


def _score(run_dir: str, cache: str, split: str, out: Path) -> CliRunner:
    r = CliRunner().invoke(
        predict_cli,
        [
            "--run",
            run_dir,
            "--cache",
            cache,
            "--split",
            split,
            "--out",
            str(out),
            "--device",
            "cpu",
        ],
    )
    assert r.exit_code == 0, r.output
    return r


@pytest.mark.parametrize(
    "kw",
    [{}, {"mtl": False, "task": "5", "audio_stride": 2}, {"threads": 2}],
    ids=["mtl", "no-mtl-audio-stride-2", "2-threads"],
)
def test_call_level_run_files_reproduce_and_match_metrics(tmp_path, kw):
    store = write_synthetic_store(
        tmp_path / "c.zarr", calls=40, seed=3, audio_frames=12, text_tokens=6
    )
    m = fit(TrainConfig(cache=str(store.path), out=str(tmp_path / "run"), **{**SMALL, **kw}))
    run = Path(m["run_dir"])
    for split, key in (("test", "test"), ("valid", "val")):
        rows = _rows(run / f"predictions_{split}.csv")
        assert len(rows) == m["calls"][split]
        for task in ("5", "4", "3", "2"):
            acc = np.mean([r[f"pred_{task}"] == r[f"true_{task}"] for r in rows])
            assert acc == pytest.approx(m[key][task]["accuracy"], abs=1e-12), (split, task)
        out = tmp_path / f"scored_{split}.csv"
        _score(str(run), str(store.path), split, out)
        assert out.read_bytes() == (run / f"predictions_{split}.csv").read_bytes(), (
            "exactly the run's file"
        )
    assert {
        "call_id",
        "source",
        "status",
        "segments",
        "duration_s",
        "pred_2",
        "p_2_A+B+C",
        "true_5",
    } <= set(rows[0])


def test_regression_run_files_reproduce_and_match_metrics(tmp_path):
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
    m = fit(TrainConfig(cache=str(store.path), out=str(tmp_path / "run"), **SMALL))
    run = Path(m["run_dir"])
    rows = _rows(run / "predictions_test.csv")
    assert len(rows) == m["test"]["score"]["n"], "one row per scored utterance"
    mae = np.mean([abs(float(r["pred_score"]) - float(r["true_score"])) for r in rows])
    assert mae == pytest.approx(m["test"]["score"]["mae"], rel=1e-5)
    for task in ("2", "7"):  # the reported classes come from the score, as the metrics take them
        acc = np.mean([r[f"pred_{task}"] == r[f"true_{task}"] for r in rows])
        assert acc == pytest.approx(m["test"][task]["accuracy"], abs=1e-12)
        head = np.mean([r[f"pred_{task}:head"] == r[f"true_{task}"] for r in rows])
        assert head == pytest.approx(m["test"][f"{task}:head"]["accuracy"], abs=1e-12)
    out = tmp_path / "scored.csv"
    _score(str(run), str(store.path), "test", out)
    assert out.read_bytes() == (run / "predictions_test.csv").read_bytes()


def test_new_unlabelled_calls_in_a_cache_are_scored_too(tmp_path):
    store = write_synthetic_store(
        tmp_path / "c.zarr", calls=30, seed=4, audio_frames=12, text_tokens=6
    )
    m = fit(TrainConfig(cache=str(store.path), out=str(tmp_path / "run"), **SMALL))

    def unlabelled(rng, index, n, shape):
        call = random_call(rng, index, n, shape)
        call.label, call.split = "", ""
        return call

    # a synthetic store's "encoder settings" are its generator's (seed included): the same as the run's cache
    new = write_synthetic_store(
        tmp_path / "new.zarr", calls=5, seed=4, audio_frames=12, text_tokens=6, fill=unlabelled
    )
    other = write_synthetic_store(
        tmp_path / "other.zarr", calls=5, seed=9, audio_frames=12, text_tokens=6, fill=unlabelled
    )
    out = tmp_path / "new.csv"
    refused = CliRunner().invoke(
        predict_cli,
        ["--run", m["run_dir"], "--cache", str(other.path), "--split", "all", "--out", str(out)],
    )
    assert (
        refused.exit_code == 1
        and "extracted with other settings" in refused.output
        and not out.exists()
    )
    r = _score(m["run_dir"], str(new.path), "all", out)
    rows = _rows(out)
    assert len(rows) == 5 and "scored 5 rows" in r.output
    assert all(r["true_5"] == "" and r["pred_5"] in "ABCDE" for r in rows)
    both = CliRunner().invoke(
        predict_cli,
        ["--run", m["run_dir"], "--cache", str(new.path), "--audio", "x.wav", "--out", str(out)],
    )
    assert both.exit_code == 2


def test_a_cache_of_other_settings_is_refused_naming_each_difference(tmp_path):
    """Named as msmtfn-extract names them (setting: the run's → this cache's); where the encoders were read
    from (text.model) may differ and is not named."""
    import zarr

    def settings(path: Path, **text) -> None:
        group = zarr.open_group(str(path), mode="r+")
        group.attrs["settings"] = {**group.attrs["settings"], "text": text}

    run_store = write_synthetic_store(
        tmp_path / "c.zarr", calls=20, seed=5, audio_frames=8, text_tokens=4
    )
    settings(run_store.path, model="/enc/a", max_tokens=48)
    m = fit(
        TrainConfig(cache=str(run_store.path), out=str(tmp_path / "run"), **{**SMALL, "epochs": 1})
    )
    other = write_synthetic_store(
        tmp_path / "o.zarr", calls=3, seed=5, audio_frames=8, text_tokens=4
    )
    settings(other.path, model="/enc/b", max_tokens=64)
    out = tmp_path / "p.csv"
    r = CliRunner().invoke(
        predict_cli,
        ["--run", m["run_dir"], "--cache", str(other.path), "--split", "all", "--out", str(out)],
    )
    assert r.exit_code == 1 and not out.exists()
    (line,) = [ln for ln in r.output.splitlines() if ln.strip()]
    assert "extracted with other settings" in line and "text.max_tokens: 48 → 64" in line, line
    assert "text.model" not in line and "seed" not in line, line
