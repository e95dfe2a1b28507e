"""N trials through msmtfn-sweep (one process, the cache loaded once) vs N separate msmtfn-train processes on the
same cache, and sequential vs parallel trials inside the sweep. Prints the totals and ratios
(record them in docs/benchmarks.md).

    python bench/sweep_amortisation.py                      # CPU, MarketCalls-sized cache at tiny widths
    python bench/sweep_amortisation.py --device cuda --width 768 --trials 14 --epochs 3

The cache has MarketCalls' shape (877 calls, 3-6 segments each, 999 audio rows and 199 text rows per segment;
``--width`` is the feature width: 768 is the paper's, ~7 GB). Every trial is the same small configuration with its
own seed (what a seed sweep is); ``--epochs`` keeps each trial short, which is where the fixed costs (starting
Python and torch, opening and loading the cache) matter most; with long trials the ratio tends to 1.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.synthetic import write_synthetic_store  # noqa: E402 (a test fixture)
from train.sweep import SweepOptions, run_sweep  # noqa: E402


def amortisation(
    cache: Path, work: Path, trials: int, epochs: int, device: str, threads: int, parallel: int = 1
) -> dict:
    """Seconds of ``trials`` separate msmtfn-train processes vs one msmtfn-sweep of the same trials (in this
    process, sequential, and with ``parallel`` trials at once when that is not 1), on ``cache``."""
    model = {
        "d_model": 64,
        "heads": 4,
        "ffn": 128,
        "gru_hidden": 32,
        "head_hidden": 64,
        "cross_layers": 2,
        "bottleneck_layers": 1,
    }
    settings = {**model, "epochs": epochs, "plots": False, "threads": threads}
    flat = "".join(
        f"{k} = {str(v).lower() if isinstance(v, bool) else v}\n" for k, v in settings.items()
    )
    grid, train_cfg = work / "grid.toml", work / "train.toml"
    grid.write_text("[base]\n" + flat, encoding="utf-8")  # msmtfn-sweep: every trial's settings
    train_cfg.write_text(flat, encoding="utf-8")  # msmtfn-train --config: the same settings

    # N separate msmtfn-train processes (each starts Python + torch and loads the cache itself)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "PYTHONPATH": os.pathsep.join(
            [str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]
        ),
    }
    t0 = time.perf_counter()
    for seed in range(trials):
        cmd = [
            sys.executable,
            "-m",
            "train.cli",
            "--cache",
            str(cache),
            "--config",
            str(train_cfg),
            "--seed",
            str(seed),
            "--out",
            str(work / "separate" / f"s{seed}"),
            "--overwrite",
            "--device",
            device,
            "-q",
        ]  # --overwrite: a second bench run in the same --workdir
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
        if r.returncode != 0:
            raise RuntimeError(f"msmtfn-train failed: {r.stderr[-1500:]}")
    t_separate = time.perf_counter() - t0

    # one msmtfn-sweep (in this process: the same library call the CLI makes)
    results = {}
    for p in sorted({1, parallel}):
        out = work / f"sweep-p{p}"
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        s = run_sweep(
            SweepOptions(
                cache=str(cache),
                grid=str(grid),
                out=str(out),
                seeds=trials,
                device=device,
                parallel=p,
                progress=False,
                overrides={"threads": max(1, threads // p)},
            )
        )
        results[p] = time.perf_counter() - t0
        assert not s["failed"], s["failed"]
    return {
        "separate_s": t_separate,
        "sweep_s": results[1],
        "parallel_s": results.get(parallel),
        "parallel": parallel,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--calls", type=int, default=877)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="torch threads of a trial run alone (CPU); parallel trials share them out",
    )
    ap.add_argument(
        "--parallel", type=int, default=2, help="also time the sweep with this many trials at once"
    )
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="sweep-bench-"))
    cache = work / "cache.zarr"
    if not cache.exists():
        t0 = time.perf_counter()
        write_synthetic_store(
            cache,
            calls=args.calls,
            segments_per_call=(3, 6),
            audio_frames=999,
            audio_dim=args.width,
            text_tokens=199,
            text_dim=args.width,
            seed=0,
            split_fractions=(0.8, 0.1, 0.1),
        )
        print(f"cache written in {time.perf_counter() - t0:.1f} s: {cache}")
    r = amortisation(
        cache, work, args.trials, args.epochs, args.device, args.threads, args.parallel
    )
    t_separate, t_sweep = r["separate_s"], r["sweep_s"]
    print(
        f"{args.trials} trials × {args.epochs} epoch(s), {args.calls} calls, width {args.width}, device "
        f"{args.device}, {args.threads} torch thread(s) (shared out between parallel trials)"
    )
    print(f"  separate msmtfn-train processes : {t_separate:8.1f} s")
    print(
        f"  msmtfn-sweep, one cache load    : {t_sweep:8.1f} s   → {t_separate / t_sweep:.2f}× faster"
    )
    if args.parallel != 1:
        tp = r["parallel_s"]
        print(
            f"  msmtfn-sweep --parallel {args.parallel}       : {tp:8.1f} s   → {t_sweep / tp:.2f}× the "
            "sequential sweep"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
