"""Peak memory of msmtfn-predict and msmtfn-extract on a short vs a long recording (flat: ratio ≤ 1.2).

    python bench/long_recording_memory.py --short-min 10 --long-min 180     # ~15 minutes on 2 CPU cores
    python bench/long_recording_memory.py --format m4a     # the same calls as AAC in an m4a container

Builds the tests' tiny run (tiny random encoders, a 2-epoch model; tests/conftest.py), writes two 8 kHz PCM-16
recordings of speech-like bursts between pauses, block by block, then runs in a child process each:

- ``msmtfn-predict --device cpu --threads 1`` with a one-row transcript per recording (the energy cutter);
- ``msmtfn-extract --dataset csv`` with one whole-file row (the row split into pieces of ``--max-seconds``).

The peak resident set of each child is read from ``/usr/bin/time -f %M`` (or the child's rusage where that
program is absent). Prints one row per run and the long/short ratio per command: the figures recorded in
docs/reliability.md.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from conftest import build_tiny_run, write_aac  # noqa: E402

from extract.audio import probe_duration  # noqa: E402
from extract.tiny import build_tiny_encoders  # noqa: E402

RATE = 8000


def write_bursty(path: Path, minutes: float, seed: int) -> Path:
    """Speech-like bursts (2-5 s) between quiet pauses (0.4-1.5 s), written a burst at a time."""
    rng = np.random.default_rng(seed)
    left = int(minutes * 60 * RATE)
    with sf.SoundFile(path, "w", RATE, 1, "PCM_16") as f:
        while left > 0:
            n = min(int(rng.uniform(2.0, 5.0) * RATE), left)
            t = np.arange(n) / RATE
            f0 = rng.uniform(110, 240)
            voice = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6))
            f.write((0.3 * voice * (0.6 + 0.4 * np.sin(8 * np.pi * t) ** 2)).astype(np.float32))
            p = min(int(rng.uniform(0.4, 1.5) * RATE), left - n)
            f.write((0.002 * rng.standard_normal(p)).astype(np.float32))
            left -= n + p
    return path


def to_m4a(wav: Path, path: Path) -> Path:
    """The recording as AAC in an m4a container (what phones and call recorders export), encoded a
    block at a time."""
    with sf.SoundFile(wav) as src:
        return write_aac(path, src.blocks(blocksize=1024 * 64, dtype="float32"), RATE)


def peak_rss_mb(cmd: list[str], log: Path) -> tuple[float, float]:
    """(peak RSS in MB, wall seconds) of ``cmd`` run to the end; its output goes to ``log``."""
    timer = shutil.which("time") or "/usr/bin/time"
    use_timer = os.path.exists(timer)
    stats = log.with_suffix(".rss")
    full = [timer, "-f", "%M", "-o", str(stats), *cmd] if use_timer else cmd
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    with open(log, "w") as out:
        done = subprocess.run(full, stdout=out, stderr=subprocess.STDOUT, env=env)
    wall = time.perf_counter() - t0
    if done.returncode:
        sys.exit(f"{' '.join(cmd[:3])} failed ({done.returncode}); its output: {log}")
    if use_timer:
        kb = float(stats.read_text().split()[-1])
    else:  # the largest child so far: each run is measured once, the larger one last
        kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return kb / 1024, wall


def predict_cmd(run: Path, wav: Path, work: Path) -> list[str]:
    table = work / f"{wav.stem}.transcripts.csv"
    end = probe_duration(str(wav))  # WAV or container
    table.write_text(
        f"call_id,start,end,text\n{wav.stem},0,{end:.3f},你好我想了解一下价格\n", encoding="utf-8"
    )
    return [
        sys.executable,
        "-m",
        "predict.cli",
        "--run",
        str(run),
        "--audio",
        str(wav),
        "--transcripts",
        str(table),
        "--out",
        str(work / f"{wav.stem}.predictions.csv"),
        "--device",
        "cpu",
        "--threads",
        "1",
    ]


def extract_cmd(tiny: dict, wav: Path, work: Path) -> list[str]:
    data = work / f"{wav.stem}-data"
    data.mkdir()
    os.symlink(wav, data / wav.name)
    (data / "calls.csv").write_text(
        f"call_id,audio,text,label,split\n{wav.stem},{wav.name},你好我想了解一下价格,A,train\n",
        encoding="utf-8",
    )
    return [
        sys.executable,
        "-m",
        "extract.cli",
        "--dataset",
        "csv",
        "--data-dir",
        str(data),
        "--out",
        str(work / f"{wav.stem}.zarr"),
        "--audio-model",
        str(tiny["group"]),
        "--text-model",
        str(tiny["text"]),
        "--device",
        "cpu",
        "--loader-workers",
        "0",
        "--max-text-tokens",
        "32",
        "--max-seconds",
        "8",
        "--allow-outside-paths",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--short-min", type=float, default=10.0)
    ap.add_argument("--long-min", type=float, default=180.0)
    ap.add_argument("--only", choices=["predict", "extract"], default=None)
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument(
        "--format", choices=["wav", "m4a"], default="wav", help="the recordings' format"
    )
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="msmtfn-longmem-"))
    try:
        group, text = build_tiny_encoders(work / "encoders", norm="group")
        tiny = {"group": group, "text": text}
        run = build_tiny_run(work / "tiny", tiny)["run"]
        waves = {
            m: write_bursty(work / f"rec{int(m)}min.wav", m, seed=1)
            for m in (args.short_min, args.long_min)
        }
        if args.format == "m4a":
            waves = {m: to_m4a(w, w.with_suffix(".m4a")) for m, w in waves.items()}
        print("| command | recording | file MB | peak RSS MB | wall s |\n|---|---|---|---|---|")
        for name in ("predict", "extract"):
            if args.only not in (None, name):
                continue
            peaks = []
            for minutes, wav in waves.items():
                cmd = (
                    predict_cmd(run, wav, work)
                    if name == "predict"
                    else extract_cmd(tiny, wav, work)
                )
                mb, wall = peak_rss_mb(cmd, work / f"{name}-{wav.stem}.log")
                peaks.append(mb)
                print(
                    f"| msmtfn-{name} | {minutes:g} min | {wav.stat().st_size / 1e6:.1f} | "
                    f"{mb:,.0f} | {wall:.0f} |",
                    flush=True,
                )
            print(
                f"| msmtfn-{name} | ratio long/short | | **{peaks[1] / peaks[0]:.2f}** | |",
                flush=True,
            )
    finally:
        if args.keep:
            print(f"work folder: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
