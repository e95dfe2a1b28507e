"""Resident training features, padded (segments x 999 rows, as before) vs packed (valid rows + offsets): memory
held, load time, the time to assemble every training batch, and the epoch time of ``fit`` on each layout, on the
same MarketCalls-shape cache (877 calls, 3-6 segments, 999 audio / 199 text rows, valid lengths uniform in
[1/3, 1] of the rows as in tests/synthetic.py). Record the output in docs/benchmarks.md.

    python bench/packed_features.py --epochs 0           # CPU, width 64: memory, load, batch assembly
    python bench/packed_features.py --calls 120 --epochs 1   # CPU: epoch time of fit on each layout
    python bench/packed_features.py --width 768 --device cuda --epochs 3
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.synthetic import write_synthetic_store  # noqa: E402 (a test fixture)
from train.config import TrainConfig  # noqa: E402
from train.data import Batches, LoadedCache, load_cache  # noqa: E402
from train.loop import fit  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=877)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--epochs",
        type=int,
        default=2,
        help="epochs of fit per layout (0: memory and batches only)",
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="packed-bench-"))
    cache = work / "cache.zarr"
    if not cache.exists():
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
            codec="none",
        )
    # a small fusion model: the layouts differ only in how batches are assembled, which this keeps visible
    model = dict(
        d_model=64,
        heads=4,
        ffn=128,
        gru_hidden=32,
        head_hidden=64,
        cross_layers=2,
        bottleneck_layers=1,
    )
    rows = {}
    for packed in (False, True):
        t0 = time.perf_counter()
        loaded = load_cache(str(cache), device, packed=packed)
        load_s = time.perf_counter() - t0
        src, data = loaded.source, loaded.data
        assert src.resident
        train = data.indices("train")
        t0 = time.perf_counter()
        n = 0
        for b in Batches(
            data,
            src,
            train,
            8,
            shuffle=True,
            generator=torch.Generator().manual_seed(0),
            full_text=False,
        ):
            n += b.audio.shape[0]
        if device.type == "cuda":
            torch.cuda.synchronize()
        assemble_s = time.perf_counter() - t0
        epoch_s = float("nan")
        if args.epochs:
            cfg = TrainConfig(
                cache=str(cache),
                out=str(work / f"run-{packed}"),
                device=args.device,
                epochs=args.epochs,
                patience=args.epochs,
                plots=False,
                progress=False,
                state_every=0,
                **model,
            )
            epoch_s = fit(
                cfg,
                overwrite=True,  # a second bench run in the same --workdir
                loaded=LoadedCache(loaded.store, data, src),
            )["epoch_seconds"]
        rows[packed] = (src.resident_bytes, load_s, assemble_s, epoch_s, n)
        feature_bytes = {True: data.packed_bytes(), False: data.used_bytes()}
        del loaded, src
    segs = rows[True][4]
    print(
        f"{args.calls} calls, width {args.width}, device {device}, {args.threads} torch thread(s); "
        f"{segs} training segments per epoch"
    )
    print(
        f"{'layout':<8}{'resident MiB':>14}{'load s':>9}{'assemble all train batches s':>30}{'epoch s':>10}"
    )
    for packed, (b, load_s, asm, ep, _) in rows.items():
        print(
            f"{'packed' if packed else 'padded':<8}{b / 2**20:>14.1f}{load_s:>9.2f}{asm:>30.3f}{ep:>10.2f}"
        )
    at768 = {k: v / args.width * 768 / 2**30 for k, v in feature_bytes.items()}
    print(
        f"packed / padded memory: {rows[True][0] / rows[False][0]:.3f}; the same cache at width 768: "
        f"{at768[False]:.2f} GiB padded -> {at768[True]:.2f} GiB packed (features scale with the width)"
    )
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
