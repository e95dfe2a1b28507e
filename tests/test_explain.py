"""Explanations (train/explain.py): every figure checked against the model's own forward pass on the
perturbed call, so a wrong explanation (a left-out segment still fed, the audio and text baselines
swapped, a flipped sign, another class explained) fails here; integrated gradients' completeness."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pipeline.labels import get_scheme
from train.config import TrainConfig
from train.data import segments_batch
from train.explain import (
    AUDIO_WINDOWS,
    TEXT_STRETCHES,
    ExplainOptions,
    explain_batch,
    explained_tasks,
)
from train.model import ModelDims, build_model
from train.predictions import head_widths, output_tasks

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DA, DT, T = 8, 8, 6
SIZES = dict(
    d_model=16, heads=2, ffn=32, gru_hidden=8, head_hidden=16, cross_layers=1, bottleneck_layers=1
)


def tiny_model(scheme_name: str = "marketcalls", seed: int = 0, **kw):
    """A random-weight model whose input statistics are not 0/1, so a baseline of zeros (instead
    of the training mean frame) changes the answers."""
    torch.manual_seed(seed)
    scheme = get_scheme(scheme_name)
    dims = ModelDims(DA, DT, T, {t.name: t.num_classes for t in scheme.tasks}, scheme.level)
    model = build_model(TrainConfig(cache="-", dropout=0.0, **SIZES, **kw), dims).eval()
    g = torch.Generator().manual_seed(seed + 1)
    for modality, d in (("audio", DA), ("text", DT)):
        if modality in model.modalities:
            model.set_feature_stats(
                modality, torch.randn(d, generator=g), 0.5 + torch.rand(d, generator=g)
            )
    return model, scheme


def random_calls(counts, seed=0, a_rows=(5, 12), t_rows=(2, T)):
    rng = np.random.default_rng(seed)
    return [
        [
            SimpleNamespace(
                audio=rng.standard_normal((int(rng.integers(*a_rows)), DA)).astype(np.float32) + 1,
                text=rng.standard_normal((int(rng.integers(*t_rows)), DT)).astype(np.float32) - 1,
            )
            for _ in range(n)
        ]
        for n in counts
    ]


def forward(model, calls) -> dict[str, np.ndarray]:
    """The model's own answer: probabilities per head (a regression: its value)."""
    with torch.no_grad():
        b = segments_batch(calls, model, T, torch.device("cpu"))
        out = model(b.audio, b.audio_len, b.text, b.text_len, b.seg_counts)
    return {
        h: (v.reshape(-1) if v.shape[-1] == 1 else torch.softmax(v, -1)).numpy().astype(np.float64)
        for h, v in out.items()
    }


def with_mean(model, seg, modality):
    """The segment with one modality replaced by the training mean frame at its own length."""
    mean = getattr(model, f"{modality}_mean").numpy()
    rows = np.tile(mean, (len(getattr(seg, modality)), 1)).astype(np.float32)
    return SimpleNamespace(**{**vars(seg), modality: rows})


def explain(model, scheme, calls, priors=None, **opts):
    b = segments_batch(calls, model, T, torch.device("cpu"))
    tasks = output_tasks(scheme, head_widths(model))
    opts = {"row_segments": 0, **opts}
    return explain_batch(model, b, scheme, tasks, priors or {}, ExplainOptions(**opts))[1]


def item(e, segment, task):
    return next(it for it in e.items if it.segment == segment and it.task == task)


# -------------------------------------------------------------------------------- call level
def test_call_level_contributions_equal_the_models_answers_on_the_perturbed_call():
    model, scheme = tiny_model()
    calls = random_calls([3, 1, 4], seed=1)
    explained = explain(model, scheme, calls, priors={"5": [0.1, 0.2, 0.3, 0.25, 0.15]})
    for c, call in enumerate(calls):
        full = forward(model, [call])["5"][0]
        cls = int(full.argmax())
        for s in range(len(call)):
            it = item(explained[c], s, "5")
            assert it.label == scheme.task("5").classes[cls], "the predicted class is explained"
            assert it.probability == pytest.approx(full[cls], abs=1e-5)
            if len(call) > 1:
                left_out = forward(model, [call[:s] + call[s + 1 :]])["5"][0][cls]
                assert it.contribution == pytest.approx(full[cls] - left_out, abs=1e-5)
            else:  # nothing to leave out: the class's training frequency
                assert it.contribution == pytest.approx(
                    full[cls] - [0.1, 0.2, 0.3, 0.25, 0.15][cls], abs=1e-5
                )
            for modality, got in (("audio", it.audio_contribution), ("text", it.text_contribution)):
                swapped = list(call)
                swapped[s] = with_mean(model, call[s], modality)
                expect = full[cls] - forward(model, [swapped])["5"][0][cls]
                assert got == pytest.approx(expect, abs=1e-5), (modality, c, s)


def test_coarser_tasks_are_explained_through_their_summed_probabilities():
    model, scheme = tiny_model(mtl=False, task="5")
    calls = random_calls([3], seed=2)
    e = explain(model, scheme, calls)[0]
    probs = forward(model, calls)["5"][0]
    m = scheme.class_map("5", "2")
    p2 = np.array([probs[m == k].sum() for k in range(2)])
    it = item(e, 1, "2")
    assert it.label == scheme.task("2").classes[int(p2.argmax())]
    assert it.probability == pytest.approx(p2.max(), abs=1e-5)
    left = forward(model, [calls[0][:1] + calls[0][2:]])["5"][0]
    assert it.contribution == pytest.approx(p2.max() - left[m == p2.argmax()].sum(), abs=1e-5)


