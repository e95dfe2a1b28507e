"""Object storage under faults: extraction reading its dataset from S3 and writing its store to S3
through a proxy that injects 503 SlowDown, 500s, connection resets in the middle of PUTs and GETs and
latency spikes (tests/fault_proxy.py, in front of a moto server on loopback). The SDKs' retries
(botocore's standard mode, s3fs's loop) carry it through: the store equals a fault-free run's, and
report.json counts the retries. When the retries run out: one line, and the same command resumes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import write_marketcalls
from fault_proxy import FaultProxy

from extract.cli import main as extract_cli
from pipeline.store import CacheStore

pytest.importorskip("s3fs")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

ARRAYS = ["audio/hidden", "audio/length", "text/hidden", "text/length", "done", "skipped"]


def _fs():
    import s3fs

    return s3fs.S3FileSystem(skip_instance_cache=True)


def _args(data: str, out: str, enc: dict) -> list[str]:
    return [
        "--dataset", "marketcalls", "--data-dir", data, "--out", out, "-q",
        "--audio-model", str(enc["group"]), "--text-model", str(enc["text"]),
        "--loader-workers", "0", "--shard-size", "4", "--max-text-tokens", "24",
    ]  # fmt: skip


def _arrays(url) -> dict[str, np.ndarray]:
    s = CacheStore.open(url)
    return {n: np.asarray(s.array(n)[:]) for n in ARRAYS}


@pytest.fixture
def faulty(s3, monkeypatch):
    """Every S3 client of this process goes through a fault proxy (none injected until asked)."""
    import os

    import s3fs

    with FaultProxy(os.environ["AWS_ENDPOINT_URL"], seed=0, latency=0.05) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        monkeypatch.setenv("AWS_RETRY_MODE", "standard")
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", "6")
        s3fs.S3FileSystem.clear_instance_cache()  # no client made for the direct endpoint
        yield proxy
    s3fs.S3FileSystem.clear_instance_cache()


def _dataset(tmp_path, s3, name: str, enc: dict, calls: int = 4) -> tuple[str, str]:
    """The dataset in the bucket, and the store a fault-free run makes from its files on disk
    (tests/test_remote_data.py shows the two runs' stores equal)."""
    local = write_marketcalls(tmp_path / "data", calls=calls, segments=2)
    data = f"{s3}/{name}-data"
    _fs().put(str(local), data.removeprefix("s3://"), recursive=True)
    ref = tmp_path / "ref.zarr"
    r = CliRunner().invoke(extract_cli, _args(str(local), str(ref), enc))
    assert r.exit_code == 0, r.output
    return data, ref


def _faults_run(tmp_path, enc, s3, proxy, p: float, name: str, calls: int) -> None:
    data, ref = _dataset(tmp_path, s3, name, enc, calls=calls)
    proxy.heal(p=p, put_p=max(p, 0.2))  # the writes meet faults too, however few they are
    out = f"{s3}/{name}.zarr"
    r = CliRunner().invoke(extract_cli, _args(data, out, enc))
    assert r.exit_code == 0, r.output
    faulty = proxy
    print(f"p={p}: {faulty.requests} requests, faults {dict(faulty.faults)}")
    assert sum(faulty.faults.values()) >= 10, faulty.faults
    assert {"503", "500", "reset-put", "reset-get"} <= set(faulty.faults), faulty.faults
    faulty.heal()
    a, b = _arrays(ref), _arrays(out)
    for k in ARRAYS:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    report = json.loads(_fs().cat_file(f"{out.removeprefix('s3://')}/report.json"))
    retries = report["storage_retries"]
    print("retries counted:", retries)
    # the faults answered by retries, counted; bounded (no retry storm)
    failed = sum(faulty.faults.values()) - faulty.faults["latency"]
    assert failed / 2 <= sum(retries.values()) <= 2 * failed + 2, (retries, faulty.faults)
    # a local run has no such entry (a fault-free S3 run counts none: tests/test_remote_data.py)
    assert "storage_retries" not in json.loads((ref / "report.json").read_text())


def test_faults_on_reads_and_writes_leave_the_store_as_a_fault_free_run(
    tmp_path, tiny_encoders, s3, faulty
):
    _faults_run(tmp_path, tiny_encoders, s3, faulty, 0.12, "faults", calls=2)


@pytest.mark.slow
def test_many_faults_leave_the_store_as_a_fault_free_run(tmp_path, tiny_encoders, s3, faulty):
    _faults_run(tmp_path, tiny_encoders, s3, faulty, 0.2, "many-faults", calls=8)


def test_dask_workers_retries_are_counted_in_the_report(tmp_path, tiny_encoders, s3, faulty):
    """Workers read the dataset and write their shards through the faults themselves: their
    retries reach report.json (per process, under "distributed", and in the total)."""
    distributed = pytest.importorskip("distributed")
    from extract.run import ExtractConfig, extract

    data, ref = _dataset(tmp_path, s3, "dask-faults", tiny_encoders, calls=2)
    out = f"{s3}/dask-faults.zarr"
    # workers started after the proxy's endpoint is set, as on nodes whose AWS_* variables say so
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as lc,
        distributed.Client(lc) as client,
    ):
        faulty.heal(p=0.12, put_p=0.2)
        cfg = dict(
            dataset="marketcalls", data_dir=data, out=out, audio_model=str(tiny_encoders["group"]),
            text_model=str(tiny_encoders["text"]), num_workers=0, shard_size=2, block_shards=1,
            max_text_tokens=24,
        )  # fmt: skip
        got = extract(ExtractConfig(**cfg), progress=False, client=client)
    faults = dict(faulty.faults)
    faulty.heal()
    assert got.done == got.total == 4
    a, b = _arrays(ref), _arrays(out)
    for k in ARRAYS:  # other processes, other thread counts: float rounding only
        np.testing.assert_allclose(a[k].astype(np.float32), b[k].astype(np.float32), atol=2e-3)
    report = json.loads(_fs().cat_file(f"{out.removeprefix('s3://')}/report.json"))
    on_workers = report["distributed"]["storage_retries_on_workers"]
    total = report["storage_retries"]
    print("faults", faults, "retries", total, "on workers", on_workers)
    assert sum(on_workers.values()) >= 1, (on_workers, faults)
    assert all(total[k] >= on_workers[k] for k in on_workers), (total, on_workers)
    failed = sum(faults.values()) - faults.get("latency", 0)
    assert failed / 2 <= sum(total.values()) <= 2 * failed + 2, (total, faults)


