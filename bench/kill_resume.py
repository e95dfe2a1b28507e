"""Kill anywhere, resume exactly: SIGKILL `msmtfn-extract` at random moments, re-run until done, compare.

    python bench/kill_resume.py --kills 20 --seed 0          # ~3-5 minutes on 2 CPU cores

A reference store is extracted without interruption. Then the same command is started again and again on a
second store and killed with SIGKILL at a random moment: every fifth kill during start-up (model loading, a
random delay of 0-3 s), the others while it encodes and writes shards (a random delay after this attempt's
first new shard). After every kill the store is
checked: each row flagged ``done`` must equal the reference bit for bit (so ``done`` is never set for a row that
is not fully written), and the ``*.partial`` chunk files the kill left behind are counted (proof that the kill
landed in the middle of a chunk write). Tiny encoders write tiny chunks in microseconds, so by default each chunk
write in the child processes pauses half-way (``--slow-writes``, a sitecustomize hook in the work folder; the
reference run has it too) so that many kills land mid-write, as they would with real 999×768 rows.
When the kills are spent the command runs to the end, and every array
and the segment table are compared with the reference. Prints the figures recorded in docs/reliability.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from extract.tiny import build_tiny_encoders  # noqa: E402
from pipeline.store import CacheStore, StoreError  # noqa: E402

ARRAYS = ("audio/hidden", "audio/length", "text/hidden", "text/length", "done", "skipped")


def make_dataset(root: Path, calls: int, segments: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    (root / "audio").mkdir(parents=True, exist_ok=True)
    rows = {"train": [], "valid": [], "test": []}
    for c in range(calls):
        split = ("train", "valid", "test")[c % 3]
        for k in range(segments):
            name = f"1370000{c:04d}_{k}"
            sec = float(rng.uniform(3.0, 10.0))
            t = np.arange(int(sec * 8000)) / 8000
            x = (
                0.1 * np.sin(2 * np.pi * (120 + 7 * c) * t) + 0.01 * rng.standard_normal(len(t))
            ).astype(np.float32)
            sf.write(root / "audio" / f"{name}.wav", x, 8000)
            rows[split].append(
                {
                    "phone": f"1370000{c:04d}",
                    "Audio_id": name,
                    "text": "好的" * (1 + k),
                    "label": "ABCDE"[c % 5],
                }
            )
    for split, rs in rows.items():
        with open(root / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=["phone", "Audio_id", "text", "label"])
            w.writeheader()
            w.writerows(rs)
    return root


def arrays(path: Path) -> dict[str, np.ndarray]:
    s = CacheStore.open(path)
    return {n: np.asarray(s.array(n)[:]) for n in ARRAYS}


def same_up_to_rounding(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per row: equal, or for float arrays within float16 rounding (CPU BLAS may sum in another order on another
    thread count or memory alignment, moving a value one float16 step); a wrong row differs by far more."""
    if a.dtype.kind != "f":
        return np.all((a == b).reshape(len(a), -1), axis=1)
    x, y = a.astype(np.float32), b.astype(np.float32)
    return np.all((np.abs(x - y) <= 1e-4 + 2**-9 * np.abs(y)).reshape(len(a), -1), axis=1)


def done_count(path: Path) -> int:
    try:
        return int(CacheStore.open(path).done().sum())
    except (StoreError, Exception):  # not created yet, or being created
        return -1


SLOW_WRITES = """# written by bench/kill_resume.py into its work folder; only its child processes import it
import contextlib, time
import zarr.storage._local as _local

_atomic_write = _local._atomic_write


@contextlib.contextmanager
def _slow_atomic_write(path, mode, exclusive=False):
    # half the chunk, flush, pause, the rest: widens the window in which a SIGKILL lands mid-write
    with _atomic_write(path, mode, exclusive=exclusive) as f:
        class _Half:
            def write(self, data):
                mv = memoryview(data).cast("B")
                n = f.write(mv[: len(mv) // 2])
                f.flush()
                time.sleep({delay})
                return n + f.write(mv[len(mv) // 2:])
        yield _Half()


_local._atomic_write = _slow_atomic_write
"""


