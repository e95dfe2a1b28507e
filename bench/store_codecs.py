"""Which compressor for the cache's float16 hidden states? Ratio, write and read speed of each codec.

    python bench/store_codecs.py                     # synthetic rows shaped like the cache (999x768 / 199x768)
    python bench/store_codecs.py --store cache/marketcalls.zarr   # rows of a real store

Hidden states are high-entropy float16 (mantissas barely compress); most of the gain comes from the zero
padding after each segment's valid rows and from the exponent byte, which bit-shuffling exposes.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.store import CODECS, CacheStore, StoreShape, _dir_bytes  # noqa: E402


def synthetic(n: int, frames: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.zeros((n, frames, dim), np.float16)
    lengths = rng.integers(frames // 3, frames + 1, size=n)
    for i, length in enumerate(lengths):
        # transformer hidden states: roughly normal per channel with channel-specific scales and a few outliers
        scale = rng.lognormal(0, 0.5, size=dim).astype(np.float32)
        x[i, :length] = (rng.standard_normal((length, dim)).astype(np.float32) * scale).astype(
            np.float16
        )
    return x, lengths.astype(np.int32)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--store", default=None, help="take audio rows from this store instead of synthetic ones"
    )
    ap.add_argument("--segments", type=int, default=64)
    args = ap.parse_args()
    if args.store:
        src = CacheStore.open(args.store)
        n = min(args.segments, int(src.done().sum()))
        rows = np.flatnonzero(src.done())[:n]
        audio = src.array("audio/hidden").get_orthogonal_selection((rows, slice(None), slice(None)))
        lengths = src.lengths("audio")[rows]
    else:
        audio, lengths = synthetic(args.segments, 999, 768)
    n, frames, dim = audio.shape
    tmp = Path(tempfile.mkdtemp(prefix="msmtfn-codec-"))
    print(
        f"{n} segments of {frames}x{dim} float16, {audio.nbytes / 2**20:.0f} MiB raw, "
        f"{lengths.mean() / frames:.0%} valid rows on average"
    )
    print(f"{'codec':<12}{'ratio':>8}{'write MiB/s':>14}{'read MiB/s':>13}")
    for codec in CODECS:
        shape = StoreShape(
            n=n, audio_frames=frames, audio_dim=dim, text_tokens=1, text_dim=1, shard_size=16
        )
        s = CacheStore.create(
            tmp / f"{codec}.zarr",
            shape,
            [],
            fingerprint="x",
            settings={},
            manifest_digest="x",
            codec=codec,
        )
        arr = s.array("audio/hidden")
        t0 = time.perf_counter()
        arr[:] = audio
        w = time.perf_counter() - t0
        t0 = time.perf_counter()
        back = arr[:]
        r = time.perf_counter() - t0
        assert np.array_equal(back, audio)
        size = _dir_bytes(tmp / f"{codec}.zarr" / "audio" / "hidden")
        mib = audio.nbytes / 2**20
        print(f"{codec:<12}{audio.nbytes / size:>8.2f}{mib / w:>14.0f}{mib / r:>13.0f}")
    shutil.rmtree(tmp, ignore_errors=True)
