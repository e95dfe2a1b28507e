"""How many torch CPU threads should msmtfn-train use? Times the first training epoch at 1, 2, … up to the
core count (issue 23: 153 s with torch's default thread count, 29 s with ``--threads 1`` on 2 shared cores).

    python bench/threads.py                      # ~1.5 minutes on 2 idle cores
    python bench/threads.py --rounds 3 --calls 32  # steadier figures, longer
    python bench/threads.py --threads 1,2,4,8    # other counts than 1..cores
    python bench/threads.py --load 1             # the same beside 1 busy process (a shared machine)

The cache is MarketCalls-shaped (999 audio frames x 768 = HuBERT-base, 199 text tokens x 384 = MiniLM, 3-6
segments per call, random values; ``tests/synthetic.py``) but few calls, so each epoch is a few optimizer steps
of the default model (``d_model`` = the text width) plus a small validation pass: what ``msmtfn-train`` runs.
Each round times one fresh run's first epoch (``train.loop.TrainingRun``: start, then epoch 1) at every thread
count in turn, so a change of load on a shared machine hits every count alike; the median over rounds is
printed with its ratio to the best; one untimed epoch first warms the process up (allocator, kernels).
``--load K`` starts K processes that keep one core each busy (pure Python loops) for the timed part, as another
user's job on a shared machine does. ``uptime`` is printed before and after: other processes on the machine change
the figures (OpenMP threads spin-wait for cores that others hold), so record it beside them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.synthetic import write_synthetic_store  # noqa: E402 (a test fixture)
from train.config import TrainConfig, available_cores, default_threads  # noqa: E402
from train.loop import TrainingRun  # noqa: E402


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def first_epoch(cache: Path, out: Path, threads: int, batch_calls: int) -> float:
    cfg = TrainConfig(
        cache=str(cache),
        out=str(out),
        device="cpu",
        epochs=1,
        patience=1,
        threads=threads,
        batch_calls=batch_calls,
        plots=False,
        progress=False,
        state_every=0,
    )
    run = TrainingRun(cfg).start()
    t0 = time.perf_counter()
    run.epoch(1)
    return time.perf_counter() - t0


def _burn() -> None:
    while True:
        pass


def start_load(k: int) -> list:
    import multiprocessing as mp

    procs = [mp.Process(target=_burn, daemon=True) for _ in range(k)]
    for p in procs:
        p.start()
    return procs


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--calls", type=int, default=16, help="calls in the cache (80 %% train, 10 %% valid/test)"
    )
    ap.add_argument("--batch-calls", type=int, default=8)
    ap.add_argument(
        "--rounds", type=int, default=2, help="first epochs timed per thread count (median)"
    )
    ap.add_argument("--threads", default="", help="comma-separated counts (default 1..cores)")
    ap.add_argument("--audio-dim", type=int, default=768)
    ap.add_argument("--text-dim", type=int, default=384)
    ap.add_argument("--load", type=int, default=0, help="busy processes beside the timed runs")
    args = ap.parse_args()
    cores = available_cores()
    counts = [int(x) for x in args.threads.split(",") if x.strip()] or list(range(1, cores + 1))
    tmp = Path(tempfile.mkdtemp(prefix="msmtfn-threads-bench-"))
    try:
        print(f"before: {uptime()}", flush=True)
        t0 = time.perf_counter()
        store = write_synthetic_store(
            tmp / "c.zarr",
            calls=args.calls,
            segments_per_call=(3, 6),
            seed=0,
            split_fractions=(0.8, 0.1, 0.1),
            audio_frames=999,
            audio_dim=args.audio_dim,
            text_tokens=199,
            text_dim=args.text_dim,
        )
        print(
            f"cache: {args.calls} calls, {store.n} segments, audio 999x{args.audio_dim}, text 199x{args.text_dim}; "
            f"written in {time.perf_counter() - t0:.1f} s; {cores} cores available, torch's own default "
            f"{torch.get_num_threads()} threads; default_threads() = {default_threads()}",
            flush=True,
        )
        first_epoch(store.path, tmp / "warm-up", counts[0], args.batch_calls)
        load = start_load(args.load)
        if load:
            print(f"{args.load} busy process(es) started beside the timed runs", flush=True)
        times: dict[int, list[float]] = {n: [] for n in counts}
        for r in range(args.rounds):
            for n in counts:
                s = first_epoch(store.path, tmp / f"r{r}-t{n}", n, args.batch_calls)
                times[n].append(s)
                print(
                    f"  round {r + 1}, {n} thread{'s' if n > 1 else ''}: first epoch {s:.2f} s",
                    flush=True,
                )
        print(f"after: {uptime()}")
        for p in load:
            p.terminate()
        med = {n: statistics.median(v) for n, v in times.items()}
        best = min(med.values())
        print(f"{'threads':>8}{'first epoch (median), s':>26}{'x best':>9}")
        for n in counts:
            print(f"{n:>8}{med[n]:>26.2f}{med[n] / best:>9.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
