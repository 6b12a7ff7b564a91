"""Deterministic synthetic COCO semantic-segmentation dataset (the "demo dataset").

This module owns the generation of a small, learnable stand-in for the recycling-trash
competition data: JPEG images under ``OUT/images/`` and ``train.json`` / ``val.json`` /
``test.json`` in ``OUT`` (``file_name`` relative to ``OUT``), with the 10 trash categories
(ids 1..10, background implicit).

Every class has its own shape, colour range and texture so a small U-Net can learn it
quickly. Each object is rasterised once with pycocotools from the exact polygon that is
annotated and only the pixels of that mask are painted, so image and annotation agree.
Objects are painted in order of decreasing area, matching the rasterisation rule
"largest annotation first, smaller ones on top". About 10 % of the annotations are stored
as RLE (compressed with ``str`` counts, or uncompressed with ``list`` counts). Battery and
Clothing are rare classes with guaranteed minimum counts in train and val.

Everything is driven by ``numpy.random.default_rng(seed)``: the same seed gives
byte-identical json files and identical image pixels.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from app.atomic import make_dir, write_image, write_text
from app.data.drawings import PAINTERS, Drawing, Frame, _fine_noise, background
from app.data.masks import OVERLAP_RULES, Layer

CLASS_NAMES: tuple[str, ...] = (
    "General trash",
    "Paper",
    "Paper pack",
    "Metal",
    "Glass",
    "Plastic",
    "Styrofoam",
    "Plastic bag",
    "Battery",
    "Clothing",
)

IMAGE_SIZES: tuple[tuple[int, int], ...] = ((160, 160), (192, 144))  # (width, height)
RARE_CLASSES: tuple[str, ...] = ("Battery", "Clothing")
COMMON_CLASSES: tuple[str, ...] = tuple(name for name in CLASS_NAMES if name not in RARE_CLASSES)
RARE_IMAGE_FRACTION = 0.09
MIN_RARE_INSTANCES: dict[str, int] = {"train": 2, "val": 1, "test": 0}
OBJECTS_PER_IMAGE = (2, 6)
RLE_FRACTION = 0.1
UNCOMPRESSED_RLE_FRACTION = 0.35
JPEG_QUALITY = 95
SPLITS: tuple[str, ...] = ("train", "val", "test")
OVERLAP = "largest-first"  # the rasterization rule the painting order matches (app/data/masks.py)


@dataclass
class _Object:
    """A rasterised object ready to paint and annotate."""

    category_id: int
    polygon: list[float]
    rle: dict
    mask: np.ndarray
    area: int
    drawing: Drawing


# ---------------------------------------------------------------- image composition


def _pick_center(rng: np.random.Generator, frame: Frame, previous: list[np.ndarray]) -> np.ndarray:
    """Object centre: sometimes next to an earlier object (to overlap), otherwise anywhere."""
    size = np.array([frame.width, frame.height], dtype=np.float64)
    if previous and rng.random() < 0.4:
        anchor = previous[int(rng.integers(len(previous)))]
        center = anchor + rng.normal(0.0, 0.12 * frame.scale, 2)
    else:
        center = rng.uniform(0.15, 0.85, 2) * size
    return np.clip(center, 0.12 * size, 0.88 * size)


def _rasterize(drawing: Drawing, frame: Frame, category_id: int) -> _Object:
    """Clips the outline to the image, rounds it and rasterises it with pycocotools."""
    pts = drawing.polygon.copy()
    pts[:, 0] = np.clip(pts[:, 0], 0.0, frame.width - 1.0)
    pts[:, 1] = np.clip(pts[:, 1], 0.0, frame.height - 1.0)
    polygon = [round(float(c), 2) for c in pts.reshape(-1)]
    rle = mask_utils.merge(mask_utils.frPyObjects([polygon], frame.height, frame.width))
    mask = mask_utils.decode(rle).astype(bool)
    return _Object(category_id, polygon, rle, mask, int(mask_utils.area(rle)), drawing)


def _paint_order(obj: _Object) -> tuple:
    """The overlap rule's order: the images are painted as `trash` rasterizes their annotations."""
    return OVERLAP_RULES[OVERLAP].order(Layer(obj.area, 0, 0, obj.category_id, obj.mask))


