"""What --explain costs: msmtfn-predict --cache's wall time with and without it, in one process, on
a cache of MarketCalls' shape (3-6 segments per call, 999 audio rows and 199 text rows per
segment; ``--width`` is the feature width, 768 the paper's) and the paper's model size.

Explaining costs the segments' fusion twice more (audio, then text, replaced by the baseline), a
leave-one-out and two baselined Bi-GRU runs per segment (cheap), and with words (the default: one
segment per call) one fusion run per text row and audio stretch of that segment.

    python bench/explain_speed.py                 # CPU, 40 calls at width 768
    python bench/explain_speed.py --calls 877 --device cuda

Prints each wall time and its ratio to the plain predict; results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.synthetic import write_synthetic_store  # noqa: E402 (a test fixture)
from train.config import TrainConfig  # noqa: E402
from train.explain import ExplainOptions  # noqa: E402
from train.loop import fit  # noqa: E402
from train.predictions import score_cache_calls  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=40)
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = write_synthetic_store(
            Path(tmp) / "c.zarr", calls=args.calls, segments_per_call=(3, 6), audio_frames=999,
            audio_dim=args.width, text_tokens=199, text_dim=args.width, shard_size=64,
            split_fractions=(0.5, 0.25, 0.25),
        )  # fmt: skip
        run = fit(
            TrainConfig(
                cache=str(store.path), out=f"{tmp}/run", epochs=1, device=args.device,
                plots=False, progress=False, threads=args.threads,
            )
        )["run_dir"]  # fmt: skip
        cases = {
            "plain predict": None,
            "--explain --explain-segments 0": ExplainOptions(row_segments=0),
            "--explain (words of 1 segment per call)": ExplainOptions(row_segments=1),
        }
        times = {}
        score_cache_calls(run, str(store.path), "all", args.device, threads=args.threads)  # warm
        for name, opts in cases.items():
            t0 = time.perf_counter()
            cs = score_cache_calls(
                run, str(store.path), "all", args.device, threads=args.threads, explain=opts
            )
            times[name] = time.perf_counter() - t0
            segs = sum(len(cs.data.rows[c]) for c in cs.scored.calls.tolist())
    print(f"{args.calls} calls, {segs} segments, width {args.width}, {args.device}")
    for name, t in times.items():
        print(f"{name:<42} {t:8.1f} s  {t / times['plain predict']:5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
