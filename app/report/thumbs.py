"""Validation images for the report: image | ground truth | prediction side by side, as one small JPEG each.

The image and its mask are read from the paths per_image.npz records; the prediction is the predicted mask
per_image.npz holds (at the training size), resized to the thumbnail. A thumbnail is
THUMB_HEIGHT px high at JPEG quality 80: about 25-45 kB for a 480x270 photo, so two dozen of them cost about
1 MB whatever the size of the validation set.
"""

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from app.data.images import read_rgb
from app.plots import overlay

THUMB_HEIGHT = 150  # px per panel; 3 panels side by side
GAP = 4  # white px between panels


@dataclass
class Pick:
    """One validation image chosen for the page."""

    image: str  # path of the image
    mask: str  # path of its ground-truth mask PNG
    score: float  # its mIoU
    note: str  # e.g. its worst classes
    label: str = ""  # e.g. the fold it was validated in
    prediction: np.ndarray | None = None  # the predicted class ids, any size


def strip(pick: Pick, colours: np.ndarray) -> tuple[np.ndarray | None, set[int]]:
    """(RGB image | truth | prediction strip, class ids shown) or (None, {}) when the image or mask is gone."""
    if not Path(pick.image).is_file() or not Path(pick.mask).is_file():
        return None, set()
    image = read_rgb(pick.image)
    truth = cv2.imread(pick.mask, cv2.IMREAD_UNCHANGED)
    h, w = image.shape[:2]
    size = (max(1, round(w * THUMB_HEIGHT / h)), THUMB_HEIGHT)
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    truth = cv2.resize(truth, size, interpolation=cv2.INTER_NEAREST)
    panels = [small, overlay(small, truth, colours)]
    shown = set(np.unique(truth).tolist())
    if pick.prediction is not None:
        pred = cv2.resize(pick.prediction, size, interpolation=cv2.INTER_NEAREST)
        panels.append(overlay(small, pred, colours))
        shown |= set(np.unique(pred).tolist())
    gap = np.full((THUMB_HEIGHT, GAP, 3), 255, np.uint8)
    joined = [p for panel in panels for p in (panel, gap)][:-1]
    return np.concatenate(joined, axis=1), {int(c) for c in shown if 0 < c < len(colours)}