def _compose(rng: np.random.Generator, frame: Frame, classes: list[str]) -> tuple[np.ndarray, list[_Object]]:
    """Builds one RGB image and its objects, painted largest area first.

    Args:
        rng: Random generator.
        frame: Image grid.
        classes: Class names of the objects to place.

    Returns:
        The uint8 RGB image and its objects in painting order.
    """
    canvas = background(rng, frame)
    objects, centers = [], []
    for name in classes:
        center = _pick_center(rng, frame, centers)
        centers.append(center)
        drawing = PAINTERS[name](rng, frame, center)
        objects.append(_rasterize(drawing, frame, CLASS_NAMES.index(name) + 1))
    objects.sort(key=_paint_order)
    for obj in objects:
        alpha, m = obj.drawing.alpha, obj.mask
        canvas[m] = alpha * obj.drawing.texture[m] + (1.0 - alpha) * canvas[m]
    canvas += 2.0 * _fine_noise(rng, frame)[..., None]
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8), objects


# ---------------------------------------------------------------- split planning


def _rare_plan(rng: np.random.Generator, n_images: int, min_instances: int) -> list[int]:
    """Number of instances of one rare class per image (few images, minimum guaranteed)."""
    counts = [0] * n_images
    if n_images == 0:
        return counts
    n_with = min(n_images, max(min_instances, round(RARE_IMAGE_FRACTION * n_images)))
    chosen = rng.choice(n_images, size=n_with, replace=False)
    for i in chosen:
        counts[int(i)] = 1
    for k in range(max(0, min_instances - n_with)):
        counts[int(chosen[k % n_with])] += 1
    return counts


def _plan_classes(rng: np.random.Generator, split: str, n_images: int) -> list[list[str]]:
    """Class names per image: rare classes by plan, the rest common, every common class used."""
    plans = [[] for _ in range(n_images)]
    for name in RARE_CLASSES:
        for i, count in enumerate(_rare_plan(rng, n_images, MIN_RARE_INSTANCES[split])):
            plans[i].extend([name] * count)
    slots = []
    for i, plan in enumerate(plans):
        n_obj = int(rng.integers(OBJECTS_PER_IMAGE[0], OBJECTS_PER_IMAGE[1] + 1))
        for _ in range(max(n_obj - len(plan), 0)):
            plan.append(COMMON_CLASSES[int(rng.integers(len(COMMON_CLASSES)))])
            slots.append((i, len(plan) - 1))
    if len(slots) >= len(COMMON_CLASSES):
        picked = rng.choice(len(slots), size=len(COMMON_CLASSES), replace=False)
        for name, k in zip(rng.permutation(COMMON_CLASSES), picked, strict=True):
            i, j = slots[int(k)]
            plans[i][j] = str(name)
    for plan in plans:
        rng.shuffle(plan)
    return plans


# ---------------------------------------------------------------- annotations


def _uncompressed_counts(mask: np.ndarray) -> list[int]:
    """Column-major run lengths of a binary mask, starting with a (possibly empty) zero run."""
    flat = mask.ravel(order="F").astype(np.int8)
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    runs = np.diff(bounds).astype(int).tolist()
    return [0, *runs] if flat.size and flat[0] else runs


def _segmentation(obj: _Object, kind: str) -> list | dict:
    """COCO segmentation of ``obj`` as 'polygon', 'rle' (compressed, str counts) or 'rle_list'."""
    if kind == "polygon":
        return [obj.polygon]
    size = [int(s) for s in obj.rle["size"]]
    if kind == "rle":
        return {"size": size, "counts": obj.rle["counts"].decode("ascii")}
    return {"size": size, "counts": _uncompressed_counts(obj.mask)}


def _segmentation_kinds(rng: np.random.Generator, n: int, force_both: bool) -> list[str]:
    """Chooses the storage kind per annotation; optionally guarantees both RLE kinds."""
    kinds = []
    for _ in range(n):
        if rng.random() >= RLE_FRACTION:
            kinds.append("polygon")
        else:
            kinds.append("rle_list" if rng.random() < UNCOMPRESSED_RLE_FRACTION else "rle")
    if force_both and n >= 2:
        for kind in ("rle", "rle_list"):
            polygons = [i for i, k in enumerate(kinds) if k == "polygon"]
            if kind not in kinds and polygons:
                kinds[polygons[int(rng.integers(len(polygons)))]] = kind
    return kinds


