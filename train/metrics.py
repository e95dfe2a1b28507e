"""Evaluation for every task, from one table of metrics (:data:`METRIC_TABLE`): accuracy, macro-F1 and
weighted-F1 (and the confusion matrix) for a classification; MAE and Pearson correlation for a
regression, with the classification tasks derived from the predicted value the way the field
reports CMU-MOSI/MOSEI (Acc2 in both conventions, F1, Acc5, Acc7).

Macro-F1 averages over the classes present in the truth or the predictions (scikit-learn's
default): a class that is neither in the data nor predicted does not count as an F1 of 0.
Adding a metric: one row in METRIC_TABLE (its one-sample and its vectorised bootstrap function); the
history, the selection, the sweep tables, the summary and the plots read the table.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

CLASS, REGRESSION = "class", "regression"  # pipeline.labels.Task.kind


def _confusions(t: np.ndarray, p: np.ndarray, k: int) -> np.ndarray:
    """(B, k, k) [true, pred] confusion matrices of the rows of (B, n) class indices."""
    b = np.arange(len(t))[:, None]
    flat = np.bincount((b * k * k + t * k + p).ravel(), minlength=len(t) * k * k)
    return flat.reshape(len(t), k, k)


def _f1s(conf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(macro F1, weighted F1) of a stack of confusion matrices (B, k, k) [true, pred], as
    scikit-learn computes them with zero_division=0: macro over the classes present in the truth
    or the predictions, weighted by each class's support."""
    tp = np.diagonal(conf, axis1=1, axis2=2).astype(np.float64)
    support, predicted = conf.sum(2).astype(np.float64), conf.sum(1).astype(np.float64)
    denom = support + predicted
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    present = (denom > 0).sum(1)
    macro = np.divide(f1.sum(1), present, out=np.zeros(len(f1)), where=present > 0)
    total = support.sum(1)
    weighted = np.divide((f1 * support).sum(1), total, out=np.zeros(len(f1)), where=total > 0)
    return macro, weighted


def _pearson(t: np.ndarray, p: np.ndarray, k: int = 1) -> np.ndarray:
    tc, pc = t - t.mean(1, keepdims=True), p - p.mean(1, keepdims=True)
    den = np.sqrt((tc * tc).sum(1) * (pc * pc).sum(1))
    return np.divide((tc * pc).sum(1), den, out=np.full(len(t), np.nan), where=den > 0)


def _corr(t: np.ndarray, p: np.ndarray) -> float:
    constant = len(t) < 2 or t.std() == 0 or p.std() == 0
    return math.nan if constant else float(np.corrcoef(t, p)[0, 1])


@dataclass(frozen=True)
class Metric:
    """One figure. ``one(truth, pred, k)``: its value on one sample (scikit-learn where it has it);
    ``resampled(truth, pred, k)``: its values on (B, n) rows of resampled items at once (the
    bootstrap). ``ties``: the metrics that break a tie when it selects a checkpoint, then the
    validation loss. ``percent``: shown × 100; else with ``short`` before it."""

    name: str
    label: str
    short: str
    kind: str
    higher_is_better: bool
    one: Callable[[np.ndarray, np.ndarray, int], float]
    resampled: Callable[[np.ndarray, np.ndarray, int], np.ndarray]
    percent: bool = True
    ties: tuple[str, ...] = ()


