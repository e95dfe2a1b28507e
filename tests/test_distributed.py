"""Distributed extraction on a CPU LocalCluster (2 worker processes): same store as one process, a killed worker
changes nothing, and resume works across single-process and distributed runs."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_same_features, write_marketcalls

from extract.run import ExtractConfig, extract
from pipeline.store import CacheStore

distributed = pytest.importorskip("distributed")

ARRAYS = [
    "audio/hidden",
    "audio/length",
    "text/hidden",
    "text/length",
    "done",
    "skipped",
    "skip_reason",
]


def _cfg(data: Path, out: Path, enc: dict, **kw) -> ExtractConfig:
    # shards of 2 rows, blocks of 2 shards: many small tasks from a small dataset
    base = dict(
        dataset="marketcalls",
        data_dir=str(data),
        out=str(out),
        audio_model=str(enc["group"]),
        text_model=str(enc["text"]),
        num_workers=0,
        shard_size=2,
        block_shards=2,
        write_threads=1,
    )
    base.update(kw)
    return ExtractConfig(**base)


def _arrays(path) -> dict[str, np.ndarray]:
    s = CacheStore.open(path)
    return {n: np.asarray(s.array(n)[:]) for n in ARRAYS}


def _same(a: dict, b: dict) -> bool:
    """Asserts equal to float16 rounding; returns whether every array is bit for bit equal too."""
    for k in a:
        assert_same_features(a[k], b[k], err_msg=k)
    return all(np.array_equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def cluster():
    # processes=True: real worker processes, as on a cluster; one thread each (one task at a time per worker)
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as lc:
        with distributed.Client(lc) as client:
            # import torch/transformers in the workers up front, so that test timings show the work
            client.run(lambda: bool(__import__("extract.distributed")))
            yield client


def test_distributed_equals_single_process_and_resumes_across_modes(
    tmp_path, tiny_encoders, cluster, one_torch_thread
):
    data = write_marketcalls(tmp_path / "mc", calls=8, segments=3)
    ref = extract(_cfg(data, tmp_path / "ref.zarr", tiny_encoders), progress=False)
    t = time.perf_counter()
    res = extract(_cfg(data, tmp_path / "dist.zarr", tiny_encoders), progress=False, client=cluster)
    print(f"distributed run {time.perf_counter() - t:.1f}s")
    assert (res.total, res.done, res.computed, res.skipped) == (24, 24, 24, 0)
    a, b = _arrays(ref.store), _arrays(res.store)
    bitwise = _same(a, b)
    print("distributed == single-process bit for bit:", bitwise)
    # the report says what went through the scheduler: metadata of kB, while the workers wrote the hidden states
    rep = json.loads(Path(res.report).read_text())["distributed"]
    assert rep["blocks"] == 6 and sum(rep["rows_per_worker"].values()) == 24 and rep["workers"] == 2
    assert 0 < rep["task_bytes"] + rep["result_bytes"] < rep["hidden_bytes_written_by_workers"] / 20
    assert CacheStore.open(res.store).done().all()
    assert not Path(str(res.store) + ".lock").exists()

    # a second distributed run has nothing to do; a single-process run on the distributed store neither
    assert (
        extract(_cfg(data, res.store, tiny_encoders), progress=False, client=cluster).computed == 0
    )
    assert extract(_cfg(data, res.store, tiny_encoders), progress=False).computed == 0
    # --workers 2 on a finished store: nothing to submit, so no local cluster is started at all
    t = time.perf_counter()
    assert extract(_cfg(data, res.store, tiny_encoders, workers=2), progress=False).computed == 0
    assert time.perf_counter() - t < 8, (
        "a finished store must not wait for worker processes to start"
    )

    # a store left half done (rows 6–13 and 20–21 pending, their bytes zeroed) is finished by a distributed run
    s = CacheStore.open(res.store, mode="r+")
    for lo, hi in ((6, 14), (20, 22)):
        s.write_slab(
            lo,
            np.zeros((hi - lo, *a["audio/hidden"].shape[1:]), np.float16),
            np.zeros(hi - lo, np.int32),
            np.zeros((hi - lo, *a["text/hidden"].shape[1:]), np.float16),
            np.zeros(hi - lo, np.int32),
        )
        s.set_flags(lo, hi, np.zeros(hi - lo, bool), np.zeros(hi - lo, bool))
    again = extract(_cfg(data, res.store, tiny_encoders), progress=False, client=cluster)
    assert again.computed == 10 and again.done == 24
    _same(a, _arrays(res.store))


def test_worker_with_other_encoder_weights_refuses(tmp_path, tiny_encoders, cluster):
    """A worker that loads different weights than the driver fingerprinted fails its block with one line;
    nothing is marked done for it."""
    from extract.distributed import DistributedError

    data = write_marketcalls(tmp_path / "mc", calls=2, segments=2)
    out = tmp_path / "c.zarr"
    cfg = _cfg(data, out, tiny_encoders)
    from extract import distributed as dist

    real = dist.worker_spec

    def wrong_weights(*a, **kw):
        import dataclasses

        spec = real(*a, **kw)
        return dataclasses.replace(
            spec, facts=dataclasses.replace(spec.facts, audio_weights="0" * 32)
        )

    dist.worker_spec = wrong_weights
    try:
        with pytest.raises(
            DistributedError, match="other encoder weights.*run the same command to resume"
        ):
            extract(cfg, progress=False, client=cluster)
    finally:
        dist.worker_spec = real
    assert not CacheStore.open(out).done().any()
    assert not Path(str(out) + ".lock").exists()


def test_cli_on_a_scheduler_into_s3(tmp_path, tiny_encoders, cluster, one_torch_thread):
    """``msmtfn-extract --scheduler tcp://… --out s3://…``: the workers write straight into the bucket (a moto
    server on 127.0.0.1) with the --storage-options the driver was given; the store equals a local run's."""
    moto_server = pytest.importorskip("moto.server")
    pytest.importorskip("s3fs")
    import logging

    from click.testing import CliRunner

    from extract.cli import main as extract_cli

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        opts = {"endpoint_url": f"http://{host}:{port}", "key": "testing", "secret": "testing"}
        import s3fs

        s3fs.S3FileSystem(skip_instance_cache=True, **opts).mkdir("dist")
        data = write_marketcalls(tmp_path / "mc", calls=6, segments=2)
        ref = extract(_cfg(data, tmp_path / "ref.zarr", tiny_encoders), progress=False)
        args = [
            "--dataset",
            "marketcalls",
            "--data-dir",
            str(data),
            "--audio-model",
            str(tiny_encoders["group"]),
            "--text-model",
            str(tiny_encoders["text"]),
            "--num-workers",
            "0",
            "--shard-size",
            "2",
            "--block-shards",
            "2",
            "--write-threads",
            "1",
            "-q",
            "--json",
        ]
        url = "s3://dist/mc.zarr"
        r = CliRunner().invoke(
            extract_cli,
            [
                *args,
                "--out",
                url,
                "--scheduler",
                cluster.scheduler.address,
                "--storage-options",
                json.dumps(opts),
            ],
        )
        assert r.exit_code == 0, r.output
        summary = json.loads(r.output.strip().splitlines()[-1])
        assert summary["encoded_this_run"] == 12 and summary["report"] == f"{url}/report.json"
        s = CacheStore.open(url, storage_options=opts)
        b = {n: np.asarray(s.array(n)[:]) for n in ARRAYS}
        print(
            "distributed into S3 == local single-process bit for bit:", _same(_arrays(ref.store), b)
        )
        r = CliRunner().invoke(extract_cli, [*args, "--out", url, "--storage-options", "{not json"])
        assert r.exit_code == 2 and "--storage-options" in r.output
    finally:
        server.stop()


