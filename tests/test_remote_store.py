"""Stores on S3 (a moto server on 127.0.0.1, nothing leaves the machine): extract into a bucket, resume and reopen
it, refuse a stale one exactly like a local store, one writer per store (a lock object), train from it."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import S3_BUCKET as BUCKET
from conftest import assert_same_features, write_marketcalls

from extract.cli import main as extract_cli
from extract.run import ExtractConfig, extract
from pipeline.lock import StoreLock, StoreLocked
from pipeline.store import CacheStore, StoreError

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")

ARRAYS = [
    "audio/hidden",
    "audio/length",
    "text/hidden",
    "text/length",
    "done",
    "skipped",
    "skip_reason",
]


def _cfg(data: Path, out, enc: dict, **kw) -> ExtractConfig:
    base = dict(
        dataset="marketcalls",
        data_dir=str(data),
        out=str(out),
        audio_model=str(enc["group"]),
        text_model=str(enc["text"]),
        num_workers=0,
        shard_size=4,
        block_shards=2,
        write_threads=2,
    )
    base.update(kw)
    return ExtractConfig(**base)


def _arrays(path) -> dict[str, np.ndarray]:
    s = CacheStore.open(path)
    return {n: np.asarray(s.array(n)[:]) for n in ARRAYS}


def _fs():
    import s3fs

    return s3fs.S3FileSystem(skip_instance_cache=True)


def test_extract_to_s3_equals_local_and_resumes(tmp_path, tiny_encoders, s3, one_torch_thread):
    data = write_marketcalls(tmp_path / "mc", calls=6, segments=3)
    local = extract(_cfg(data, tmp_path / "local.zarr", tiny_encoders), progress=False)
    url = f"{s3}/mc.zarr"
    res = extract(_cfg(data, url, tiny_encoders), progress=False)
    assert (res.total, res.done, res.computed) == (18, 18, 18)
    assert res.store == url and res.report == f"{url}/report.json"
    a, b = _arrays(local.store), _arrays(url)
    for k in a:
        assert_same_features(a[k], b[k], err_msg=k)
    print("S3 store == local store bit for bit:", all(np.array_equal(a[k], b[k]) for k in a))
    s = CacheStore.open(url)
    assert s.remote and s.fingerprint == CacheStore.open(local.store).fingerprint
    assert list(s.table()["segment_id"]) == list(CacheStore.open(local.store).table()["segment_id"])
    fs = _fs()
    report = json.loads(fs.cat_file(f"{BUCKET}/mc.zarr/report.json"))
    assert report["segments_done"] == 18 and report["store"] == url
    assert not fs.exists(f"{BUCKET}/mc.zarr.lock"), "the lock object is removed after the run"
    info = s.info()
    assert (
        info["segments_done"] == 18
        and info["bytes_on_disk"] > 0
        and info["compression_ratio_written"] > 1
    )
    # the same command again: nothing to do (done flags read from the bucket)
    assert extract(_cfg(data, url, tiny_encoders), progress=False).computed == 0
    # half the flags cleared: a rerun encodes exactly those rows again, and the store is unchanged
    s = CacheStore.open(url, mode="r+")
    s.set_flags(4, 12, np.zeros(8, bool), np.zeros(8, bool))
    again = extract(_cfg(data, url, tiny_encoders), progress=False)
    assert again.computed == 8 and again.done == 18
    b2 = _arrays(url)
    for k in a:
        assert_same_features(a[k], b2[k], err_msg=k)
    # `msmtfn-extract info` on a URL
    r = CliRunner().invoke(extract_cli, ["info", url])
    assert r.exit_code == 0 and "18/18 done" in r.output, r.output


def test_stale_remote_store_is_refused_like_a_local_one(tmp_path, tiny_encoders, s3):
    data = write_marketcalls(tmp_path / "mc", calls=3, segments=2)
    runner = CliRunner()
    lines = {}
    for where in (str(tmp_path / "c.zarr"), f"{s3}/stale.zarr"):
        args = [
            "--dataset",
            "marketcalls",
            "--data-dir",
            str(data),
            "--out",
            where,
            "--audio-model",
            str(tiny_encoders["group"]),
            "--text-model",
            str(tiny_encoders["text"]),
            "--num-workers",
            "0",
            "-q",
        ]
        assert runner.invoke(extract_cli, args).exit_code == 0
        r = runner.invoke(extract_cli, [*args, "--max-text-tokens", "64"])
        assert r.exit_code == 1
        err = [ln for ln in r.output.splitlines() if ln.strip()]
        assert len(err) == 1, r.output
        assert "text.max_tokens: 199 → 64" in err[0] and "--overwrite" in err[0]
        lines[where] = err[0].replace(where, "STORE")
        r = runner.invoke(extract_cli, [*args, "--max-text-tokens", "64", "--overwrite"])
        assert r.exit_code == 0, r.output
        s = CacheStore.open(where)
        assert s.done().all() and s.shape.text_tokens == 64
    assert len(set(lines.values())) == 1, lines  # the same message, store name aside
    # no store at a URL, and an unreachable endpoint: one line each
    with pytest.raises(StoreError, match="no cache store here"):
        CacheStore.open(f"{s3}/nothing.zarr")
    with pytest.raises(StoreError, match="cannot reach the store") as err:
        CacheStore.open(
            f"{s3}/x.zarr",
            storage_options={
                "endpoint_url": "http://127.0.0.1:9",
                "connect_timeout": 1,
                "config_kwargs": {"retries": {"max_attempts": 1}},
            },
        )
    assert "\n" not in str(err.value) and "AWS_ENDPOINT_URL" in str(err.value)


def test_one_writer_per_remote_store(tmp_path, tiny_encoders, s3):
    data = write_marketcalls(tmp_path / "mc", calls=3, segments=1)
    url = f"{s3}/locked.zarr"
    fs = _fs()
    with StoreLock(url):  # a live writer (this process) holds it: the lock object exists while held
        assert fs.exists(f"{BUCKET}/locked.zarr.lock")
        with pytest.raises(StoreLocked, match="another msmtfn-extract is writing it"):
            extract(_cfg(data, url, tiny_encoders), progress=False)
        with pytest.raises(
            FileExistsError
        ):  # the conditional PUT itself refuses a second lock object
            fs.pipe_file(f"{BUCKET}/locked.zarr.lock", b"{}", mode="create")
    assert not fs.exists(f"{BUCKET}/locked.zarr.lock")
    # a lock left by a dead process on this host is taken over; one from another host is refused, naming the object
    dead = {
        "pid": 2**22 + 12345,
        "host": socket.gethostname(),
    }  # above Linux's largest pid: never alive
    fs.pipe_file(f"{BUCKET}/locked.zarr.lock", json.dumps(dead).encode())
    assert extract(_cfg(data, url, tiny_encoders), progress=False).done == 3
    fs.pipe_file(
        f"{BUCKET}/locked.zarr.lock", json.dumps({"pid": 1, "host": "another-host"}).encode()
    )
    with pytest.raises(StoreLocked, match=f"another-host.*delete {url}.lock"):
        extract(_cfg(data, url, tiny_encoders), progress=False)


def test_train_reads_the_s3_store(tmp_path, tiny_encoders, s3, one_torch_thread):
    from train.config import TrainConfig
    from train.loop import fit

    data = write_marketcalls(tmp_path / "mc", calls=9, segments=2)
    url = f"{s3}/train.zarr"
    assert extract(_cfg(data, url, tiny_encoders), progress=False).done == 18
    m = fit(
        TrainConfig(
            cache=url,
            out=str(tmp_path / "run"),
            epochs=1,
            device="cpu",
            d_model=32,
            heads=4,
            ffn=64,
            gru_hidden=8,
            head_hidden=16,
            cross_layers=1,
            bottleneck_layers=1,
            plots=False,
            progress=False,
            threads=1,
        )
    )
    assert m["epochs_run"] == 1
    conf = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (
        conf["cache"]["path"] == url
        and conf["cache"]["fingerprint"] == CacheStore.open(url).fingerprint
    )
