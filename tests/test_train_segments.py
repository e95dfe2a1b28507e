"""Segment-level targets (CMU-MOSI/MOSEI utterances in a video, MELD utterances in a dialogue) and the regression
head: the trainer learns them from the dataset's label scheme, with no code edits, and reports the field's
metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from synthetic import SyntheticCall, write_synthetic_store

from pipeline.labels import get_scheme
from train.checkpoint import load_run
from train.config import TrainConfig
from train.data import Batches, CallData, FeatureSource
from train.loop import fit
from train.metrics import all_task_metrics
from train.model import ModelDims, build_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = dict(
    d_model=32,
    heads=4,
    ffn=64,
    gru_hidden=16,
    head_hidden=32,
    cross_layers=1,
    bottleneck_layers=1,
    dropout=0.0,
    progress=False,
    device="cpu",
    plots=False,
    threads=1,
    lr=2e-3,
    batch_calls=8,
    pooling="cls",
    modality="text",
)


def _call(rng, n, shape) -> SyntheticCall:
    return SyntheticCall(
        label="",
        audio=rng.standard_normal((n, shape.audio_frames, shape.audio_dim)),
        audio_len=np.full(n, shape.audio_frames),
        text=rng.standard_normal((n, shape.text_tokens, shape.text_dim)),
        text_len=np.full(n, shape.text_tokens),
    )


def _sentiment_call(rng, index, n, shape):
    """Each utterance's score is carried by a cue in its own text; a few are exactly 0 (the non-zero Acc2
    convention leaves those out)."""
    call = _call(rng, n, shape)
    scores = np.round(rng.uniform(-3, 3, n) * 5) / 5
    scores[rng.random(n) < 0.1] = 0.0
    call.text[:, :, :4] += scores[:, None, None] * 0.8
    call.segment_labels = [repr(float(s)) for s in scores]
    return call


def _previous_cue_call(rng, index, n, shape):
    """MELD-like: an utterance's emotion is the cue of the utterance BEFORE it (a reply to it), so only context
    across the dialogue reveals it; the first utterance has no label (context only)."""
    call = _call(rng, n, shape)
    cue = rng.integers(0, 2, n)
    call.text[:, :, :4] += (2.0 * cue - 1.0)[:, None, None] * 2.0
    call.segment_labels = [""] + ["joy/positive" if c else "anger/negative" for c in cue[:-1]]
    return call


def test_regression_on_segment_labels_reports_the_fields_metrics(tmp_path):
    store = write_synthetic_store(
        tmp_path / "mosi.zarr",
        calls=90,
        segments_per_call=(2, 5),
        audio_frames=8,
        audio_dim=16,
        text_tokens=6,
        text_dim=16,
        seed=1,
        fill=_sentiment_call,
        label_scheme="sentiment",
        dataset="mosi",
    )
    data = CallData(store)
    assert data.level == "segment" and data.labels["score"].dtype == torch.float32
    m = fit(
        TrainConfig(
            cache=str(store.path), out=str(tmp_path / "run"), epochs=25, patience=25, **SMALL
        )
    )
    assert m["config"]["task"] == "score" and m["level"] == "segment"
    assert "mae" in m["selection"]["metric"].lower()
    test = m["test"]
    n_test = int(sum(len(data.rows[c]) for c in data.indices("test")))
    assert test["score"]["n"] == n_test, "one prediction per test utterance"
    labels = data.labels["score"][
        torch.as_tensor(np.concatenate([data.rows[c] for c in data.indices("test")]))
    ]
    constant_mae = float((labels - labels.median()).abs().mean())
    assert test["score"]["mae"] < 0.6 * constant_mae and test["score"]["corr"] > 0.8, (
        test["score"],
        constant_mae,
    )
    for t in ("2", "5", "7"):  # derived from the predicted score, as MOSI/MOSEI papers report them
        assert test[t]["derived_from"] == "score" and 0 <= test[t]["accuracy"] <= 1
        assert f"{t}:head" in test, (
            "the class heads trained beside the regression (MTL) are reported too"
        )
    assert test["2"]["n_nonzero"] == int((labels != 0).sum()) < test["2"]["n"]
    assert test["2"]["accuracy_nonzero"] > 0.8 and "weighted_f1_nonzero" in test["2"]


def test_segment_level_context_comes_from_the_bigru(tmp_path):
    store = write_synthetic_store(
        tmp_path / "meld.zarr",
        calls=120,
        segments_per_call=(3, 5),
        audio_frames=8,
        audio_dim=16,
        text_tokens=6,
        text_dim=16,
        seed=2,
        fill=_previous_cue_call,
        label_scheme="meld",
        dataset="meld",
    )
    data = CallData(store)
    scored = int(data.mask[torch.as_tensor(data.used_rows())].sum())
    assert scored == len(data.used_rows()) - len(data.calls), (
        "unlabelled first utterances are context only"
    )
    acc = {}
    for bigru in (True, False):
        m = fit(
            TrainConfig(
                cache=str(store.path),
                out=str(tmp_path / f"gru{bigru}"),
                epochs=20,
                patience=20,
                bigru=bigru,
                **{**SMALL, "lr": 4e-3},
            )
        )
        assert m["config"]["task"] == "emotion" and "weighted" in m["selection"]["metric"]
        n_test = sum(len(data.rows[c]) - 1 for c in data.indices("test"))
        assert m["test"]["emotion"]["n"] == n_test and m["test"]["sentiment"]["n"] == n_test
        acc[bigru] = m["test"]["emotion"]["accuracy"]
    # the label sits in the previous utterance: without the Bi-GRU an utterance sees only itself (chance ~0.5)
    assert acc[True] >= 0.9 and acc[False] <= 0.75, acc


def test_segment_level_model_outputs_one_row_per_segment_and_loads_back(tmp_path):
    store = write_synthetic_store(
        tmp_path / "m.zarr",
        calls=30,
        segments_per_call=(1, 4),
        audio_frames=8,
        audio_dim=16,
        text_tokens=6,
        text_dim=16,
        seed=3,
        fill=_sentiment_call,
        label_scheme="sentiment",
    )
    m = fit(
        TrainConfig(
            cache=str(store.path),
            out=str(tmp_path / "run"),
            epochs=1,
            **{**SMALL, "modality": "both"},
        )
    )
    model, cfg = load_run(m["run_dir"])
    data = CallData(store)
    src = FeatureSource(data, torch.device("cpu"))
    batch = next(
        iter(Batches(data, src, data.indices("train")[:5], 5, False, None, full_text=False))
    )
    with torch.no_grad():
        out = model(batch.audio, batch.audio_len, batch.text, batch.text_len, batch.seg_counts)
    s = int(batch.seg_counts.sum())
    assert out["score"].shape == (s, 1) and out["7"].shape == (s, 7) and out["2"].shape == (s, 2)
    assert batch.labels["score"].shape == (s,) and batch.mask.shape == (s,)
    # a segment's output depends on the other segments of its call (context) ...
    counts = batch.seg_counts.tolist()
    multi = [c for c, n in enumerate(counts) if n > 1]
    assert multi, f"the batch needs a call with more than one segment: {counts}"
    c = multi[0]
    start, stop = sum(counts[:c]), sum(counts[: c + 1])
    with torch.no_grad():
        audio, text = batch.audio.clone(), batch.text.clone()
        audio[start + 1 : stop] = 0
        text[start + 1 : stop] = 0
        alt = model(audio, batch.audio_len, text, batch.text_len, batch.seg_counts)
    assert not torch.allclose(alt["score"][start], out["score"][start])
    # ... but not on other calls
    torch.testing.assert_close(alt["score"][:start], out["score"][:start])
    torch.testing.assert_close(alt["score"][stop:], out["score"][stop:])


def test_regression_metrics_match_hand_computed_values():
    scheme = get_scheme("sentiment")
    y = np.array([-2.0, -0.4, 0.0, 0.6, 2.8, 1.2])
    p = np.array([-1.0, 0.2, -0.2, 0.5, 3.5, 1.6])
    truth = scheme.encode_all([repr(float(v)) for v in y])
    m = all_task_metrics(scheme, truth, {"score": p})
    assert m["score"]["mae"] == pytest.approx(np.abs(y - p).mean())
    assert m["score"]["corr"] == pytest.approx(np.corrcoef(y, p)[0, 1])
    # has-zero convention: y >= 0 vs p >= 0 -> [F,F,T,T,T,T] vs [F,T,F,T,T,T] -> 4/6
    assert m["2"]["accuracy"] == pytest.approx(4 / 6)
    # non-zero convention: drop y == 0 -> y>0 [F,F,T,T,T] vs p>0 [F,T,T,T,T] -> 4/5
    assert m["2"]["accuracy_nonzero"] == pytest.approx(4 / 5) and m["2"]["n_nonzero"] == 5
    # 7-class: round(clip(.)) + 3, half to even: y -> [1,3,3,4,6,4], p (0.5 -> 0, 3.5 clipped to 3) ->
    # [2,3,3,3,6,5] -> 3/6
    assert m["7"]["accuracy"] == pytest.approx(3 / 6)


def test_model_dims_of_older_runs_default_to_call_level():
    dims = ModelDims(audio_dim=16, text_dim=16, text_tokens=6, tasks={"5": 5, "2": 2})
    model = build_model(
        TrainConfig(cache="x", d_model=16, heads=2, ffn=32, gru_hidden=8, head_hidden=16), dims
    )
    assert dims.level == "call" and hasattr(model, "call_proj") and not hasattr(model, "seg_proj")
    assert model.cfg.task == "5"  # "" = the first task
    assert set(model.heads) == {"5", "2"}
