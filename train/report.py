"""The one-screen summary table printed at the end of a run."""

from __future__ import annotations


def _cells(m: dict) -> str:
    if "mae" in m:  # a regression: MAE and correlation in the accuracy / macro-F1 columns' place
        return (
            f"{'MAE ' + format(m['mae'], '.3f'):>14}{'r ' + format(m['corr'], '.3f'):>14}{'':>10}"
        )
    return (
        f"{100 * m['accuracy']:>14.2f}{100 * m['macro_f1']:>14.2f}{100 * m['weighted_f1']:>10.2f}"
    )


def _ci_cell(m: dict) -> str:
    """The 95 % bootstrap interval of the accuracy (MAE for a regression) beside the test
    figures."""
    ci = m.get("ci95", {})
    key, scale, digits = ("mae", 1, 3) if "mae" in m else ("accuracy", 100, 1)
    if key not in ci:
        return f"{'':>16}"
    lo, hi = ci[key]
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
        row = f"{name:<10}{_cells(v)}"
        if has_test and t in metrics["test"]:
            row += _cells(metrics["test"][t]) + _ci_cell(metrics["test"][t])
        lines.append(row)
        # CMU-MOSI/MOSEI's second Acc2 convention: zero-labelled items left out
        if "accuracy_nonzero" in v:
            row = f"{label + ' nz':<10}{_nonzero_cells(v)}"
            if has_test and "accuracy_nonzero" in metrics["test"].get(t, {}):
                row += _nonzero_cells(metrics["test"][t])
            lines.append(row)
    derived = {v["derived_from"] for v in metrics["val"].values() if "derived_from" in v}
    if derived & {t for t, v in metrics["val"].items() if "mae" in v}:
        lines.append(
            "* derived from the regression head's value (clipped, rounded), as the field reports them; "
            "'nz': negative vs positive, zero-labelled items left out"
        )
    elif derived:
        lines.append(
            "* derived from the single trained head through the label maps (no multi-task learning)"
        )
    if has_test:
        main = metrics["test"].get(sel, {})
        lines.append(
            "mF1 = macro-F1 (classes weigh alike), wF1 = weighted F1 (by class size); test 95% CI = "
            f"bootstrap interval of test {'MAE' if 'mae' in main else 'accuracy'} over test calls"
        )
    calls = metrics.get("calls", {})
    lines.append("calls: " + ", ".join(f"{k} {v}" for k, v in calls.items()))
    return "\n".join(lines)