def test_when_the_retries_run_out_one_line_and_the_same_command_resumes(
    tmp_path, tiny_encoders, s3, faulty, monkeypatch, caplog
):
    data, ref = _dataset(tmp_path, s3, "outage", tiny_encoders, calls=2)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore gives up at once; s3fs tries 5 times
    out = f"{s3}/outage.zarr"
    faulty.fail_after(120)  # the store is created and some shards written; then S3 is down
    r = CliRunner().invoke(extract_cli, _args(data, out, tiny_encoders))
    assert r.exit_code == 1, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in r.output, r.output
    print(lines[0])
    assert "run the same command again" in lines[0] and "object storage" in lines[0], lines[0]
    # the lock object could not be removed either: said, not raised over the error that stopped it
    assert any("could not remove the lock" in m for m in caplog.messages), caplog.messages
    faulty.heal()
    r = CliRunner().invoke(extract_cli, _args(data, out, tiny_encoders))
    assert r.exit_code == 0, r.output
    a, b = _arrays(ref), _arrays(out)
    for k in ARRAYS:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_worker_retries_add_up_per_process_whatever_the_tasks_overlap():
    from pipeline.retries import worker_retries

    c = lambda b, s: {"botocore": b, "s3fs": s}  # noqa: E731
    windows = [
        ("w1/10", c(2, 0), c(5, 1)),  # two tasks at once in one process: counted once, not twice
        ("w1/10", c(3, 0), c(6, 1)),
        ("w2/11", c(0, 0), c(4, 0)),
        ("w1/12", c(0, 0), c(1, 2)),  # w1 restarted: a new process counts from 0
    ]
    assert worker_retries(windows) == c(4 + 4 + 1, 1 + 0 + 2)
    assert worker_retries([]) == c(0, 0)
