"""msmtfn-serve under load: requests/s and p50/p95 latency at 1, 4 and 16 concurrent clients, and the
16-client throughput against one client at a time, measured in one run against one server.

The server is the real one (``python -m predict.serve_cli`` on a loopback port, its own process);
the run is trained here on a small MarketCalls-format dataset extracted with random-weight encoders
of the chosen shape (``tiny``, or ``base`` = HuBERT-base + a BERT-base-shaped text encoder); every
request posts one recording of ``--seconds`` with a timed transcript, as a call platform would. The
clients are a bounded loop: each level sends ``--requests`` requests in all, shared among its
clients.

    python bench/serve_load.py                            # CPU, tiny encoders
    python bench/serve_load.py --device cuda --encoders base --seconds 120 --requests 64

Prints one line per level and the ratio; ``--json FILE`` writes the figures (bench/gpu/run.sh).
Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from conftest import KEY, ServeProcess, build_tiny_run  # noqa: E402 (test fixtures)

from extract.tiny import build_tiny_encoders  # noqa: E402


def recording(path: Path, seconds: float, seed: int) -> list[dict]:
    """Speech-like bursts between pauses at 8 kHz (a phone line); returns its transcript."""
    rng = np.random.default_rng(seed)
    rate = 8000
    x = np.zeros(int(seconds * rate), np.float32)
    rows, t = [], 0.0
    while t < seconds - 1:
        n = rng.uniform(2.0, 5.0)
        a, b = int(t * rate), int(min(seconds, t + n) * rate)
        x[a:b] = 0.3 * rng.standard_normal(b - a)
        rows.append({"start": round(t, 2), "end": round(b / rate, 2), "text": "我想了解一下价格"})
        t += n + rng.uniform(0.4, 1.0)
    sf.write(path, x, rate, subtype="PCM_16")
    return rows


def served(server: ServeProcess) -> dict:
    import requests

    r = requests.get(
        server.url + "/v1/info", headers={"Authorization": f"Bearer {KEY}"}, timeout=30
    )
    return r.json()["served"]


def level(server: ServeProcess, files: list[tuple[Path, list]], clients: int, total: int) -> dict:
    """``total`` requests from ``clients`` concurrent clients; latency per request, overall rate."""
    before = served(server)
    latencies: list[float] = []

    def client(k: int) -> None:
        for i in range(k, total, clients):
            path, transcript = files[i % len(files)]
            t0 = time.perf_counter()
            status, body = server.predict(path, transcript, call_id=f"c{i}")
            latencies.append(time.perf_counter() - t0)
            if status != 200:
                raise RuntimeError(f"request {i}: {status} {body}")

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    wall = time.perf_counter() - t0
    after = served(server)
    lat = sorted(latencies)
    return {
        "clients": clients,
        "requests": total,
        "wall_s": round(wall, 3),
        "requests_per_s": round(total / wall, 3),
        "p50_s": round(statistics.median(lat), 4),
        "p95_s": round(lat[min(len(lat) - 1, int(0.95 * len(lat)))], 4),
        "calls_per_batch": round(
            (after["calls"] - before["calls"]) / max(1, after["batches"] - before["batches"]), 2
        ),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--encoders", default="tiny", choices=("tiny", "base"))
    ap.add_argument("--seconds", type=float, default=60.0, help="length of each recording")
    ap.add_argument("--requests", type=int, default=32, help="requests per level")
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--batch-window-ms", default="20")
    ap.add_argument("--threads", default="0", help="server's torch CPU threads (0: torch's)")
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()
    levels = [int(c) for c in args.clients.split(",")]
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        audio, text = build_tiny_encoders(tmp / "enc", size=args.encoders)
        run = build_tiny_run(tmp, {"group": audio, "text": text})["run"]
        files = []
        for i in range(8):
            files.append((tmp / f"call{i}.wav", recording(tmp / f"call{i}.wav", args.seconds, i)))
        setup = time.perf_counter() - t0
        server = ServeProcess(
            run,
            tmp / "server-tmp",
            "--api-key-file",
            _key_file(tmp),
            "--batch-window-ms",
            args.batch_window_ms,
            "--decode-workers",
            "4",
            device=args.device,
            threads=args.threads,
        )
        try:
            level(server, files, 1, 2)  # warm-up: first batches allocate
            rows = [level(server, files, c, args.requests) for c in levels]
        finally:
            server.stop()
    base = rows[0]["requests_per_s"]
    print(
        f"msmtfn-serve, {args.encoders} encoders on {args.device}, {args.seconds:g} s recordings, "
        f"{args.requests} requests per level, batch window {args.batch_window_ms} ms "
        f"(set-up {setup:.0f} s)"
    )
    print(f"{'clients':>7} {'req/s':>8} {'p50 s':>8} {'p95 s':>8} {'calls/batch':>11} {'vs 1':>6}")
    for r in rows:
        print(
            f"{r['clients']:>7} {r['requests_per_s']:>8.2f} {r['p50_s']:>8.3f} {r['p95_s']:>8.3f} "
            f"{r['calls_per_batch']:>11.2f} {r['requests_per_s'] / base:>5.2f}x"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"args": vars(args), "levels": rows}, indent=1), encoding="utf-8"
        )
    return 0


def _key_file(tmp: Path) -> str:
    (tmp / "key").write_text(KEY + "\n", encoding="utf-8")
    return str(tmp / "key")


if __name__ == "__main__":
    sys.exit(main())
