"""Colour overlays of class masks on photos and grids of them with a legend, for looking at data and predictions."""

from pathlib import Path

import numpy as np


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


def save_grid(
    images: list[np.ndarray], masks: list[np.ndarray], titles: list[str], codes: list[str], path: Path, columns: int = 4
) -> Path:
    """Writes a PNG grid of overlays with a legend of the classes that appear."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

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
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def show_coco(
    annotations: str | Path,
    images: str | Path,
    out: str | Path,
    count: int = 12,
    seed: int = 0,
    masks: str | Path | None = None,
    columns: int = 4,
) -> Path:
    """Grid of `count` seeded-random images of a COCO json with their masks (or predicted masks from a folder).

    Args:
        annotations: The COCO json.
        images: Folder its file_names are relative to.
        out: PNG to write.
        count: How many images.
        seed: Which images (random sample, reproducible).
        masks: Optional folder of mask PNGs named like the images (e.g. `trash predict`'s masks/) to show instead.
    """
    import random

    import cv2

    from app.coco import cached_masks, load_coco

    coco = load_coco(annotations)
    chosen = sorted(random.Random(seed).sample(range(len(coco.images)), min(count, len(coco.images))))
    truth = cached_masks(coco) if masks is None else None
    pictures, labels, titles = [], [], []
    for i in chosen:
        image = coco.images[i]
        bgr = cv2.imread(str(Path(images) / image.file_name))
        if bgr is None:
            from app.errors import TrashError

            raise TrashError(f"image {image.id} ({image.file_name}) cannot be read under {images}")
        mask_path = truth[i] if truth else Path(masks) / Path(image.file_name).with_suffix(".png")
        pictures.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        labels.append(cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED))
        titles.append(f"{image.id}: {Path(image.file_name).name}")
    return save_grid(pictures, labels, titles, coco.codes, Path(out), columns)
