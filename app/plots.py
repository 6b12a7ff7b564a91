"""Pictures a person would rather look at than read: mask overlays and grids, curves, confusion, class shares.

Every function takes plain values (arrays, lists, a history CSV) and writes one PNG atomically; none knows
where the values came from. matplotlib is imported inside them, on the Agg backend (no screen needed).
"""

import csv
from pathlib import Path

import numpy as np

from app.atomic import savefig

#: Kelly's colours of maximum contrast (K. Kelly, 1965), white and black left out, plus cyan and magenta: 22
#: classes that stay apart side by side (hsv's evenly spaced hues put neighbours in near-identical colours)
KELLY = (
    "F3C300 875692 F38400 A1CAF1 BE0032 C2B280 848482 008856 E68FAC 0067A5 F99379 604E97 F6A600 B3446C "
    "DCD300 882D17 8DB600 654522 E25822 2B3D26 00C8C8 FF00FF"
).split()


def palette(n_classes: int) -> np.ndarray:
    """(n, 3) uint8 RGB colours: background black, classes from matplotlib's tab20 up to 20 classes, Kelly's
    22 colours up to 22, then hsv."""
    from matplotlib import colormaps

    if 21 < n_classes <= len(KELLY) + 1:
        colours = [(0, 0, 0)] + [tuple(int(c[i : i + 2], 16) / 255 for i in (0, 2, 4)) for c in KELLY[: n_classes - 1]]
        return (np.array(colours) * 255).round().astype(np.uint8)
    tab = colormaps["tab20"]
    colours = [tab(i % 20)[:3] if n_classes <= 21 else colormaps["hsv"](i / n_classes)[:3] for i in range(n_classes)]
    out = (np.array(colours) * 255).astype(np.uint8)
    out = np.roll(out, 1, axis=0)
    out[0] = 0
    return out


def overlay(image: np.ndarray, mask: np.ndarray, colours: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """RGB image with class colours blended where mask > 0 (the ignore value, 255 or 65535, shown white)."""
    out = image.astype(np.float32).copy()
    labelled = (mask > 0) & (mask < len(colours))
    out[labelled] = (1 - alpha) * out[labelled] + alpha * colours[mask[labelled]]
    out[mask == (65535 if mask.dtype == np.uint16 else 255)] = 255
    return out.clip(0, 255).astype(np.uint8)


def pyplot():
    """matplotlib.pyplot on the Agg backend (no screen needed)."""
    return _pyplot()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


MAX_LEGEND = 36  # classes named in a grid's legend (the most frequent in it); the rest are counted
MAX_CLASSES_SHOWN = 40  # classes drawn in a confusion matrix or a class chart: a readable figure at 300 classes


def save_grid(
    images: list[np.ndarray], masks: list[np.ndarray], titles: list[str], codes: list[str], path: Path, columns: int = 4
) -> Path:
    """Writes a PNG grid of overlays with a legend of the classes that appear, below the grid (never over it)."""
    plt = _pyplot()
    colours = palette(len(codes))
    rows = max(1, -(-len(images) // columns))
    handles = _legend_handles(masks, codes, colours)
    legend_rows = -(-len(handles) // 6)
    legend_height = 0.3 + 0.22 * legend_rows  # inches
    height = 2.8 * rows + legend_height
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, height), squeeze=False)
    for ax, image, mask, title in zip(axes.flat, images, masks, titles):
        ax.imshow(overlay(image, mask, colours))
        ax.set_title(title, fontsize=8)
    return _finish_grid(fig, axes, handles, legend_height / height, path, dpi=100)


def _legend_handles(masks: list[np.ndarray], codes: list[str], colours: np.ndarray) -> list:
    """Legend entries of the classes in the masks, most pixels first, at most MAX_LEGEND (then '+N more')."""
    from matplotlib.patches import Patch

    counts = np.zeros(len(codes), np.int64)
    for mask in masks:
        values, n = np.unique(mask, return_counts=True)
        keep = (values > 0) & (values < len(codes))
        counts[values[keep].astype(int)] += n[keep]
    present = [int(i) for i in np.argsort(-counts) if counts[i] > 0]
    handles = [Patch(color=colours[i] / 255, label=f"{i} {codes[i]}") for i in present[:MAX_LEGEND]]
    if len(present) > MAX_LEGEND:
        handles.append(Patch(facecolor="none", edgecolor="none", label=f"+{len(present) - MAX_LEGEND} more classes"))
    if any((m == 255).any() for m in masks) and len(codes) <= 255:  # pseudo-labels' unconfident pixels
        handles.append(Patch(facecolor="white", edgecolor="grey", label="255 ignore"))
    return handles


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


def top_classes(cm: np.ndarray, codes: list[str], k: int = MAX_CLASSES_SHOWN) -> tuple[np.ndarray, list[str]]:
    """The confusion matrix of the k classes with the most true or predicted pixels (background always kept),
    the others summed into one 'other classes' row and column; as is when there are at most k + 1 classes."""
    if len(codes) <= k + 1:
        return cm, list(codes)
    size = cm.sum(0) + cm.sum(1)
    keep = sorted({0, *np.argsort(-size[1:])[: k - 1] + 1})
    rest = [i for i in range(len(codes)) if i not in keep]
    index = np.array([keep.index(i) if i in keep else len(keep) for i in range(len(codes))])
    small = np.zeros((len(keep) + 1, len(keep) + 1))
    np.add.at(small, (index[:, None], index[None, :]), cm)
    return small, [codes[i] for i in keep] + [f"{len(rest)} other classes"]


def plot_confusion(cm, codes: list[str], path: str | Path) -> Path:
    """Row-normalised confusion matrix (rows = truth): where each class's pixels went (see confusion_figure)."""
    plt = _pyplot()
    fig = confusion_figure(cm, codes)
    savefig(fig, path, dpi=100)
    plt.close(fig)
    return Path(path)


def confusion_figure(cm, codes: list[str]):
    """The row-normalised confusion matrix as a matplotlib figure, class names on both axes.

    With more than MAX_CLASSES_SHOWN classes, the ones with the most pixels are drawn and the others summed
    (`top_classes`), so the figure stays readable (and under 2,500 px) from 2 to hundreds of classes.
    """
    plt = _pyplot()
    cm, codes = top_classes(np.asarray(cm, dtype=np.float64), list(codes))
    rows = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    n = len(codes)
    fig, ax = plt.subplots(figsize=(2.5 + 0.45 * n, 2 + 0.45 * n))
    ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), codes, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), codes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 24:
        _cell_values(ax, rows)
    shown = "" if not codes[-1].endswith("other classes") else f", the {n - 1} largest classes"
    ax.set_title(f"confusion matrix (row-normalised{shown})")
    fig.tight_layout()
    return fig


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

    if len(names) > MAX_CLASSES_SHOWN + 1:  # the background and the classes with the largest shares
        order = [0, *sorted(range(1, len(names)), key=lambda i: -rows[i]["share"])[:MAX_CLASSES_SHOWN]]
        title = f"{title}; the {MAX_CLASSES_SHOWN} largest of {len(names) - 1} classes"
        names, rows = [names[i] for i in order], [rows[i] for i in order]
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


