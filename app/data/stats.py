"""Dataset statistics: per-class instance, image and pixel counts, class-weight schemes and a bar chart.

Pixel counts are read back from the cached mask PNGs (`app.data.masks.cached_masks`), so they equal
exactly what training sees. The weight schemes are the ones the competition teams compared for
weighted cross-entropy: `inverse` (1 / share), `log` (ENet, 1 / ln(1.02 + share)) and `sqrt`
(1 / sqrt(share)).
"""

import math
from pathlib import Path

import numpy as np

from app.data.coco import CocoSet
from app.data.masks import cached_masks
from app.errors import TrashError
from app.plots import plot_class_shares
from app.registry import Registry

ENET_C = 1.02  # ENet's constant: weights stay bounded (at most 1 / ln(1.02) ≈ 50) as a share goes to 0


def _inverse(share: float) -> float:
    return 1.0 / share


def _log(share: float) -> float:
    return 1.0 / math.log(ENET_C + share)


def _sqrt(share: float) -> float:
    return 1.0 / math.sqrt(share)


#: class-weight scheme -> raw weight of a class with pixel share s > 0 (normalised to mean 1 afterwards)
WEIGHT_SCHEMES: Registry = Registry(
    "class-weight scheme", {"inverse": _inverse, "log": _log, "sqrt": _sqrt}, key="loss.class_weight_scheme"
)


def pixel_counts(coco: CocoSet, cache_root: str | Path = "", progress=None) -> np.ndarray:
    """Per-image, per-class pixel counts of the cached masks.

    Args:
        coco: The parsed json.
        cache_root: Mask cache folder (see `app.data.masks.cached_masks`); "" = the default cache.
        progress: Optional wrapper for the rasterization loop of masks not cached yet.

    Returns:
        int64 array (number of images, number of classes), rows in `coco.images` order.
    """
    import cv2

    n = len(coco.codes)
    paths = cached_masks(coco, cache_root, progress)
    counts = np.zeros((len(paths), n), np.int64)
    for row, path in enumerate(paths):
        mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if mask is None:
            raise TrashError(f"cannot read cached mask {path}; delete it so it is rasterized again")
        found = np.bincount(mask.ravel(), minlength=n)
        if len(found) > n:
            raise TrashError(f"cached mask {path} holds class {len(found) - 1} but the json has {n - 1} classes")
        counts[row] = found
    return counts


def instance_counts(coco: CocoSet) -> list[int]:
    """Annotation count per class index (background 0)."""
    index = coco.class_of_category
    counts = [0] * len(coco.codes)
    for anns in coco.anns_by_image.values():
        for ann in anns:
            if ann.get("category_id") not in index:
                raise TrashError(f"annotation {ann.get('id')}: unknown category id {ann.get('category_id')}")
            counts[index[ann["category_id"]]] += 1
    return counts


def dataset_stats(coco: CocoSet, cache_root: str | Path = "", progress=None) -> dict:
    """Per-class counts, pixel shares and class weights of one COCO json.

    Args:
        coco: The parsed json.
        cache_root: Mask cache folder (see `app.data.masks.cached_masks`); "" = the default cache.
        progress: Optional wrapper for the rasterization loop of masks not cached yet.

    Returns:
        {"annotations": json path, "fingerprint", "codes", "classes": {name: {"index", "instances",
        "images", "pixels", "share"}} in class-index order, "totals": {"images", "annotations",
        "pixels"}, "weights": {scheme: [weight per class index]}}. `images` counts the images whose
        mask contains the class (an annotation fully hidden under others does not count).
    """
    codes = coco.codes
    duplicates = sorted({name for name in codes if codes.count(name) > 1})
    if duplicates:
        raise TrashError(f"annotations {coco.path}: class names are not unique: {', '.join(duplicates)}")
    counts = pixel_counts(coco, cache_root, progress)
    pixels = counts.sum(axis=0)
    total = int(pixels.sum())
    instances = instance_counts(coco)
    classes = {
        name: {
            "index": i,
            "instances": instances[i],
            "images": int((counts[:, i] > 0).sum()),
            "pixels": int(pixels[i]),
            "share": int(pixels[i]) / total if total else 0.0,
        }
        for i, name in enumerate(codes)
    }
    stats = {
        "annotations": str(coco.path),
        "fingerprint": coco.fingerprint,
        "codes": codes,
        "classes": classes,
        "totals": {"images": len(coco.images), "annotations": sum(instances), "pixels": total},
    }
    stats["weights"] = {scheme: class_weights(stats, scheme) for scheme in WEIGHT_SCHEMES}
    return stats


def class_weights(stats: dict, scheme: str) -> list[float]:
    """Per-class loss weights (class-index order) from the pixel shares in `stats`.

    Weights are normalised so their mean over the classes that have pixels is 1.0. A class with
    zero pixels gets 0.0: nothing in the data can teach it, and 1/share would be infinite (one
    such weight would swamp every other class in the loss).

    Args:
        stats: A `dataset_stats` result (or the same dict read back from json).
        scheme: One of WEIGHT_SCHEMES.
    """
    weight = WEIGHT_SCHEMES[scheme]
    shares = [c["share"] if c["pixels"] > 0 else 0.0 for c in stats["classes"].values()]
    raw = [weight(s) if s > 0 else 0.0 for s in shares]
    present = [w for w, s in zip(raw, shares) if s > 0]
    mean = sum(present) / len(present) if present else 1.0
    return [w / mean for w in raw]


def plot_stats(stats: dict, path: str | Path) -> Path:
    """Writes the bar chart of a `dataset_stats` result: pixel share per class, instance counts above the bars."""
    totals = stats["totals"]
    source = "/".join(Path(stats["annotations"]).parts[-2:])  # the folder says which dataset
    title = f"{source}: {totals['images']} images, {totals['annotations']} instances (numbers above bars = instances)"
    return plot_class_shares(list(stats["classes"]), list(stats["classes"].values()), title, path)


def mask_pixel_counts(mask_paths: list[Path], n_classes: int) -> np.ndarray:
    """Pixels per class over mask PNGs (8 or 16-bit class ids; the ignore value and beyond left out)."""
    import cv2

    counts = np.zeros(n_classes, np.int64)
    for path in mask_paths:
        mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        counts += np.bincount(mask.ravel(), minlength=n_classes)[:n_classes]
    return counts


def weights_from_masks(mask_paths: list[Path], codes: list[str], scheme: str) -> list[float]:
    """Class weights of `scheme` from the pixel counts of mask PNGs (a training split's cached masks)."""
    counts = mask_pixel_counts(mask_paths, len(codes))
    total = max(int(counts.sum()), 1)
    classes = {c: {"pixels": int(n), "share": int(n) / total} for c, n in zip(codes, counts)}
    return class_weights({"classes": classes}, scheme)
