"""Pictures a person would rather look at than read: mask overlays and grids, curves, confusion, class shares.

Every function takes plain values (arrays, lists, a history CSV) and writes one PNG atomically; none knows
where the values came from. matplotlib is imported inside them, on the Agg backend (no screen needed).
"""

import csv
from pathlib import Path

import numpy as np

from app.atomic import savefig


def palette(n_classes: int) -> np.ndarray:
    """(n, 3) uint8 RGB colours: background black, classes from matplotlib's tab20 (then hsv beyond 20)."""
    from matplotlib import colormaps

    tab = colormaps["tab20"]
    colours = [tab(i % 20)[:3] if n_classes <= 21 else colormaps["hsv"](i / n_classes)[:3] for i in range(n_classes)]
    out = (np.array(colours) * 255).astype(np.uint8)
    out = np.roll(out, 1, axis=0)
    out[0] = 0
    return out


def overlay(image: np.ndarray, mask: np.ndarray, colours: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """RGB image with class colours blended where mask > 0 (ignore value 255 shown white)."""
    out = image.astype(np.float32).copy()
    labelled = (mask > 0) & (mask < len(colours))
    out[labelled] = (1 - alpha) * out[labelled] + alpha * colours[mask[labelled]]
    out[mask == 255] = 255
    return out.clip(0, 255).astype(np.uint8)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_grid(
    images: list[np.ndarray], masks: list[np.ndarray], titles: list[str], codes: list[str], path: Path, columns: int = 4
) -> Path:
    """Writes a PNG grid of overlays with a legend of the classes that appear."""
    from matplotlib.patches import Patch

    plt = _pyplot()
    colours = palette(len(codes))
    rows = max(1, -(-len(images) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.8 * rows + 0.8), squeeze=False)
    present = set()
    for ax, image, mask, title in zip(axes.flat, images, masks, titles):
        ax.imshow(overlay(image, mask, colours))
        ax.set_title(title, fontsize=8)
        present |= {int(v) for v in np.unique(mask) if 0 < v < len(codes)}
    for ax in axes.flat:
        ax.axis("off")
    handles = [Patch(color=colours[i] / 255, label=f"{i} {codes[i]}") for i in sorted(present)]
    if any((m == 255).any() for m in masks):  # pseudo-labels' unconfident pixels
        handles.append(Patch(facecolor="white", edgecolor="grey", label="255 ignore"))
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(6, len(handles)), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06 if handles else 0, 1, 1))
    savefig(fig, path, dpi=100)
    plt.close(fig)
    return Path(path)


def plot_history(history_csv: str | Path, path: str | Path) -> Path:
    """Train/valid loss and validation mIoU per epoch (stage boundaries dashed) as one PNG."""
    plt = _pyplot()
    with Path(history_csv).open(newline="") as f:
        rows = list(csv.DictReader(f))
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
    savefig(fig, path, dpi=100)
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
        _cell_values(ax, rows)
    ax.set_title("confusion matrix (row-normalised)")
    fig.tight_layout()
    savefig(fig, path, dpi=100)
    plt.close(fig)
    return Path(path)


def _cell_values(ax, rows: np.ndarray) -> None:
    for (i, j), value in np.ndenumerate(rows):
        if value >= 0.005:
            colour = "white" if value > 0.5 else "black"
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=6, color=colour)


def plot_class_shares(names: list[str], rows: list[dict], title: str, path: str | Path) -> Path:
    """Bar chart of pixel share per class (log axis), instance counts above the bars.

    Classes without pixels cannot sit on a log axis; they get a red cross below the smallest bar.

    Args:
        names: Class names, background first.
        rows: Per class: {"share", "pixels", "instances"}.
        title: The chart's title.
        path: The PNG to write.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(6.0, 0.5 * len(names) + 2.0), 5.0), layout="constrained")
    FigureCanvasAgg(fig)  # the Agg backend, without touching pyplot's global state
    ax = fig.add_subplot()
    _draw_bars(ax, rows)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_ylabel("pixel share (log scale)")
    ax.grid(axis="y", which="major", alpha=0.3)
    ax.set_title(title, fontsize=10)
    return savefig(fig, path, dpi=120)


def _draw_bars(ax, rows: list[dict]) -> None:
    """Bars of pixel share on a log axis, background grey, each labelled with its instance count."""
    shares = [r["share"] for r in rows]
    present = [s for s in shares if s > 0]
    floor = min(present) / 3 if present else 1e-6  # where zero-pixel classes are marked
    colors = ["0.65"] + ["tab:blue"] * (len(rows) - 1)
    ax.bar(range(len(rows)), [s if s > 0 else np.nan for s in shares], color=colors, edgecolor="0.2")
    ax.set_yscale("log")
    ax.set_ylim(floor / 2, 4.0 if present else 1.0)  # headroom for the label above the background bar
    for i, row in enumerate(rows):
        label = "–" if i == 0 else f"{row['instances']}"
        y = row["share"]
        if row["pixels"] == 0:
            ax.plot(i, floor, marker="x", color="crimson", markersize=8)
            label, y = label + "\n0 px", floor
        ax.annotate(label, (i, y), xytext=(0, 3), textcoords="offset points", ha="center", va="bottom", fontsize=8)


def _num(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        return float("nan")
