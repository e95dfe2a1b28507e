"""The one-screen summary table printed at the end of a run."""
from __future__ import annotations


def format_summary(metrics: dict) -> str:
    sel = metrics["config"]["task"]
    tasks = [sel] + [t for t in metrics["val"] if t != sel]
    has_test = bool(metrics.get("test"))
    head = f"{'task':<8}{'val acc':>9}{'val mF1':>9}{'val wF1':>9}"
    if has_test:
        head += f"{'test acc':>10}{'test mF1':>10}{'test wF1':>10}"
    lines = [f"run {metrics['run_dir']}  best epoch {metrics['best_epoch']}/{metrics['epochs_run']} "
             f"(selected on validation {sel}-class macro-F1)", head, "-" * len(head)]
    for t in tasks:
        v = metrics["val"].get(t)
        if v is None:
            continue
        name = f"{t}-class" + ("*" if "derived_from" in v else "")
        row = f"{name:<8}{100 * v['accuracy']:>9.2f}{100 * v['macro_f1']:>9.2f}{100 * v['weighted_f1']:>9.2f}"
        if has_test and t in metrics["test"]:
            s = metrics["test"][t]
            row += f"{100 * s['accuracy']:>10.2f}{100 * s['macro_f1']:>10.2f}{100 * s['weighted_f1']:>10.2f}"
        lines.append(row)
    if any("derived_from" in v for v in metrics["val"].values()):
        lines.append("* derived from the single trained head through the label maps (no multi-task learning)")
    calls = metrics.get("calls", {})
    lines.append("calls: " + ", ".join(f"{k} {v}" for k, v in calls.items()))
    return "\n".join(lines)
