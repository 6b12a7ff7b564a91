"""mIoU from a confusion matrix accumulated over a whole dataset, and per-class IoU.

fastai's JaccardCoeffMulti averages the same way but exposes neither the confusion matrix nor
per-class values, which evaluate, the run's metrics.json and later the confusion-matrix plot need.
"""

import numpy as np
import torch
import torch.distributed as dist
from fastai.learner import Metric


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, n_classes: int, ignore_index: int = 255) -> torch.Tensor:
    """(n, n) int64 counts, rows = true class, columns = predicted class; ignored pixels left out.

    Raises:
        ValueError: prediction and truth differ in shape (a rotated or resized mask would be scored
            pixel against the wrong pixel, silently).
    """
    if tuple(pred.shape) != tuple(target.shape):
        raise ValueError(f"prediction {tuple(pred.shape)} and truth {tuple(target.shape)} differ in shape")
    target, pred = target.reshape(-1).long(), pred.reshape(-1).long()
    keep = (target != ignore_index) & (target < n_classes)
    index = target[keep] * n_classes + pred[keep]
    return torch.bincount(index, minlength=n_classes * n_classes).reshape(n_classes, n_classes).cpu()


def iou_per_class(cm: np.ndarray) -> np.ndarray:
    """IoU per class; NaN for a class absent from both truth and prediction (it does not count)."""
    cm = np.asarray(cm, dtype=np.float64)
    inter = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, np.nan)


def mean_iou(cm: np.ndarray) -> float:
    iou = iou_per_class(cm)
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else 0.0


def iou_report(cm: np.ndarray, codes: list[str]) -> dict:
    """The metrics.json / evaluate payload: mIoU, per-class IoU (None when absent), pixel accuracy."""
    cm = np.asarray(cm)
    iou = iou_per_class(cm)
    return {
        "miou": mean_iou(cm),
        "pixel_accuracy": float(np.diag(cm).sum() / max(cm.sum(), 1)),
        "per_class_iou": {c: (None if np.isnan(v) else float(v)) for c, v in zip(codes, iou)},
        "pixels": int(cm.sum()),
    }


class MeanIoU(Metric):
    """fastai metric: mIoU over the whole validation set from an accumulated confusion matrix.

    In data-parallel training each rank accumulates its shard; the first read of `value` after a validation
    sums the ranks' matrices (every rank's Recorder reads it once, in the same order), so the mIoU is that of
    the whole validation set, never an average of per-rank mIoUs.
    """

    def __init__(self, n_classes: int, ignore_index: int = 255):
        self.n_classes, self.ignore_index = n_classes, ignore_index
        self.reset()

    def reset(self):
        self.cm = torch.zeros(self.n_classes, self.n_classes, dtype=torch.int64)
        self._reduced = False

    def accumulate(self, learn):
        pred = learn.pred.argmax(dim=1)
        self.cm += confusion_matrix(pred, learn.y, self.n_classes, self.ignore_index)

    @property
    def value(self) -> float:
        if not getattr(self, "_reduced", True):
            self.cm, self._reduced = all_reduce_sum(self.cm), True
        return mean_iou(self.cm.numpy())

    @property
    def name(self) -> str:
        return "miou"


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over the ranks of a data-parallel run (on the collective's device, returned on t's); `t` itself
    when the process is not one of several."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return t
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    total = t.detach().to(device).clone()
    dist.all_reduce(total)
    return total.to(t.device)
