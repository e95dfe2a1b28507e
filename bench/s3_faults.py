"""Extraction from and to S3 under injected faults: the wall-time cost of the retries, and rows wrong.

A moto S3 server on loopback behind tests/fault_proxy.py (503 SlowDown, 500, connection resets in
the middle of PUTs and GETs, 50 ms latency spikes, each request faulty with probability p). The
dataset is read from the bucket (``--data-dir s3://…``) and the store written to it (``--out
s3://…``), as a cluster without a shared filesystem would. For each p it prints the faults injected,
the retries report.json counts, the rows that differ from the fault-free store (0 is the only right
answer) and the wall time as a ratio to the fault-free run through the same proxy.

    python bench/s3_faults.py                 # p = 0.05, 0.1, 0.2; ~4 minutes on 2 cores
    python bench/s3_faults.py --p 0.1 --calls 12 --out /tmp/s3_faults.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import numpy as np  # noqa: E402

ARRAYS = ["audio/hidden", "audio/length", "text/hidden", "text/length", "done"]


def _arrays(url: str) -> dict[str, np.ndarray]:
    from pipeline.store import CacheStore

    s = CacheStore.open(url)
    return {n: np.asarray(s.array(n)[:]) for n in ARRAYS}


def _rows_wrong(a: dict, b: dict) -> int:
    bad = np.zeros(len(a["done"]), bool)
    for k in ARRAYS:
        x, y = a[k], b[k]
        bad |= ~np.all((x == y).reshape(len(x), -1), axis=1)
    return int(bad.sum())


def _run(cfg_kw: dict, out: str) -> tuple[float, dict]:
    import s3fs

    from extract.run import ExtractConfig, extract

    s3fs.S3FileSystem.clear_instance_cache()
    t = time.perf_counter()
    res = extract(ExtractConfig(out=out, **cfg_kw), progress=False)
    took = time.perf_counter() - t
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    report = json.loads(fs.cat_file(f"{out.removeprefix('s3://')}/report.json"))
    assert res.done == res.total, (res.done, res.total)
    return took, report.get("storage_retries", {})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--p", type=float, nargs="+", default=[0.05, 0.1, 0.2])
    ap.add_argument("--calls", type=int, default=8)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    os.environ.update(OMP_NUM_THREADS="1", AWS_RETRY_MODE="standard", AWS_MAX_ATTEMPTS="6")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    import s3fs
    import torch
    from conftest import write_marketcalls
    from fault_proxy import FaultProxy
    from moto.server import ThreadedMotoServer

    from extract.tiny import build_tiny_encoders

    torch.set_num_threads(1)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=f"http://{host}:{port}",
    )
    results = []
    with tempfile.TemporaryDirectory() as tmp, FaultProxy(os.environ["AWS_ENDPOINT_URL"]) as proxy:
        audio, text = build_tiny_encoders(Path(tmp) / "enc")
        local = write_marketcalls(Path(tmp) / "data", calls=args.calls, segments=3)
        fs = s3fs.S3FileSystem(skip_instance_cache=True)
        fs.mkdir("bench")
        fs.put(str(local), "bench/data", recursive=True)
        os.environ["AWS_ENDPOINT_URL"] = proxy.url  # every client through the proxy from here
        kw = dict(
            dataset="marketcalls",
            data_dir="s3://bench/data",
            audio_model=str(audio),
            text_model=str(text),
            num_workers=0,
            shard_size=4,
            max_text_tokens=24,
        )
        t0, _ = _run(kw, "s3://bench/clean.zarr")
        clean_requests = proxy.requests
        ref = _arrays("s3://bench/clean.zarr")
        print(f"fault-free: {t0:.1f} s, {clean_requests} requests, {len(ref['done'])} rows")
        for p in args.p:
            proxy.heal(p=p)
            proxy.faults.clear()
            before = proxy.requests
            took, retries = _run(kw, f"s3://bench/p{p}.zarr")
            proxy.heal()
            wrong = _rows_wrong(ref, _arrays(f"s3://bench/p{p}.zarr"))
            row = {
                "p": p,
                "requests": proxy.requests - before,
                "faults": dict(proxy.faults),
                "faults_total": sum(proxy.faults.values()),
                "retries": retries,
                "rows": len(ref["done"]),
                "rows_wrong": wrong,
                "seconds": round(took, 2),
                "ratio_to_fault_free": round(took / t0, 2),
            }
            results.append(row)
            print(
                f"p={p}: {row['faults_total']} faults {row['faults']}, retries {retries}, "
                f"{wrong} of {row['rows']} rows wrong, {took:.1f} s = {took / t0:.2f}x fault-free"
            )
    server.stop()
    if args.out:
        Path(args.out).write_text(json.dumps({"fault_free_s": t0, "runs": results}, indent=2))
    return 1 if any(r["rows_wrong"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
