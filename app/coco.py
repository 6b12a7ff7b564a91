"""COCO json → images, class codes and per-pixel class masks (pycocotools), plus the on-disk mask cache.

Class index convention: 0 = background; category ids sorted ascending map to 1..N. Overlapping
annotations are painted in the order of an overlap rule (OVERLAP_RULES); the default paints the largest
area first, so smaller objects stay on top (the competition baseline's rule).
"""

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from app.errors import TrashError

BACKGROUND = "Background"

# Paint order for overlapping annotations; the last painted wins the pixel. Areas are pixel counts of the
# rasterized annotation; ties keep the annotation id order.
OVERLAP_RULES = {
    "largest-first": "larger areas painted first, smaller objects stay on top (default)",
    "smallest-first": "smaller areas painted first, larger objects on top",
    "json-order": "annotations painted in file order, later ones on top",
}


IGNORE = 255  # mask value of pixels that count for nothing (the loss's and metric's ignore_index)
IGNORE_KEY = "ignore_mask"  # optional RLE in an image entry: its pixels become IGNORE (e.g. pseudo-labels)


@dataclass(frozen=True)
class CocoImage:
    id: int
    file_name: str
    height: int
    width: int
    ignore: dict | None = field(default=None, compare=False, hash=False, repr=False)  # RLE of IGNORE pixels


@dataclass
class CocoSet:
    """One COCO json, parsed: images in file order, categories by ascending id, annotations per image."""

    path: Path
    images: list[CocoImage]
    categories: list[dict]
    anns_by_image: dict[int, list[dict]] = field(repr=False)
    fingerprint: str = ""  # sha256 of the json bytes (first 16 hex digits)

    @property
    def codes(self) -> list[str]:
        """Class names by class index: background first, then categories by ascending id."""
        return [BACKGROUND] + [c["name"] for c in self.categories]

    @property
    def class_of_category(self) -> dict[int, int]:
        return {c["id"]: i + 1 for i, c in enumerate(self.categories)}


def load_coco(path: str | Path, drop_annotations=(), drop_images=()) -> CocoSet:
    """Parses a COCO json; raises TrashError naming the file and the problem when it is not usable.

    Args:
        path: The json file.
        drop_annotations: Annotation ids to leave out (what `trash data check` reported).
        drop_images: Image ids to leave out, with their annotations.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        data = json.loads(raw)
    except OSError as e:
        raise TrashError(f"cannot read annotations {path}: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise TrashError(f"annotations {path} are not valid json: {e}") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "categories")):
        raise TrashError(f"annotations {path}: not a COCO json (needs lists 'images' and 'categories')")
    try:
        images = [
            CocoImage(int(i["id"]), str(i["file_name"]), int(i["height"]), int(i["width"]), i.get(IGNORE_KEY))
            for i in data["images"]
            if i.get("id") not in drop_images
        ]
        categories = sorted(data["categories"], key=lambda c: c["id"])
    except (KeyError, TypeError, ValueError) as e:
        raise TrashError(
            f"annotations {path}: a malformed image or category entry ({e}); run `trash data check`"
        ) from None
    anns: dict[int, list[dict]] = {im.id: [] for im in images}
    for ann in data.get("annotations", []):
        if ann.get("id") in drop_annotations or ann.get("image_id") in drop_images:
            continue
        if ann.get("image_id") not in anns:
            raise TrashError(
                f"annotations {path}: annotation {ann.get('id')} names unknown image {ann.get('image_id')}"
            )
        anns[ann["image_id"]].append(ann)
    digest = hashlib.sha256(raw)
    if drop_annotations or drop_images:  # a filtered view is another dataset: its own cache key
        digest.update(repr((sorted(map(str, drop_annotations)), sorted(map(str, drop_images)))).encode())
    return CocoSet(path, images, categories, anns, digest.hexdigest()[:16])


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
    """The (H, W) uint8 class mask of one image, overlaps resolved by `overlap` (see OVERLAP_RULES)."""
    index = coco.class_of_category
    mask = np.zeros((image.height, image.width), np.uint8)
    layers = []
    for position, ann in enumerate(coco.anns_by_image.get(image.id, [])):
        if ann["category_id"] not in index:
            raise TrashError(f"annotation {ann.get('id')}: unknown category id {ann['category_id']}")
        layer = annotation_mask(ann, image.height, image.width)
        layers.append((int(layer.sum()), ann.get("id", 0), position, index[ann["category_id"]], layer))
    for *_, cls, layer in sorted(layers, key=_paint_order(overlap)):
        mask[layer] = cls
    if image.ignore:  # e.g. unconfident pseudo-label pixels: neither background nor any class
        mask[
            annotation_mask({"id": f"{IGNORE_KEY} of image {image.id}", "segmentation": image.ignore}, *mask.shape)
        ] = IGNORE
    return mask


def _paint_order(overlap: str):
    if overlap not in OVERLAP_RULES:
        raise TrashError(f"unknown overlap rule {overlap!r}; choose one of {', '.join(OVERLAP_RULES)}")
    if overlap == "json-order":
        return lambda t: t[2]
    sign = -1 if overlap == "largest-first" else 1
    return lambda t: (sign * t[0], t[1])


def mask_cache_dir(coco: CocoSet, root: str | Path = "", overlap: str = "largest-first") -> Path:
    """Cache folder for this json's masks; the json's hash is in the name, so editing it invalidates it."""
    root = Path(root) if root else Path(os.environ.get("TRASH_CACHE", Path.home() / ".cache" / "trash")) / "masks"
    rule = "" if overlap == "largest-first" else f"-{overlap}"
    return root / f"{coco.path.stem}-{coco.fingerprint}{rule}"


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
    import cv2

    folder = mask_cache_dir(coco, cache_root, overlap)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{image.id}.png" for image in coco.images]
    todo = [(im, p) for im, p in zip(coco.images, paths) if not p.exists()]
    for image, path in progress(todo) if (progress and todo) else todo:
        tmp = path.with_suffix(f".tmp{os.getpid()}.png")
        if not cv2.imwrite(str(tmp), rasterize(coco, image, overlap)):  # False on a full disk, not an exception
            tmp.unlink(missing_ok=True)
            raise TrashError(f"could not write the mask {path} (disk full?); the cache keeps only complete masks", 4)
        os.replace(tmp, path)  # atomic: a killed run never leaves half a mask in the cache
    return paths


def write_masks(
    coco: CocoSet, out: str | Path, overlap: str = "largest-first", progress=None, cache_root: str | Path = ""
) -> list[Path]:
    """Writes one class-mask PNG per image to `out`, named like the image (`a/b.jpg` → `out/a/b.png`).

    Uses the same cached rasterization as training, so these are exactly the masks a model learns from.
    """
    import shutil

    out = Path(out)
    written = []
    for image, cached in zip(coco.images, cached_masks(coco, cache_root, progress, overlap)):
        target = out / Path(image.file_name).with_suffix(".png")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        shutil.copyfile(cached, tmp)
        os.replace(tmp, target)
        written.append(target)
    return written
