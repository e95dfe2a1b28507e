"""Extraction throughput: msmtfn's extractor vs a naive loop on the same segments, and cache writing vs a raw
sequential write of the same bytes. Prints the measured ratios (record them in docs/benchmarks.md).

    python bench/extract_throughput.py                                  # CPU, tiny encoders
    python bench/extract_throughput.py --device cuda --size base --segments 2000 --seconds 40 --naive-segments 100

The naive loop is the paper's way of extracting: one segment at a time, fp32, the plain HF forward, decode in
the main process, synchronous per-segment writes into the same store format. ``--size base`` builds HuBERT-base
and BERT-base from their configs with random weights (same FLOPs as the real checkpoints, no download).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from extract.audio import load_segment  # noqa: E402
from extract.run import ExtractConfig, extract  # noqa: E402
from extract.tiny import build_tiny_encoders  # noqa: E402
from extract.writer import ShardWriter  # noqa: E402
from pipeline.store import CacheStore  # noqa: E402


def make_dataset(
    root: Path,
    n: int,
    seconds: float,
    rate: int = 8000,
    seed: int = 0,
    fixed: bool = False,
    link: bool = False,
) -> Path:
    """n segments in MarketCalls format, lengths uniform in [seconds/2, seconds] (all equal with ``fixed``).
    ``link``: every row's file is a hard link to one recording (fixed length only), so that thousands of rows
    cost no disk writes; decoding still reads each file."""
    import csv

    rng = np.random.default_rng(seed)
    (root / "audio").mkdir(parents=True, exist_ok=True)
    rows = []
    first = None
    for i in range(n):
        path = root / "audio" / f"c{i // 5:05d}_{i % 5}.wav"
        if link and first is not None:
            os.link(first, path)
        else:
            dur = seconds if fixed or link else float(rng.uniform(seconds / 2, seconds))
            x = (0.1 * rng.standard_normal(int(dur * rate))).astype(np.float32)
            sf.write(path, x, rate)
            first = path
        rows.append(
            {
                "phone": f"c{i // 5:05d}",
                "Audio_id": f"c{i // 5:05d}_{i % 5}",
                "text": "您好我们这边是做保险的请问您有兴趣了解一下吗" * int(rng.integers(1, 6)),
                "label": "ABCDE"[i // 5 % 5],
                "split": ("train", "valid", "test")[i // 5 % 3],
            }
        )
    with open(root / "data.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root


def naive(
    store_path: Path,
    ref_store: Path,
    audio_dir: Path,
    text_dir: Path,
    device: str,
    limit: int,
    data_dir: str | Path,
    rate: int | None = None,
    pool: int = 2,
) -> tuple[int, float]:
    """One segment at a time, fp32, plain forward, synchronous per-row writes (into a copy of the store).
    ``rate``: input rate handed to the encoder (None = its own; 8000 = the paper-8k policy), ``pool``: frames
    averaged per stored row (2 for the encoder policy, 1 for paper-8k)."""
    from transformers import AutoFeatureExtractor, AutoModel, AutoTokenizer

    fe = AutoFeatureExtractor.from_pretrained(audio_dir)
    am = AutoModel.from_pretrained(audio_dir).eval().to(device)
    tok = AutoTokenizer.from_pretrained(text_dir)
    tm = AutoModel.from_pretrained(text_dir).eval().to(device)
    src = CacheStore.open(ref_store)
    table = src.table()
    shutil.copytree(ref_store, store_path)
    store = CacheStore.open(store_path, mode="r+")
    store.set_flags(0, store.n, np.zeros(store.n, bool), np.zeros(store.n, bool))
    texts = {}
    import csv

    for r in csv.DictReader(open(Path(data_dir) / "data.csv", encoding="utf-8")):
        texts[r["Audio_id"]] = r["text"]
    A, T = store.shape.audio_frames, store.shape.text_tokens
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    n = min(limit, store.n)
    for i in range(n):
        x, _ = load_segment(table["source_path"][i], None, None, rate or fe.sampling_rate)
        with torch.no_grad():
            iv = torch.as_tensor(
                fe(x, sampling_rate=fe.sampling_rate, return_tensors="np")["input_values"]
            )
            h = am(iv.to(device)).last_hidden_state[0]
            h = (
                h[: h.shape[0] // pool * pool]
                .reshape(-1, pool, h.shape[1])
                .mean(1)[:A]
                .float()
                .cpu()
                .numpy()
            )
            enc = tok(
                texts[table["segment_id"][i]], truncation=True, max_length=T, return_tensors="pt"
            )
            th = (
                tm(**{k: v.to(device) for k, v in enc.items()})
                .last_hidden_state[0]
                .float()
                .cpu()
                .numpy()
            )
        a = np.zeros((1, A, h.shape[1]), np.float16)
        a[0, : len(h)] = h
        t = np.zeros((1, T, th.shape[1]), np.float16)
        t[0, : len(th)] = th
        store.write_slab(i, a, np.array([len(h)], np.int32), t, np.array([len(th)], np.int32))
        store.set_flags(i, i + 1, np.ones(1, bool), np.zeros(1, bool))
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return n, time.perf_counter() - t0


def write_throughput(tmp: Path, segments: int = 96, threads: int = 0) -> tuple[float, float, int]:
    """Bytes/s of the ShardWriter putting base-size rows (999x768 audio + 199x768 text, float16, realistic
    padding) into a fresh store, vs np.tofile of the same bytes to one file with fsync."""
    from pipeline.store import StoreShape

    rng = np.random.default_rng(0)
    shape = StoreShape(
        n=segments, audio_frames=999, audio_dim=768, text_tokens=199, text_dim=768, shard_size=16
    )
    al = rng.integers(333, 1000, segments).astype(np.int32)
    tl = rng.integers(20, 200, segments).astype(np.int32)
    a = np.zeros((segments, 999, 768), np.float16)
    t = np.zeros((segments, 199, 768), np.float16)
    for i in range(segments):
        a[i, : al[i]] = rng.standard_normal((al[i], 768), dtype=np.float32)
        t[i, : tl[i]] = rng.standard_normal((tl[i], 768), dtype=np.float32)
    path = tmp / f"w{threads}.zarr"
    shutil.rmtree(path, ignore_errors=True)
    dst = CacheStore.create(path, shape, [], fingerprint="x", settings={}, manifest_digest="x")
    nbytes = a.nbytes + t.nbytes
    t0 = time.perf_counter()
    w = ShardWriter(dst, np.ones(segments, bool), write_threads=threads)
    for i in range(0, segments, 32):  # batches of 32 rows, as the extractor hands them over
        sl = slice(i, min(i + 32, segments))
        w.put(list(range(sl.start, sl.stop)), a[sl], al[sl], t[sl], tl[sl])
    w.close()
    ours = time.perf_counter() - t0
    assert np.array_equal(dst.array("audio/hidden")[:8], a[:8])
    raw = tmp / "raw.bin"
    t0 = time.perf_counter()
    with open(raw, "wb") as f:
        a.tofile(f)
        t.tofile(f)
        f.flush()
        os.fsync(f.fileno())
    raw_s = time.perf_counter() - t0
    raw.unlink()
    return nbytes / ours, nbytes / raw_s, nbytes


if __name__ == "__main__":
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", default="tiny", choices=["tiny", "base"])
    ap.add_argument("--segments", type=int, default=200)
    ap.add_argument(
        "--naive-segments", type=int, default=60, help="segments timed for the naive loop"
    )
    ap.add_argument(
        "--seconds", type=float, default=20.0, help="longest segment (lengths uniform in [s/2, s])"
    )
    ap.add_argument("--fixed", action="store_true", help="all segments exactly --seconds long")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-seconds", type=float, default=0.0)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--keep", default=None, help="work folder to keep (default: a temp folder)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    tmp = Path(args.keep or tempfile.mkdtemp(prefix="msmtfn-bench-"))
    tmp.mkdir(parents=True, exist_ok=True)
    args.data = str(make_dataset(tmp / "data", args.segments, args.seconds, fixed=args.fixed))
    audio_dir, text_dir = build_tiny_encoders(tmp / "enc", size=args.size)
    cfg = ExtractConfig(
        dataset="marketcalls",
        data_dir=args.data,
        out=str(tmp / "ours.zarr"),
        audio_model=str(audio_dir),
        text_model=str(text_dir),
        device=args.device,
        num_workers=args.workers,
        batch_seconds=args.batch_seconds,
        dtype=args.dtype,
        overwrite=True,
    )
    # warm-up on a few segments (model load, kernels), excluded from the timing
    extract(dataclasses.replace(cfg, out=str(tmp / "warm.zarr")), progress=False)
    res = extract(cfg, progress=False)
    ours = res.computed / res.loop_seconds
    n_naive, t_naive = naive(
        tmp / "naive.zarr",
        res.store,
        audio_dir,
        text_dir,
        args.device,
        args.naive_segments,
        args.data,
    )
    naive_rate = n_naive / t_naive
    w_one, _, _ = write_throughput(tmp, threads=1)
    w_ours, w_raw, nbytes = write_throughput(tmp)
    row_bytes = 2 * (999 * 768 + 199 * 768)
    print(
        f"device {args.device}, {args.size} encoders, {res.computed} segments "
        f"({res.audio_seconds / max(1, res.computed):.1f} s mean), torch threads {torch.get_num_threads()}"
    )
    print(
        f"ours (encode loop, writes flushed):            {ours:8.2f} segments/s  ({res.loop_seconds:.1f} s; "
        f"{res.computed / res.elapsed:.2f}/s incl. model load + manifest)"
    )
    print(
        f"naive loop (fp32, one at a time, sync writes): {naive_rate:8.2f} segments/s  ({n_naive} segments)"
    )
    print(f"speed-up ours / naive: {ours / naive_rate:.2f}x")
    print(
        f"cache writer, base-size rows: {w_ours / 2**20:.0f} MiB/s with {os.cpu_count()} cores "
        f"({w_one / 2**20:.0f} MiB/s with 1 write thread) vs raw sequential write {w_raw / 2**20:.0f} MiB/s "
        f"(ratio {w_ours / w_raw:.2f}; {nbytes / 2**20:.0f} MiB uncompressed) = "
        f"{w_ours / row_bytes:.0f} base-size segments/s"
    )
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
