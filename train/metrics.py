"""Evaluation for every task: accuracy, macro-F1, weighted-F1 and the confusion matrix
(scikit-learn) for a classification; MAE and Pearson correlation for a regression, with the
classification tasks derived from the predicted value the way the field reports CMU-MOSI/MOSEI (Acc2
in both conventions, F1, Acc5, Acc7)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score


def task_metrics(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> dict:
    labels = list(range(num_classes))
    return {
        "n": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(
            f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)
        ),
        "weighted_f1": float(
            f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0)
        ),
        "confusion": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    y_true, y_pred = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
    constant = len(y_true) < 2 or y_true.std() == 0 or y_pred.std() == 0
    corr = math.nan if constant else float(np.corrcoef(y_true, y_pred)[0, 1])
    return {
        "n": int(len(y_true)),
        "mae": float(np.abs(y_true - y_pred).mean()) if len(y_true) else math.nan,
        "corr": corr,
    }


def classes_from_values(
    task, values: np.ndarray, value_range: tuple[float, float] | None
) -> np.ndarray:
    """Class indices of ``task`` for predicted values, through the same label map as the true
    labels."""
    lo, hi = value_range or (-math.inf, math.inf)
    return np.array(
        [task.encode_one(repr(float(np.clip(v, lo, hi)))) for v in values], dtype=np.int64
    )


def nonzero_binary(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    """Acc2/F1 in the "negative vs positive" convention: items whose true value is exactly 0 are
    left out."""
    keep = y_true != 0
    t, p = y_true[keep] > 0, y_pred[keep] > 0
    if not keep.any():
        return {"n_nonzero": 0, "accuracy_nonzero": math.nan, "weighted_f1_nonzero": math.nan}
    return {
        "n_nonzero": int(keep.sum()),
        "accuracy_nonzero": float(accuracy_score(t, p)),
        "weighted_f1_nonzero": float(f1_score(t, p, average="weighted", zero_division=0)),
    }


@dataclass(frozen=True)
class Reported:
    pred: np.ndarray  # class indices, or values for a regression
    derived_from: str | None  # the head it comes from when the task has none of its own
    # (items, classes) when known: a head's softmax, or summed through a map
    probs: np.ndarray | None = None


def reported_predictions(scheme, outputs: dict[str, np.ndarray]) -> dict[str, Reported]:
    """The one rule for what every reported task predicts (the metrics, the run's prediction files
    and ``msmtfn-predict`` all call this, so a published figure describes what users get).

    ``outputs``: per head, class probabilities (items, k) or class indices (items,), or values for a
    regression. A task with its own head takes that head's most probable class. A task without one
    (single-task training) is derived from a finer head through the scheme's label map: its classes'
    probabilities are the sums of the finer classes mapped to them and it takes the most probable
    (with class indices alone: the map of the index, the same thing for one-hot probabilities).
    Where a regression head exists (CMU-MOSI/MOSEI), every classification task comes from its value
    (clipped and rounded), as the field reports them, and a class head trained beside it is reported
    as ``<task>:head``."""
    out: dict[str, Reported] = {}
    reg = next((t for t in scheme.tasks if t.is_regression and t.name in outputs), None)

    def own(name: str, x: np.ndarray) -> Reported:
        x = np.asarray(x)
        return (
            Reported(x.argmax(-1), None, x) if x.ndim == 2 else Reported(x.astype(np.int64), None)
        )

    for task in scheme.tasks:
        if task.is_regression:
            if task.name in outputs:
                out[task.name] = Reported(
                    np.asarray(outputs[task.name], dtype=np.float64).reshape(-1), None
                )
            continue
        if reg is not None:
            values = np.asarray(outputs[reg.name], dtype=np.float64).reshape(-1)
            out[task.name] = Reported(classes_from_values(task, values, reg.value_range), reg.name)
            if task.name in outputs:
                out[f"{task.name}:head"] = own(task.name, outputs[task.name])
            continue
        if task.name in outputs:
            out[task.name] = own(task.name, outputs[task.name])
            continue
        for src, x in outputs.items():
            m = scheme.class_map(src, task.name)
            if m is None:
                continue
            x = np.asarray(x)
            if x.ndim == 2:
                probs = x @ np.eye(task.num_classes)[m]  # (items, fine) -> (items, coarse), summed
                out[task.name] = Reported(probs.argmax(-1), src, probs)
            else:
                out[task.name] = Reported(m[x.astype(np.int64)], src)
            break
    return out


def _task_of(scheme, name: str):
    return scheme.task(name.split(":")[0])


def all_task_metrics(
    scheme, y_true: dict[str, np.ndarray], preds: dict[str, np.ndarray]
) -> dict[str, dict]:
    """Metrics for every reported task (:func:`reported_predictions`) from each head's ``preds``
    (probabilities or class indices, or values for a regression); derived tasks are marked
    ``derived_from``."""
    out: dict[str, dict] = {}
    reg = next((t for t in scheme.tasks if t.is_regression and t.name in preds), None)
    for name, rep in reported_predictions(scheme, preds).items():
        p, src = rep.pred, rep.derived_from
        task = _task_of(scheme, name)
        truth = y_true[task.name]
        if task.is_regression:
            out[name] = regression_metrics(truth, p)
            continue
        out[name] = task_metrics(truth, p, task.num_classes)
        if src is not None:
            out[name]["derived_from"] = src
        if reg is not None and src == reg.name and task.num_classes == 2:
            out[name].update(
                nonzero_binary(y_true[reg.name], np.asarray(preds[reg.name]).reshape(-1))
            )
    return out


# ------------------------------------------------------------------------------------------
# bootstrap intervals
BOOTSTRAP = 1000


def _f1s(conf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(macro F1, weighted F1) of a stack of confusion matrices (B, k, k) [true, pred]; like
    scikit-learn with zero_division=0 over every label."""
    tp = np.diagonal(conf, axis1=1, axis2=2).astype(np.float64)
    support, predicted = conf.sum(2).astype(np.float64), conf.sum(1).astype(np.float64)
    denom = support + predicted
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    total = support.sum(1, keepdims=True)
    weighted = np.divide(
        (f1 * support).sum(1), total[:, 0], out=np.zeros(len(f1)), where=total[:, 0] > 0
    )
    return f1.mean(1), weighted


