"""The report's figures as matplotlib figures: curves, learning rate, per-class IoU over epochs, class weights.

Each takes plain values (history rows, class names) and returns a figure; app/report/page.py encodes it.
The confusion matrix is app.plots.confusion_figure, the one `trash fit` writes as confusion.png.
"""

import numpy as np

from app.plots import MAX_CLASSES_SHOWN, pyplot


def num(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _stage_lines(ax, rows: list[dict]) -> None:
    for r, prev in zip(rows[1:], rows):
        if r.get("stage") != prev.get("stage"):
            ax.axvline(int(r["epoch"]) - 0.5, ls="--", color="grey", lw=1)


def curves_figure(runs: dict[str, list[dict]]):
    """Loss (train solid, valid dashed), validation mIoU and learning rate per epoch; one colour per run."""
    from matplotlib.ticker import MaxNLocator

    plt = pyplot()
    fig, (loss_ax, iou_ax, lr_ax) = plt.subplots(1, 3, figsize=(13.5, 3.6))
    for k, (label, rows) in enumerate(runs.items()):
        colour = f"C{k % 10}"
        epochs = [int(r["epoch"]) for r in rows]
        prefix = f"{label} " if len(runs) > 1 else ""
        loss_ax.plot(epochs, [num(r.get("train_loss")) for r in rows], color=colour, label=f"{prefix}train")
        loss_ax.plot(epochs, [num(r.get("valid_loss")) for r in rows], color=colour, ls="--", label=f"{prefix}valid")
        iou_ax.plot(epochs, [num(r.get("miou")) for r in rows], marker="o", ms=3, color=colour, label=label)
        lr_ax.plot(epochs, [num(r.get("lr")) for r in rows], marker=".", color=colour, label=label)
        if len(runs) == 1:
            for ax in (loss_ax, iou_ax, lr_ax):
                _stage_lines(ax, rows)
    for ax, title in ((loss_ax, "loss"), (iou_ax, "validation mIoU"), (lr_ax, "learning rate (end of epoch)")):
        ax.set_title(title, fontsize=11)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    loss_ax.legend(fontsize=8)
    if len(runs) > 1:
        iou_ax.legend(fontsize=8)
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    fig.tight_layout()
    return fig


def class_iou_heatmap(rows: list[dict], classes: list[str]):
    """Per-class validation IoU (rows, background first) over epochs (columns); blank where a class is absent."""
    plt = pyplot()
    values = np.array([[num(r.get(f"iou_{c}")) for r in rows] for c in classes]).reshape(len(classes), len(rows))
    title = "validation IoU per class and epoch"
    if len(classes) > MAX_CLASSES_SHOWN + 1:  # the classes scored in the most epochs (ties: the first ones)
        keep = sorted(np.argsort(-np.isfinite(values).sum(1), kind="stable")[:MAX_CLASSES_SHOWN])
        title += f" ({MAX_CLASSES_SHOWN} of {len(classes)} classes: those scored in the most epochs)"
        values, classes = values[keep], [classes[i] for i in keep]
    epochs = [int(r["epoch"]) for r in rows]
    width = min(13.5, 6.0 + 0.35 * len(epochs))
    fig, ax = plt.subplots(figsize=(width, 1.2 + 0.26 * len(classes)))
    shown = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    step = max(1, len(epochs) // 25)
    ax.set_xticks(range(0, len(epochs), step), epochs[::step], fontsize=8)
    ax.set_xlabel("epoch")
    ax.set_facecolor("#eeeeee")  # absent (no pixel in truth or prediction)
    if len(epochs) <= 16 and len(classes) <= 30:
        for (i, j), v in np.ndenumerate(values):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="white" if v < 0.6 else "black")
    fig.colorbar(shown, ax=ax, fraction=0.03, pad=0.01, label="IoU")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def class_weights_figure(rows: list[dict]):
    """Class weights per epoch (adaptive weights), one line per class."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 3.6))
    epochs = [int(r["epoch"]) for r in rows]
    for name in [k for k in rows[0] if k != "epoch"]:
        ax.plot(epochs, [num(r[name]) for r in rows], marker=".", label=name)
    ax.set_xlabel("epoch")
    ax.set_title("class weights per epoch", fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    return fig