def test_a_model_that_reads_one_modality_has_no_split_for_the_other():
    model, scheme = tiny_model(modality="text")
    e = explain(model, scheme, random_calls([2], seed=3))[0]
    assert all(np.isnan(it.audio_contribution) for it in e.items)
    assert all(np.isfinite(it.text_contribution) for it in e.items)


# ----------------------------------------------------------------------------- segment level
def at(out: np.ndarray, u: int, k: int | None) -> float:
    """Utterance u's score: class k's probability, or (k None) a regression's value."""
    return float(out[u] if k is None else out[u][k])


@pytest.mark.parametrize("scheme_name", ["meld", "sentiment"])
def test_segment_level_items_explain_each_utterance_and_its_context(scheme_name):
    model, scheme = tiny_model(scheme_name)
    calls = random_calls([4, 1], seed=4)
    names = explained_tasks(scheme, output_tasks(scheme, head_widths(model)))
    task = names[0]  # meld: emotion; sentiment: the regression's value
    head = task.split(":")[0]
    explained = explain(model, scheme, calls)
    for c, call in enumerate(calls):
        full = forward(model, [call])[head]
        for u in range(len(call)):
            it = item(explained[c], u, task)
            k = None if full.ndim == 1 else int(full[u].argmax())
            p = at(full, u, k)
            assert it.probability == pytest.approx(p, abs=1e-5)
            alone = forward(model, [[call[u]]])[head]
            assert it.context_contribution == pytest.approx(p - at(alone, 0, k), abs=1e-5)
            swapped = list(call)
            swapped[u] = with_mean(model, call[u], "audio")
            expect = p - at(forward(model, [swapped])[head], u, k)
            assert it.audio_contribution == pytest.approx(expect, abs=1e-5)
            if len(call) == 1:
                assert it.top_neighbour == -1
                continue
            effects = {}
            for s in range(len(call)):
                if s != u:  # u's place in the call without s
                    rest = forward(model, [call[:s] + call[s + 1 :]])[head]
                    effects[s] = p - at(rest, u - (s < u), k)
            top = max(effects, key=lambda s: abs(effects[s]))
            assert it.top_neighbour == top
            assert it.neighbour_contribution == pytest.approx(effects[top], abs=1e-5)


def test_unscored_segments_are_context_only():
    model, scheme = tiny_model("meld")
    calls = random_calls([3], seed=5)
    b = segments_batch(calls, model, T, torch.device("cpu"))
    b.mask = torch.tensor([False, True, True])
    tasks = output_tasks(scheme, head_widths(model))
    e = explain_batch(model, b, scheme, tasks, {}, ExplainOptions(row_segments=0))[1][0]
    assert {it.segment for it in e.items} == {1, 2}


# --------------------------------------------------------------------------------- rows
def replaced(model, calls, s, modality, a, b):
    """The call with rows a:b of segment s's ``modality`` replaced by the training mean frame."""
    seg = calls[s]
    x = getattr(seg, modality).copy()
    x[a:b] = getattr(model, f"{modality}_mean").numpy()
    return [
        c if k != s else SimpleNamespace(**{**vars(seg), modality: x}) for k, c in enumerate(calls)
    ]


def check_stretches(model, calls, r, s, cls, full):
    for modality, stretches in (("text", r.text), ("audio", r.audio)):
        rows = len(getattr(calls[s], modality))
        assert stretches[0, 0] == 0 and stretches[-1, 1] == rows, "the stretches cover the rows"
        assert np.all(stretches[1:, 0] == stretches[:-1, 1]), "and tile them"
        for a, b, effect in stretches:
            p = forward(model, [replaced(model, calls, s, modality, int(a), int(b))])["5"][0][cls]
            assert effect == pytest.approx(full[cls] - p, abs=1e-5), (modality, a, b)


def test_ablation_effects_are_the_answer_with_that_token_or_stretch_replaced():
    model, scheme = tiny_model()
    calls = random_calls([3], seed=6, a_rows=(30, 41))
    e = explain(model, scheme, calls, row_segments=-1)[0]
    full = forward(model, calls)["5"][0]
    cls = int(full.argmax())
    for s, seg in enumerate(calls[0]):
        r = e.rows[s]
        assert r.task == "5" and r.method == "ablation"
        assert len(r.text) == len(seg.text), "a short text: every token alone"
        assert len(r.audio) == AUDIO_WINDOWS
        check_stretches(model, calls[0], r, s, cls, full)


def test_a_long_text_is_ablated_in_stretches_of_tokens():
    model, scheme = tiny_model()
    calls = random_calls([2], seed=8, t_rows=(70, 80))
    e = explain(model, scheme, calls, row_segments=1)[0]
    ((s, r),) = e.rows.items()
    full = forward(model, calls)["5"][0]
    assert len(r.text) == TEXT_STRETCHES
    check_stretches(model, calls[0], r, s, int(full.argmax()), full)


@pytest.mark.parametrize("level", ["marketcalls", "meld"])
def test_integrated_gradients_are_complete(level):
    """Σ over a segment's rows = the segment's text (audio) contribution: IG's completeness, with
    the same baseline as the modality split."""
    model, scheme = tiny_model(level)
    calls = random_calls([3], seed=7)
    e = explain(model, scheme, calls, row_segments=-1, method="ig", steps=32)[0]
    task = e.rows[0].task
    for s, r in e.rows.items():
        it = item(e, s, task)
        assert abs(r.text_delta) < 1e-6 and abs(r.audio_delta) < 1e-6
        assert len(r.text) == len(calls[0][s].text), "ig: every token alone"
        assert r.text[:, 2].sum() == pytest.approx(it.text_contribution, rel=1e-3, abs=1e-7)
        assert r.audio[:, 2].sum() == pytest.approx(it.audio_contribution, rel=1e-3, abs=1e-7)
        assert min(abs(it.text_contribution), abs(it.audio_contribution)) > 1e-5, "could not tell"