def _resampled(
    metric: str, truth: np.ndarray, pred: np.ndarray, idx: np.ndarray, k: int
) -> np.ndarray:
    t, p = truth[idx], pred[idx]  # (B, n)
    if metric == "mae":
        return np.abs(t - p).mean(1)
    if metric == "corr":
        tc, pc = t - t.mean(1, keepdims=True), p - p.mean(1, keepdims=True)
        den = np.sqrt((tc * tc).sum(1) * (pc * pc).sum(1))
        return np.divide((tc * pc).sum(1), den, out=np.full(len(t), np.nan), where=den > 0)
    if metric == "accuracy":
        return (t == p).mean(1)
    b = np.arange(len(t))[:, None]
    conf = np.bincount((b * k * k + t * k + p).ravel(), minlength=len(t) * k * k).reshape(
        len(t), k, k
    )
    macro, weighted = _f1s(conf)
    return macro if metric == "macro_f1" else weighted


def bootstrap_intervals(
    scheme,
    y_true: dict[str, np.ndarray],
    preds: dict[str, np.ndarray],
    groups: np.ndarray | None = None,
    *,
    resamples: int = BOOTSTRAP,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, dict[str, list[float]]]:
    """Percentile bootstrap intervals of every reported figure: {task: {metric: [low, high]}}.

    Resamples whole calls (``groups``: the call of each item, for segment-level labels) with
    replacement, ``resamples`` times from a fixed ``seed``: the spread of a test figure that comes
    from which calls happened to be in the test split (≈ 88 MarketCalls test calls make ACC2 ± 4.5
    points)."""
    n = len(next(iter(y_true.values()))) if y_true else 0
    if n < 2:
        return {}
    rng = np.random.default_rng(seed)
    if groups is None:
        idx = rng.integers(0, n, size=(resamples, n))
    # cluster bootstrap: draw calls, keep all of their items (ragged, so one resample at a time)
    else:
        _, inverse = np.unique(groups, return_inverse=True)
        members = [np.flatnonzero(inverse == g) for g in range(inverse.max() + 1)]
        draws = rng.integers(0, len(members), size=(resamples, len(members)))
        idx = [np.concatenate([members[g] for g in row]) for row in draws]
    lo_q, hi_q = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    out: dict[str, dict[str, list[float]]] = {}
    for name, rep in reported_predictions(scheme, preds).items():
        p = rep.pred
        task = _task_of(scheme, name)
        truth = np.asarray(y_true[task.name])
        metrics = ("mae", "corr") if task.is_regression else ("accuracy", "macro_f1", "weighted_f1")
        p = np.asarray(p, dtype=np.float64 if task.is_regression else np.int64)
        truth = truth.astype(np.float64 if task.is_regression else np.int64)
        k = 1 if task.is_regression else task.num_classes
        ci = {}
        for metric in metrics:
            if isinstance(idx, list):
                values = np.concatenate([_resampled(metric, truth, p, i[None, :], k) for i in idx])
            else:
                values = _resampled(metric, truth, p, idx, k)
            values = values[~np.isnan(values)]
            if len(values):
                ci[metric] = [
                    float(np.percentile(values, lo_q)),
                    float(np.percentile(values, hi_q)),
                ]
        out[name] = ci
    return out


def selection_score(m: dict, selection: str, loss: float) -> tuple:
    """Larger is better: the validation score that picks the checkpoint (ties broken as the tuple
    says)."""
    if "mae" in m:  # a regression: lower MAE, then higher correlation
        corr = m["corr"] if not math.isnan(m["corr"]) else -1.0
        return (-m["mae"], corr, -loss)
    metric = selection if selection in ("macro_f1", "weighted_f1", "accuracy") else "weighted_f1"
    return (m[metric], m["accuracy"], -loss)


def headline(m: dict) -> str:
    if "mae" in m:
        return f"MAE {m['mae']:.3f} corr {m['corr']:.3f}"
    return f"acc {m['accuracy']:.3f} mF1 {m['macro_f1']:.3f} wF1 {m['weighted_f1']:.3f}"
