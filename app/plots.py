"""Training plots a person would rather look at than read: loss and mIoU curves, the confusion matrix."""

import csv
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_history(history_csv: str | Path, path: str | Path) -> Path:
    """Train/valid loss and validation mIoU per epoch (stage boundaries dashed) as one PNG."""
    plt = _pyplot()
    rows = list(csv.DictReader(Path(history_csv).open()))
    epochs = [int(r["epoch"]) for r in rows]
    fig, (loss_ax, iou_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for key in ("train_loss", "valid_loss"):
        loss_ax.plot(epochs, [_num(r[key]) for r in rows], marker="o", label=key)
    iou_ax.plot(epochs, [_num(r["miou"]) for r in rows], marker="o", color="tab:green", label="valid mIoU")
    for ax in (loss_ax, iou_ax):
        for r, prev in zip(rows[1:], rows):
            if r["stage"] != prev["stage"]:
                ax.axvline(int(r["epoch"]) - 0.5, ls="--", color="grey", lw=1)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    loss_ax.set_title("loss")
    iou_ax.set_title(f"validation mIoU (best {max(_num(r['miou']) for r in rows):.4f})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def plot_confusion(cm, codes: list[str], path: str | Path) -> Path:
    """Row-normalised confusion matrix (rows = truth): where each class's pixels went."""
    plt = _pyplot()
    cm = np.asarray(cm, dtype=np.float64)
    rows = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    n = len(codes)
    fig, ax = plt.subplots(figsize=(2 + 0.45 * n, 1.5 + 0.45 * n))
    ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), codes, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), codes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 24:
        for i in range(n):
            for j in range(n):
                if rows[i, j] >= 0.005:
                    ax.text(
                        j,
                        i,
                        f"{rows[i, j]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=6,
                        color="white" if rows[i, j] > 0.5 else "black",
                    )
    ax.set_title("confusion matrix (row-normalised)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def _num(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        return float("nan")
