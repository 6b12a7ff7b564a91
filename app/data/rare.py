"""Rare-class helpers for segmentation training: copy-paste, mosaic and class-balanced sampling weights.

Everything here works on plain arrays (numpy and OpenCV only, no fastai): images are (H, W, 3) uint8,
masks (H, W) integer class indices with 0 = background (the app/data/coco.py convention). Randomness comes only
from the `numpy.random.Generator` passed in, so results are reproducible; inputs are never modified.

- `copy_paste` pastes connected objects of chosen classes from a donor pair into a target pair.
- `mosaic` tiles four pairs into one square around a random centre point.
- `class_presence` and `balanced_weights` give per-image weights for a weighted sampler
  (e.g. `torch.utils.data.WeightedRandomSampler`) that shows images with rare classes more often.
"""

from collections.abc import Iterable, Sequence
from pathlib import Path

import cv2
import numpy as np


def _resize_nearest(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize with pixel centres aligned (like cv2.INTER_NEAREST_EXACT), any dtype."""
    rows = ((np.arange(height) + 0.5) * mask.shape[0] / height).astype(int)
    cols = ((np.arange(width) + 0.5) * mask.shape[1] / width).astype(int)
    return mask[rows[:, None], cols[None, :]]


def _resize_pair(image: np.ndarray, mask: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Resizes an (image, mask) pair to (height, width): image bilinear, mask nearest (centre-aligned both)."""
    if image.shape[:2] == (height, width):
        return image, mask
    image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    return image, _resize_nearest(mask, height, width)


def _components(mask: np.ndarray, classes: Sequence[int]) -> list[tuple[int, np.ndarray]]:
    """Connected components (8-connectivity) of each chosen class.

    Args:
        mask: (H, W) class-index mask.
        classes: Class indices to look for.

    Returns:
        (class index, (H, W) bool mask of one component) for every component found.
    """
    found = []
    for cls in classes:
        binary = (mask == cls).astype(np.uint8)
        if not binary.any():
            continue
        n, labels = cv2.connectedComponents(binary, connectivity=8)
        found.extend((int(cls), labels == k) for k in range(1, n))
    return found


def _object_patch(image: np.ndarray, component: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The bounding-box crop of one object (image pixels, bool shape), randomly flipped.

    Args:
        image: (H, W, C) donor image.
        component: (H, W) bool mask of the object.
        rng: Random generator (one draw per flip axis).

    Returns:
        (h, w, C) image patch and (h, w) bool shape of the object inside it.
    """
    ys, xs = np.nonzero(component)
    box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    patch, shape = image[box], component[box]
    for axis in (0, 1):
        if rng.random() < 0.5:
            patch, shape = np.flip(patch, axis), np.flip(shape, axis)
    return patch, shape


def copy_paste(
    image: np.ndarray,
    mask: np.ndarray,
    donor_image: np.ndarray,
    donor_mask: np.ndarray,
    classes: Sequence[int],
    rng: np.random.Generator,
    max_objects: int = 3,
) -> tuple[np.ndarray, np.ndarray]:
    """Pastes objects of the chosen classes from a donor (image, mask) pair onto a target pair.

    The donor pair is first resized to the target's size (mask nearest). Its objects are the connected
    components of each chosen class; up to `max_objects` of them, picked at random, are each flipped at
    random and pasted at a random position where the whole object fits. Image pixels and mask labels are
    pasted together, on top of whatever was there.

    Args:
        image: (H, W, 3) target image.
        mask: (H, W) target class-index mask.
        donor_image: (h, w, 3) donor image; any size.
        donor_mask: (h, w) donor class-index mask.
        classes: Class indices whose objects may be pasted (e.g. the rare ones).
        rng: Random generator.
        max_objects: Most objects pasted; fewer when the donor has fewer.

    Returns:
        New (image, mask) arrays; unchanged copies when the donor has no object of `classes`.
    """
    height, width = mask.shape[:2]
    donor_image, donor_mask = _resize_pair(donor_image, donor_mask, height, width)
    out_image, out_mask = image.copy(), mask.copy()
    objects = _components(donor_mask, classes)
    if not objects or max_objects < 1:
        return out_image, out_mask
    picked = rng.choice(len(objects), size=min(max_objects, len(objects)), replace=False)
    for index in picked:
        cls, component = objects[int(index)]
        patch, shape = _object_patch(donor_image, component, rng)
        top = int(rng.integers(0, height - shape.shape[0] + 1))
        left = int(rng.integers(0, width - shape.shape[1] + 1))
        region = (slice(top, top + shape.shape[0]), slice(left, left + shape.shape[1]))
        out_image[region][shape] = patch[shape]
        out_mask[region][shape] = cls
    return out_image, out_mask


def _random_crop_with_aspect(
    image: np.ndarray, mask: np.ndarray, aspect: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The largest crop of width/height ratio `aspect`, at a random position, of an (image, mask) pair."""
    height, width = mask.shape[:2]
    crop_h, crop_w = height, max(1, round(height * aspect))
    if crop_w > width:
        crop_h, crop_w = max(1, round(width / aspect)), width
    top = int(rng.integers(0, height - crop_h + 1))
    left = int(rng.integers(0, width - crop_w + 1))
    box = (slice(top, top + crop_h), slice(left, left + crop_w))
    return image[box], mask[box]


def mosaic(
    pairs: Sequence[tuple[np.ndarray, np.ndarray]], size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Tiles four (image, mask) pairs into one size x size pair around a random centre point.

    The centre is drawn uniformly from the middle half of the square ([size/4, 3*size/4] on each axis). The
    quadrants top-left, top-right, bottom-left, bottom-right take pairs 0, 1, 2, 3: each is the largest crop
    of its pair with the quadrant's aspect ratio (at a random position), resized to the quadrant (image
    bilinear, mask nearest).

    Args:
        pairs: Exactly four (image (H, W, 3), mask (H, W)) pairs, any sizes.
        size: Side of the output in pixels (at least 4).
        rng: Random generator.

    Returns:
        (size, size, 3) image and (size, size) mask, with the dtypes of the first pair.

    Raises:
        ValueError: When `pairs` does not hold four pairs or `size` < 4.
    """
    if len(pairs) != 4 or size < 4:
        raise ValueError(f"mosaic needs 4 pairs and size >= 4, got {len(pairs)} pairs and size {size}")
    cy, cx = (int(v) for v in rng.integers(size // 4, 3 * size // 4 + 1, size=2))
    first_image, first_mask = pairs[0]
    out_image = np.zeros((size, size, *first_image.shape[2:]), first_image.dtype)
    out_mask = np.zeros((size, size), first_mask.dtype)
    quadrants = [(0, cy, 0, cx), (0, cy, cx, size), (cy, size, 0, cx), (cy, size, cx, size)]
    for (image, mask), (y0, y1, x0, x1) in zip(pairs, quadrants):
        piece = _random_crop_with_aspect(image, mask, (x1 - x0) / (y1 - y0), rng)
        out_image[y0:y1, x0:x1], out_mask[y0:y1, x0:x1] = _resize_pair(*piece, y1 - y0, x1 - x0)
    return out_image, out_mask


def _read_mask(mask: np.ndarray | Path | str) -> np.ndarray:
    """A mask array as is, or a mask PNG read unchanged (class indices, not colours)."""
    if isinstance(mask, np.ndarray):
        return mask
    array = cv2.imread(str(mask), cv2.IMREAD_UNCHANGED) if Path(mask).is_file() else None
    if array is None:
        raise FileNotFoundError(f"cannot read mask {mask}")
    return array


def class_presence(masks: Iterable[np.ndarray | Path], n_classes: int) -> np.ndarray:
    """Which classes occur in which mask.

    Args:
        masks: (H, W) class-index arrays or paths of mask PNGs (read with cv2.IMREAD_UNCHANGED).
        n_classes: Number of classes, background included; larger values (e.g. ignore 255) are skipped.

    Returns:
        (n_images, n_classes) bool array, True where the class has at least one pixel in the image.
    """
    rows = []
    for mask in masks:
        values = np.unique(_read_mask(mask))
        row = np.zeros(n_classes, bool)
        row[values[(values >= 0) & (values < n_classes)].astype(int)] = True
        rows.append(row)
    return np.array(rows, bool).reshape(len(rows), n_classes)


def balanced_weights(presence: np.ndarray, classes: Sequence[int] | None = None, power: float = 0.5) -> np.ndarray:
    """Per-image sampling weights that oversample images containing rare classes.

    With f_c the share of images containing class c, an image weighs the largest (1 / f_c) ** power over
    the chosen classes it contains, or 1 when it contains none of them; weights are then scaled to mean 1.
    power = 1 fully equalises how often each class is seen (per image), 0 gives uniform sampling.

    Args:
        presence: (n_images, n_classes) bool array, as from `class_presence`.
        classes: Class indices to balance (e.g. the rare ones); None = every class.
        power: Exponent applied to the inverse frequencies.

    Returns:
        (n_images,) float64 weights with mean 1 (empty for no images).
    """
    presence = np.asarray(presence, bool)
    if presence.shape[0] == 0:
        return np.zeros(0)
    chosen = np.arange(presence.shape[1]) if classes is None else np.asarray(classes, int)
    freq = presence[:, chosen].mean(axis=0)
    class_weight = np.zeros(len(chosen))
    seen = freq > 0
    class_weight[seen] = (1.0 / freq[seen]) ** power
    weights = np.where(presence[:, chosen], class_weight, 0.0).max(axis=1, initial=0.0)
    weights[~presence[:, chosen].any(axis=1)] = 1.0
    return weights / weights.mean()
