"""Training epoch of today's fusion network vs an earlier revision's, on the same MarketCalls-shape cache, in one
run; plus the FLOPs of one training step at the paper's widths (for the GPU command in docs/benchmarks.md).
Today's model is timed twice: as shipped (segments in length groups, train.model.MSMTFN.LENGTH_GROUPS) and with
every batch padded to its longest segment; the earlier model too, as it was and with today's CPU kernels (narrow
heads padded for the attention kernel, train.model.Attention.KERNEL_HEAD_DIM; dropout masks drawn as
train.model.Dropout draws them); so the ratio splits into the kernels' share, the architecture's and the
grouping's.

    python bench/fusion_speed.py --against 94dd25e --threads 1       # CPU, tiny widths (32), 877 calls
    python bench/fusion_speed.py --against 94dd25e --rounds 2        # the same, each model twice, alternating
    python bench/fusion_speed.py --flops-only                        # FLOPs per step at d = 768, no timing
    python bench/fusion_speed.py --short-segments                    # demo-length segments: groups or not
    python bench/fusion_speed.py --profile                           # where a training step's CPU time goes
    python bench/fusion_speed.py --splits                            # length groups: least-cost vs equal parts
    python bench/fusion_speed.py --head-width                        # 8-wide heads: as they are vs padded to 16
    python bench/fusion_speed.py --dropout                           # dropout masks: bernoulli_ vs uniform_ < keep

The earlier model is read from git (``git show REV:train/model.py``), so no old code lives in the tree. Both run
through the same ``fit`` (same data path, optimizer, evaluation); the cache is written once (random values in the
paper's row counts: 999 audio frames, 199 tokens; 3-6 segments per call; 80/10/10 split).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.synthetic import SyntheticCall, write_synthetic_store  # noqa: E402 (a test fixture)
from train import loop  # noqa: E402
from train.config import TrainConfig  # noqa: E402
from train.model import MSMTFN, Attention, Dropout, ModelDims, build_model  # noqa: E402

TINY = dict(heads=4, ffn=128, head_hidden=64, gru_hidden=32)


def previous_model_class(rev: str, todays_kernels: bool = False):
    """MSMTFN as train/model.py was at ``rev``; its config fields mapped from today's names. ``todays_kernels``:
    its attention computed as today's is (narrow heads padded for the CPU kernel) and its dropout masks drawn as
    today's are (train.model.Dropout): the same parameters and math, so that the ratio can be split into the
    kernels' share and the rest."""
    src = subprocess.run(
        ["git", "show", f"{rev}:train/model.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.replace("from .config import", "from train.config import")
    mod = types.ModuleType(f"model_{rev}{'_todays_kernels' if todays_kernels else ''}")
    sys.modules[mod.__name__] = mod  # dataclasses look their module up
    exec(compile(src, f"{rev}:train/model.py", "exec"), mod.__dict__)
    if todays_kernels:
        mod.Attention.forward, mod.Attention.KERNEL_HEAD_DIM = (
            Attention.forward,
            Attention.KERNEL_HEAD_DIM,
        )

    def build(cfg: TrainConfig, dims: ModelDims):
        d = cfg.d_model or dims.text_dim
        shim = types.SimpleNamespace(
            **{**cfg.to_dict(), "text_layers": cfg.text_branch_layers, "ffn": cfg.ffn or 4 * d}
        )
        shim.with_ = cfg.with_
        model = mod.MSMTFN(shim, dims)
        model.set_feature_stats = lambda *a: None  # that model had no input standardisation
        if todays_kernels:
            for m in model.modules():
                if type(m) is torch.nn.Dropout:
                    m.__class__ = Dropout
        return model

    return build


def timed_epoch(cache: Path, out: Path, cfg_kw: dict, builder=None) -> tuple[float, int]:
    original = loop.build_model
    if builder is not None:
        loop.build_model = builder
    try:
        m = loop.fit(TrainConfig(cache=str(cache), out=str(out), **cfg_kw))
    finally:
        loop.build_model = original
    return m["epoch_seconds"], sum(
        p.numel()
        for p in (builder or build_model)(
            TrainConfig(cache="x", **{k: v for k, v in cfg_kw.items() if k not in ("out",)}),
            ModelDims(32, 32, 199, {"5": 5, "4": 4, "3": 3, "2": 2}),
        ).parameters()
    )


def flops_per_step(batch_calls: int = 8, segments: int = 4) -> float:
    """FLOPs of one forward + backward at d = 768 on batch_calls calls of ``segments`` 40 s segments each."""
    from torch.utils.flop_counter import FlopCounterMode

    dims = ModelDims(768, 768, 199, {"5": 5, "4": 4, "3": 3, "2": 2})
    model = build_model(TrainConfig(cache="x", task="5", dropout=0.0), dims)
    s = batch_calls * segments
    audio, text = torch.randn(s, 999, 768), torch.randn(s, 199, 768)
    alen, tlen = torch.full((s,), 999), torch.full((s,), 199)
    counts = torch.full((batch_calls,), segments)
    with FlopCounterMode(display=False) as fc:
        out = model(audio, alen, text, tlen, counts)
        sum(v.sum() for v in out.values()).backward()
    return float(fc.get_total_flops())


def tiny_model() -> MSMTFN:
    """Today's model at the cache's tiny widths, in training mode, seeded."""
    torch.manual_seed(0)
    return build_model(
        TrainConfig(cache="-", task="5", **TINY),
        ModelDims(32, 32, 199, {"5": 5, "4": 4, "3": 3, "2": 2}),
    ).train()


def cache_like_batch(counts: torch.Tensor, generator: torch.Generator | None = None) -> tuple:
    """Model inputs for calls of ``counts`` segments with the cache's lengths: audio from a third of 999 frames
    up, text 2-199 tokens, width 32."""
    s = int(counts.sum())
    alen, tlen = (
        torch.randint(333, 1000, (s,), generator=generator),
        torch.randint(2, 200, (s,), generator=generator),
    )
    return (
        torch.randn(s, int(alen.max()), 32, generator=generator),
        alen,
        torch.randn(s, int(tlen.max()), 32, generator=generator),
        tlen,
        counts,
    )


def profile_step() -> None:
    """Self CPU time of one forward + backward by operator family, as shares of the step."""
    from torch.profiler import profile

    model = tiny_model()
    batch = cache_like_batch(torch.tensor([4, 5, 4, 5, 4, 5, 4, 5]))

    def step():
        sum(v.sum() for v in model(*batch).values()).backward()

    step()
    with profile() as prof:
        step()
    rows = prof.key_averages()
    total = sum(r.self_cpu_time_total for r in rows)
    families = {
        "attention (scaled_dot_product)": "scaled_dot_product",
        "dropout masks (bernoulli_, or uniform_ + lt_)": (
            "bernoulli",
            "aten::uniform_",
            "aten::lt_",
        ),
        "matrix products (mm, addmm, bmm)": ("aten::mm", "aten::addmm", "aten::bmm"),
    }
    for name, keys in families.items():
        keys = (keys,) if isinstance(keys, str) else keys
        share = sum(r.self_cpu_time_total for r in rows if any(k in r.key for k in keys)) / total
        print(f"{name}: {share:.0%} of the step's self CPU time")


def equal_parts_groups(self, audio_len, text_len, device_type: str):
    """The naive split (the first length-group rule): the sorted segments in k equal-size parts, k chosen by the
    same cost model; stands in for MSMTFN.length_groups in --splits."""
    most, overhead = MSMTFN.LENGTH_GROUPS[device_type]
    order = torch.argsort(text_len, stable=True)
    lens, other = text_len[order].double().numpy(), audio_len[order].double().numpy()
    best, best_cost = 1, len(lens) * lens[-1] * (other.max() + lens[-1])
    for k in range(2, min(most, len(lens)) + 1):
        cost = k * overhead + sum(
            len(p) * lens[p[-1]] * (other[p].max() + lens[p[-1]])
            for p in np.array_split(np.arange(len(lens)), k)
        )
        if cost < best_cost:
            best, best_cost = k, cost
    return None if best == 1 else list(order.tensor_split(best))


def alternating_steps(variants: dict, rounds: int = 4) -> dict[str, list[float]]:
    """Seconds of 12 training steps (forward + backward; batches of 8 calls with the cache's lengths) per round for
    each variant, a variant being a function that sets the model up (and returns what undoes it); the variants
    alternate within each round so that a drifting machine slows all alike."""
    model = tiny_model()
    g = torch.Generator().manual_seed(1)
    batches = [cache_like_batch(torch.randint(3, 7, (8,), generator=g), g) for _ in range(12)]

    def timed(setup) -> float:
        undo = setup()
        try:
            t0 = time.perf_counter()
            for b in batches:
                sum(v.sum() for v in model(*b).values()).backward()
            return time.perf_counter() - t0
        finally:
            undo()

    timed(next(iter(variants.values())))  # warm-up
    seconds = {name: [] for name in variants}
    for _ in range(rounds):
        for name, setup in variants.items():
            seconds[name].append(timed(setup))
    return seconds


def swap(owner, attr: str, value):
    """A variant: ``owner.attr = value`` until undone."""

    def setup():
        kept = getattr(owner, attr)
        setattr(owner, attr, value)
        return lambda: setattr(owner, attr, kept)

    return setup


def as_shipped():
    """A variant: the code as it is (nothing to undo)."""
    return lambda: None


def report(seconds: dict[str, list[float]], baseline: str, shipped: str, what: str) -> None:
    a, b = sum(seconds[baseline]), sum(seconds[shipped])
    print(
        f"12 training steps, {len(seconds[shipped])} alternating rounds: {baseline} {a:.1f} s, {shipped} "
        f"{b:.1f} s: {b / a:.3f}x the time ({what}); rounds "
        f"{[round(x, 2) for x in seconds[baseline]]} vs {[round(x, 2) for x in seconds[shipped]]}"
    )


def compare_splits() -> None:
    """Length groups: the least-cost split as shipped vs equal-size parts."""
    report(
        alternating_steps(
            {
                "equal-size parts": swap(MSMTFN, "length_groups", equal_parts_groups),
                "least-cost split (shipped)": as_shipped,
            }
        ),
        "equal-size parts",
        "least-cost split (shipped)",
        "length groups",
    )


def attention_by_head_width(reps: int = 3) -> None:
    """Forward + backward of one masked attention (16 segments, 4 heads, 200 queries over 1,000 keys) at each head
    width, as it is and zero-padded to wider heads: where the CPU kernel wants padding."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    mask = (torch.arange(1000)[None] < torch.randint(500, 1001, (16,), generator=g)[:, None])[
        :, None, None, :
    ]

    def seconds(hd: int, width: int) -> float:
        q, k, v = (
            torch.randn(16, 4, n, hd, generator=g, requires_grad=True) for n in (200, 1000, 1000)
        )

        def step():
            pad = (lambda t: F.pad(t, (0, width - hd))) if width > hd else (lambda t: t)
            F.scaled_dot_product_attention(pad(q), pad(k), pad(v), attn_mask=mask, scale=hd**-0.5)[
                ..., :hd
            ].sum().backward()

        step()
        t0 = time.perf_counter()
        for _ in range(reps):
            step()
        return (time.perf_counter() - t0) / reps

    for hd in (4, 8, 12, 16, 24, 32, 64):
        own = seconds(hd, hd)
        padded = ", ".join(f"to {w}: {own / seconds(hd, w):.2f}x" for w in (16, 32, 64) if w > hd)
        print(
            f"heads {hd:>2} wide: {own * 1e3:6.1f} ms{'; speed-up padded ' + padded if padded else ''}",
            flush=True,
        )


def compare_head_width() -> None:
    """Attention heads 8 wide (width 32, 4 heads) computed as they are vs zero-padded to 16 as shipped
    (train.model.Attention.KERNEL_HEAD_DIM); first the attention alone at each head width."""
    attention_by_head_width()
    report(
        alternating_steps(
            {
                "heads as they are": swap(Attention, "KERNEL_HEAD_DIM", {}),
                "heads padded to 16 (shipped)": as_shipped,
            }
        ),
        "heads as they are",
        "heads padded to 16 (shipped)",
        "attention head width",
    )


def compare_dropout(reps: int = 50) -> None:
    """Dropout masks drawn by torch's bernoulli_ (nn.Dropout) vs as uniform_ < keep (train.model.Dropout, shipped
    on CPU): the same distribution, a cheaper draw. First the two draws alone on a tensor the size of a group's
    FFN activations (36 segments x 100 rows x 128)."""
    x = torch.randn(36 * 100 * 128)
    draws = {
        "bernoulli_": lambda: torch.empty_like(x).bernoulli_(0.7),
        "uniform_ < keep": lambda: torch.empty_like(x).uniform_().lt_(0.7),
    }
    ns = {}
    for name, draw in draws.items():
        draw()
        t0 = time.perf_counter()
        for _ in range(reps):
            draw()
        ns[name] = (time.perf_counter() - t0) / reps / x.numel() * 1e9
    print(
        f"one mask of {x.numel():,} values: bernoulli_ {ns['bernoulli_']:.1f} ns a value, uniform_ < keep "
        f"{ns['uniform_ < keep']:.1f} ns: {ns['bernoulli_'] / ns['uniform_ < keep']:.2f}x faster",
        flush=True,
    )
    report(
        alternating_steps(
            {
                "bernoulli_ masks": swap(Dropout, "forward", torch.nn.Dropout.forward),
                "uniform_ < keep (shipped)": as_shipped,
            }
        ),
        "bernoulli_ masks",
        "uniform_ < keep (shipped)",
        "dropout mask",
    )


def short_segments(args) -> None:
    """Where grouping does not pay: the rule must leave such batches whole (train.model.MSMTFN.LENGTH_GROUPS)."""

    def fill(rng, index, n_segments, shape):
        return SyntheticCall(
            label="ABCDE"[int(rng.integers(0, 5))],
            audio=rng.standard_normal((n_segments, shape.audio_frames, 32), dtype=np.float32),
            audio_len=rng.integers(37, 62, size=n_segments),
            text=rng.standard_normal((n_segments, shape.text_tokens, 32), dtype=np.float32),
            text_len=rng.integers(4, 10, size=n_segments),
        )

    with tempfile.TemporaryDirectory(prefix="msmtfn-fusion-speed-") as tmp:
        cache = Path(tmp) / "short.zarr"
        write_synthetic_store(
            cache,
            calls=200,
            segments_per_call=(2, 5),
            seed=0,
            split_fractions=(0.8, 0.1, 0.1),
            audio_frames=61,
            audio_dim=32,
            text_tokens=48,
            text_dim=32,
            fill=fill,
        )
        kw = dict(
            device="cpu",
            epochs=3,
            patience=3,
            batch_calls=8,
            progress=False,
            plots=False,
            state_every=0,
            threads=args.threads,
            **TINY,
        )
        shipped, _ = timed_epoch(cache, Path(tmp) / "shipped", kw)
        rule, MSMTFN.LENGTH_GROUPS = MSMTFN.LENGTH_GROUPS, {"cpu": (9, 0)}
        try:
            forced, _ = timed_epoch(cache, Path(tmp) / "forced", kw)
        finally:
            MSMTFN.LENGTH_GROUPS = rule
        print(
            f"200 calls of ~1 s segments: epoch {shipped:.2f} s as shipped, {forced:.2f} s forced into up to 9 "
            f"length groups: grouping would be {forced / shipped:.2f}x slower"
        )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--against", default="94dd25e", help="git revision of the model to compare with"
    )
    ap.add_argument("--calls", type=int, default=877)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="time every model this many times, alternating (today's, the previous, ...), and report "
        "each round's ratio and that of the summed epochs: the machine's drift between models "
        "then cancels",
    )
    ap.add_argument("--flops-only", action="store_true")
    ap.add_argument(
        "--profile",
        action="store_true",
        help="only: torch.profiler shares of one training step of today's model (36 segments of the "
        "cache's lengths, width 32)",
    )
    ap.add_argument(
        "--splits",
        action="store_true",
        help="only: training steps with length groups from the least-cost split (shipped) vs "
        "equal-size parts",
    )
    ap.add_argument(
        "--head-width",
        action="store_true",
        help="only: training steps with 8-wide attention heads as they are vs zero-padded to 16 "
        "(shipped on CPU)",
    )
    ap.add_argument(
        "--dropout",
        action="store_true",
        help="only: training steps with dropout masks from torch's bernoulli_ vs uniform_ < keep "
        "(shipped on CPU)",
    )
    ap.add_argument(
        "--short-segments",
        action="store_true",
        help="only: the demo's segment lengths (~1 s: 37-61 frames, 4-9 tokens), today's model as "
        "shipped vs forced into 9 length groups",
    )
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error("--rounds must be 1 or more")
    torch.set_num_threads(args.threads)
    if args.short_segments:
        return short_segments(args)
    if args.profile:
        return profile_step()
    if args.splits:
        return compare_splits()
    if args.head_width:
        return compare_head_width()
    if args.dropout:
        return compare_dropout()
    flops = flops_per_step()
    print(
        f"one training step at d = 768 (8 calls x 4 segments of 40 s, forward + backward): {flops / 1e12:.2f} "
        "TFLOP (torch.utils.flop_counter)"
    )
    if args.flops_only:
        return
    with tempfile.TemporaryDirectory(prefix="msmtfn-fusion-speed-") as tmp:
        cache = Path(tmp) / "c.zarr"
        t0 = time.perf_counter()
        write_synthetic_store(
            cache,
            calls=args.calls,
            segments_per_call=(3, 6),
            seed=0,
            split_fractions=(0.8, 0.1, 0.1),
            audio_frames=999,
            audio_dim=32,
            text_tokens=199,
            text_dim=32,
        )
        print(
            f"cache of {args.calls} calls written in {time.perf_counter() - t0:.1f} s", flush=True
        )
        kw = dict(
            device="cpu",
            epochs=1,
            patience=1,
            batch_calls=8,
            progress=False,
            plots=False,
            state_every=0,
            threads=args.threads,
            **TINY,
        )
        sums = dict.fromkeys(("new", "padded", "old", "old_k"), 0.0)
        for r in range(
            1, args.rounds + 1
        ):  # each round times every model once: drift between rounds cancels
            tag = f" (round {r} of {args.rounds})" if args.rounds > 1 else ""
            new, n_new = timed_epoch(cache, Path(tmp) / f"new{r}", kw)
            print(
                f"today's model: epoch {new:.1f} s ({n_new / 1e6:.2f} M parameters){tag}",
                flush=True,
            )
            old, n_old = timed_epoch(
                cache, Path(tmp) / f"old{r}", kw, previous_model_class(args.against)
            )
            print(
                f"model at {args.against}: epoch {old:.1f} s ({n_old / 1e6:.2f} M parameters){tag}",
                flush=True,
            )
            grouped, MSMTFN.LENGTH_GROUPS = MSMTFN.LENGTH_GROUPS, {}
            try:
                padded, _ = timed_epoch(cache, Path(tmp) / f"padded{r}", kw)
            finally:
                MSMTFN.LENGTH_GROUPS = grouped
            print(
                f"today's model, each batch padded to its longest segment: epoch {padded:.1f} s{tag}",
                flush=True,
            )
            old_k, _ = timed_epoch(
                cache, Path(tmp) / f"old-k{r}", kw, previous_model_class(args.against, True)
            )
            print(
                f"model at {args.against} with today's CPU kernels (heads padded for attention, uniform dropout "
                f"masks): epoch {old_k:.1f} s{tag}",
                flush=True,
            )
            speedup(old, old_k, padded, new, args.threads, f"round {r}" if args.rounds > 1 else "")
            for k, v in (("new", new), ("padded", padded), ("old", old), ("old_k", old_k)):
                sums[k] += v
        if args.rounds > 1:
            speedup(
                sums["old"],
                sums["old_k"],
                sums["padded"],
                sums["new"],
                args.threads,
                f"all {args.rounds} rounds, summed",
            )


def speedup(old: float, old_k: float, padded: float, new: float, threads: int, what: str) -> None:
    print(
        f"speed-up{' (' + what + ')' if what else ''}: {old / new:.2f}x (same cache, same fit, {threads} "
        f"thread(s)) = kernels {old / old_k:.2f}x (on the previous model) x architecture {old_k / padded:.2f}x x "
        f"length groups {padded / new:.2f}x; against the previous model with today's kernels {old_k / new:.2f}x",
        flush=True,
    )


if __name__ == "__main__":
    main()
