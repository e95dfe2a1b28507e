"""Does the paper's learning rate (1e-5) suit a fusion network trained from scratch on frozen features?

Trains the same configuration with several learning rates on one synthetic cache whose 5-class label needs both
modalities (text cue: positive / refusal / strong refusal; audio cue: high / low pitch, like the demo's rule) and
prints validation-selected test scores per learning rate after a fixed budget of epochs.

    python bench/lr_frozen_features.py                                   # CPU, small model (minutes)
    python bench/lr_frozen_features.py --cache cache/marketcalls.zarr --device cuda --epochs 40 --full-size

With ``--cache`` it sweeps a real cache instead (the paper's model sizes with ``--full-size``).
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

from tests.synthetic import SyntheticCall, write_synthetic_store  # noqa: E402 (a test fixture)
from train.config import TrainConfig  # noqa: E402
from train.loop import fit  # noqa: E402

RULE = {(0, 1): "A", (0, 0): "B", (1, 1): "C", (1, 0): "D", (2, 0): "E", (2, 1): "E"}


def cue_call(rng, index, n, shape):
    words, pitch = int(rng.integers(0, 3)), int(rng.integers(0, 2))
    call = SyntheticCall(
        label=RULE[(words, pitch)],
        audio=rng.standard_normal((n, shape.audio_frames, shape.audio_dim)),
        audio_len=rng.integers(shape.audio_frames // 2, shape.audio_frames + 1, n),
        text=rng.standard_normal((n, shape.text_tokens, shape.text_dim)),
        text_len=rng.integers(4, shape.text_tokens + 1, n),
    )
    cue_seg = int(rng.integers(0, n))  # the words are said in one segment; the voice is in all
    call.text[cue_seg, 1:4, 4 * words : 4 * words + 4] += 1.0
    call.audio[:, :, :4] += 0.5 * (2 * pitch - 1)
    return call


if __name__ == "__main__":
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--cache", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--lrs", default="1e-5,3e-5,1e-4,3e-4,1e-3")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--calls", type=int, default=300, help="synthetic calls (without --cache)")
    ap.add_argument(
        "--full-size", action="store_true", help="the paper's model sizes (default: small)"
    )
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="msmtfn-lr-"))
    cache = args.cache
    if cache is None:
        cache = str(tmp / "c.zarr")
        write_synthetic_store(
            cache,
            n_calls=args.calls,
            segments=(2, 5),
            audio_frames=40,
            audio_dim=64,
            text_tokens=16,
            text_dim=64,
            seed=0,
            fill=cue_call,
            split_fractions=(0.6, 0.2, 0.2),
        )
    sizes = (
        {}
        if args.full_size
        else dict(heads=4, ffn=256, head_hidden=128, gru_hidden=64, cross_layers=2)
    )
    print(
        f"{'lr':>8}  {'test 5-class acc':>17}  {'test 5-class mF1':>17}  {'test 2-class acc':>17}  "
        f"{'best epoch':>10}  {'s/run':>6}"
    )
    for lr in [float(x) for x in args.lrs.split(",")]:
        accs, f1s, acc2, best, secs = [], [], [], [], []
        for seed in range(args.seeds):
            t0 = time.perf_counter()
            m = fit(
                TrainConfig(
                    cache=cache,
                    out=str(tmp / f"lr{lr}-s{seed}"),
                    device=args.device,
                    lr=lr,
                    epochs=args.epochs,
                    patience=args.epochs,
                    seed=seed,
                    progress=False,
                    **sizes,
                )
            )
            secs.append(time.perf_counter() - t0)
            accs.append(m["test"]["5"]["accuracy"])
            f1s.append(m["test"]["5"]["macro_f1"])
            acc2.append(m["test"]["2"]["accuracy"])
            best.append(m["best_epoch"])
        print(
            f"{lr:>8.0e}  {100 * np.mean(accs):>8.1f} ± {100 * np.std(accs):>5.1f}  "
            f"{100 * np.mean(f1s):>8.1f} ± {100 * np.std(f1s):>5.1f}  "
            f"{100 * np.mean(acc2):>8.1f} ± {100 * np.std(acc2):>5.1f}  {np.mean(best):>10.1f}  {np.mean(secs):>6.1f}"
        )
    shutil.rmtree(tmp, ignore_errors=True)
