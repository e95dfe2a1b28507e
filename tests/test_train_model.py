"""Stage 2 model on CPU: audio really reaches the output (the paper's public code fails this), every ablation flag
changes the computation as claimed, cross-modal layers are chained, calls of any length batch exactly, and training
and metrics share one label map."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from synthetic import write_synthetic_store

from pipeline.labels import MARKETCALLS
from train.config import ConfigError, TrainConfig
from train.data import CallData
from train.metrics import all_task_metrics
from train.model import MSMTFN, Attention, Dropout, ModelDims, audio_path_problem, build_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


SMALL = dict(
    d_model=32,
    heads=4,
    ffn=64,
    gru_hidden=16,
    head_hidden=32,
    cross_layers=2,
    bottleneck_layers=2,
    dropout=0.1,
    progress=False,
    device="cpu",
)
DIMS = ModelDims(audio_dim=16, text_dim=24, text_tokens=8, tasks={"5": 5, "4": 4, "3": 3, "2": 2})


def small(cache="unused", **kw) -> TrainConfig:
    return TrainConfig(cache=str(cache), **{**SMALL, **kw})


def inputs(counts: list[int], seed: int = 0, frames: int = 20):
    g = torch.Generator().manual_seed(seed)
    s = sum(counts)
    audio = torch.randn(s, frames, DIMS.audio_dim, generator=g)
    text = torch.randn(s, DIMS.text_tokens, DIMS.text_dim, generator=g)
    alen = torch.randint(frames // 2, frames + 1, (s,), generator=g)
    tlen = torch.randint(3, DIMS.text_tokens + 1, (s,), generator=g)
    return audio, alen, text, tlen, torch.tensor(counts)


def model_for(**kw):
    torch.manual_seed(0)
    return build_model(small(**kw), DIMS).eval()


# ---------------------------------------------------------- audio matters
@pytest.mark.parametrize(
    "variant",
    [
        {},
        {"cross_attention": False},
        {"bottleneck": False},
        {"pooling": "cls"},
        {"pooling": "flatten"},
        {"bigru": False},
    ],
)
def test_audio_reaches_the_output(variant):
    model = model_for(**variant)
    audio, alen, text, tlen, counts = inputs([2, 3, 1])
    audio.requires_grad_(True)
    logits = model(audio, alen, text, tlen, counts)
    sum(v.sum() for v in logits.values()).backward()
    assert audio.grad is not None and audio.grad.abs().sum() > 0, (
        "gradient to audio must be non-zero"
    )
    with torch.no_grad():
        before = model(audio, alen, text, tlen, counts)
        swapped = audio.detach().clone()
        swapped[:2] = torch.randn_like(swapped[:2])  # call 0's two segments get other audio
        after = model(swapped, alen, text, tlen, counts)
    for t in before:
        assert (before[t][0] - after[t][0]).abs().max() > 1e-4, (
            "swapping a call's audio must change its logits"
        )
        torch.testing.assert_close(
            before[t][1:], after[t][1:], rtol=1e-5, atol=1e-6
        )  # other calls untouched


def test_text_only_ignores_audio_and_audio_only_ignores_text():
    model = model_for(modality="text")
    audio, alen, text, tlen, counts = inputs([2, 3])
    with torch.no_grad():
        a = model(audio, alen, text, tlen, counts)
        b = model(torch.randn_like(audio), alen, text, tlen, counts)
        c = model(audio, alen, torch.randn_like(text), tlen, counts)
    for t in a:
        assert torch.equal(a[t], b[t]), "text-only: audio must change nothing"
        assert not torch.equal(a[t], c[t])
    model = model_for(modality="audio")
    with torch.no_grad():
        a = model(audio, alen, text, tlen, counts)
        b = model(audio, alen, torch.randn_like(text), tlen, counts)
        c = model(torch.randn_like(audio), alen, text, tlen, counts)
    for t in a:
        assert torch.equal(a[t], b[t]) and not torch.equal(a[t], c[t])


# -------------------------------------------------------------- ablations
def _names(model) -> set[str]:
    return {n for n, _ in model.named_parameters()}


def test_ablation_flags_change_the_architecture_as_claimed():
    full = _names(model_for())
    assert (
        any(".cross." in n for n in full)
        and "fusion.tokens" in full
        and any(n.startswith("gru.") for n in full)
    )
    assert any(n.startswith("fusion.layers.1.text.") for n in full) and any(
        n.startswith("join.") for n in full
    )
    no_x = _names(model_for(cross_attention=False))
    # the second branch is the audio itself: self-attention + FFN layers, no cross-attention sub-layers
    assert not any(".cross." in n for n in no_x) and any(
        n.startswith("second_branch.0.att.") for n in no_x
    )
    no_b = _names(model_for(bottleneck=False))
    assert not any(n.startswith(("fusion.tokens", "fusion.layers")) for n in no_b) and any(
        n.startswith("second_branch.1.cross.") for n in no_b
    )
    assert not any(n.startswith("gru.") for n in _names(model_for(bigru=False)))
    assert set(model_for(mtl=False, task="3").heads) == {"3"} and set(model_for().heads) == {
        "5",
        "4",
        "3",
        "2",
    }
    text_only = _names(model_for(modality="text"))
    assert not any("audio" in n or "second" in n or "fusion" in n for n in text_only)
    audio_only = _names(model_for(modality="audio"))
    assert not any("text" in n for n in audio_only)
    assert "pool.weight" in _names(model_for(pooling="flatten"))
    assert not any(n.startswith("pool.") for n in full | _names(model_for(pooling="cls")))
    # both ablations at once still fuse: the pooled audio branch joins the text branch
    assert "join.0.weight" in _names(model_for(cross_attention=False, bottleneck=False))


def test_two_branches_start_from_the_same_projected_text_and_audio_enters_only_the_second():
    """The text branch's own layers never see audio (audio reaches it only through B), and the cross-modal branch
    starts from the same [CLS; text] as the text branch."""
    model = model_for()
    audio, alen, text, tlen, counts = inputs([2])
    seen = {}

    def grab(name):
        def hook(module, args):
            seen[name] = args[0].clone()

        return hook

    hooks = [
        model.main_layers[0].register_forward_pre_hook(grab("text")),
        model.second_branch[0].register_forward_pre_hook(grab("cross")),
    ]
    with torch.no_grad():
        model(audio, alen, text, tlen, counts)
    torch.testing.assert_close(seen["text"], seen["cross"])
    seen.clear()
    with torch.no_grad():
        model(torch.randn_like(audio), alen, text, tlen, counts)
    for h in hooks:
        h.remove()
    torch.testing.assert_close(seen["text"], seen["cross"])


def test_cross_layers_are_chained():
    """Each cross-modal layer takes the previous one's output: removing layer 0's effect changes layer 1's input."""
    model = model_for()
    audio, alen, text, tlen, counts = inputs([2])
    seen = []
    hook = model.second_branch[1].register_forward_pre_hook(
        lambda m, args: seen.append(args[0].clone())
    )
    with torch.no_grad():
        model(audio, alen, text, tlen, counts)
        for p in model.second_branch[0].parameters():
            p.mul_(0.0)  # layer 0 becomes the identity (residual only)
        model(audio, alen, text, tlen, counts)
    hook.remove()
    assert not torch.allclose(seen[0], seen[1])


