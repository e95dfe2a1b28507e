"""Evaluation for every task: accuracy, macro-F1, weighted-F1 and the confusion matrix (scikit-learn) for a
classification; MAE and Pearson correlation for a regression, with the classification tasks derived from the
predicted value the way the field reports CMU-MOSI/MOSEI (Acc2 in both conventions, F1, Acc5, Acc7)."""
from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score


def task_metrics(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> dict:
    labels = list(range(num_classes))
    return {
        "n": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0)),
        "confusion": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    y_true, y_pred = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
    constant = len(y_true) < 2 or y_true.std() == 0 or y_pred.std() == 0
    corr = math.nan if constant else float(np.corrcoef(y_true, y_pred)[0, 1])
    return {"n": int(len(y_true)), "mae": float(np.abs(y_true - y_pred).mean()) if len(y_true) else math.nan,
            "corr": corr}


def classes_from_values(task, values: np.ndarray, value_range: tuple[float, float] | None) -> np.ndarray:
    """Class indices of ``task`` for predicted values, through the same label map as the true labels."""
    lo, hi = value_range or (-math.inf, math.inf)
    return np.array([task.encode_one(repr(float(np.clip(v, lo, hi)))) for v in values], dtype=np.int64)


def nonzero_binary(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    """Acc2/F1 in the "negative vs positive" convention: items whose true value is exactly 0 are left out."""
    keep = y_true != 0
    t, p = y_true[keep] > 0, y_pred[keep] > 0
    if not keep.any():
        return {"n_nonzero": 0, "accuracy_nonzero": math.nan, "weighted_f1_nonzero": math.nan}
    return {"n_nonzero": int(keep.sum()), "accuracy_nonzero": float(accuracy_score(t, p)),
            "weighted_f1_nonzero": float(f1_score(t, p, average="weighted", zero_division=0))}


def all_task_metrics(scheme, y_true: dict[str, np.ndarray], preds: dict[str, np.ndarray]) -> dict[str, dict]:
    """Metrics for every task of the scheme from ``preds`` (class indices, or values for a regression).

    Tasks without a head of their own (single-task training) are derived from a finer task's predictions through
    the scheme's label maps, and marked ``derived_from``. Where a regression head exists (CMU-MOSI/MOSEI), every
    classification task is derived from its value, as the field reports them, and a class head trained beside
    it (multi-task learning) is reported as ``<task>:head``."""
    out: dict[str, dict] = {}
    reg = next((t for t in scheme.tasks if t.is_regression and t.name in preds), None)
    for task in scheme.tasks:
        if task.is_regression:
            if task.name in preds:
                out[task.name] = regression_metrics(y_true[task.name], preds[task.name])
            continue
        if reg is not None:
            p = classes_from_values(task, preds[reg.name], reg.value_range)
            out[task.name] = {**task_metrics(y_true[task.name], p, task.num_classes), "derived_from": reg.name}
            if task.num_classes == 2:
                out[task.name].update(nonzero_binary(y_true[reg.name], preds[reg.name]))
            if task.name in preds:
                out[f"{task.name}:head"] = task_metrics(y_true[task.name], preds[task.name], task.num_classes)
            continue
        if task.name in preds:
            out[task.name] = task_metrics(y_true[task.name], preds[task.name], task.num_classes)
            continue
        for src, p in preds.items():
            m = scheme.class_map(src, task.name)
            if m is not None:
                out[task.name] = {**task_metrics(y_true[task.name], m[p], task.num_classes), "derived_from": src}
                break
    return out


def selection_score(m: dict, selection: str, loss: float) -> tuple:
    """Larger is better: the validation score that picks the checkpoint (ties broken as the tuple says)."""
    if "mae" in m:   # a regression: lower MAE, then higher correlation
        corr = m["corr"] if not math.isnan(m["corr"]) else -1.0
        return (-m["mae"], corr, -loss)
    metric = selection if selection in ("macro_f1", "weighted_f1", "accuracy") else "weighted_f1"
    return (m[metric], m["accuracy"], -loss)


def headline(m: dict) -> str:
    if "mae" in m:
        return f"MAE {m['mae']:.3f} corr {m['corr']:.3f}"
    return f"acc {m['accuracy']:.3f} mF1 {m['macro_f1']:.3f} wF1 {m['weighted_f1']:.3f}"
