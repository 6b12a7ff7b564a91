"""Training levers that act on batches or on the loss: segmentation CutMix and adaptive class weights."""

import math
from pathlib import Path

import numpy as np
import torch
from fastai.callback.core import Callback
from fastai.learner import Recorder

from app.atomic import append_csv_row
from app.errors import TrashError
from app.model.metrics import iou_per_class
from app.train.callbacks.base import CompleteEpochs, class_names, confusion_metric, real_fit


class SegCutMix(Callback):
    """Segmentation CutMix: pastes one box from other samples of the batch into image and mask alike.

    With probability `p` per training batch, a box of area fraction ~ Beta(alpha, alpha) (clipped at the
    image border, centre uniform) is copied at the same place from a shuffled copy of the batch into
    `learn.xb[0]` and `learn.yb[0]`, so image and mask stay aligned and the loss needs no change. Written
    here: fastai's MixUp/CutMix are for classification (they mix labels with the box's lambda).

    Args:
        alpha: Beta distribution parameter of the box's area fraction (1.0 = uniform).
        p: Probability that a training batch is mixed.
    """

    run_valid = False

    def __init__(self, alpha: float = 1.0, p: float = 0.5):
        self.alpha, self.p = alpha, p

    def before_batch(self):
        if not self.training or float(torch.rand(())) >= self.p:
            return
        x, y = self.learn.xb[0], self.learn.yb[0]
        if x.shape[-2:] != y.shape[-2:]:
            raise TrashError(f"SegCutMix needs images and masks of one size, got {tuple(x.shape)} and {tuple(y.shape)}")
        top, bottom, left, right = self._box(*x.shape[-2:])
        donors = torch.randperm(x.shape[0], device=x.device)
        x, y = x.clone(), y.clone()
        x[..., top:bottom, left:right] = x[donors][..., top:bottom, left:right]
        y[..., top:bottom, left:right] = y[donors][..., top:bottom, left:right]
        self.learn.xb, self.learn.yb = (x, *self.learn.xb[1:]), (y, *self.learn.yb[1:])

    def _box(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(top, bottom, left, right) of a box of area fraction ~ Beta(alpha, alpha), clipped to the image."""
        area = float(torch.distributions.Beta(self.alpha, self.alpha).sample())
        h, w = round(height * math.sqrt(area)), round(width * math.sqrt(area))
        cy, cx = int(torch.randint(height, ())), int(torch.randint(width, ()))
        return max(cy - h // 2, 0), min(cy + h - h // 2, height), max(cx - w // 2, 0), min(cx + w - w // 2, width)


def target_class_weights(cm, previous, power=1.0, min_weight=0.2, max_weight=5.0) -> np.ndarray:
    """Class weights ∝ (1 - IoU)^power from a confusion matrix, for the classes with validation pixels.

    The present classes' weights are normalised to mean 1 and clipped to [min_weight, max_weight];
    classes without ground-truth pixels (or with an undefined IoU) keep their `previous` weight.
    When every present class is perfect (all IoU 1) they get weight 1.
    """
    cm = np.asarray(cm, dtype=np.float64)
    iou = iou_per_class(cm)
    present = (cm.sum(1) > 0) & np.isfinite(iou)
    target = np.array(previous, dtype=np.float64)
    if present.any():
        hard = (1.0 - iou[present]) ** power
        scaled = hard / hard.mean() if hard.mean() > 0 else np.ones_like(hard)
        target[present] = np.clip(scaled, min_weight, max_weight)
    return target


class AdaptiveClassWeights(CompleteEpochs):
    """After each validation, moves the loss's class weights towards the classes with the lowest IoU.

    Target weights come from `target_class_weights` on the confusion matrix of the learner's `MeanIoU`
    metric; new = smoothing * old + (1 - smoothing) * target goes to `loss_func.set_class_weights`. Starts
    from the loss's `class_weights` (ones when None). Appends `epoch,<class>...` rows to
    `<learn.path>/<log_file>` (class names from `learn.trash_classes`, else indices).

    Args:
        power: Exponent on (1 - IoU); larger = more contrast between classes.
        min_weight: Lower clip of a target weight.
        max_weight: Upper clip of a target weight.
        smoothing: Share of the previous weights kept at each update (0 = jump to the target).
        log_file: CSV file name under `learn.path`.
        epoch_offset: Added to `learn.epoch` in the log (epochs of earlier stages).
    """

    order = Recorder.order + 1

    def __init__(
        self,
        power: float = 1.0,
        min_weight: float = 0.2,
        max_weight: float = 5.0,
        smoothing: float = 0.5,
        log_file: str = "class_weights.csv",
        epoch_offset: int = 0,
    ):
        if not 0 < min_weight <= max_weight or not 0 <= smoothing <= 1:
            raise TrashError(
                f"need 0 < min_weight <= max_weight and smoothing in [0, 1], got {min_weight}, "
                f"{max_weight}, {smoothing}"
            )
        self.power, self.min_weight, self.max_weight, self.smoothing = power, min_weight, max_weight, smoothing
        self.log_file, self.epoch_offset, self.class_weights = log_file, epoch_offset, None

    def before_fit(self):
        self.run = real_fit(self.learn)
        self._reset_epoch_flags()
        if not self.run:
            return
        metric = confusion_metric(self.learn)
        if metric is None or not hasattr(self.learn.loss_func, "set_class_weights"):
            raise TrashError("AdaptiveClassWeights needs a MeanIoU metric and a loss with set_class_weights")
        if self.class_weights is None:
            current, n = getattr(self.learn.loss_func, "class_weights", None), len(metric.cm)
            self.class_weights = np.ones(n) if current is None else np.asarray(current, dtype=np.float64).copy()
            if len(self.class_weights) != n:
                raise TrashError(f"the loss has {len(self.class_weights)} class weights but the metric {n} classes")

    def after_epoch(self):
        if not self._epoch_complete():
            return
        cm = np.asarray(confusion_metric(self.learn).cm)
        target = target_class_weights(cm, self.class_weights, self.power, self.min_weight, self.max_weight)
        self.class_weights = self.smoothing * self.class_weights + (1 - self.smoothing) * target
        self.learn.loss_func.set_class_weights(torch.tensor(self.class_weights, dtype=torch.float32))
        self._log(self.epoch_offset + self.epoch)

    def _log(self, epoch: int):
        names = class_names(self.learn, len(self.class_weights))
        row = {"epoch": epoch, **{n: f"{w:.6g}" for n, w in zip(names, self.class_weights)}}
        append_csv_row(Path(self.learn.path) / self.log_file, ["epoch", *names], row)

    def checkpoint_state(self) -> dict:
        return {"class_weights": None if self.class_weights is None else [float(w) for w in self.class_weights]}

    def load_checkpoint_state(self, state: dict) -> None:
        if state["class_weights"] is not None:
            self.class_weights = np.array(state["class_weights"], dtype=np.float64)
            self.learn.loss_func.set_class_weights(torch.tensor(self.class_weights, dtype=torch.float32))
