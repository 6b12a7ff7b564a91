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

from app.coco import IGNORE_KEY, load_coco
from app.errors import TrashError


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
    tta: bool | str = False,
    weights: list[float] | None = None,
    class_weights: list | None = None,
    batch_size: int = 8,
    progress=None,
) -> dict:
    """Writes the pseudo-label json `out` and returns a summary (images, confident share, per-class pixels).

    Args:
        models: Exports, run dirs, fold groups (see app.members).
        images: Folder of the images (a json's file_names are relative to it).
        out: The json to write.
        data: Optional COCO json listing the images (its ids, file_names and categories are kept).
        threshold: Minimum top probability for a pixel to be labelled, in (0, 1].
    """
    from app.members import load_members
    from app.predict import list_images, stream_predictions
    from app.runs import write_json

    if not 0 < threshold <= 1:
        raise TrashError(f"--threshold must be in (0, 1], got {threshold}")
    members = load_members(models, weights, class_weights)
    classes = members[0].classes
    pairs = list_images(images, data)
    if data:
        coco = load_coco(data)
        if coco.codes != classes and coco.categories:
            raise TrashError(f"the model predicts {classes} but {data} has classes {coco.codes}")
        ids = [im.id for im in coco.images]
        raw = json.loads(Path(data).read_text())
        categories = raw["categories"] if coco.categories else None
    else:
        ids, categories = list(range(1, len(pairs) + 1)), None
    if not categories:  # class index i <-> category id i: rasterizing gives back the same class indices
        categories = [{"id": i, "name": name, "supercategory": ""} for i, name in enumerate(classes) if i]
    category_of_class = {i + 1: c["id"] for i, c in enumerate(sorted(categories, key=lambda c: c["id"]))}
    image_entries, annotations = [], []
    pixels = np.zeros(len(classes), dtype=np.int64)
    confident_total = all_total = 0
    stream = stream_predictions(members, pairs, tta, batch_size=batch_size)
    for image_id, pred in zip(ids, progress(stream, total=len(pairs)) if progress else stream):
        conf, cls = pred.probs.max(0)
        conf, cls = conf.numpy(), cls.numpy()
        confident = conf >= threshold
        h, w = cls.shape
        entry = {"id": image_id, "file_name": pred.image_id, "height": h, "width": w}
        if not confident.all():
            entry[IGNORE_KEY] = _rle(~confident)
        image_entries.append(entry)
        pixels += np.bincount(cls[confident], minlength=len(classes))
        confident_total, all_total = confident_total + int(confident.sum()), all_total + confident.size
        for c in np.unique(cls[confident]):
            if c == 0:
                continue
            region = confident & (cls == c)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_of_class[int(c)],
                    "segmentation": _rle(region),
                    "area": float(region.sum()),
                    "bbox": _bbox(region),
                    "iscrowd": 0,
                }
            )
    summary = {
        "images": len(image_entries),
        "annotations": len(annotations),
        "threshold": threshold,
        "confident_share": confident_total / max(all_total, 1),
        "confident_pixels": {name: int(n) for name, n in zip(classes, pixels)},
        "models": [str(m) for m in models],
        "tta": tta,
    }
    payload = {
        "info": {"description": "trash pseudo-labels", **{k: summary[k] for k in ("threshold", "models", "tta")}},
        "images": image_entries,
        "categories": categories,
        "annotations": annotations,
    }
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    write_json(out, payload)
    return summary
