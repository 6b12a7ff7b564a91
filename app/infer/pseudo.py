"""Pseudo-labels: a COCO json of the pixels an ensemble is confident about, for training on unlabelled images.

For each image, pixels whose top class probability is at least `threshold` are labelled with that class: one
RLE annotation per foreground class; confident background stays unannotated. The other pixels go into the image
entry's `ignore_mask` (an RLE): rasterized as 255, which the loss and the metric ignore. The winning teams used
a 0.9 threshold on the test images and trained from scratch with them rather than fine-tuning.

The json passes `trash data check`; a recipe adds it with `data.pseudo` (and `data.pseudo_images`).
"""

import json
from pathlib import Path

import numpy as np

from app.atomic import write_json
from app.data.coco import IGNORE_KEY, load_coco
from app.data.images import list_images
from app.errors import TrashError
from app.infer.members import load_members
from app.infer.options import InferenceOptions, view_spec
from app.infer.stream import Prediction, stream_predictions


def _rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _bbox(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def pseudo_labels(
    models: list[str | Path],
    images: str | Path,
    out: str | Path,
    data: str | Path | None = None,
    threshold: float = 0.9,
    options: InferenceOptions = InferenceOptions(),
    progress=None,
) -> dict:
    """Writes the pseudo-label json `out` and returns a summary (images, confident share, per-class pixels).

    Args:
        models: Exports, run dirs, fold groups (see app.infer.members).
        images: Folder of the images (a json's file_names are relative to it).
        out: The json to write.
        data: Optional COCO json listing the images (its ids, file_names and categories are kept).
        threshold: Minimum top probability for a pixel to be labelled, in (0, 1].
    """
    if not 0 < threshold <= 1:
        raise TrashError(f"--threshold must be in (0, 1], got {threshold}")
    members = load_members(models, options.weights, options.class_weights)
    classes = members[0].classes
    pairs = list_images(images, data)
    ids, categories = _ids_and_categories(data, classes, len(pairs))
    labels = _Labels(classes, categories, threshold)
    stream = stream_predictions(members, pairs, options)
    for image_id, pred in zip(ids, progress(stream, total=len(pairs)) if progress else stream):
        labels.add(image_id, pred)
    summary = labels.summary(models, options)
    payload = {
        "info": {"description": "trash pseudo-labels", **{k: summary[k] for k in ("threshold", "models", "tta")}},
        "images": labels.images,
        "categories": categories,
        "annotations": labels.annotations,
    }
    write_json(out, payload)
    return summary


def _ids_and_categories(data, classes: list[str], n_images: int) -> tuple[list[int], list[dict]]:
    """Image ids and categories: the json's when given (its classes must be the model's), else 1..N and the
    model's classes (class index i <-> category id i, so rasterizing gives back the same class indices)."""
    categories = None
    if data:
        coco = load_coco(data)
        if coco.codes != classes and coco.categories:
            raise TrashError(f"the model predicts {classes} but {data} has classes {coco.codes}")
        ids = [im.id for im in coco.images]
        categories = json.loads(Path(data).read_text())["categories"] if coco.categories else None
    else:
        ids = list(range(1, n_images + 1))
    if not categories:
        categories = [{"id": i, "name": name, "supercategory": ""} for i, name in enumerate(classes) if i]
    return ids, categories


class _Labels:
    """The json's images and annotations, built one prediction at a time, with the confident-pixel counts."""

    def __init__(self, classes: list[str], categories: list[dict], threshold: float):
        self.classes, self.threshold = classes, threshold
        self.category_of_class = {i + 1: c["id"] for i, c in enumerate(sorted(categories, key=lambda c: c["id"]))}
        self.images, self.annotations = [], []
        self.pixels = np.zeros(len(classes), dtype=np.int64)
        self.confident = self.total = 0

    def add(self, image_id: int, pred: Prediction) -> None:
        conf, cls = (t.numpy() for t in pred.probs.max(0))
        confident = conf >= self.threshold
        h, w = cls.shape
        entry = {"id": image_id, "file_name": pred.image_id, "height": h, "width": w}
        if not confident.all():
            entry[IGNORE_KEY] = _rle(~confident)
        self.images.append(entry)
        self.pixels += np.bincount(cls[confident], minlength=len(self.classes))
        self.confident, self.total = self.confident + int(confident.sum()), self.total + confident.size
        for c in np.unique(cls[confident]):
            if c:
                self.annotations.append(self._annotation(image_id, int(c), confident & (cls == c)))

    def _annotation(self, image_id: int, cls: int, region: np.ndarray) -> dict:
        return {
            "id": len(self.annotations) + 1,
            "image_id": image_id,
            "category_id": self.category_of_class[cls],
            "segmentation": _rle(region),
            "area": float(region.sum()),
            "bbox": _bbox(region),
            "iscrowd": 0,
        }

    def summary(self, models, options: InferenceOptions) -> dict:
        return {
            "images": len(self.images),
            "annotations": len(self.annotations),
            "threshold": self.threshold,
            "confident_share": self.confident / max(self.total, 1),
            "confident_pixels": {name: int(n) for name, n in zip(self.classes, self.pixels)},
            "models": [str(m) for m in models],
            "tta": view_spec(options.tta),
        }
