"""Direct checks of what the training loop does, each on the behaviour itself (not on how well a
run learns): the schedule, a step with gradient accumulation, clipping, the patience counter, the
task that selects, what the seed controls, where the input statistics come from and that they are
applied, and the Bi-GRU's structure. bench/mutants.py breaks each of these on purpose."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from synthetic import write_synthetic_store

import train.loop as loop
from train.config import TrainConfig
from train.data import CallData
from train.loop import TrainingRun, warmup_cosine
from train.model import ModelDims, build_model
from train.normalise import feature_stats

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = dict(
    d_model=16,
    heads=2,
    ffn=32,
    gru_hidden=8,
    head_hidden=16,
    cross_layers=1,
    bottleneck_layers=1,
    dropout=0.0,
    progress=False,
    device="cpu",
    plots=False,
    state_every=0,
)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("direct") / "c.zarr"
    write_synthetic_store(path, calls=30, segments_per_call=(1, 4), seed=3)
    return path


def _run(cache, tmp_path, **kw) -> TrainingRun:
    cfg = TrainConfig(cache=str(cache), out=str(tmp_path / "run"), **{**SMALL, **kw})
    return TrainingRun(cfg).start()


def test_warmup_is_linear_to_one_then_cosine_to_zero():
    f = warmup_cosine(100, 0.1)  # 10 warm-up steps
    assert [f(s) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.5)  # half-way through the decay
    assert f(100) == pytest.approx(0.0, abs=1e-12) and f(150) == pytest.approx(0.0, abs=1e-12)
    assert warmup_cosine(10, 0.0)(0) == pytest.approx(1.0)  # at least one warm-up step


def test_with_gradient_accumulation_the_optimizer_and_scheduler_step_once_per_k_batches(
    cache, tmp_path
):
    run = _run(cache, tmp_path, batch_calls=2, grad_accum=3, epochs=2)
    steps = []
    real_step = run.opt.step

    def counted(*a, **k):
        steps.append(1)
        return real_step(*a, **k)

    run.opt.step = counted
    run.epoch(1)
    per_epoch = math.ceil(len(run.train_b) / 3)
    assert len(steps) == per_epoch and run.sched.last_epoch == per_epoch
    # the schedule spans the whole run's optimizer steps: warm-up over 5 % of 2 epochs' steps
    assert run.sched.lr_lambdas[0](2 * per_epoch) == pytest.approx(0.0, abs=1e-12)


def test_gradients_are_clipped_to_clip_norm_before_every_step(cache, tmp_path):
    run = _run(cache, tmp_path, clip_norm=1e-3, lr=1e-3)
    norms = []
    real_step = run.opt.step

    def measured(*a, **k):
        grads = [p.grad for p in run.model.parameters() if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))
        return real_step(*a, **k)

    run.opt.step = measured
    run.epoch(1)
    assert norms and max(norms) <= 1e-3 * 1.001


def test_patience_counts_epochs_without_a_better_score(cache, tmp_path, monkeypatch):
    scores = iter([(1.0,), (0.0,), (2.0,), (0.0,), (0.0,), (0.0,), (0.0,)])
    monkeypatch.setattr(loop, "selection_score", lambda m, key, loss: next(scores))
    run = _run(cache, tmp_path, epochs=7, patience=2)
    stopped_at = next(e for e in run.epochs() if run.epoch(e))
    assert stopped_at == 5 and run.best_epoch == 3  # best at 3, then 2 epochs without gain


def test_the_selection_reads_the_chosen_task_with_the_schemes_metric(cache, tmp_path, monkeypatch):
    seen = []
    real = loop.selection_score

    def spy(m, key, loss):
        seen.append((m, key))
        return real(m, key, loss)

    monkeypatch.setattr(loop, "selection_score", spy)
    run = _run(cache, tmp_path, task="3", epochs=1)
    run.epoch(1)
    ((m, key),) = seen
    assert key == "macro_f1" and len(m["confusion"]) == 3  # the 3-class task's figures


def test_the_seed_sets_the_batch_order_not_only_the_initial_weights(cache, tmp_path):
    def order(seed, sub):
        run = _run(cache, tmp_path / sub, seed=seed)
        return [c for g in run.train_b._groups() for c in g]

    a, b, again = order(0, "a"), order(1, "b"), order(0, "c")
    assert sorted(a) == sorted(b) and a != b and a == again


def test_input_statistics_come_from_training_rows_and_are_applied(cache, tmp_path):
    run = _run(cache, tmp_path)
    data = CallData(run.store)
    train_rows = data.used_rows(data.indices("train"))
    mean, std = feature_stats(run.store, train_rows, "text")
    assert np.allclose(run.model.text_mean.numpy(), mean) and np.allclose(
        run.model.text_std.numpy(), std
    )
    other_rows = data.used_rows(data.indices("valid") + data.indices("test"))
    other_mean, _ = feature_stats(run.store, other_rows, "text")
    assert not np.allclose(other_mean, mean)
    # applied: the stream sees (x - mean) / std
    model = run.model.eval()
    x = torch.randn(2, 5, model.dims.text_dim)
    lengths = torch.tensor([5, 3])
    got, _ = model._stream(x, lengths, "text")
    want = model.text_proj((x - model.text_mean) / model.text_std)
    torch.testing.assert_close(got[:, 1:], want)


DIMS = ModelDims(audio_dim=6, text_dim=6, text_tokens=4, tasks={"5": 5})


def _call_model(**kw):
    torch.manual_seed(0)
    return build_model(TrainConfig(cache="x", **{**SMALL, **kw}), DIMS).eval()


def test_the_bigru_reads_both_directions():
    model = _call_model()
    assert model.gru.bidirectional and model.gru.num_layers == 2
    seg = torch.randn(4, model.d)
    counts = torch.tensor([4])
    base = model.call_vectors(seg, counts)
    with torch.no_grad():  # the backward direction's weights of the last layer matter
        model.gru.weight_hh_l1_reverse.add_(0.5)
    assert not torch.allclose(model.call_vectors(seg, counts), base)


def test_padding_segments_never_reach_the_bigru():
    model = _call_model()
    seg = torch.randn(7, model.d)
    alone = model.call_vectors(seg[:2], torch.tensor([2]))
    together = model.call_vectors(seg, torch.tensor([2, 5]))  # the first call padded to 5 segments
    torch.testing.assert_close(together[0], alone[0])
    seg_model = build_model(
        TrainConfig(cache="x", **SMALL), ModelDims(6, 6, 4, {"5": 5}, level="segment")
    ).eval()
    alone = seg_model.context_vectors(seg[:2], torch.tensor([2]))
    together = seg_model.context_vectors(seg, torch.tensor([2, 5]))
    torch.testing.assert_close(together[:2], alone)


def _context_first_call(rng, index, n, shape):
    """MELD-like dialogue whose first utterance has no label: context only."""
    from synthetic import SyntheticCall

    return SyntheticCall(
        label="",
        audio=rng.standard_normal((n, shape.audio_frames, shape.audio_dim)),
        audio_len=np.full(n, shape.audio_frames),
        text=rng.standard_normal((n, shape.text_tokens, shape.text_dim)),
        text_len=np.full(n, shape.text_tokens),
        segment_labels=[""] + ["joy/positive"] * (n - 1),
    )


def test_unlabelled_context_utterances_are_never_trained_on(tmp_path):
    store = write_synthetic_store(
        tmp_path / "meld.zarr",
        calls=12,
        segments_per_call=(2, 4),
        fill=_context_first_call,
        label_scheme="meld",
    )
    run = TrainingRun(TrainConfig(cache=str(store.path), out=str(tmp_path / "r"), **SMALL)).start()
    batch = next(iter(run.train_b))
    firsts = np.cumsum([0] + batch.seg_counts.tolist()[:-1])
    assert not batch.mask[torch.as_tensor(firsts)].any() and batch.mask.sum() == len(
        batch.mask
    ) - len(firsts)
    logits = {t: torch.randn(len(batch.mask), k) for t, k in run.model.dims.tasks.items()}
    base = loop._loss(logits, batch.labels, run.weights, batch.mask, run.regression)
    for t in logits:  # anything at a context row leaves the loss as it is
        rows = torch.as_tensor(firsts)
        logits[t][rows] = 10 * torch.randn(len(rows), logits[t].shape[1])
    moved = loop._loss(logits, batch.labels, run.weights, batch.mask, run.regression)
    assert torch.allclose(base, moved)
