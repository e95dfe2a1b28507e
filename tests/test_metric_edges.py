"""train/metrics.py at its edges, by hand: the bootstrap's vectorised correlation, the correlation of
tiny or constant samples (a value, or NaN without a numpy warning in the user's log), the
"negative vs positive" Acc2/F1 convention, classes from predicted values, and the kind of a task in
an older run's metrics.json (docs/testing.md lists the mutants these kill)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import f1_score

from pipeline.labels import SENTIMENT
from train.metrics import (
    CLASS,
    REGRESSION,
    _corr,
    _pearson,
    classes_from_values,
    nonzero_binary,
    selection_score,
    task_kind,
)


@pytest.fixture(autouse=True)
def numpy_warnings_are_errors():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def test_the_bootstrap_correlation_is_pearsons_per_row():
    rng = np.random.default_rng(0)
    t = rng.normal(size=(6, 9))
    p = 0.5 * t + rng.normal(size=(6, 9))
    t[3], p[4] = 0.01 * t[3] + 2.0, 0.003 * p[4]  # a small scale (den < 1) and an offset
    want = [np.corrcoef(a, b)[0, 1] for a, b in zip(t, p)]
    np.testing.assert_allclose(_pearson(t, p), want, rtol=1e-12)


def test_the_bootstrap_correlation_of_a_constant_row_is_nan_without_a_warning():
    t = np.array([[1.0, 2.0, 3.0], [2.0, 2.0, 2.0], [1.0, 2.0, 4.0]])
    p = np.array([[3.0, 1.0, 2.0], [1.0, 2.0, 3.0], [5.0, 5.0, 5.0]])
    got = _pearson(t, p)
    assert got[0] == pytest.approx(np.corrcoef(t[0], p[0])[0, 1])
    assert math.isnan(got[1]) and math.isnan(got[2])


def test_the_correlation_of_two_items_is_one_and_of_constants_nan_without_a_warning():
    assert _corr(np.array([0.0, 1.0]), np.array([2.0, 5.0])) == pytest.approx(1.0)
    assert _corr(np.array([0.0, 1.0]), np.array([5.0, 2.0])) == pytest.approx(-1.0)
    for t, p in (([1.0], [2.0]), ([1.0, 1.0, 1.0], [0.0, 1.0, 2.0]), ([0.0, 1.0, 2.0], [3.0] * 3)):
        assert math.isnan(_corr(np.array(t), np.array(p)))
    # a std of exactly one is not a constant
    assert _corr(np.array([-1.0, 1.0]), np.array([1.0, 3.0])) == pytest.approx(1.0)


def test_nonzero_acc2_leaves_out_true_zeros_and_counts_a_predicted_zero_as_negative():
    y_true = np.array([1.0, -1.0, 2.0, 0.0, -2.0, 0.5])
    y_pred = np.array([0.0, -0.5, 0.5, 3.0, 0.2, 0.8])
    got = nonzero_binary(y_true, y_pred)
    t = np.array([True, False, True, False, True])
    p = np.array([False, False, True, True, True])
    assert got["n_nonzero"] == 5
    assert got["accuracy_nonzero"] == pytest.approx(3 / 5)
    assert got["weighted_f1_nonzero"] == pytest.approx(f1_score(t, p, average="weighted"))
    # weighted over both classes, not the positive class's F1 alone
    assert got["weighted_f1_nonzero"] != pytest.approx(f1_score(t, p))


def test_nonzero_f1_is_zero_for_a_class_never_predicted():
    got = nonzero_binary(np.array([1.0, -1.0, 2.0]), np.array([1.0, 1.0, 1.0]))
    # negatives: never predicted, F1 0 (not 1) with weight 1/3; positives: F1 0.8, weight 2/3
    assert got["weighted_f1_nonzero"] == pytest.approx(2 / 3 * 0.8)
    empty = nonzero_binary(np.zeros(3), np.ones(3))
    # every true value 0: the same keys as any other case (tables read them), figures NaN
    assert empty.keys() == got.keys() and empty["n_nonzero"] == 0
    assert np.isnan(empty["accuracy_nonzero"]) and np.isnan(empty["weighted_f1_nonzero"])


def test_classes_from_values_clip_into_the_range_and_stay_whole_numbers():
    seven, two = SENTIMENT.task("7"), SENTIMENT.task("2")
    got = classes_from_values(seven, np.array([-9.0, -0.4, 0.6, 9.0]), (-3.0, 3.0))
    assert got.tolist() == [0, 3, 4, 6] and got.dtype == np.int64
    assert classes_from_values(two, np.array([-1.5, 0.0, 2.0]), None).tolist() == [0, 1, 1]
    assert classes_from_values(two, np.array([]), (-3.0, 3.0)).dtype == np.int64


def test_the_kind_of_a_task_in_an_older_runs_metrics():
    old = {"classes": {"5": list("ABCDE"), "2": ["ABC", "DE"]}}
    assert task_kind(old, "5") == CLASS and task_kind(old, "5:head") == CLASS
    assert task_kind(old, "score") == REGRESSION
    assert task_kind({}, "score") == REGRESSION
    assert task_kind({"kinds": {"score": REGRESSION}, **old}, "score") == REGRESSION


def test_bootstrap_intervals_of_two_items_and_of_nothing():
    from pipeline.labels import MARKETCALLS
    from train.metrics import bootstrap_intervals

    assert bootstrap_intervals(MARKETCALLS, {}, {}) == {}
    one = bootstrap_intervals(MARKETCALLS, MARKETCALLS.encode_all(["A"]), {"5": np.array([0])})
    assert one == {}  # one item has no spread to show
    # two items, the first one wrong: every item can be drawn, so the interval spans 0 to 1
    truth = MARKETCALLS.encode_all(["A", "B"])
    ci = bootstrap_intervals(MARKETCALLS, truth, {"5": np.array([2, 1])})
    assert ci["5"]["accuracy"] == [0.0, 1.0]


def test_the_cluster_bootstrap_draws_every_call():
    from pipeline.labels import MARKETCALLS
    from train.metrics import bootstrap_intervals

    truth, pred = MARKETCALLS.encode_all(list("AABBB")), np.array([3, 3, 1, 1, 1])
    ci = bootstrap_intervals(MARKETCALLS, truth, {"5": pred}, groups=np.array([7, 7, 9, 9, 9]))
    assert ci["5"]["accuracy"] == [0.0, 1.0]  # the wrong call (the first group) is drawn too


@pytest.mark.parametrize("level", [0.95, 0.8])
def test_a_regressions_interval_is_the_percentiles_of_the_seeded_resamples(level):
    from train.metrics import bootstrap_intervals

    rng = np.random.default_rng(3)
    truth = rng.uniform(-3, 3, size=12).round(1) + 0.05  # not whole numbers
    pred = truth + rng.normal(scale=0.7, size=12)
    scheme_truth = {
        "score": truth,
        **{
            t: SENTIMENT.encode([repr(float(x)) for x in np.clip(truth, -3, 3)], t)
            for t in ("2", "5", "7")
        },
    }
    ci = bootstrap_intervals(
        SENTIMENT, scheme_truth, {"score": pred}, resamples=200, seed=5, level=level
    )
    # the documented draw: items with replacement, ``resamples`` rows from ``seed``
    idx = np.random.default_rng(5).integers(0, 12, size=(200, 12))
    mae = np.abs(truth[idx] - pred[idx]).mean(1)
    lo, hi = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    assert ci["score"]["mae"] == pytest.approx(
        [np.percentile(mae, lo), np.percentile(mae, hi)], rel=1e-12
    )


def test_vectorised_f1_of_a_resample_holding_one_class_is_one():
    from train.metrics import _confusions, _f1s

    t = np.array([[2, 2, 2], [0, 1, 2]])
    p = np.array([[2, 2, 2], [0, 1, 1]])
    macro, weighted = _f1s(_confusions(t, p, 4))
    assert macro[0] == 1.0 and weighted[0] == 1.0
    assert macro[1] == pytest.approx((1 + 2 / 3 + 0) / 3) and weighted[1] == pytest.approx(
        (1 + 2 / 3) / 3
    )


def test_a_missing_figure_or_loss_ranks_worst_whichever_way_the_metric_points():
    """MAE is lower-is-better: a missing or NaN MAE must still rank below any real one (not be negated
    into the best), and a missing validation loss below a real one."""
    for missing in ({}, {"mae": float("nan")}):
        assert selection_score({"mae": 10.0, "corr": 0.0}, "mae", 0.5) > selection_score(
            missing, "mae", 0.5
        )
    assert selection_score({"mae": 0.2}, "mae", 0.5)[0] == -0.2
    f1 = {"macro_f1": 0.5, "accuracy": 0.5}
    assert selection_score(f1, "macro_f1", 1.0) > selection_score(f1, "macro_f1", None)
    assert selection_score(f1, "macro_f1", None)[-1] == -math.inf