def test_killed_worker_tasks_rerun_elsewhere_same_store(
    tmp_path, tiny_encoders, cluster, one_torch_thread
):
    """After the other tests on the shared cluster: it kills one of its workers (its nanny starts a new one)."""
    data = write_marketcalls(tmp_path / "mc", calls=8, segments=4, seconds=(2.0, 6.0))
    ref = extract(_cfg(data, tmp_path / "ref.zarr", tiny_encoders), progress=False)
    out = tmp_path / "killed.zarr"
    seen: dict = {"killed": None, "rescheduled": []}
    client = cluster
    pids = client.run(os.getpid)  # {worker address: pid}

    def watch():
        # once the first block is committed (and before the last), SIGKILL a worker that is mid-task
        while seen["killed"] is None:
            try:
                d = CacheStore.open(out).done()
            except Exception:
                d = None
            if d is not None and d.any():
                if d.all():
                    return
                busy = [w for w, keys in client.processing().items() if keys and w in pids]
                if busy:
                    os.kill(pids[busy[0]], signal.SIGKILL)
                    seen["killed"] = busy[0]
                    break
            time.sleep(0.05)
        # the scheduler marks tasks that were running on a worker that died ("suspicious") and reruns them
        t_end = time.time() + 30
        while time.time() < t_end and not seen["rescheduled"]:
            seen["rescheduled"] = client.run_on_scheduler(
                lambda dask_scheduler: [
                    k for k, ts in dask_scheduler.tasks.items() if ts.suspicious > 0
                ]
            )
            time.sleep(0.1)

    th = threading.Thread(target=watch, daemon=True)
    th.start()
    res = extract(_cfg(data, out, tiny_encoders), progress=False, client=client)
    th.join(timeout=60)
    assert seen["killed"], "no worker was killed mid-run; make the dataset larger"
    assert seen["rescheduled"], "the killed worker's task was not rerun elsewhere"
    assert res.done == res.total == 32 and res.computed == 32
    print(
        "killed",
        seen["killed"],
        "rescheduled",
        seen["rescheduled"],
        "bit for bit:",
        _same(_arrays(ref.store), _arrays(out)),
    )
    # a later run, single-process, finds nothing to do
    assert extract(_cfg(data, out, tiny_encoders), progress=False).computed == 0


def test_cli_workers_starts_a_local_cluster(tmp_path, tiny_encoders, one_torch_thread):
    """``--workers 2``: msmtfn-extract starts (and stops) its own LocalCluster; loader processes inside the
    workers (--num-workers 1) are allowed there; the store equals a single-process run's."""
    from click.testing import CliRunner

    from extract.cli import main as extract_cli

    data = write_marketcalls(tmp_path / "mc", calls=4, segments=2)
    ref = extract(_cfg(data, tmp_path / "ref.zarr", tiny_encoders), progress=False)
    out = tmp_path / "w2.zarr"
    r = CliRunner().invoke(
        extract_cli,
        [
            "--dataset",
            "marketcalls",
            "--data-dir",
            str(data),
            "--audio-model",
            str(tiny_encoders["group"]),
            "--text-model",
            str(tiny_encoders["text"]),
            "--num-workers",
            "1",
            "--shard-size",
            "2",
            "--block-shards",
            "2",
            "--write-threads",
            "1",
            "--workers",
            "2",
            "--out",
            str(out),
            "-q",
        ],
    )
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "report.json").read_text())
    assert (
        rep["segments_done"] == 8
        and rep["distributed"]["workers"] == 2
        and rep["distributed"]["blocks"] == 2
    )
    print("--workers 2 == single-process bit for bit:", _same(_arrays(ref.store), _arrays(out)))
