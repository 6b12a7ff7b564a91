"""COCO json → images, class codes and per-pixel class masks (pycocotools), plus the on-disk mask cache.

Class index convention: 0 = background; category ids sorted ascending map to 1..N. Overlapping
annotations are painted largest area first, so smaller objects stay on top (the competition
baseline's rule).
"""

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from app.errors import TrashError

BACKGROUND = "Background"


@dataclass(frozen=True)
class CocoImage:
    id: int
    file_name: str
    height: int
    width: int


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


def load_coco(path: str | Path) -> CocoSet:
    """Parses a COCO json; raises TrashError naming the file and the problem when it is not usable."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        data = json.loads(raw)
    except OSError as e:
        raise TrashError(f"cannot read annotations {path}: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise TrashError(f"annotations {path} are not valid json: {e}") from None
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise TrashError(f"annotations {path}: missing the COCO list {key!r}")
    try:
        images = [
            CocoImage(int(i["id"]), str(i["file_name"]), int(i["height"]), int(i["width"])) for i in data["images"]
        ]
    except (KeyError, TypeError, ValueError) as e:
        raise TrashError(f"annotations {path}: an image entry lacks id/file_name/height/width ({e})") from None
    categories = sorted(data["categories"], key=lambda c: c["id"])
    anns: dict[int, list[dict]] = {im.id: [] for im in images}
    for ann in data.get("annotations", []):
        if ann.get("image_id") not in anns:
            raise TrashError(
                f"annotations {path}: annotation {ann.get('id')} names unknown image {ann.get('image_id')}"
            )
        anns[ann["image_id"]].append(ann)
    return CocoSet(path, images, categories, anns, hashlib.sha256(raw).hexdigest()[:16])


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


def rasterize(coco: CocoSet, image: CocoImage) -> np.ndarray:
    """The (H, W) uint8 class mask of one image: larger annotations first, smaller on top."""
    index = coco.class_of_category
    mask = np.zeros((image.height, image.width), np.uint8)
    layers = []
    for ann in coco.anns_by_image.get(image.id, []):
        if ann["category_id"] not in index:
            raise TrashError(f"annotation {ann.get('id')}: unknown category id {ann['category_id']}")
        layer = annotation_mask(ann, image.height, image.width)
        layers.append((int(layer.sum()), ann.get("id", 0), index[ann["category_id"]], layer))
    for _, _, cls, layer in sorted(layers, key=lambda t: (-t[0], t[1])):  # stable by annotation id
        mask[layer] = cls
    return mask


def mask_cache_dir(coco: CocoSet, root: str | Path = "") -> Path:
    """Cache folder for this json's masks; the json's hash is in the name, so editing it invalidates it."""
    root = Path(root) if root else Path(os.environ.get("TRASH_CACHE", Path.home() / ".cache" / "trash")) / "masks"
    return root / f"{coco.path.stem}-{coco.fingerprint}"


def cached_masks(coco: CocoSet, cache_root: str | Path = "", progress=None) -> list[Path]:
    """Paths of every image's mask PNG, rasterizing (once) those not cached yet.

    Args:
        coco: The parsed json.
        cache_root: Folder for the cache; "" = $TRASH_CACHE or ~/.cache/trash.
        progress: Optional wrapper for the loop (e.g. fastprogress.progress_bar).
    """
    import cv2

    folder = mask_cache_dir(coco, cache_root)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{image.id}.png" for image in coco.images]
    todo = [(im, p) for im, p in zip(coco.images, paths) if not p.exists()]
    for image, path in progress(todo) if (progress and todo) else todo:
        tmp = path.with_suffix(f".tmp{os.getpid()}.png")
        cv2.imwrite(str(tmp), rasterize(coco, image))
        os.replace(tmp, path)  # atomic: a killed run never leaves half a mask in the cache
    return paths