def save_findings_gallery(rows: list[dict], codes: list[str], path: str | Path) -> Path:
    """One row per finding: image | labels | prediction, the finding's region outlined in yellow on each.

    Args:
        rows: Dicts with `image` (H, W, 3 RGB), `label` and `prediction` (H, W class masks), `region` (H, W bool)
            and `title` (one line naming the finding).
        codes: Class names by index (the legend).
        path: The PNG to write.
    """
    plt = _pyplot()
    colours = palette(len(codes))
    handles = _legend_handles([r["label"] for r in rows] + [r["prediction"] for r in rows], codes, colours)
    legend_height = 0.3 + 0.22 * -(-len(handles) // 6)  # inches
    height = 2.6 * max(1, len(rows)) + legend_height
    fig, axes = plt.subplots(max(1, len(rows)), 3, figsize=(10, height), squeeze=False)
    for ax_row, row in zip(axes, rows):
        panels = (
            row["image"],
            overlay(row["image"], row["label"], colours),
            overlay(row["image"], row["prediction"], colours),
        )
        for ax, panel, name in zip(ax_row, panels, ("image", "labels", "out-of-fold prediction")):
            ax.imshow(panel)
            ax.contour(row["region"].astype(np.uint8), levels=[0.5], colors="yellow", linewidths=1.2)
            ax.set_title(f"{row['title']}" if name == "image" else name, fontsize=8)
    return _finish_grid(fig, axes, handles, legend_height / height, path, dpi=90)


def _finish_grid(fig, axes, handles: list, legend_share: float, path: str | Path, dpi: int) -> Path:
    """Axes off, the one legend below the grid (its share of the height kept free), saved and closed."""
    plt = _pyplot()

    for ax in axes.flat:
        ax.axis("off")
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(6, len(handles)), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, legend_share if handles else 0, 1, 1))
    savefig(fig, path, dpi=dpi)
    plt.close(fig)
    return Path(path)