METRIC_TABLE: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric(
            "accuracy",
            "accuracy",
            "acc",
            CLASS,
            True,
            lambda t, p, k: float(accuracy_score(t, p)),
            lambda t, p, k: (t == p).mean(1),
        ),
        Metric(
            "macro_f1",
            "macro-F1",
            "mF1",
            CLASS,
            True,
            lambda t, p, k: float(f1_score(t, p, average="macro", zero_division=0)),
            lambda t, p, k: _f1s(_confusions(t, p, k))[0],
            ties=("accuracy",),
        ),
        Metric(
            "weighted_f1",
            "weighted F1",
            "wF1",
            CLASS,
            True,
            lambda t, p, k: float(f1_score(t, p, average="weighted", zero_division=0)),
            lambda t, p, k: _f1s(_confusions(t, p, k))[1],
            ties=("accuracy",),
        ),
        Metric(
            "mae",
            "MAE",
            "MAE",
            REGRESSION,
            False,
            lambda t, p, k: float(np.abs(t - p).mean()) if len(t) else math.nan,
            lambda t, p, k: np.abs(t - p).mean(1),
            percent=False,
            ties=("corr",),
        ),
        Metric(
            "corr",
            "correlation",
            "r",
            REGRESSION,
            True,
            lambda t, p, k: _corr(t, p),
            _pearson,
            percent=False,
        ),
    )
}


def metrics_for(kind: str) -> list[Metric]:
    """The table's metrics of a task kind, in table order (the first is the headline figure)."""
    return [m for m in METRIC_TABLE.values() if m.kind == kind]


def selection_key(kind: str, selection: str) -> str:
    """The metric that selects checkpoints on a task of ``kind``: the scheme's ``selection`` where
    it is one of that kind's metrics, else the kind's default (weighted F1; MAE)."""
    if selection in [m.name for m in metrics_for(kind)]:
        return selection
    return "mae" if kind == REGRESSION else "weighted_f1"


def selection_text(key: str) -> str:
    """How metrics.json and the summary describe the selection, e.g. "validation macro-F1 (ties:
    accuracy, then loss)"."""
    ties = [METRIC_TABLE[t].label for t in METRIC_TABLE[key].ties] + ["loss"]
    return f"validation {METRIC_TABLE[key].label} (ties: {', then '.join(ties)})"


def selection_score(m: dict, key: str, loss: float | None) -> tuple:
    """Larger is better: the rank of a task's validation metrics ``m`` when ``key`` selects (the
    trainer's epochs and the sweep's trials are ranked by this one rule): the metric, its ties, then
    the lower validation loss; a missing or NaN figure ranks worst."""

    def worst(x):
        return -math.inf if x is None or (isinstance(x, float) and math.isnan(x)) else x

    def signed(name):
        v = worst(m.get(name))
        return v if METRIC_TABLE[name].higher_is_better or v == -math.inf else -v

    return (
        signed(key),
        *(signed(t) for t in METRIC_TABLE[key].ties),
        worst(None if loss is None else -loss),
    )


def task_kind(metrics: dict, task: str) -> str:
    """The kind of a reported task in a run's metrics.json (``kinds``; runs made before it was
    written: a task with classes is a classification)."""
    kinds = metrics.get("kinds") or {}
    if task in kinds:
        return kinds[task]
    return CLASS if task.split(":")[0] in metrics.get("classes", {}) else REGRESSION


def headline(m: dict, kind: str) -> str:
    return " ".join(f"{x.short} {m.get(x.name, math.nan):.3f}" for x in metrics_for(kind))


def task_metrics(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> dict:
    out: dict = {"n": int(len(y_true))}
    for metric in metrics_for(CLASS):
        out[metric.name] = metric.one(y_true, y_pred, num_classes)
    out["confusion"] = confusion_matrix(y_true, y_pred, labels=list(range(num_classes))).tolist()
    return out


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    y_true, y_pred = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
    out: dict = {"n": int(len(y_true))}
    for metric in metrics_for(REGRESSION):
        out[metric.name] = metric.one(y_true, y_pred, 1)
    return out


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


def reported_task(scheme, name: str):
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
        task = reported_task(scheme, name)
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


def _resampled(
    metric: str, truth: np.ndarray, pred: np.ndarray, idx: np.ndarray, k: int
) -> np.ndarray:
    return METRIC_TABLE[metric].resampled(truth[idx], pred[idx], k)  # (B, n) rows


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
        task = reported_task(scheme, name)
        truth = np.asarray(y_true[task.name])
        metrics = [m.name for m in metrics_for(task.kind)]
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
