"""COCO annotations → per-pixel class masks (pycocotools), the overlap rules, and the on-disk mask cache.

Overlapping annotations are painted in the order of an overlap rule (`OVERLAP_RULES`); the last painted wins
the pixel. The default paints the largest area first, so smaller objects stay on top (the competition
baseline's rule). A new rule is one entry here: its name is part of the cache folder's name, and so is
`RASTERIZER_VERSION`, which changes whenever what a rule paints changes, so no stale mask is ever reused.
"""

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.atomic import copy_file, make_dir, write_image
from app.data.coco import IGNORE_KEY, CocoImage, CocoSet, ignore_value, mask_dtype
from app.errors import TrashError
from app.registry import Registry

RASTERIZER_VERSION = 3  # bump when rasterize() paints differently: every cached mask is made again


@dataclass(frozen=True)
class Layer:
    """One rasterized annotation waiting to be painted."""

    area: int  # pixels of the annotation's own mask
    annotation_id: int
    position: int  # index in the json's annotation list of the image
    cls: int
    mask: np.ndarray


@dataclass(frozen=True)
class OverlapRule:
    help: str
    order: Callable[[Layer], tuple]  # sort key: layers are painted in ascending order, the last one wins


def _largest_first(layer: Layer) -> tuple:
    return (-layer.area, layer.annotation_id)


def _smallest_first(layer: Layer) -> tuple:
    return (layer.area, layer.annotation_id)


def _json_order(layer: Layer) -> tuple:
    return (layer.position,)


OVERLAP_RULES: Registry[OverlapRule] = Registry(
    "overlap rule",
    {
        "largest-first": OverlapRule(
            "larger areas painted first, smaller objects stay on top (default)", _largest_first
        ),
        "smallest-first": OverlapRule("smaller areas painted first, larger objects on top", _smallest_first),
        "json-order": OverlapRule("annotations painted in file order, later ones on top", _json_order),
    },
    key="data.overlap",
)


def annotation_mask(ann: dict, height: int, width: int) -> np.ndarray:
    """Rasterizes one annotation (polygons, uncompressed or compressed RLE) to a bool (H, W) mask."""
    from pycocotools import mask as mask_utils

    seg = ann.get("segmentation")
    if isinstance(seg, list):  # polygons: [[x1, y1, x2, y2, ...], ...]
        polys = [p for p in seg if len(p) >= 6]
        if not polys:
            raise TrashError(f"annotation {ann.get('id')}: no polygon with at least 3 points")
        rle = mask_utils.merge(mask_utils.frPyObjects(polys, height, width))
    elif isinstance(seg, dict) and "counts" in seg:
        if list(seg.get("size", [])) != [height, width]:
            raise TrashError(f"annotation {ann.get('id')}: RLE size {seg.get('size')} != image size {[height, width]}")
        rle = mask_utils.frPyObjects(seg, height, width) if isinstance(seg["counts"], list) else seg
    else:
        raise TrashError(f"annotation {ann.get('id')}: empty or unknown segmentation")
    return mask_utils.decode(rle).astype(bool)


def rasterize(coco: CocoSet, image: CocoImage, overlap: str = "largest-first") -> np.ndarray:
    """The (H, W) class mask of one image, overlaps resolved by `overlap` (see OVERLAP_RULES): uint8, or uint16
    for more than 255 classes (`mask_dtype`)."""
    rule = OVERLAP_RULES[overlap]
    mask = np.zeros((image.height, image.width), mask_dtype(len(coco.codes)))
    for layer in sorted(_layers(coco, image), key=rule.order):
        mask[layer.mask] = layer.cls
    if image.ignore:  # e.g. unconfident pseudo-label pixels: neither background nor any class
        ignore = {"id": f"{IGNORE_KEY} of image {image.id}", "segmentation": image.ignore}
        mask[annotation_mask(ignore, *mask.shape)] = ignore_value(len(coco.codes))
    return mask


def _layers(coco: CocoSet, image: CocoImage) -> list[Layer]:
    index = coco.class_of_category
    layers = []
    for position, ann in enumerate(coco.anns_by_image.get(image.id, [])):
        if ann["category_id"] not in index:
            raise TrashError(f"annotation {ann.get('id')}: unknown category id {ann['category_id']}")
        layer = annotation_mask(ann, image.height, image.width)
        layers.append(Layer(int(layer.sum()), ann.get("id", 0), position, index[ann["category_id"]], layer))
    return layers


def mask_cache_dir(coco: CocoSet, root: str | Path = "", overlap: str = "largest-first") -> Path:
    """Cache folder for this json's masks: the json's hash, the overlap rule and RASTERIZER_VERSION name it, so
    editing the json or changing how masks are painted never reuses a stale mask."""
    root = Path(root) if root else Path(os.environ.get("TRASH_CACHE", Path.home() / ".cache" / "trash")) / "masks"
    return root / f"{coco.path.stem}-{coco.fingerprint}-{overlap}-r{RASTERIZER_VERSION}"


def cached_masks(
    coco: CocoSet, cache_root: str | Path = "", progress=None, overlap: str = "largest-first"
) -> list[Path]:
    """Paths of every image's mask PNG, rasterizing (once) those not cached yet.

    Args:
        coco: The parsed json.
        cache_root: Folder for the cache; "" = $TRASH_CACHE or ~/.cache/trash.
        progress: Optional wrapper for the loop (e.g. fastprogress.progress_bar).
        overlap: Overlap rule, see OVERLAP_RULES.
    """
    folder = make_dir(mask_cache_dir(coco, cache_root, overlap))
    paths = [folder / f"{image.id}.png" for image in coco.images]
    todo = [(im, p) for im, p in zip(coco.images, paths) if not p.exists()]
    for image, path in progress(todo) if (progress and todo) else todo:
        write_image(path, rasterize(coco, image, overlap), sync=False)  # renamed into place: only complete masks
    return paths


def mask_name(file_name: str) -> Path:
    """The mask PNG's path for an image's file_name, relative to an output folder (`a/b.jpg` -> `a/b.png`)."""
    return Path(file_name).with_suffix(".png")


def refuse_same_mask_names(file_names: list[str], where: str) -> None:
    """TrashError when two images would write one mask (`a.jpg` and `a.png`, or a file_name listed twice)."""
    from collections import Counter

    names = Counter(str(mask_name(n)) for n in file_names)
    clashes = sorted(n for n, count in names.items() if count > 1)
    if clashes:
        who = [n for n in file_names if str(mask_name(n)) == clashes[0]]
        raise TrashError(
            f"{where}: {len(clashes)} mask name(s) taken by more than one image, e.g. {clashes[0]} by "
            f"{', '.join(who)}; rename the images (or predict them into different --out folders)"
        )


def write_masks(
    coco: CocoSet, out: str | Path, overlap: str = "largest-first", progress=None, cache_root: str | Path = ""
) -> list[Path]:
    """Writes one class-mask PNG per image to `out`, named like the image (`a/b.jpg` → `out/a/b.png`).

    Uses the same cached rasterization as training, so these are exactly the masks a model learns from.
    """
    out = Path(out)
    refuse_same_mask_names([im.file_name for im in coco.images], f"{coco.path}")
    written = []
    for image, cached in zip(coco.images, cached_masks(coco, cache_root, progress, overlap)):
        written.append(copy_file(cached, out / mask_name(image.file_name)))
    return written