def test_bottleneck_tokens_are_updated_by_both_branches_in_every_layer():
    """B after a layer is the mean of the text branch's and the second branch's updates of it, and the next layer
    (and the segment vector) reads that new B, not the learned initial tokens."""
    model = model_for()
    audio, alen, text, tlen, counts = inputs([2])
    got = []

    def grab(module, args, out):
        got.append((args[4].clone(), out[2].clone()))

    hooks = [layer.register_forward_hook(grab) for layer in model.fusion.layers]
    with torch.no_grad():
        model(audio, alen, text, tlen, counts)
    (b_in0, b_out0), (b_in1, b_out1) = got
    torch.testing.assert_close(b_in0, model.fusion.tokens.detach().expand_as(b_in0))
    torch.testing.assert_close(b_in1, b_out0)  # chained through B
    assert not torch.allclose(b_out0, b_in0, atol=1e-4) and not torch.allclose(
        b_out1, b_in1, atol=1e-4
    )
    # the second branch's share: other audio gives another B
    got.clear()
    with torch.no_grad():
        model(torch.randn_like(audio), alen, text, tlen, counts)
    for h in hooks:
        h.remove()
    assert not torch.allclose(got[0][1], b_out0, atol=1e-5)


# every combination of the fusion flags and layer counts a user can type; see audio_path_problem
GRID = [
    dict(
        cross_attention=x, bottleneck=b, cross_layers=c, bottleneck_layers=bl, text_branch_layers=t
    )
    for x in (True, False)
    for b in (True, False)
    for c in (0, 1, 2)
    for bl in ((0, 1, 2) if b else (2,))
    for t in (0, 1)
]


