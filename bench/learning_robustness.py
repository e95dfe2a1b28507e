"""Does the fused model learn a task that needs both modalities for every seed and schedule, and which design
choices make it so? The demo task (pipeline/datasets/demo.py: 5 classes, text cue x voice cue; text alone can
reach 60 %, audio alone 40 %), 200 calls, tiny random encoders, on CPU.

    python bench/learning_robustness.py                              # seeds 0-4 x 15/20/40 epochs, shipped model
    python bench/learning_robustness.py --variants all --seeds 0 1 2 --epochs 20
    python bench/learning_robustness.py --calls 160 --epochs 15 --variants shipped no-bottleneck \
        --settings '{"heads": 4, "ffn": 192, "lr": 1e-3, "dropout": 0.3, "cross_layers": 4}'

Variants (monkeypatched here, never switches in the product):
* ``shipped``; ``no-standardisation`` (raw cached features into the projections); ``no-gru-residual`` (call vector
  from the Bi-GRU alone); ``serial`` (the previous one-stream model, read from git); ``one-padded-batch`` (no
  length groups: the same model, another float rounding);
* the ablations ``no-bottleneck``, ``no-cross-attention``, ``text-only``, ``audio-only``, and
  ``no-bottleneck-3-text-layers`` (a depth control);
* the bottleneck designs tried against its slower learning (``BOTTLENECK_TRIALS``, docs/model.md);
* the paper's choices where ours differ: ``paper-batching`` (1 call per step, 4 accumulated), ``paper-lr``
  (1e-5), ``flatten-pooling``, ``cls-pooling``, ``post-ln`` (post-LN layers), ``relu`` (ReLU for every GELU),
  ``paper-stopping`` (the checkpoint of lowest validation loss: compare test5), and ``stride-2``, ``stride-4``
  (``--audio-stride``);
* ``radam``: RAdam (decoupled weight decay) in place of AdamW, against the large early steps the bottleneck
  suffers from (docs/model.md).

Prints per run the best validation 5-class accuracy over the epochs, the test accuracy of the checkpoint that
validation selected, and the first epoch whose validation accuracy reached --learned; writes --json. ``--paired
A.json B.json ...`` compares earlier runs seed by seed against A's first variant (mean difference, 95 % bootstrap
interval). Results: docs/model.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
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
from train.model import MSMTFN, BottleneckLayer, CrossModalLayer, SelfBlock, _masked_mean  # noqa: E402

# designs tried against the bottleneck's slower learning (docs/model.md), not in the product
BOTTLENECK_TRIALS = (
    "bn-sum-deltas",
    "bn-zero-init",
    "bn-from-second",
    "bn-mbt-readout",
    "bn-mbt-zero-init",
    "bn-text-before-exchange",
    "bn-plus-direct",
)
VARIANTS = (
    "shipped",
    "no-standardisation",
    "no-gru-residual",
    "serial",
    "no-bottleneck",
    "no-cross-attention",
    "text-only",
    "audio-only",
    "paper-batching",
    "paper-lr",
    "flatten-pooling",
    "cls-pooling",
    "stride-2",
    "stride-4",
    "one-padded-batch",
    "no-bottleneck-3-text-layers",
    "post-ln",
    "relu",
    "paper-stopping",
    "radam",
    *BOTTLENECK_TRIALS,
)
# variants that are plain settings of the shipped model (ablations a user can run)
SETTINGS = {
    "no-bottleneck": {"bottleneck": False},
    "no-cross-attention": {"cross_attention": False},
    "text-only": {"modality": "text"},
    "audio-only": {"modality": "audio"},
    # the paper's choices where ours differ: one call per step with 4 accumulated, lr 1e-5, pooling
    "paper-batching": {"batch_calls": 1, "grad_accum": 4},
    "paper-lr": {"lr": 1e-5},
    "flatten-pooling": {"pooling": "flatten"},
    "cls-pooling": {"pooling": "cls"},
    "stride-2": {"audio_stride": 2},
    "stride-4": {"audio_stride": 4},
    "no-bottleneck-3-text-layers": {"bottleneck": False, "text_branch_layers": 3},
}


def branches(model: MSMTFN, audio, alen, text, tlen):
    """The text branch, its mask and the cross-modal branch before the exchange, as the shipped model builds them
    (the same dropout draws in the same order)."""
    x, xv = model._stream(text, tlen, "text")
    a, av = model._stream(audio, alen, "audio")
    y = x
    for layer in model.second_branch:
        y = layer(y, xv, a, av)
    for layer in model.main_layers:
        x = layer(x, xv)
    return x, xv, y


def bottleneck_trial(variant: str, undo: list) -> None:
    """Monkeypatch one of BOTTLENECK_TRIALS: B ← B + both deltas (sum, not mean); the bottleneck layers' residual
    outputs zero-initialised (each starts as the identity); the final B from the second branch's update alone; the
    MBT readout (Nagrani et al.: pooled text branch + pooled second branch after the exchange, B not read); MBT +
    zero-init; the text branch read before the exchange (its tokens then only write B); the final B and the pooled
    cross-modal branch (before the exchange, as --no-bottleneck reads it) both joined to the pooled text branch."""

    def setattr_undo(obj, name, value):
        old = obj.__dict__[name]
        setattr(obj, name, value)
        undo.append(lambda: setattr(obj, name, old))

    layer_fwd = BottleneckLayer.forward
    if variant == "bn-sum-deltas":

        def fwd(self, x, xv, y, yv, b, last=False):
            x, y, mean = layer_fwd(self, x, xv, y, yv, b, last)
            return x, y, 2 * mean - b

        setattr_undo(BottleneckLayer, "forward", fwd)
    if variant in ("bn-zero-init", "bn-mbt-zero-init"):
        init = MSMTFN.__init__

        def zero_init(self, cfg, dims):
            init(self, cfg, dims)
            for layer in getattr(self.fusion, "layers", []):
                for block in (layer.text, layer.second):
                    for lin in (block.att.o, block.ff[3]):
                        torch.nn.init.zeros_(lin.weight)
                        torch.nn.init.zeros_(lin.bias)

        setattr_undo(MSMTFN, "__init__", zero_init)
    if variant == "bn-from-second":

        def fwd(self, x, xv, y, yv, b, last=False):
            if not last:
                return layer_fwd(self, x, xv, y, yv, b, last)
            nb = b.shape[1]
            ones = torch.ones(b.shape[:2], dtype=torch.bool, device=b.device)
            x = self.text(torch.cat([x, b], 1), torch.cat([xv, ones], 1))[:, :-nb]
            return (
                x,
                None,
                self.second(torch.cat([y, b], 1), torch.cat([yv, ones], 1), last_rows=nb),
            )

        setattr_undo(BottleneckLayer, "forward", fwd)
    if variant == "bn-plus-direct":
        init = MSMTFN.__init__

        def wider_join(self, cfg, dims):
            init(self, cfg, dims)
            if cfg.fusion == "bottleneck":
                self.join = torch.nn.Sequential(
                    torch.nn.Linear(3 * self.d, self.d), torch.nn.GELU()
                )
                self.direct_norm = torch.nn.LayerNorm(self.d)

        setattr_undo(MSMTFN, "__init__", wider_join)

        def seg_direct(self, audio, alen, text, tlen):
            x, xv, y = branches(self, audio, alen, text, tlen)
            direct = _masked_mean(self.direct_norm(y), xv)
            b, n = self.fusion.tokens.expand(x.shape[0], -1, -1), len(self.fusion.layers)
            for i, layer in enumerate(self.fusion.layers):
                x, y, b = layer_fwd(layer, x, xv, y, xv, b, last=i == n - 1)
            v = self.pool(self.final_norm(x), xv)
            return self.seg_drop(self.join(torch.cat([v, self.fusion.norm(b).mean(1), direct], 1)))

        setattr_undo(MSMTFN, "_segment_vectors", seg_direct)
    if variant in ("bn-mbt-readout", "bn-mbt-zero-init", "bn-text-before-exchange"):

        def seg(self, audio, alen, text, tlen):
            x, xv, y = branches(self, audio, alen, text, tlen)
            before, b = x, self.fusion.tokens.expand(x.shape[0], -1, -1)
            n = len(self.fusion.layers)
            for i, layer in enumerate(self.fusion.layers):
                x, y, b = layer_fwd(
                    layer, x, xv, y, xv, b, last=i == n - 1 and variant == "bn-text-before-exchange"
                )
            if variant == "bn-text-before-exchange":
                v, other = self.pool(self.final_norm(before), xv), self.fusion.norm(b).mean(1)
            else:
                v, other = self.pool(self.final_norm(x), xv), _masked_mean(self.fusion.norm(y), xv)
            return self.seg_drop(self.join(torch.cat([v, other], 1)))

        setattr_undo(MSMTFN, "_segment_vectors", seg)


def paired(paths: list[str], resamples: int = 10_000) -> None:
    """Each variant of the --json files against the first file's first variant, paired by seed (and epochs): the
    mean difference of best val5 and test5 with a 95 % bootstrap interval over the shared seeds."""

    def runs(rows, variant):
        return {(r["epochs"], r["seed"]): r for r in rows if r["variant"] == variant}

    first = json.loads(Path(paths[0]).read_text())
    base_name = first[0]["variant"]
    base = runs(first, base_name)
    rng = np.random.default_rng(0)
    print(
        f"against {Path(paths[0]).name}:{base_name}, paired by seed (95 % bootstrap interval, {resamples} "
        "resamples)"
    )
    for path in paths:
        rows = json.loads(Path(path).read_text())
        for variant in dict.fromkeys(r["variant"] for r in rows):
            these = runs(rows, variant)
            keys = sorted(set(these) & set(base))
            if not keys:
                continue
            cells = []
            for k in ("best_val5", "test5"):
                mine = np.array([these[key][k] for key in keys])
                diff = mine - np.array([base[key][k] for key in keys])
                boot = diff[rng.integers(0, len(keys), (resamples, len(keys)))].mean(1)
                lo, hi = np.percentile(boot, [2.5, 97.5])
                cells.append(f"{k} {mine.mean():.3f} ({diff.mean():+.3f} [{lo:+.3f}, {hi:+.3f}])")
            learned = sum(these[key]["learned_at"] is not None for key in keys)
            settings = json.dumps(rows[0].get("settings", {})) if rows[0].get("settings") else ""
            print(
                f"{Path(path).name}:{variant} {settings}: {'; '.join(cells)}; learned {learned}/{len(keys)}"
            )


def demo_cache(work: Path, calls: int) -> Path:
    a, t = build_tiny_encoders(work / "tiny-encoders")
    cache = work / f"demo{calls}.zarr"
    extract(
        ExtractConfig(
            dataset="demo",
            data_dir=str(work / f"data{calls}"),
            out=str(cache),
            audio_model=str(a),
            text_model=str(t),
            device="cpu",
            num_workers=0,
            dataset_options={"n_calls": calls},
            max_text_tokens=48,
        ),
        progress=False,
    )
    return cache


class patched:
    """Apply one variant's change for the duration of a run."""

    def __init__(self, variant: str, against: str):
        self.variant, self.against, self.undo = variant, against, []

    def __enter__(self):
        if self.variant == "no-standardisation":
            orig = loop.feature_stats
            loop.feature_stats = lambda store, rows, m, **kw: tuple(
                np.array(x) * 0 + i for i, x in enumerate(orig(store, rows, m, **kw))
            )
            self.undo.append(lambda: setattr(loop, "feature_stats", orig))
        elif self.variant == "no-gru-residual":
            orig = MSMTFN.call_vectors

            def gru_only(model, seg, counts):
                padded = torch.nn.utils.rnn.pad_sequence(
                    list(torch.split(seg, counts.tolist())), batch_first=True
                )
                mask = (torch.arange(padded.shape[1])[None, :] < counts[:, None])[..., None]
                residual = (padded * mask).sum(1) / counts[:, None].to(padded.dtype)
                return orig(model, seg, counts) - (residual if model.cfg.bigru else 0)

            MSMTFN.call_vectors = gru_only
            self.undo.append(lambda: setattr(MSMTFN, "call_vectors", orig))
        elif (
            self.variant == "post-ln"
        ):  # the paper's (BERT's) layers: normalise after each residual sum
            block_fwd, cross_fwd = SelfBlock.forward, CrossModalLayer.forward

            def block(self, x, valid, last_rows=0):
                q = x[:, -last_rows:] if last_rows else x
                x = self.n1(q + self.drop(self.att(q, x, valid)))
                return self.n2(x + self.drop(self.ff(x)))

            def cross(self, x, x_valid, audio, audio_valid):
                return self.block(
                    self.nq(x + self.drop(self.cross(x, audio, audio_valid))), x_valid
                )

            SelfBlock.forward, CrossModalLayer.forward = block, cross
            self.undo.append(
                lambda: (
                    setattr(SelfBlock, "forward", block_fwd),
                    setattr(CrossModalLayer, "forward", cross_fwd),
                )
            )
        elif self.variant == "relu":  # ReLU wherever the model has GELU (FFN, joins, heads)
            init = MSMTFN.__init__

            def relu_init(model, cfg, dims):
                init(model, cfg, dims)
                for mod in list(model.modules()):
                    for name, child in list(mod.named_children()):
                        if isinstance(child, torch.nn.GELU):
                            setattr(mod, name, torch.nn.ReLU())

            MSMTFN.__init__ = relu_init
            self.undo.append(lambda: setattr(MSMTFN, "__init__", init))
        elif self.variant == "paper-stopping":  # the checkpoint with the lowest validation loss
            score = loop.selection_score
            loop.selection_score = lambda m, selection, loss: (-loss,)
            self.undo.append(lambda: setattr(loop, "selection_score", score))
        elif (
            self.variant == "radam"
        ):  # RAdam (decoupled weight decay) for AdamW: early steps rectified
            adamw = torch.optim.AdamW
            torch.optim.AdamW = lambda params, **kw: torch.optim.RAdam(
                params, decoupled_weight_decay=True, **kw
            )
            self.undo.append(lambda: setattr(torch.optim, "AdamW", adamw))
        elif self.variant in BOTTLENECK_TRIALS:
            bottleneck_trial(self.variant, self.undo)
        elif self.variant == "one-padded-batch":
            groups, MSMTFN.LENGTH_GROUPS = MSMTFN.LENGTH_GROUPS, {}
            self.undo.append(lambda: setattr(MSMTFN, "LENGTH_GROUPS", groups))
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
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--work", default="/tmp/msmtfn-learning", help="data, encoders and cache (reused)"
    )
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--epochs", type=int, nargs="+", default=[15, 20, 40])
    ap.add_argument("--lr", type=float, default=TINY_SIZES["lr"])
    ap.add_argument(
        "--variants", nargs="+", default=["shipped"], help=f"any of {', '.join(VARIANTS)} or all"
    )
    ap.add_argument("--against", default="94dd25e", help="git revision of the serial model")
    ap.add_argument(
        "--settings",
        type=json.loads,
        default={},
        help='JSON of training settings over the demo sizes, e.g. \'{"lr": 1e-3, "dropout": 0.3}\'',
    )
    ap.add_argument(
        "--learned",
        type=float,
        default=0.8,
        help="validation 5-class accuracy that counts as learned",
    )
    ap.add_argument("--json", default=None)
    ap.add_argument(
        "--paired",
        nargs="+",
        metavar="JSON",
        default=None,
        help="only: compare the --json files of earlier runs, seed by seed, against the first file's "
        "first variant",
    )
    args = ap.parse_args()
    if args.paired:
        return paired(args.paired)
    variants = VARIANTS if args.variants == ["all"] else args.variants
    torch.set_num_threads(1)
    work = Path(args.work)
    cache = demo_cache(work, args.calls)
    rows = []
    print(
        f"{'variant':<20}{'epochs':>7}{'seed':>5}{'best val5':>10}{'test5':>7}{'learned@':>9}{'s':>7}",
        flush=True,
    )
    for variant in variants:
        for epochs in args.epochs:
            for seed in args.seeds:
                t0 = time.perf_counter()
                out = work / "runs" / f"{variant}-c{args.calls}-e{epochs}-s{seed}"
                shutil.rmtree(
                    out, ignore_errors=True
                )  # a scratch run of this script, maybe other settings
                with patched(variant, args.against):
                    m = loop.fit(
                        TrainConfig(
                            cache=str(cache),
                            out=str(out),
                            device="cpu",
                            epochs=epochs,
                            patience=epochs,
                            seed=seed,
                            progress=False,
                            plots=False,
                            state_every=0,
                            threads=1,
                            **{
                                **TINY_SIZES,
                                "lr": args.lr,
                                "batch_calls": 8,
                                **args.settings,
                                **SETTINGS.get(variant, {}),
                            },
                        )
                    )
                hist = list(csv.DictReader(open(out / "history.csv")))
                val = [float(h["val_5_accuracy"]) for h in hist]
                reached = next((i + 1 for i, v in enumerate(val) if v >= args.learned), None)
                row = {
                    "variant": variant,
                    "epochs": epochs,
                    "seed": seed,
                    "best_val5": max(val),
                    "test5": m["test"]["5"]["accuracy"],
                    "learned_at": reached,
                    "settings": args.settings,
                    "seconds": time.perf_counter() - t0,
                }
                rows.append(row)
                print(
                    f"{variant:<20}{epochs:>7}{seed:>5}{row['best_val5']:>10.3f}{row['test5']:>7.3f}"
                    f"{str(reached or '-'):>9}{row['seconds']:>7.1f}",
                    flush=True,
                )
    print("\nsummary (mean over seeds)")
    for variant in variants:
        for epochs in args.epochs:
            sel = [r for r in rows if r["variant"] == variant and r["epochs"] == epochs]
            ok = sum(r["learned_at"] is not None for r in sel)
            print(
                f"{variant:<20} {epochs:>3} epochs: best val5 {np.mean([r['best_val5'] for r in sel]):.3f}, "
                f"test5 {np.mean([r['test5'] for r in sel]):.3f}, learned in {ok}/{len(sel)} seeds"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
