"""Write amplification of partial-shard checkpoints (extract/writer.py), on a 1,194-row plan.

    python bench/checkpoint_writes.py                    # a few seconds, CPU, no encoders

A single-process extraction sorts rows by length within a block of ``block_shards`` shards, so a shard's rows
arrive spread over the whole block; with ``checkpoint_seconds`` the writer rewrites a shard that has rows waiting
longer than that. How often depends on how long a block takes, i.e. on the encoding speed. This runs the real
ShardWriter (on a store of tiny rows) over the real batch plan (extract/encode.make_batches, default shard size,
block and batch settings) with a simulated clock at several speeds, and counts per shard the writes and the rows
compressed (a write compresses the rows present; absent ones are fill and not stored). First it shows what a
Ctrl-C at segment 177 keeps with and without partial-shard writes (the case of issue 23).
Prints the figures recorded in docs/reliability.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from extract.encode import make_batches  # noqa: E402
from extract.writer import CHECKPOINT_SECONDS, ShardWriter  # noqa: E402
from pipeline.cache_settings import BATCH_SECONDS_CPU, BATCH_SECONDS_CUDA, MAX_BATCH, SHARD_SIZE  # noqa: E402
from pipeline.store import CacheStore, StoreShape  # noqa: E402

RATE = 16000


def plan(rows: int, device: str, block_shards: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    seconds = rng.uniform(2.0, 40.0, rows)  # segment lengths of a call cut at ≤ 40 s
    lengths = np.round(seconds * RATE).astype(np.int64)
    blocks = [
        range(i, min(i + block_shards * SHARD_SIZE, rows))
        for i in range(0, rows, block_shards * SHARD_SIZE)
    ]
    budget = int((BATCH_SECONDS_CUDA if device == "cuda" else BATCH_SECONDS_CPU) * RATE)
    return make_batches(lengths, blocks, max(budget, 40 * RATE), MAX_BATCH)


def _store(path: Path, rows: int) -> CacheStore:
    return CacheStore.create(
        path,
        StoreShape(
            n=rows, audio_frames=2, audio_dim=2, text_tokens=2, text_dim=2, shard_size=SHARD_SIZE
        ),
        [],
        fingerprint="x",
        settings={},
        manifest_digest="x",
    )


def _put(w: ShardWriter, b: list[int]) -> None:
    n = len(b)
    w.put(
        b,
        np.ones((n, 2, 2), np.float16),
        np.ones(n, np.int32),
        np.ones((n, 2, 2), np.float16),
        np.ones(n, np.int32),
    )


def interrupted(
    rows: int, at: int, device: str, block_shards: int, work: Path, keep_partial: bool
) -> tuple[int, int]:
    """(rows encoded, rows flagged done) after a Ctrl-C while the batch holding row number ``at`` is encoded."""
    store = _store(work / f"ctrl-c-{keep_partial}.zarr", rows)
    w, encoded = ShardWriter(store, np.ones(rows, bool)), 0
    for b in plan(rows, device, block_shards):
        if encoded + len(b) > at:
            break  # the batch in flight
        _put(w, b)
        encoded += len(b)
    w.close(keep_partial=keep_partial)
    return encoded, int(store.done().sum())


def measure(
    rows: int, speed: float, device: str, checkpoint: float, block_shards: int, work: Path
) -> dict:
    batches = plan(rows, device, block_shards)
    store = _store(work / f"s{speed}-{device}.zarr", rows)
    compressed = [0]
    real = store.write_slab

    def counting(start, audio, audio_len, text, text_len):
        compressed[0] += int((audio_len > 0).sum())
        real(start, audio, audio_len, text, text_len)

    store.write_slab = counting
    now = [0.0]
    w = ShardWriter(store, np.ones(rows, bool), checkpoint_seconds=checkpoint, clock=lambda: now[0])
    for b in batches:
        now[0] += len(b) / speed  # the batch took this long to encode
        _put(w, b)
    w.close()
    writes = np.array(list(w.shard_writes.values()))
    return {
        "speed": speed,
        "device": device,
        "block_s": block_shards * SHARD_SIZE / speed,
        "writes_mean": writes.mean(),
        "writes_max": int(writes.max()),
        "compress_x": compressed[0] / rows,
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rows", type=int, default=1194)
    ap.add_argument("--checkpoint", type=float, default=CHECKPOINT_SECONDS)
    ap.add_argument("--block-shards", type=int, default=32)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="checkpoint-writes-"))
    for keep in (False, True):
        enc, done = interrupted(args.rows, 177, "cpu", args.block_shards, work, keep)
        print(
            f"Ctrl-C at segment 177 of {args.rows} (CPU batches): {enc} encoded, {done} kept "
            f"({'partial shards written' if keep else 'complete shards only, as before'})"
        )
    print(
        f"{args.rows} rows, shards of {SHARD_SIZE}, blocks of {args.block_shards} shards, checkpoint "
        f"{args.checkpoint:g} s"
    )
    print(
        "| encoding speed | a block takes | writes per shard (mean / max) | rows compressed per row |"
    )
    print("|---|---|---|---|")
    for device, speed in (("cpu", 0.5), ("cpu", 2), ("cpu", 5), ("cuda", 20), ("cuda", 100)):
        r = measure(args.rows, speed, device, args.checkpoint, args.block_shards, work)
        print(
            f"| {speed:g} segments/s ({device} batches) | {r['block_s']:.0f} s | {r['writes_mean']:.2f} / "
            f"{r['writes_max']} | {r['compress_x']:.2f}× |",
            flush=True,
        )
