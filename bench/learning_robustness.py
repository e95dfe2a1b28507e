"""Does the fused model learn a task that needs both modalities for every seed and schedule, and which design
choices make it so? The demo task (pipeline/datasets/demo.py: 5 classes, text cue x voice cue; text alone can
reach 60 %, audio alone 40 %), 200 calls, tiny random encoders, on CPU.

    python bench/learning_robustness.py                              # seeds 0-4 x 15/20/40 epochs, shipped model
    python bench/learning_robustness.py --variants all --seeds 0 1 2 --epochs 20

Variants (monkeypatched here, never switches in the product): ``shipped``; ``no-standardisation`` (raw cached
features into the projections); ``no-gru-residual`` (call vector from the Bi-GRU alone); ``serial`` (the previous
one-stream model, read from git); and the ablations ``no-bottleneck``, ``no-cross-attention``, ``text-only``,
``audio-only``, and the paper's choices where ours differ: ``paper-batching`` (1 call per step, 4
accumulated), ``paper-lr`` (1e-5), ``flatten-pooling``, ``cls-pooling`` (plain settings). Prints per run the best validation 5-class accuracy, its test accuracy and
the first epoch whose validation accuracy reached --learned; writes --json. Results: docs/model.md.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from extract import ExtractConfig, build_tiny_encoders, extract  # noqa: E402
from predict.demo import TINY_SIZES  # noqa: E402
from train import loop  # noqa: E402
from train.config import TrainConfig  # noqa: E402
from train.model import MSMTFN  # noqa: E402

VARIANTS = ("shipped", "no-standardisation", "no-gru-residual", "serial", "no-bottleneck", "no-cross-attention",
            "text-only", "audio-only", "paper-batching", "paper-lr", "flatten-pooling", "cls-pooling")
# variants that are plain settings of the shipped model (ablations a user can run)
SETTINGS = {"no-bottleneck": {"bottleneck": False}, "no-cross-attention": {"cross_attention": False},
            "text-only": {"modality": "text"}, "audio-only": {"modality": "audio"},
            # the paper's choices where ours differ: one call per step with 4 accumulated, lr 1e-5, pooling
            "paper-batching": {"batch_calls": 1, "grad_accum": 4}, "paper-lr": {"lr": 1e-5},
            "flatten-pooling": {"pooling": "flatten"}, "cls-pooling": {"pooling": "cls"}}


def demo_cache(work: Path, calls: int) -> Path:
    a, t = build_tiny_encoders(work / "tiny-encoders")
    cache = work / f"demo{calls}.zarr"
    extract(ExtractConfig(dataset="demo", data_dir=str(work / f"data{calls}"), out=str(cache), audio_model=str(a),
                          text_model=str(t), device="cpu", num_workers=0, dataset_options={"n_calls": calls},
                          max_text_tokens=48), progress=False)
    return cache


class patched:
    """Apply one variant's change for the duration of a run."""

    def __init__(self, variant: str, against: str):
        self.variant, self.against, self.undo = variant, against, []

    def __enter__(self):
        if self.variant == "no-standardisation":
            orig = loop.feature_stats
            loop.feature_stats = lambda store, rows, m, **kw: tuple(np.array(x) * 0 + i for i, x in
                                                                  enumerate(orig(store, rows, m, **kw)))
            self.undo.append(lambda: setattr(loop, "feature_stats", orig))
        elif self.variant == "no-gru-residual":
            orig = MSMTFN.call_vectors

            def gru_only(model, seg, counts):
                padded = torch.nn.utils.rnn.pad_sequence(list(torch.split(seg, counts.tolist())), batch_first=True)
                mask = (torch.arange(padded.shape[1])[None, :] < counts[:, None])[..., None]
                residual = (padded * mask).sum(1) / counts[:, None].to(padded.dtype)
                return orig(model, seg, counts) - (residual if model.cfg.bigru else 0)
            MSMTFN.call_vectors = gru_only
            self.undo.append(lambda: setattr(MSMTFN, "call_vectors", orig))
        elif self.variant == "serial":
            from fusion_speed import previous_model_class
            orig = loop.build_model
            loop.build_model = previous_model_class(self.against)
            self.undo.append(lambda: setattr(loop, "build_model", orig))
        return self

    def __exit__(self, *exc):
        for f in reversed(self.undo):
            f()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/msmtfn-learning", help="data, encoders and cache (reused)")
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--epochs", type=int, nargs="+", default=[15, 20, 40])
    ap.add_argument("--lr", type=float, default=TINY_SIZES["lr"])
    ap.add_argument("--variants", nargs="+", default=["shipped"], help=f"any of {', '.join(VARIANTS)} or all")
    ap.add_argument("--against", default="94dd25e", help="git revision of the serial model")
    ap.add_argument("--learned", type=float, default=0.8, help="validation 5-class accuracy that counts as learned")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    variants = VARIANTS if args.variants == ["all"] else args.variants
    torch.set_num_threads(1)
    work = Path(args.work)
    cache = demo_cache(work, args.calls)
    rows = []
    print(f"{'variant':<20}{'epochs':>7}{'seed':>5}{'best val5':>10}{'test5':>7}{'learned@':>9}{'s':>7}", flush=True)
    for variant in variants:
        for epochs in args.epochs:
            for seed in args.seeds:
                t0 = time.perf_counter()
                out = work / "runs" / f"{variant}-e{epochs}-s{seed}"
                with patched(variant, args.against):
                    m = loop.fit(TrainConfig(cache=str(cache), out=str(out), device="cpu", epochs=epochs,
                                             patience=epochs, seed=seed, progress=False,
                                             plots=False, state_every=0, threads=1,
                                             **{**TINY_SIZES, "lr": args.lr, "batch_calls": 8,
                                                **SETTINGS.get(variant, {})}))
                hist = list(csv.DictReader(open(out / "history.csv")))
                val = [float(h["val_5_accuracy"]) for h in hist]
                reached = next((i + 1 for i, v in enumerate(val) if v >= args.learned), None)
                row = {"variant": variant, "epochs": epochs, "seed": seed, "best_val5": max(val),
                       "test5": m["test"]["5"]["accuracy"], "learned_at": reached,
                       "seconds": time.perf_counter() - t0}
                rows.append(row)
                print(f"{variant:<20}{epochs:>7}{seed:>5}{row['best_val5']:>10.3f}{row['test5']:>7.3f}"
                      f"{str(reached or '-'):>9}{row['seconds']:>7.1f}", flush=True)
    print("\nsummary (mean over seeds)")
    for variant in variants:
        for epochs in args.epochs:
            sel = [r for r in rows if r["variant"] == variant and r["epochs"] == epochs]
            ok = sum(r["learned_at"] is not None for r in sel)
            print(f"{variant:<20} {epochs:>3} epochs: best val5 {np.mean([r['best_val5'] for r in sel]):.3f}, "
                  f"test5 {np.mean([r['test5'] for r in sel]):.3f}, learned in {ok}/{len(sel)} seeds")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
