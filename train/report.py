"""The one-screen summary table printed at the end of a run."""

from __future__ import annotations

from .metrics import REGRESSION, metrics_for, task_kind

WIDTHS = (14, 14, 10)  # the three figure columns of a split


def _cells(m: dict, kind: str) -> str:
    """A split's figures in the table's metric order (a regression's with their names: MAE, r)."""
    cells = []
    for metric, width in zip(metrics_for(kind), WIDTHS):
        v = m.get(metric.name, float("nan"))
        text = f"{100 * v:.2f}" if metric.percent else f"{metric.short} {v:.3f}"
        cells.append(f"{text:>{width}}")
    cells += [f"{'':>{w}}" for w in WIDTHS[len(cells) :]]
    return "".join(cells)


def _ci_cell(m: dict, kind: str) -> str:
    """The 95 % bootstrap interval of the headline figure (accuracy; MAE) beside the test
    figures."""
    ci = m.get("ci95", {})
    metric = metrics_for(kind)[0]
    scale, digits = (100, 1) if metric.percent else (1, 3)
    if metric.name not in ci:
        return f"{'':>16}"
    lo, hi = ci[metric.name]
    return f"{f'[{scale * lo:.{digits}f}, {scale * hi:.{digits}f}]':>16}"


def _nonzero_cells(m: dict) -> str:
    return f"{100 * m['accuracy_nonzero']:>14.2f}{'':>14}{100 * m['weighted_f1_nonzero']:>10.2f}"


def format_summary(metrics: dict) -> str:
    sel = metrics["config"]["task"]
    tasks = [sel] + [t for t in metrics["val"] if t != sel]
    has_test = bool(metrics.get("test"))
    head = f"{'task':<10}{'val acc':>14}{'val mF1':>14}{'val wF1':>10}"
    if has_test:
        head += f"{'test acc':>14}{'test mF1':>14}{'test wF1':>10}{'test 95% CI':>16}"
    metric = metrics.get("selection", {}).get("metric", "validation macro-F1")
    lines = [
        f"run {metrics['run_dir']}  best epoch {metrics['best_epoch']}/{metrics['epochs_run']} "
        f"(selected on task {sel}: {metric})",
        head,
        "-" * len(head),
    ]
    for t in tasks:
        v = metrics["val"].get(t)
        if v is None:
            continue
        label = f"{t}-class" if t.isdigit() else t
        name = label + ("*" if "derived_from" in v else "")
        kind = task_kind(metrics, t)
        row = f"{name:<10}{_cells(v, kind)}"
        if has_test and t in metrics["test"]:
            row += _cells(metrics["test"][t], kind) + _ci_cell(metrics["test"][t], kind)
        lines.append(row)
        # CMU-MOSI/MOSEI's second Acc2 convention: zero-labelled items left out
        if "accuracy_nonzero" in v:
            row = f"{label + ' nz':<10}{_nonzero_cells(v)}"
            if has_test and "accuracy_nonzero" in metrics["test"].get(t, {}):
                row += _nonzero_cells(metrics["test"][t])
            lines.append(row)
    derived = {v["derived_from"] for v in metrics["val"].values() if "derived_from" in v}
    if derived & {t for t in metrics["val"] if task_kind(metrics, t) == REGRESSION}:
        lines.append(
            "* derived from the regression head's value (clipped, rounded), as the field reports them; "
            "'nz': negative vs positive, zero-labelled items left out"
        )
    elif derived:
        lines.append(
            "* derived from the single trained head through the label maps (no multi-task learning)"
        )
    if has_test:
        headline = metrics_for(task_kind(metrics, sel))[0].label
        lines.append(
            "mF1 = macro-F1 (classes weigh alike; over the classes in the truth or the predictions), "
            f"wF1 = weighted F1 (by class size); test 95% CI = bootstrap interval of test {headline} "
            "over test calls"
        )
    calls = metrics.get("calls", {})
    lines.append("calls: " + ", ".join(f"{k} {v}" for k, v in calls.items()))
    return "\n".join(lines)