def _id(kw):
    return (
        f"{'x' if kw['cross_attention'] else 'nox'}{kw['cross_layers']}-"
        f"{'b' if kw['bottleneck'] else 'nob'}{kw['bottleneck_layers'] if kw['bottleneck'] else ''}-"
        f"t{kw['text_branch_layers']}"
    )


@pytest.mark.parametrize("kw", GRID, ids=_id)
def test_every_accepted_both_model_sends_audio_to_every_head_and_trains_every_parameter(kw):
    torch.manual_seed(0)
    cfg = small(**kw)
    model = build_model(cfg, DIMS, check_audio_path=False).eval()
    # full lengths: no padding row, so every activation row must reach the loss
    audio, alen, text, tlen, counts = inputs([2, 1])
    alen, tlen = torch.full_like(alen, audio.shape[1]), torch.full_like(tlen, text.shape[1])
    audio.requires_grad_(True)
    out = model(audio, alen, text, tlen, counts)
    per_head = {}
    for t, v in out.items():
        g = torch.autograd.grad(v.sum(), audio, retain_graph=True, allow_unused=True)[0]
        per_head[t] = 0.0 if g is None else g.abs().sum().item()
    problem = audio_path_problem(cfg)
    if problem:
        assert all(g == 0 for g in per_head.values()), (problem, per_head)
        with pytest.raises(ConfigError, match="--modality both: "):
            build_model(cfg, DIMS)
        return
    assert all(g > 0 for g in per_head.values()), per_head
    # no activation computed for nothing: every row of every sequence-shaped module output gets a gradient
    grads = {}

    def keep(name):
        def hook(module, args, output):
            for j, o in enumerate(output if isinstance(output, tuple) else (output,)):
                if isinstance(o, torch.Tensor) and o.dim() == 3 and o.requires_grad:
                    o.register_hook(lambda g, key=f"{name}[{j}]": grads.__setitem__(key, g))

        return hook

    hooks = [
        m.register_forward_hook(keep(n))
        for n, m in model.named_modules()
        if n and not isinstance(m, (torch.nn.GRU, torch.nn.ModuleList, torch.nn.ModuleDict))
    ]
    model.zero_grad()
    out = model(audio, alen, text, tlen, counts)
    sum(v.sum() for v in out.values()).backward()
    for h in hooks:
        h.remove()
    dead = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not dead, f"parameters without a gradient: {dead}"
    dead_rows = {
        k: int((g.abs().sum(-1) == 0).sum())
        for k, g in grads.items()
        if (g.abs().sum(-1) == 0).any()
    }
    assert not dead_rows, f"activations computed but never reaching the loss: {dead_rows}"
    assert grads, "the hooks saw no activations"


@pytest.mark.parametrize(
    "kw",
    [
        dict(pooling="flatten"),
        dict(pooling="cls"),
        dict(bigru=False),
        dict(mtl=False, task="2"),
        dict(level="segment"),
    ],
    ids=str,
)
def test_audio_reaches_every_head_under_other_settings(kw):
    dims = DIMS if "level" not in kw else ModelDims(**{**DIMS.__dict__, "level": kw.pop("level")})
    torch.manual_seed(0)
    model = build_model(small(**kw), dims).eval()
    audio, alen, text, tlen, counts = inputs([2, 3])
    audio.requires_grad_(True)
    out = model(audio, alen, text, tlen, counts)
    for t, v in out.items():
        g = torch.autograd.grad(v.sum(), audio, retain_graph=True)[0]
        assert g.abs().sum() > 0, t


