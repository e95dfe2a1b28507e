"""The shard writer with and without zarr's check of every chunk against the fill value, in one run.

zarr skips storing a chunk equal to the fill value (``write_empty_chunks=False``, its default) by comparing
every chunk on its single event-loop thread, which all writer threads share. The cache's hidden-state rows
always hold data, so pipeline.store writes them with the check off (``CacheStore._hidden_for_writing``).
This prints both writers' MiB/s on base-size rows (bench/extract_throughput.write_throughput) and their
ratio, alternating the two for ``--rounds`` rounds and reporting medians (docs/benchmarks.md, "Cache writing").

    python bench/writer_fill_check.py --segments 96 --threads 2 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from extract_throughput import write_throughput  # noqa: E402

from pipeline.store import CacheStore  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--segments", type=int, default=96)
    ap.add_argument(
        "--threads", type=int, default=0, help="writer threads (0: the writer's default)"
    )
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    shipped = CacheStore._hidden_for_writing
    checked = lambda self, name: self.group[name]  # noqa: E731  (zarr's default: every chunk compared)
    got: dict[str, list[float]] = {"shipped": [], "fill check": []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for name, fn in (("fill check", checked), ("shipped", shipped)):
                CacheStore._hidden_for_writing = fn
                try:
                    rate, _, _ = write_throughput(Path(tmp), args.segments, args.threads)
                finally:
                    CacheStore._hidden_for_writing = shipped
                got[name].append(rate / 2**20)
    med = {k: statistics.median(v) for k, v in got.items()}
    for k, v in got.items():
        print(f"{k:>10}: median {med[k]:.0f} MiB/s  ({', '.join(f'{x:.0f}' for x in v)})")
    print(
        f"shipped / fill check: {med['shipped'] / med['fill check']:.2f}x "
        f"({args.segments} base-size segments, threads {args.threads or 'default'})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
