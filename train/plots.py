"""PNG plots of a run: learning curves and confusion matrices (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def learning_curves(history: list[dict], task: str, kind: str, path: Path) -> None:
    """Loss per epoch, and the first two of ``kind``'s metrics (train/metrics.py) on validation."""
    from .metrics import metrics_for

    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax1.plot(epochs, [h["train_loss"] for h in history], label="train")
    ax1.plot(epochs, [h["val_loss"] for h in history], label="validation")
    ax1.set_xlabel("epoch"), ax1.set_ylabel("loss"), ax1.legend(), ax1.set_title("loss")
    shown = metrics_for(kind)[:2]
    for metric in shown:
        values = [h.get(f"val_{task}_{metric.name}", float("nan")) for h in history]
        ax2.plot(epochs, values, label=metric.label)
    if all(metric.percent for metric in shown):  # fractions of 1
        ax2.set_ylim(0, 1)
    ax2.set_xlabel("epoch"), ax2.legend(), ax2.set_title(f"validation, task {task}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def confusion_matrices(
    metrics: dict[str, dict], classes: dict[str, tuple[str, ...]], title: str, path: Path
) -> None:
    tasks = [t for t in metrics if "confusion" in metrics[t]]
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.6 * len(tasks), 3.6), squeeze=False)
    for ax, t in zip(axes[0], tasks):
        cm = metrics[t]["confusion"]
        ax.imshow(cm, cmap="Blues", vmin=0)
        top = max(1, max(max(r) for r in cm))
        names = classes[t]
        ax.set_xticks(range(len(names)), names, rotation=45, fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        for i, row in enumerate(cm):
            for j, v in enumerate(row):
                # dark cells get white counts, light cells black ones: readable on every shade of
                # the colour map
                ax.text(
                    j,
                    i,
                    str(v),
                    ha="center",
                    va="center",
                    fontsize=9,
                    color="white" if v > 0.5 * top else "black",
                )
        ax.set_xlabel("predicted"), ax.set_ylabel("true")
        ax.set_title(f"{t}-class, acc {100 * metrics[t]['accuracy']:.1f}%", fontsize=9)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