def run(
    kills: int = 20,
    seed: int = 0,
    workdir: Path | None = None,
    calls: int = 60,
    segments: int = 4,
    slow_writes: float = 0.02,
    log=print,
) -> dict:
    rnd = random.Random(seed)
    work = Path(workdir or tempfile.mkdtemp(prefix="kill-resume-"))
    enc_audio, enc_text = build_tiny_encoders(work / "encoders", norm="group")
    data = make_dataset(work / "data", calls, segments, seed)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    if slow_writes > 0:
        hook = work / "slow-writes"
        hook.mkdir(exist_ok=True)
        (hook / "sitecustomize.py").write_text(SLOW_WRITES.replace("{delay}", repr(slow_writes)))
        env["PYTHONPATH"] = f"{hook}{os.pathsep}{ROOT}"

    def command(out: Path) -> list[str]:
        return [
            sys.executable,
            "-m",
            "extract.cli",
            "--dataset",
            "marketcalls",
            "--data-dir",
            str(data),
            "--out",
            str(out),
            "--audio-model",
            str(enc_audio),
            "--text-model",
            str(enc_text),
            "--loader-workers",
            "1",
            "--shard-size",
            "2",
            "--batch-seconds",
            "24",
            "--write-threads",
            "2",
            "-q",
        ]

    def run_to_end(store: Path, what: str) -> tuple[dict, dict]:
        """Extract into ``store`` until done; its arrays and segment table."""
        r = subprocess.run(command(store), env=env, capture_output=True, text=True, cwd=ROOT)
        if r.returncode != 0:
            raise RuntimeError(f"{what} run failed: {r.stderr[-2000:]}")
        return arrays(store), CacheStore.open(store).table()

    ref = work / "ref.zarr"
    t0 = time.perf_counter()
    want, want_table = run_to_end(ref, "reference")
    t_ref = time.perf_counter() - t0
    n = len(want["done"])
    log(f"reference: {n} segments in {t_ref:.1f} s")

    out = work / "killed.zarr"
    t0 = time.perf_counter()
    stats = {
        "kills": 0,
        "kills_during_startup": 0,
        "kills_with_partial_chunk_files": 0,
        "partial_files_seen": 0,
        "attempts_finished_before_kill": 0,
        "rows_checked_after_kills": 0,
        "bad_done_rows": 0,
    }
    while stats["kills"] < kills:
        before = max(0, done_count(out))
        if before == n:
            raise RuntimeError("the store finished before all kills were spent; use more --calls")
        leftover = (
            set(out.rglob("*.partial")) if out.exists() else set()
        )  # a start-up kill may precede clean-up
        p = subprocess.Popen(
            command(out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT
        )
        startup = stats["kills"] % 5 == 2  # every fifth kill lands in start-up (model loading)
        if startup:
            time.sleep(rnd.uniform(0.0, 3.0))
        else:
            while p.poll() is None and done_count(out) <= before:
                time.sleep(0.01)
            time.sleep(rnd.uniform(0.0, 0.25))
        if p.poll() is not None:
            stats["attempts_finished_before_kill"] += 1
            continue
        p.send_signal(signal.SIGKILL)
        p.wait()
        stats["kills"] += 1
        stats["kills_during_startup"] += startup
        partial = [f for f in out.rglob("*.partial") if f not in leftover] if out.exists() else []
        stats["partial_files_seen"] += len(partial)
        stats["kills_with_partial_chunk_files"] += bool(partial)
        if done_count(out) >= 0:
            got = arrays(out)
            rows = np.flatnonzero(got["done"])
            stats["rows_checked_after_kills"] += len(rows)
            for name in ("audio/hidden", "audio/length", "text/hidden", "text/length"):
                bad = ~same_up_to_rounding(got[name][rows], want[name][rows])
                stats["bad_done_rows"] += int(bad.sum())
        log(
            f"kill {stats['kills']:>2}: {'start-up' if startup else 'mid-run '}  done {max(0, done_count(out))}/{n}"
            f"  partial chunk files {len(partial)}"
        )
    got, table = run_to_end(out, "final")
    t_killed = time.perf_counter() - t0
    bit_identical = all(np.array_equal(got[k], want[k]) for k in ARRAYS)
    mismatched = [k for k in ARRAYS if not same_up_to_rounding(got[k], want[k]).all()]
    mismatched += [
        f"table/{k}"
        for k in want_table
        if not np.array_equal(table[k], want_table[k], equal_nan=table[k].dtype.kind == "f")
    ]
    ids = list(table["segment_id"])
    result = {
        **stats,
        "segments": n,
        "identical": not mismatched,
        "bit_identical": bit_identical,
        "mismatched": mismatched,
        "segments_done": int(got["done"].sum()),
        "duplicate_segment_ids": len(ids) - len(set(ids)),
        "items_lost": int(n - got["done"].sum()),
        "leftover_partial_files": len(list(out.rglob("*.partial"))),
        "seconds_uninterrupted": round(t_ref, 1),
        "seconds_with_kills": round(t_killed, 1),
        "time_ratio_killed_vs_uninterrupted": round(t_killed / t_ref, 2),
        "workdir": str(work),
    }
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--calls", type=int, default=60)
    ap.add_argument(
        "--slow-writes",
        type=float,
        default=0.02,
        help="seconds each chunk write pauses half-way in the child processes (0 = off)",
    )
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    res = run(
        args.kills,
        args.seed,
        Path(args.workdir) if args.workdir else None,
        calls=args.calls,
        slow_writes=args.slow_writes,
    )
    print(json.dumps(res, indent=2))
    ok = (
        res["identical"]
        and res["bad_done_rows"] == 0
        and res["items_lost"] == 0
        and not res["duplicate_segment_ids"]
    )
    print(
        f"{res['kills']} SIGKILLs ({res['kills_with_partial_chunk_files']} mid chunk write, "
        f"{res['kills_during_startup']} during start-up); rows flagged done and checked after kills: "
        f"{res['rows_checked_after_kills']}, wrong: {res['bad_done_rows']}; final store equal to the "
        f"reference: {res['identical']} (bit-identical: {res['bit_identical']}); items lost: {res['items_lost']}; time with kills / uninterrupted: "
        f"{res['time_ratio_killed_vs_uninterrupted']}x"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
