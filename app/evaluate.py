"""Evaluation of exported (or in-memory) learners against COCO ground truth at the images' original size."""

from pathlib import Path

import cv2
import numpy as np
import torch

from app.coco import load_coco
from app.data import coco_items
from app.metrics import confusion_matrix, iou_report
from app.predict import check_classes, load_learners, stream_predictions


def evaluate_items(
    learners: list,
    items: list[tuple[Path, Path]],
    codes: list[str],
    tta: bool | str = False,
    batch_size: int = 8,
    ignore_index: int = 255,
    progress=None,
    on_prediction=None,
) -> dict:
    """mIoU from one confusion matrix accumulated over all (image, mask PNG) items, plus per-class IoU.

    `on_prediction(pred)`, when given, sees every Prediction (e.g. to keep out-of-fold probabilities).
    """
    n = len(codes)
    cm = torch.zeros(n, n, dtype=torch.int64)
    truth = dict((str(img), mask) for img, mask in items)
    stream = stream_predictions(learners, [(str(img), img) for img, _ in items], tta, batch_size=batch_size)
    for pred in progress(stream, total=len(items)) if progress else stream:
        target = torch.from_numpy(cv2.imread(str(truth[pred.image_id]), cv2.IMREAD_UNCHANGED).astype(np.int64))
        cm += confusion_matrix(pred.probs.argmax(0), target, n, ignore_index)
        if on_prediction:
            on_prediction(pred)
    report = iou_report(cm.numpy(), codes)
    report.update(images=len(items), tta=tta, confusion_matrix=cm.tolist())
    return report


def evaluate(
    models: list[str | Path],
    data: str | Path,
    images: str | Path,
    tta: bool | str = False,
    batch_size: int = 8,
    mask_cache: str = "",
    progress=None,
) -> dict:
    """Evaluates exported models on a COCO json whose `file_name`s are relative to `images`."""
    learners = load_learners(models)
    coco = load_coco(data)
    check_classes(learners, coco.codes, str(data))
    report = evaluate_items(
        learners, coco_items(coco, images, mask_cache), coco.codes, tta, batch_size, progress=progress
    )
    report.update(data=str(data), models=[str(m) for m in models])
    return report
