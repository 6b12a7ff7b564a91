"""COCO json parsing: images, categories, annotations per image, and the class codes derived from them.

Class index convention: 0 = background; category ids sorted ascending map to 1..N; class names come from the
json, never from the code. Turning annotations into masks is app/data/masks.py.
"""

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from app.errors import TrashError

BACKGROUND = "Background"
IGNORE = 255  # mask value of pixels that count for nothing (the loss's and metric's ignore_index)
IGNORE_16 = 65535  # the same in the 16-bit masks of datasets with more than 255 classes (255 is a class there)
IGNORE_KEY = "ignore_mask"  # optional RLE in an image entry: its pixels become IGNORE (e.g. pseudo-labels)


def mask_dtype(n_classes: int) -> type:
    """uint8 masks (classes 0..254, 255 ignore) up to 255 classes, background included; uint16 beyond."""
    return np.uint8 if n_classes <= IGNORE else np.uint16


def ignore_value(n_classes: int, configured: int = IGNORE) -> int:
    """The mask value that counts for nothing: `configured` (loss.ignore_index, 255 by default), moved to 65535 in
    the 16-bit masks of more than 255 classes, where 255 is a class."""
    return IGNORE_16 if n_classes > IGNORE and configured == IGNORE else configured


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
