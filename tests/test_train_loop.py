"""Stage 2 training on CPU: the fused model needs both modalities, the Bi-GRU reads segment order, whole calls of
any length go through the data path, the run folder / CLI / config files / seeds / early stopping behave, and bad
caches are refused with one clear line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from synthetic import SyntheticCall, write_synthetic_store

from pipeline.store import CacheStore
from train.checkpoint import CheckpointError, load_run, read_run_config
from train.cli import main as train_cli
from train.config import TrainConfig
from train.data import Batches, CallData, FeatureSource, TrainError
from train.loop import fit
from train.report import format_summary

SMALL = dict(
    d_model=32,
    heads=4,
    ffn=64,
    gru_hidden=16,
    head_hidden=32,
    cross_layers=2,
    bottleneck_layers=2,
    dropout=0.1,
    progress=False,
    device="cpu",
    plots=False,
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def small(cache, **kw) -> TrainConfig:
    return TrainConfig(cache=str(cache), **{**SMALL, **kw})


def history(run: dict) -> list[dict]:
    """history.csv without the wall-clock column."""
    rows = list(csv.DictReader(open(Path(run["run_dir"]) / "history.csv")))
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


# ------------------------------------------------ learning what it should
def _xor_call(rng, index, n, shape):
    """2-class label = text cue XOR audio cue; each cue alone says nothing about the label."""
    t_cue, a_cue = int(rng.integers(0, 2)), int(rng.integers(0, 2))
    call = SyntheticCall(
        label="",
        audio=rng.standard_normal((n, shape.audio_frames, shape.audio_dim)),
        audio_len=rng.integers(shape.audio_frames // 2, shape.audio_frames + 1, n),
        text=rng.standard_normal((n, shape.text_tokens, shape.text_dim)),
        text_len=rng.integers(3, shape.text_tokens + 1, n),
    )
    call.text[:, :, :4] += 1.5 * (2 * t_cue - 1)
    call.audio[:, :, :4] += 1.5 * (2 * a_cue - 1)
    call.label = str(rng.choice(list("ABC"))) if t_cue ^ a_cue else str(rng.choice(list("DE")))
    return call


def test_fused_model_beats_each_modality_when_the_label_needs_both(tmp_path):
    store = write_synthetic_store(
        tmp_path / "xor.zarr",
        calls=200,
        segments_per_call=(1, 3),
        audio_frames=16,
        audio_dim=16,
        text_tokens=8,
        text_dim=16,
        seed=3,
        fill=_xor_call,
    )
    acc = {}
    for modality in ("both", "text", "audio"):
        m = fit(
            small(
                store.path,
                out=str(tmp_path / modality),
                modality=modality,
                task="2",
                mtl=False,
                lr=2e-3,
                epochs=12,
                patience=12,
                batch_calls=16,
                pooling="cls",
                dropout=0.0,
            )
        )
        acc[modality] = m["test"]["2"]["accuracy"]
    # 40 test calls: chance is ~0.5 (either cue alone carries no information about XOR)
    assert acc["both"] >= 0.85, acc
    assert acc["text"] <= 0.70 and acc["audio"] <= 0.70, acc


def _order_call(rng, index, n, shape):
    """Marker X and marker Y in two different segments; the label says whether X comes first."""
    call = SyntheticCall(
        label="",
        audio=rng.standard_normal((n, shape.audio_frames, shape.audio_dim)),
        audio_len=np.full(n, shape.audio_frames),
        text=rng.standard_normal((n, shape.text_tokens, shape.text_dim)),
        text_len=np.full(n, shape.text_tokens),
    )
    x, y = rng.choice(n, size=2, replace=False)
    call.text[x, :, :4] += 2.0
    call.text[y, :, 4:8] += 2.0
    call.label = "A" if x < y else "E"
    return call


def test_bigru_beats_no_bigru_when_the_label_depends_on_segment_order(tmp_path):
    store = write_synthetic_store(
        tmp_path / "order.zarr",
        calls=160,
        segments_per_call=(2, 4),
        audio_frames=8,
        audio_dim=16,
        text_tokens=6,
        text_dim=16,
        seed=4,
        fill=_order_call,
    )
    acc = {}
    for bigru in (True, False):
        m = fit(
            small(
                store.path,
                out=str(tmp_path / str(bigru)),
                bigru=bigru,
                task="2",
                mtl=False,
                lr=2e-3,
                epochs=15,
                patience=15,
                batch_calls=16,
                pooling="cls",
                dropout=0.0,
                modality="text",
            )
        )
        acc[bigru] = m["test"]["2"]["accuracy"]
    # without the GRU the call vector is a mean over segments: order is invisible, so it stays near chance
    assert acc[True] >= 0.85 and acc[False] <= 0.70, acc


# ------------------------------------------------------- synthetic stores
def test_synthetic_store_hooks_shapes_and_determinism(tmp_path):
    def cue(call, seg, audio, text):
        audio[:, 0] = 7.0  # also on padding rows: the writer re-zeroes them
        return "B" if call % 2 else None

    a = write_synthetic_store(
        tmp_path / "a.zarr",
        calls=12,
        segments_per_call=[1, 2, 3] * 4,
        audio_frames=10,
        audio_dim=6,
        text_tokens=5,
        text_dim=4,
        label_fn=cue,
        seed=2,
        shard_size=4,
    )
    b = write_synthetic_store(
        tmp_path / "b.zarr",
        calls=12,
        segments_per_call=[1, 2, 3] * 4,
        audio_frames=10,
        audio_dim=6,
        text_tokens=5,
        text_dim=4,
        label_fn=cue,
        seed=2,
        shard_size=4,
    )
    assert a.n == 24 and a.done().all() and not a.skipped().any()
    audio, alen, text, tlen = a.read_slab(0, a.n)
    assert audio.dtype == np.float16 and audio.shape == (24, 10, 6) and text.shape == (24, 5, 4)
    for r in range(a.n):
        assert (
            (audio[r, : alen[r], 0] == 7).all()
            and not audio[r, alen[r] :].any()
            and not text[r, tlen[r] :].any()
        )
    t = a.table()
    odd = np.array([int(c[4:]) % 2 == 1 for c in t["call_id"]])
    assert (t["label"][odd] == "B").all() and set(t["split"]) == {"train", "valid", "test"}
    assert np.array_equal(audio, b.read_slab(0, b.n)[0]) and list(t["label"]) == list(
        b.table()["label"]
    )


# --------------------------------------------------------- the data path
def test_whole_calls_of_1_and_40_segments_batch_together(tmp_path):
    counts = [1, 40, 3, 2, 1, 5, 2, 4]
    store = write_synthetic_store(
        tmp_path / "c.zarr",
        calls=8,
        segments_per_call=counts,
        seed=11,
        split_fractions=(0.5, 0.25, 0.25),
    )
    data = CallData(store)
    table = store.table()
    assert sorted(len(r) for r in data.rows) == sorted(counts), "no call is cut or dropped"
    for rows in data.rows:
        assert list(table["segment_index"][rows]) == list(range(len(rows))), "segments in order"
    src = FeatureSource(data, torch.device("cpu"))
    batch = next(
        iter(Batches(data, src, list(range(len(data.calls))), 8, False, None, full_text=False))
    )
    assert sorted(batch.seg_counts.tolist()) == sorted(counts) and batch.audio.shape[0] == sum(
        counts
    )
    m = fit(small(store.path, out=str(tmp_path / "r"), epochs=1, batch_calls=8))
    assert sum(m["calls"].values()) == 8


def test_text_only_never_reads_audio(tmp_path):
    write_synthetic_store(tmp_path / "c.zarr", calls=30, seed=12)
    src = FeatureSource(
        CallData(CacheStore.open(tmp_path / "c.zarr")), torch.device("cpu"), modalities=("text",)
    )
    assert src.audio is None and src.text is not None
    runs = [
        fit(
            small(tmp_path / "c.zarr", out=str(tmp_path / "r0"), modality="text", epochs=2, lr=1e-3)
        )
    ]
    s = CacheStore.open(tmp_path / "c.zarr", mode="r+")
    arr = s.array("audio/hidden")
    arr[:] = (
        np.random.default_rng(0).standard_normal(arr.shape).astype(np.float16)
    )  # other audio entirely
    runs.append(
        fit(
            small(tmp_path / "c.zarr", out=str(tmp_path / "r1"), modality="text", epochs=2, lr=1e-3)
        )
    )
    assert history(runs[0]) == history(runs[1]) and runs[0]["test"] == runs[1]["test"]
    runs.append(
        fit(
            small(tmp_path / "c.zarr", out=str(tmp_path / "r2"), modality="both", epochs=2, lr=1e-3)
        )
    )
    assert history(runs[2]) != history(runs[0])


def test_streamed_features_train_like_resident_ones(tmp_path):
    write_synthetic_store(tmp_path / "c.zarr", calls=30, seed=8)
    a = fit(small(tmp_path / "c.zarr", out=str(tmp_path / "a"), epochs=2, lr=1e-3))
    b = fit(
        small(tmp_path / "c.zarr", out=str(tmp_path / "b"), epochs=2, lr=1e-3, max_cache_gb=1e-9)
    )
    assert a["val"] == b["val"] and a["test"] == b["test"]


# ------------------------------------------------- loop, files, refusals
def test_run_folder_cli_and_config_file(tmp_path):
    write_synthetic_store(tmp_path / "c.zarr", calls=40, seed=5)
    cfg = tmp_path / "run.toml"
    cfg.write_text(
        f'cache = "{tmp_path / "c.zarr"}"\nepochs = 3\nd-model = 32\nheads = 4\nffn = 64\n'
        "gru_hidden = 8\nno-bigru = true\nlr = 0.001\ncross-layers = 1\n"
    )
    out = tmp_path / "run"
    r = CliRunner().invoke(
        train_cli,
        [
            "--config",
            str(cfg),
            "--epochs",
            "2",
            "--out",
            str(out),
            "-q",
            "--device",
            "cpu",
            "--threads",
            "1",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "5-class" in r.output and "2-class" in r.output and "test acc" in r.output
    for f in (
        "config.json",
        "model.safetensors",
        "metrics.json",
        "history.csv",
        "plots/learning_curves.png",
        "plots/confusion_valid.png",
        "plots/confusion_test.png",
    ):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    assert not list(out.glob(".*")), "no temp files left behind"
    conf = json.loads((out / "config.json").read_text())
    assert conf["train"]["epochs"] == 2, "the command line wins over the file"
    assert conf["train"]["bigru"] is False and conf["train"]["d_model"] == 32, "file keys apply"
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["val"]) == set(metrics["test"]) == {"5", "4", "3", "2"}
    assert {"accuracy", "macro_f1", "weighted_f1", "confusion"} <= set(metrics["test"]["2"])
    assert sum(map(sum, metrics["test"]["5"]["confusion"])) == metrics["calls"]["test"], (
        "scored per call"
    )
    assert len((out / "history.csv").read_text().strip().splitlines()) == 1 + metrics["epochs_run"]
    assert format_summary(metrics).splitlines()[2].startswith("-")
    model, loaded = load_run(out)
    assert loaded.bigru is False and not model.training
    bad = tmp_path / "bad.toml"
    bad.write_text('cache = "x"\nlearning_rate = 1\n')
    r = CliRunner().invoke(train_cli, ["--config", str(bad)])
    assert r.exit_code == 2 and "unknown key 'learning_rate'" in r.output and "lr" in r.output


def test_json_config_and_no_mtl_run(tmp_path):
    write_synthetic_store(tmp_path / "c.zarr", calls=30, seed=13)
    cfg_file = tmp_path / "run.json"
    cfg_file.write_text(
        json.dumps(
            {
                "cache": str(tmp_path / "c.zarr"),
                "no-mtl": True,
                "task": "3",
                "epochs": 1,
                **{k: v for k, v in SMALL.items() if k not in ("progress", "device")},
            }
        )
    )
    cfg = TrainConfig.from_file(cfg_file, out=str(tmp_path / "r"), progress=False)
    assert cfg.mtl is False and cfg.task == "3"
    m = fit(cfg)
    assert "derived_from" not in m["test"]["3"] and m["test"]["2"]["derived_from"] == "3"
    assert "4" not in m["test"], "B+C cannot be split back into the 4-class task"
    assert m["selection"]["task"] == "3"


def test_seeds_repeat_on_cpu(tmp_path):
    write_synthetic_store(tmp_path / "c.zarr", calls=30, seed=6)
    runs = [
        fit(small(tmp_path / "c.zarr", out=str(tmp_path / f"r{i}"), epochs=2, seed=s, lr=1e-3))
        for i, s in enumerate((7, 7, 8))
    ]
    assert history(runs[0]) == history(runs[1]) and runs[0]["test"] == runs[1]["test"]
    w = [(Path(r["run_dir"]) / "model.safetensors").read_bytes() for r in runs]
    assert w[0] == w[1] != w[2]
    assert history(runs[0]) != history(runs[2])


def test_early_stopping_and_best_checkpoint(tmp_path):
    write_synthetic_store(tmp_path / "c.zarr", calls=30, seed=7)
    m = fit(small(tmp_path / "c.zarr", out=str(tmp_path / "r"), epochs=20, patience=2, lr=0.0))
    assert m["best_epoch"] == 1 and m["epochs_run"] == 3
    model, cfg = load_run(m["run_dir"])
    meta = read_run_config(m["run_dir"])
    assert (
        cfg.patience == 2
        and meta["cache"]["fingerprint"] == CacheStore.open(tmp_path / "c.zarr").fingerprint
    )
    (Path(m["run_dir"]) / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_run(m["run_dir"])


def test_incomplete_or_unknown_caches_are_refused(tmp_path):
    store = write_synthetic_store(tmp_path / "c.zarr", calls=20, seed=9)
    s = CacheStore.open(store.path, mode="r+")
    done = s.done()
    done[[1, 5, 9]] = False
    s.set_flags(0, s.n, done, np.zeros(s.n, bool))
    with pytest.raises(
        TrainError, match=r"3 of \d+ segments are not extracted yet.*msmtfn-extract"
    ):
        fit(small(store.path, epochs=1))
    r = CliRunner().invoke(train_cli, ["--cache", str(store.path), "-q"])
    assert (
        r.exit_code == 1
        and "3 of" in r.output
        and "resume" in r.output
        and len(r.output.splitlines()) == 1
    )
    s.group.attrs["schema_version"] = 99
    r = CliRunner().invoke(train_cli, ["--cache", str(store.path), "-q"])
    assert r.exit_code == 1 and "newer than this msmtfn understands" in r.output
    s.group.attrs["schema_version"] = 0
    r = CliRunner().invoke(train_cli, ["--cache", str(store.path), "-q"])
    assert r.exit_code == 1 and "unknown schema version 0" in r.output
    r = CliRunner().invoke(train_cli, ["--cache", str(tmp_path / "nothing.zarr"), "-q"])
    assert r.exit_code == 1 and "no cache store here" in r.output


def test_skipped_unlabelled_and_inconsistent_rows(tmp_path, caplog):
    store = write_synthetic_store(
        tmp_path / "c.zarr", calls=20, segments_per_call=[2] * 20, seed=10
    )
    s = CacheStore.open(store.path, mode="r+")
    done, skipped = s.done(), s.skipped()
    done[[0, 1, 2]], skipped[[0, 1, 2]] = (
        False,
        True,
    )  # call 0 loses both segments, call 1 one of two
    s.set_flags(0, s.n, done, skipped)
    labels, splits = s.array("table/label"), s.array("table/split")
    lab, spl = np.asarray(labels[:]).astype(object), np.asarray(splits[:]).astype(object)
    lab[[4, 5]] = ""  # call 2: unlabelled
    spl[[6, 7]] = "predict"  # call 3: not a training split
    labels[:], splits[:] = lab.astype(str), spl.astype(str)
    caplog.set_level("INFO")
    data = CallData(s)
    assert (
        "call00000" not in data.calls
        and "call00002" not in data.calls
        and "call00003" not in data.calls
    )
    assert len(data.rows[data.calls.index("call00001")]) == 1 and len(data.calls) == 17
    assert (
        "no usable segment" in caplog.text
        and "call00000" in caplog.text
        and "skipped" in caplog.text
    )
    lab[9] = "A" if lab[8] != "A" else "B"  # call 4: segments disagree
    labels[:] = lab.astype(str)
    with pytest.raises(TrainError, match="call00004.*different labels"):
        CallData(s)


def test_a_runs_config_json_is_a_config_file_and_bad_heads_name_a_fix(tmp_path):
    store = write_synthetic_store(tmp_path / "c.zarr", calls=20, seed=2)
    first = fit(small(store.path, out=str(tmp_path / "a"), epochs=1, lr=1e-3, seed=5))
    again = CliRunner().invoke(
        train_cli,
        [
            "--config",
            str(Path(first["run_dir"]) / "config.json"),
            "--cache",
            str(store.path),
            "--out",
            str(tmp_path / "b"),
            "--json",
            "-q",
        ],
    )
    assert again.exit_code == 0, again.output
    second = json.loads(again.output)

    def same(c):
        return json.loads(json.dumps({k: v for k, v in c.items() if k not in ("out", "progress")}))

    assert same(second["config"]) == same(first["config"])
    r = CliRunner().invoke(
        train_cli, ["--cache", str(store.path), "--out", str(tmp_path / "c"), "--d-model", "32"]
    )
    assert r.exit_code == 2 and "pass --heads" in r.output and "Traceback" not in r.output
