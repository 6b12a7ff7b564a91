"""`trash data show`: a grid of a COCO json's images with their masks (or with predicted masks) and a legend."""

import random
from pathlib import Path

import numpy as np

from app.data.coco import load_coco
from app.data.images import read_rgb
from app.data.masks import cached_masks, mask_name
from app.errors import TrashError
from app.plots import save_grid


def show_coco(
    annotations: str | Path,
    images: str | Path,
    out: str | Path,
    count: int = 12,
    seed: int = 0,
    masks: str | Path | None = None,
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
    coco = load_coco(annotations)
    chosen = sorted(random.Random(seed).sample(range(len(coco.images)), min(count, len(coco.images))))
    truth = cached_masks(coco) if masks is None else None
    pictures, labels, titles = [], [], []
    for i in chosen:
        image = coco.images[i]
        mask_path = truth[i] if truth else Path(masks) / mask_name(image.file_name)
        pictures.append(read_rgb(Path(images) / image.file_name))
        labels.append(_read_mask(mask_path, pictures[-1].shape[:2]))
        titles.append(f"{image.id}: {Path(image.file_name).name}")
    return save_grid(pictures, labels, titles, coco.codes, Path(out))


def _read_mask(path: Path, size: tuple[int, int]) -> np.ndarray:
    import cv2

    mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise TrashError(f"mask {path} cannot be read (does --masks name a `trash predict` masks/ folder?)")
    if mask.shape[:2] != size:
        raise TrashError(f"mask {path} is {mask.shape[1]}x{mask.shape[0]} but its image is {size[1]}x{size[0]}")
    return mask
