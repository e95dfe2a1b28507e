"""Bootstrap intervals of the reported figures: the vectorised metrics equal scikit-learn's on every resample,
the interval has the width the binomial spread predicts, and segment-level items are resampled by call."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from pipeline.labels import MARKETCALLS, get_scheme
from train.metrics import _resampled, all_task_metrics, bootstrap_intervals


def test_vectorised_f1_equals_scikit_learn_on_resamples():
    rng = np.random.default_rng(0)
    t, p = rng.integers(0, 5, 60), rng.integers(0, 5, 60)
    p[:3] = 4  # some class never true in a resample, some never predicted
    t[t == 2], p[p == 2] = 1, 3  # class 2 in neither: macro-F1 leaves it out, as scikit-learn does
    idx = rng.integers(0, 60, size=(40, 60))
    for metric, avg in (("macro_f1", "macro"), ("weighted_f1", "weighted")):
        ours = _resampled(metric, t, p, idx, 5)
        ref = [f1_score(t[i], p[i], average=avg, zero_division=0) for i in idx]
        np.testing.assert_allclose(ours, ref, atol=1e-12)


def test_interval_width_matches_the_binomial_spread_and_contains_the_figure():
    rng = np.random.default_rng(1)
    n = 88
    y = rng.integers(0, 5, n)
    pred = np.where(rng.random(n) < 0.77, y, (y + 1) % 5)
    truth = {t: MARKETCALLS.encode(list("ABCDE"[i] for i in y), t) for t in ("5", "4", "3", "2")}
    ci = bootstrap_intervals(MARKETCALLS, truth, {"5": pred})
    m = all_task_metrics(MARKETCALLS, truth, {"5": pred})
    acc = m["5"]["accuracy"]
    lo, hi = ci["5"]["accuracy"]
    assert lo < acc < hi
    expected = 2 * 1.96 * np.sqrt(acc * (1 - acc) / n)
    assert abs((hi - lo) - expected) < 0.25 * expected, (lo, hi, expected)
    assert set(ci) == {"5", "4", "3", "2"} and set(ci["2"]) == {
        "accuracy",
        "macro_f1",
        "weighted_f1",
    }
    assert ci == bootstrap_intervals(MARKETCALLS, truth, {"5": pred}), (
        "seeded: the same intervals twice"
    )


def test_segment_level_items_are_resampled_by_call():
    scheme = get_scheme("sentiment")
    rng = np.random.default_rng(2)
    calls = np.repeat(np.arange(10), 8)  # 10 videos of 8 utterances
    score = np.repeat(
        rng.uniform(-3, 3, 10), 8
    )  # utterances of one video agree: the real sample is 10, not 80
    pred = score + rng.normal(0, 0.3, 80)
    y = {
        "score": score,
        **{t: scheme.encode([repr(float(v)) for v in score], t) for t in ("2", "5", "7")},
    }
    by_call = bootstrap_intervals(scheme, y, {"score": pred}, calls)["score"]["mae"]
    by_item = bootstrap_intervals(scheme, y, {"score": pred})["score"]["mae"]
    assert by_call[1] - by_call[0] > by_item[1] - by_item[0]


def test_metrics_and_predict_derive_a_coarser_task_by_one_rule():
    """5-class probabilities [.34, 0, 0, .33, .33]: A is the most probable class, but D+E (.66) is the most
    probable 2-class answer. The metrics and msmtfn-predict both say D+E (the issue that found them disagreeing)."""
    import torch

    from predict.run import decode, output_tasks

    p5 = np.array([[0.34, 0.0, 0.0, 0.33, 0.33]])
    truth = {t: MARKETCALLS.encode(["D"], t) for t in ("5", "4", "3", "2")}
    m = all_task_metrics(MARKETCALLS, truth, {"5": p5})
    assert m["2"]["accuracy"] == 1.0 and m["5"]["accuracy"] == 0.0 and m["2"]["derived_from"] == "5"
    tasks = output_tasks(MARKETCALLS, {"5": 5})
    (answer,) = decode(MARKETCALLS, tasks, {"5": torch.log(torch.tensor(p5) + 1e-12)})
    assert answer["5"]["label"] == "A" and answer["2"]["label"] == "D+E"
    assert answer["2"]["probs"]["D+E"] == pytest.approx(0.66, abs=1e-6)