def test_refused_settings_exit_2_with_one_line(tmp_path):
    from click.testing import CliRunner

    from train.cli import main as train_cli

    store = write_synthetic_store(tmp_path / "c.zarr", calls=10, seed=1)
    for args, named in (
        (["--cross-layers", "0"], "--cross-layers"),
        (["--bottleneck-layers", "0"], "--bottleneck-layers"),
        (["--audio-stride", "0"], "audio_stride"),
    ):
        r = CliRunner().invoke(
            train_cli, ["--cache", str(store.path), "--out", str(tmp_path / "r"), *args]
        )
        assert r.exit_code == 2, r.output
        lines = [ln for ln in r.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and named in lines[0], r.output
    assert not (tmp_path / "r").exists(), "nothing is written for refused settings"


def test_without_bigru_segment_order_does_not_matter_with_it_does():
    audio, alen, text, tlen, counts = inputs([4])
    perm = torch.tensor([2, 0, 3, 1])
    for bigru, same in ((False, True), (True, False)):
        model = model_for(bigru=bigru)
        with torch.no_grad():
            a = model(audio, alen, text, tlen, counts)["5"]
            b = model(audio[perm], alen[perm], text[perm], tlen[perm], counts)["5"]
        assert torch.allclose(a, b, atol=1e-5) == same


def test_calls_of_1_and_40_segments_in_one_batch_equal_each_call_alone():
    model = model_for()
    audio, alen, text, tlen, counts = inputs([1, 40, 3], frames=24)
    with torch.no_grad():
        together = model(audio, alen, text, tlen, counts)
        start = 0
        for c, n in enumerate(counts.tolist()):
            sl = slice(start, start + n)
            # alone: rows cut to this call's own longest segment, as a batch of one call would be
            a_max = int(alen[sl].max())
            alone = model(audio[sl, :a_max], alen[sl], text[sl], tlen[sl], torch.tensor([n]))
            for t in together:
                torch.testing.assert_close(together[t][c], alone[t][0], rtol=1e-4, atol=1e-5)
            start += n


# ------------------------------------------------------------- label maps
def test_every_task_label_derives_from_a_to_e():
    expected = {
        "5": {"A": 0, "B": 1, "C": 2, "D": 3, "E": 4},
        "4": {"A": 0, "B": 1, "C": 2, "D": 3, "E": 3},
        "3": {"A": 0, "B": 1, "C": 1, "D": 2, "E": 2},
        "2": {"A": 0, "B": 0, "C": 0, "D": 1, "E": 1},
    }
    for task, mapping in expected.items():
        assert MARKETCALLS.encode(list(mapping), task).tolist() == list(mapping.values())
    assert MARKETCALLS.class_map("5", "2").tolist() == [0, 0, 0, 1, 1]
    assert MARKETCALLS.class_map("3", "4") is None  # B+C cannot be split back


def test_training_labels_and_metrics_come_from_the_same_maps(tmp_path):
    store = write_synthetic_store(tmp_path / "c.zarr", calls=30, seed=1)
    data = CallData(store)
    table = store.table()
    for c in range(len(data.calls)):  # the call's label is its segments' label
        assert {table["label"][r] for r in data.rows[c]} == {data.base_labels[c]}
    assert set(data.base_labels) == set("ABCDE")
    for task in ("5", "4", "3", "2"):
        assert data.labels[task].tolist() == MARKETCALLS.encode(data.base_labels, task).tolist()
    # a single 5-class head's predictions scored on the 2-class task go through the same map as the 2-class labels
    y5 = data.labels["5"].numpy()
    m = all_task_metrics(MARKETCALLS, {t: v.numpy() for t, v in data.labels.items()}, {"5": y5})
    assert all(m[t]["accuracy"] == 1.0 for t in ("5", "4", "3", "2")), (
        "perfect 5-class = perfect on every task"
    )
    assert m["2"]["derived_from"] == "5"
    wrong = np.where(y5 == 3, 4, np.where(y5 == 4, 3, y5))  # D<->E swaps stay right on 4/3/2-class
    m = all_task_metrics(MARKETCALLS, {t: v.numpy() for t, v in data.labels.items()}, {"5": wrong})
    assert (
        m["2"]["accuracy"] == m["3"]["accuracy"] == m["4"]["accuracy"] == 1.0 > m["5"]["accuracy"]
    )


# ------------------------------------------- ablations change the outputs
def _with_weights_of(full, **kw):
    """An ablated model carrying the full model's weights for every part they share."""
    ablated = model_for(**kw)
    own = dict(ablated.named_parameters())
    shared = {k: v for k, v in full.state_dict().items() if k in own}
    assert set(own) == set(shared), "an ablation only removes parts"
    ablated.load_state_dict(shared, strict=False)
    return ablated


@pytest.mark.parametrize("flag", [{"bottleneck": False}, {"bigru": False}, {"pooling": "cls"}])
def test_each_ablation_changes_the_computation(flag):
    """Same weights for everything the two models share; the removed part alone makes the outputs differ."""
    full = model_for()
    ablated = _with_weights_of(full, **flag)
    removed = set(dict(full.named_parameters())) - set(dict(ablated.named_parameters()))
    assert bool(removed) == ("pooling" not in flag), (
        removed
    )  # mean and CLS pooling have no parameters
    audio, alen, text, tlen, counts = inputs([2, 3])
    with torch.no_grad():
        a, b = full(audio, alen, text, tlen, counts), ablated(audio, alen, text, tlen, counts)
    assert not torch.allclose(a["5"], b["5"], atol=1e-4)
    # control: a model with nothing removed and the same weights gives the same outputs
    with torch.no_grad():
        c = _with_weights_of(full)(audio, alen, text, tlen, counts)
    torch.testing.assert_close(a["5"], c["5"])


def test_no_mtl_keeps_only_the_selected_head_and_its_loss():
    full, single = model_for(), model_for(mtl=False, task="2")
    assert set(single.heads) == {"2"}
    extra = {n for n, _ in full.named_parameters()} - {n for n, _ in single.named_parameters()}
    assert extra and all(n.startswith(("heads.5", "heads.4", "heads.3")) for n in extra)


def test_unused_modality_may_be_missing():
    """Text-only / audio-only models run without the other modality's tensors at all (the data never reads them)."""
    audio, alen, text, tlen, counts = inputs([2, 1])
    assert model_for(modality="text").modalities == ("text",)
    assert model_for(modality="audio").modalities == ("audio",)
    with torch.no_grad():
        a = model_for(modality="text")(None, alen, text, tlen, counts)
        b = model_for(modality="text")(audio, alen, text, tlen, counts)
        torch.testing.assert_close(a["5"], b["5"])
        model_for(modality="audio")(audio, alen, None, tlen, counts)


# ---------------------------------------------------------- compute strategies that must not change the result
@pytest.mark.parametrize(
    "variant",
    [
        {},
        {"pooling": "flatten"},
        {"pooling": "cls"},
        {"bottleneck": False},
        {"cross_attention": False},
        {"modality": "text"},
        {"modality": "audio"},
        {"audio_stride": 3},
    ],
)
def test_length_groups_give_the_one_padded_batch_result(variant, monkeypatch):
    """Segments run in groups of similar length, each trimmed to its own longest rows; outputs and gradients must
    equal those of the whole batch padded to its longest segment."""
    counts = [5, 7, 4, 8, 6]
    audio, alen, text, tlen, seg_counts = inputs(counts, seed=3, frames=30)
    alen[0], tlen[1] = 30, DIMS.text_tokens  # some segment fills each width
    widths = []
    orig = MSMTFN._segment_vectors

    def recording(self, a, al, t, tl):
        widths.append(
            (
                None if a is None else a.shape[1],
                None if t is None else t.shape[1],
                len(al if tl is None else tl),
            )
        )
        return orig(self, a, al, t, tl)

    def run(groups):
        model = model_for(**variant)  # eval mode: no dropout
        monkeypatch.setattr(MSMTFN, "LENGTH_GROUPS", groups)
        monkeypatch.setattr(MSMTFN, "_segment_vectors", recording)
        out = model(audio, alen, text, tlen, seg_counts)
        sum((v * torch.arange(1, v.shape[1] + 1)).sum() for v in out.values()).backward()
        return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    whole, g_whole = run({"cpu": (1, 0)})
    assert widths == [(30, DIMS.text_tokens, 30)]
    widths.clear()
    # no per-group cost: every split saves padded rows, so 3 groups, each holding several lengths (more groups
    # could hold one length each, and then trimming to the wrong end would go unseen)
    grouped, g_grouped = run({"cpu": (3, 0)})
    assert len(widths) == 3 and sum(w[2] for w in widths) == 30, widths
    # the rows trimmed per group: text (sorted on), audio where text keeps every row (flatten) or is unused
    main = 0 if variant.get("modality") == "audio" or variant.get("pooling") == "flatten" else 1
    assert min(w[main] for w in widths) < max(w[main] for w in widths), (
        "groups must be trimmed to their own rows"
    )
    for t in whole:
        torch.testing.assert_close(grouped[t], whole[t], rtol=1e-4, atol=1e-5)
    assert g_grouped.keys() == g_whole.keys()
    for n in g_whole:
        torch.testing.assert_close(g_grouped[n], g_whole[n], rtol=1e-3, atol=1e-5, msg=n)


@pytest.mark.parametrize("d, heads", [(32, 4), (24, 2), (12, 3)])
def test_narrow_heads_padded_for_the_kernel_give_the_unpadded_result(d, heads, monkeypatch):
    """On CPU, heads narrower than Attention.KERNEL_HEAD_DIM run zero-padded (a faster kernel); outputs and
    gradients must equal those of the heads computed at their own width, with the softmax scaled by it."""
    assert d // heads < Attention.KERNEL_HEAD_DIM["cpu"], "this test must exercise the padding"
    dims = ModelDims(
        audio_dim=16, text_dim=d, text_tokens=8, tasks={"5": 5, "4": 4, "3": 3, "2": 2}
    )
    audio, alen, text, tlen, seg_counts = inputs([3, 2, 4], seed=5)
    text = torch.randn(len(tlen), DIMS.text_tokens, d, generator=torch.Generator().manual_seed(6))

    def run(widths):
        monkeypatch.setattr(Attention, "KERNEL_HEAD_DIM", widths)
        torch.manual_seed(0)
        model = build_model(small(d_model=d, heads=heads), dims).eval()
        out = model(audio, alen, text, tlen, seg_counts)
        sum((v * torch.arange(1, v.shape[1] + 1)).sum() for v in out.values()).backward()
        return out, {n: p.grad.clone() for n, p in model.named_parameters()}

    padded, g_padded = run({"cpu": 16})
    plain, g_plain = run({})
    for t in plain:
        torch.testing.assert_close(padded[t], plain[t], rtol=1e-5, atol=1e-6)
    for n in g_plain:
        torch.testing.assert_close(g_padded[n], g_plain[n], rtol=1e-4, atol=1e-6, msg=n)


@pytest.mark.parametrize("p", [0.1, 0.3, 0.7])
def test_cpu_dropout_mask_drops_a_fraction_p_and_rescales_the_rest(p):
    """train.model.Dropout draws its CPU mask as uniform < 1 - p (cheaper than bernoulli_): it must still drop a
    fraction p, scale what it keeps by 1 / (1 - p), pass gradients through the same mask, and be the identity in
    eval mode."""
    drop = Dropout(p).train()
    x = (torch.rand(400_000) + 0.5).requires_grad_()
    torch.manual_seed(0)
    y = drop(x)
    kept = y != 0
    assert abs(1 - kept.float().mean().item() - p) < 0.005, "drops a fraction p"
    torch.testing.assert_close(y[kept], x[kept] / (1 - p))
    y.backward(torch.ones_like(y))
    torch.testing.assert_close(x.grad, kept.float() / (1 - p))
    torch.manual_seed(0)
    assert torch.equal(drop(x), y), "seeded like any torch draw"
    assert torch.equal(drop.eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)


def test_the_model_draws_every_dropout_mask_with_the_cheaper_cpu_mask():
    """The speed-up measured in bench/fusion_speed.py --dropout holds only if no layer keeps torch's nn.Dropout."""
    model = model_for()
    drops = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert drops and all(type(m) is Dropout for m in drops)


def test_length_groups_only_where_they_save_more_than_they_cost():
    """The shipped CPU rule: a batch of 40 s segments (999 frames, up to 199 tokens) is split; a batch of the
    demo's ~1 s segments stays one batch (its groups' dispatch would cost more than its padding)."""
    model = model_for()
    g = torch.Generator().manual_seed(0)
    long_t, long_a = (
        torch.randint(2, 200, (36,), generator=g),
        torch.randint(333, 1000, (36,), generator=g),
    )
    groups = model.length_groups(long_a, long_t, "cpu")
    assert groups is not None and len(groups) >= 4
    assert sorted(torch.cat(groups).tolist()) == list(range(36))
    firsts = [long_t[idx].max() for idx in groups]
    assert firsts == sorted(firsts), "groups follow text length"
    short_t, short_a = (
        torch.randint(4, 10, (28,), generator=g),
        torch.randint(37, 62, (28,), generator=g),
    )
    assert model.length_groups(short_a, short_t, "cpu") is None
    assert model.length_groups(long_a, long_t, "mps") is None, "a device without a rule: one batch"


def test_cheapest_split_is_the_least_cost_contiguous_split():
    """Against every contiguous split of small sorted batches (brute force): the least modelled cost, at most
    ``most`` parts, parts that cover the order once; and the unit coarsening of large batches stays a split."""
    import itertools

    from train.model import cheapest_split

    def cost(lens, other, overhead, parts):
        return sum(
            (b - a) * lens[b - 1] * (other[a:b].max() + lens[b - 1]) + overhead for a, b in parts
        )

    rng = np.random.default_rng(0)
    for _ in range(150):
        n, most = int(rng.integers(1, 9)), int(rng.integers(1, 5))
        overhead = float(rng.choice([0.0, 40.0, 4000.0]))
        lens, other = (
            np.sort(rng.integers(1, 50, n)).astype(float),
            rng.integers(0, 100, n).astype(float),
        )
        least = min(
            cost(lens, other, overhead, list(zip((0, *cut), (*cut, n))))
            for k in range(min(most, n))
            for cut in itertools.combinations(range(1, n), k)
        )
        parts = cheapest_split(lens, other, overhead, most)
        assert 1 <= len(parts) <= most
        assert [a for a, _ in parts] == [0] + [b for _, b in parts[:-1]] and parts[-1][1] == n
        assert cost(lens, other, overhead, parts) == pytest.approx(least)
    lens, other = (
        np.sort(rng.integers(2, 200, 700)).astype(float),
        rng.integers(333, 1000, 700).astype(float),
    )
    parts = cheapest_split(lens, other, 30_000, 9, units=64)
    assert (
        parts[0][0] == 0
        and parts[-1][1] == 700
        and all(a < b for a, b in parts)
        and len(parts) <= 9
    )
    assert all(parts[i][1] == parts[i + 1][0] for i in range(len(parts) - 1))


def test_stack_frames_puts_stride_frames_side_by_side_and_zeroes_padding():
    from train.model import stack_frames

    x = torch.arange(2 * 5 * 2, dtype=torch.float32).view(2, 5, 2) + 1
    out, lengths = stack_frames(x, torch.tensor([5, 3]), 2)
    assert out.shape == (2, 3, 4) and lengths.tolist() == [3, 2]
    torch.testing.assert_close(out[0, 0], torch.cat([x[0, 0], x[0, 1]]))
    torch.testing.assert_close(
        out[0, 2], torch.cat([x[0, 4], torch.zeros(2)])
    )  # partial: zero-filled
    torch.testing.assert_close(
        out[1, 1], torch.cat([x[1, 2], torch.zeros(2)])
    )  # frame 3 is padding
    assert (out[1, 2] == 0).all()
    same, n = stack_frames(x, torch.tensor([5, 3]), 1)
    assert same is x and n.tolist() == [5, 3]


def test_audio_stride_reads_every_frame_and_shortens_the_audio_keys():
    model = model_for(audio_stride=4)
    assert model.audio_proj.in_features == 4 * DIMS.audio_dim
    audio, alen, text, tlen, counts = inputs([2, 3], frames=21)
    alen[:] = 21
    seen = []
    model.second_branch[0].cross.register_forward_hook(
        lambda m, args, out: seen.append(args[1].shape[1])
    )
    with torch.no_grad():
        before = model(audio, alen, text, tlen, counts)
        changed = audio.clone()
        changed[:, 20] += 1.0  # only the last frame: alone in its (partial) row
        after = model(changed, alen, text, tlen, counts)
    assert seen[0] == 1 + 6, "keys: [CLS; ceil(21 / 4) rows]"
    assert not torch.allclose(before["5"], after["5"]), "every frame must reach the output"
