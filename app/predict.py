"""Prediction with exported learners: streaming batches, ensembles, TTA, PNG masks and the submission CSV."""

import csv
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from app.coco import load_coco
from app.errors import TrashError
from app.runs import find_export
from app.tta import parse_views, predict_probs

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
SUBMISSION_SIZE = 256  # the competition's submission masks are 256x256


@dataclass
class Prediction:
    image_id: str  # file name relative to the images folder (the submission's image_id)
    path: Path
    probs: torch.Tensor  # (C, H, W) float32 at the image's original size


def load_learners(models: list[str | Path]) -> list:
    """Loads exported learners on the available device; all must predict the same classes."""
    from fastai.learner import load_learner

    learners = [load_learner(find_export(m), cpu=not torch.cuda.is_available()) for m in models]
    for model, learn in zip(models, learners):
        if not hasattr(learn, "trash_classes"):
            raise TrashError(f"{model} was not exported by `trash fit` (it has no class names)")
        if learn.trash_classes != learners[0].trash_classes:
            raise TrashError(
                f"{model} predicts classes {learn.trash_classes}, but {models[0]} {learners[0].trash_classes}"
            )
    return learners


def check_classes(learners: list, codes: list[str], source: str) -> None:
    if learners[0].trash_classes != list(codes):
        raise TrashError(f"the model predicts {learners[0].trash_classes} but {source} has classes {list(codes)}")


def list_images(images: str | Path, data: str | Path | None = None) -> list[tuple[str, Path]]:
    """(image_id, path) pairs: the json's images in its order, or every image file in the folder, sorted."""
    root = Path(images)
    if not root.is_dir():
        raise TrashError(f"images folder not found: {images}")
    if data:
        pairs = [(im.file_name, root / im.file_name) for im in load_coco(data).images]
        missing = [str(p) for _, p in pairs if not p.is_file()]
        if missing:
            raise TrashError(f"{data}: {len(missing)} image file(s) not found under {images}, e.g. {missing[0]}")
        return pairs
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise TrashError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in {images}")
    return [(p.name, p) for p in files]


def stream_predictions(
    learners: list,
    images: list[tuple[str, Path]],
    tta: bool | str = False,
    weights: list[float] | None = None,
    batch_size: int = 8,
) -> Iterator[Prediction]:
    """Yields one Prediction per image, batch by batch, so memory does not grow with the image count."""
    from PIL import Image

    spec = view_spec(tta)
    weights = weights or [1.0] * len(learners)
    if len(weights) != len(learners):
        raise TrashError(f"{len(weights)} weights for {len(learners)} models")
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        sizes = [Image.open(p).size[::-1] for _, p in chunk]  # (H, W) from the header only
        total = [None] * len(chunk)
        for learn, w in zip(learners, weights):
            learn.model.eval()
            x = learn.dls.test_dl([p for _, p in chunk], bs=len(chunk)).one_batch()[0]
            views = parse_views(spec, multiple=getattr(learn.model, "trash_size_multiple", 32))
            probs = predict_probs(learn.model, x, views)
            for i, (h, w_) in enumerate(sizes):  # back to each image's own size before ensembling
                p = F.interpolate(probs[i : i + 1], size=(h, w_), mode="bilinear", align_corners=False)[0] * w
                total[i] = p if total[i] is None else total[i] + p
        for (image_id, path), p in zip(chunk, total):
            yield Prediction(image_id, path, (p / sum(weights)).cpu())


def view_spec(tta: bool | str) -> str:
    """TTA views as a parse_views spec: False = none, True = flips, or a spec such as "d4+ms"."""
    if isinstance(tta, str):
        return tta
    return "flip" if tta else "identity"


def submission_row(probs: torch.Tensor) -> str:
    """The 256x256 class mask, flattened row-major, as the competition's PredictionString.

    Probabilities are area-averaged down to 256x256 before the argmax (better than nearest-resizing a mask).
    """
    small = F.interpolate(probs[None], size=(SUBMISSION_SIZE, SUBMISSION_SIZE), mode="area")[0]
    return " ".join(map(str, small.argmax(0).flatten().tolist()))


def write_mask(path: Path, mask: np.ndarray) -> None:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    if not cv2.imwrite(str(tmp), mask):
        raise TrashError(f"could not write {path}")
    os.replace(tmp, path)


def predict(
    models: list[str | Path],
    images: str | Path,
    out: str | Path,
    data: str | Path | None = None,
    tta: bool | str = False,
    weights: list[float] | None = None,
    batch_size: int = 8,
    progress=None,
) -> dict:
    """Writes `out/masks/<image stem>.png` (original size, pixel = class index) and `out/submission.csv`.

    Returns:
        A summary: counts and the paths written.
    """
    learners = load_learners(models)
    if data:
        check_classes(learners, load_coco(data).codes, str(data))
    pairs = list_images(images, data)
    out = Path(out)
    masks = out / "masks"
    csv_path = out / "submission.csv"
    out.mkdir(parents=True, exist_ok=True)
    tmp = csv_path.with_name(f".submission.{os.getpid()}.tmp")
    stream = stream_predictions(learners, pairs, tta, weights, batch_size)
    with tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image_id", "PredictionString"])
        for pred in progress(stream, total=len(pairs)) if progress else stream:
            write_mask(masks / Path(pred.image_id).with_suffix(".png"), pred.probs.argmax(0).numpy().astype(np.uint8))
            writer.writerow([pred.image_id, submission_row(pred.probs)])
    os.replace(tmp, csv_path)
    return {
        "images": len(pairs),
        "masks": str(masks),
        "submission": str(csv_path),
        "classes": learners[0].trash_classes,
        "tta": [v.name for v in parse_views(view_spec(tta))],
        "models": [str(find_export(m)) for m in models],
    }