def _annotation(obj: _Object, ann_id: int, image_id: int, segmentation: list | dict) -> dict:
    """One COCO annotation record; area and bbox come from the rasterised mask."""
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": obj.category_id,
        "segmentation": segmentation,
        "area": obj.area,
        "bbox": [round(float(x), 2) for x in mask_utils.toBbox(obj.rle)],
        "iscrowd": 0,
    }


# ---------------------------------------------------------------- writing


def _write_jpeg(path: Path, rgb: np.ndarray) -> None:
    """Writes an RGB uint8 image as JPEG quality 95."""
    write_image(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), (cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY))


def _coco_header(seed: int, split: str) -> dict:
    """The ``info``, ``licenses`` and ``categories`` keys shared by all splits."""
    return {
        "info": {
            "description": f"Synthetic recycling-trash segmentation demo data ({split}, seed={seed})",
            "version": "1.0",
            "contributor": "app.synthetic",
            "url": "",
        },
        "licenses": [{"id": 0, "name": "CC0 1.0 (synthetic)", "url": ""}],
        "categories": [{"id": i, "name": n, "supercategory": n} for i, n in enumerate(CLASS_NAMES, start=1)],
    }


def _generate_split(
    rng: np.random.Generator, out: Path, split: str, n_images: int, ids: dict[str, int]
) -> tuple[list[dict], list[dict]]:
    """Generates and writes one split's images; returns its COCO image and annotation records.

    Args:
        rng: Random generator of this split.
        out: Dataset root.
        split: "train", "val" or "test".
        n_images: Number of images.
        ids: Next free ``image`` and ``annotation`` ids; updated in place.

    Returns:
        The image records and the annotation records (empty for test).
    """
    frames = [Frame.of(w, h) for w, h in IMAGE_SIZES]
    sizes = rng.permutation(np.arange(n_images) % len(frames))
    images, pending = [], []
    for i, classes in enumerate(_plan_classes(rng, split, n_images)):
        frame = frames[int(sizes[i])]
        rgb, objects = _compose(rng, frame, classes)
        file_name = f"images/{split}_{i:04d}.jpg"
        _write_jpeg(out / file_name, rgb)
        image_id = ids["image"]
        ids["image"] += 1
        images.append(
            {
                "id": image_id,
                "file_name": file_name,
                "height": frame.height,
                "width": frame.width,
                "license": 0,
            }
        )
        pending.extend((image_id, obj) for obj in objects)
    if split == "test":
        return images, []
    kinds = _segmentation_kinds(rng, len(pending), force_both=split == "train")
    annotations = []
    for (image_id, obj), kind in zip(pending, kinds, strict=True):
        annotations.append(_annotation(obj, ids["annotation"], image_id, _segmentation(obj, kind)))
        ids["annotation"] += 1
    return images, annotations


def make_demo_dataset(
    out: str | Path, seed: int = 0, n_train: int = 96, n_val: int = 24, n_test: int = 16
) -> dict[str, Path]:
    """Writes OUT/images/*.jpg and OUT/train.json, OUT/val.json, OUT/test.json.

    Image and annotation ids are unique across the three files; test.json has the same keys
    with ``annotations: []``. The rare-class minimums (2 Battery and 2 Clothing instances in
    train, 1 each in val) hold whenever the split has at least one image.

    Args:
        out: Dataset root directory (created if missing).
        seed: Seed for ``numpy.random.default_rng``; same seed gives identical output.
        n_train: Number of training images.
        n_val: Number of validation images.
        n_test: Number of test images (no annotations).

    Returns:
        {"train": path, "val": path, "test": path, "images": OUT}.
    """
    out = Path(out)
    make_dir(out / "images")
    split_rngs = np.random.default_rng(seed).spawn(len(SPLITS))
    counts = {"train": n_train, "val": n_val, "test": n_test}
    ids = {"image": 0, "annotation": 0}
    paths: dict[str, Path] = {}
    for split, rng in zip(SPLITS, split_rngs, strict=True):
        images, annotations = _generate_split(rng, out, split, counts[split], ids)
        coco = {**_coco_header(seed, split), "images": images, "annotations": annotations}
        paths[split] = out / f"{split}.json"
        write_text(paths[split], json.dumps(coco))
    paths["images"] = out
    return paths
