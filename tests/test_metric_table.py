"""The metric table (train/metrics.py): hand-computed F1 definitions, one ranking for the trainer's
epochs and the sweep's trials, and every reader of the table agreeing with it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.labels import MARKETCALLS, SELECTION_METRICS
from train.metrics import (
    CLASS,
    METRIC_TABLE,
    REGRESSION,
    _resampled,
    metrics_for,
    regression_metrics,
    selection_key,
    selection_score,
    selection_text,
    task_metrics,
)
from train.report import format_summary


def test_macro_and_weighted_f1_by_hand_with_a_class_absent_from_truth_and_predictions():
    # classes 0..4; class 4 is neither true nor predicted, class 3 is predicted but never true
    t = np.array([0, 0, 0, 1, 1, 2])
    p = np.array([0, 0, 1, 1, 3, 2])
    # per class F1 = 2 tp / (support + predicted): 0: 4/5, 1: 2/4, 2: 2/2, 3: 0/1
    f1 = {0: 0.8, 1: 0.5, 2: 1.0, 3: 0.0}
    m = task_metrics(t, p, 5)
    assert m["macro_f1"] == pytest.approx(sum(f1.values()) / 4)  # class 4 does not count
    assert m["weighted_f1"] == pytest.approx((3 * 0.8 + 2 * 0.5 + 1 * 1.0) / 6)
    assert m["accuracy"] == pytest.approx(4 / 6)
    for name in ("macro_f1", "weighted_f1", "accuracy"):
        got = _resampled(name, t, p, np.arange(6)[None, :], 5)
        assert got[0] == pytest.approx(m[name]), name


def test_perfect_predictions_without_one_class_give_macro_f1_one():
    t = np.array([0, 1, 2, 3, 0, 1])
    m = task_metrics(t, t.copy(), 5)
    assert m["macro_f1"] == 1.0 and m["weighted_f1"] == 1.0


def test_regression_metrics_by_hand():
    m = regression_metrics(np.array([0.0, 1.0, 2.0]), np.array([0.5, 1.0, 3.0]))
    assert m["mae"] == pytest.approx(0.5)
    assert m["corr"] == pytest.approx(np.corrcoef([0, 1, 2], [0.5, 1, 3])[0, 1])
    assert math.isnan(regression_metrics(np.ones(3), np.arange(3.0))["corr"])


def test_selection_ranks_by_metric_then_ties_then_loss_and_nan_worst():
    a = {"macro_f1": 0.5, "accuracy": 0.6}
    b = {"macro_f1": 0.5, "accuracy": 0.7}
    assert selection_score(b, "macro_f1", 1.0) > selection_score(a, "macro_f1", 0.1)
    assert selection_score(a, "macro_f1", 0.1) > selection_score(a, "macro_f1", 0.2)
    nan = {"macro_f1": float("nan"), "accuracy": 0.9}
    assert selection_score(a, "macro_f1", 9.0) > selection_score(nan, "macro_f1", 0.0)
    # MAE: lower is better, then higher correlation
    assert selection_score({"mae": 0.4, "corr": 0.1}, "mae", 1.0) > selection_score(
        {"mae": 0.5, "corr": 0.9}, "mae", 0.0
    )
    assert selection_score({"mae": 0.4, "corr": 0.5}, "mae", 1.0) > selection_score(
        {"mae": 0.4, "corr": 0.1}, "mae", 0.0
    )


def test_selection_key_reads_the_task_kind_not_the_metric_names():
    assert selection_key(CLASS, "macro_f1") == "macro_f1"
    assert selection_key(CLASS, "mae") == "weighted_f1"  # a class task of a regression scheme
    assert selection_key(REGRESSION, "macro_f1") == "mae"
    assert selection_text("macro_f1") == "validation macro-F1 (ties: accuracy, then loss)"
    assert selection_text("accuracy") == "validation accuracy (ties: loss)"
    assert selection_text("mae") == "validation MAE (ties: correlation, then loss)"


def test_the_label_schemes_selection_metrics_are_the_tables_classification_metrics():
    assert set(SELECTION_METRICS) == {m.name for m in metrics_for(CLASS)}
    assert all(t in METRIC_TABLE for m in METRIC_TABLE.values() for t in m.ties)


def _metrics_json(kinds: dict | None) -> dict:
    val = {
        "5": {"accuracy": 0.5, "macro_f1": 0.4, "weighted_f1": 0.45},
        "s": {"mae": 0.7, "corr": 0.2},
    }
    out = {
        "run_dir": "r",
        "best_epoch": 1,
        "epochs_run": 2,
        "config": {"task": "5"},
        "val": val,
        "test": {},
        "classes": {"5": list("ABCDE")},
        "calls": {"train": 1},
    }
    if kinds is not None:
        out["kinds"] = kinds
    return out


def test_summary_reads_the_task_kind():
    text = format_summary(_metrics_json({"5": CLASS, "s": REGRESSION}))
    assert "MAE 0.700" in text and "r 0.200" in text and "50.00" in text
    # a run made before kinds were written: a task with classes is a classification
    assert format_summary(_metrics_json(None)) == text
    # the kind decides, not the keys: a regression-kind task with accuracy keys shows MAE
    flipped = format_summary(_metrics_json({"5": REGRESSION, "s": REGRESSION}))
    assert "MAE nan" in flipped


def test_marketcalls_tasks_are_classifications():
    assert {t.kind for t in MARKETCALLS.tasks} == {CLASS}
