"""Per-call evaluation for every task: accuracy, macro-F1, weighted-F1 and the confusion matrix (scikit-learn)."""
from __future__ import annotations

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


def all_task_metrics(scheme, y_true: dict[str, np.ndarray], preds: dict[str, np.ndarray]) -> dict[str, dict]:
    """Metrics for every task of the scheme. Tasks without a head of their own (single-task training) are
    derived from a finer task's predictions through the scheme's label maps, and marked as such."""
    out = {}
    for task in scheme.tasks:
        if task.name in preds:
            out[task.name] = task_metrics(y_true[task.name], preds[task.name], task.num_classes)
            continue
        for src, p in preds.items():
            m = scheme.class_map(src, task.name)
            if m is not None:
                out[task.name] = {**task_metrics(y_true[task.name], m[p], task.num_classes), "derived_from": src}
                break
    return out
