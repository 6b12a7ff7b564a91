"""What the callbacks share: epoch-completeness, the confusion-matrix metric, class names, fit detection.

`CompleteEpochs` tells whether the epoch now ending both trained and validated: `learn.validate()` fires
after_epoch without training, and `fit(start_epoch=k)` cancels the skipped epochs before anything runs; acting on
those would save stale checkpoints or reuse a stale matrix.
"""

import numpy as np
import torch
from fastai.callback.core import Callback
from fastai.callback.tracker import TrackerCallback
from fastai.torch_core import get_model

from app.model.metrics import iou_per_class

#: After fastai's TrackerCallbacks (SaveModelCallback, EarlyStopping: 60): their after_epoch sees the
#: weights that were validated, and our after_fit overrides SaveModelCallback's reload of the best epoch.
AFTER_TRACKERS = TrackerCallback.order + 1


def confusion_metric(learn):
    """The learner's first metric with a `cm` confusion matrix (app.model.metrics.MeanIoU), or None."""
    return next((m for m in learn.metrics if getattr(m, "cm", None) is not None), None)


def class_names(learn, n_classes: int) -> list[str]:
    """`learn.trash_classes` when it has one name per class, else "0", "1", ..."""
    names = getattr(learn, "trash_classes", None)
    if names is None or len(names) != n_classes:
        names = range(n_classes)
    return [str(n) for n in names]


def class_iou_columns(learn) -> dict[str, float | str]:
    """`iou_<class>` -> IoU of the last validation ("" when the class is absent); {} without a cm metric."""
    metric = confusion_metric(learn)
    if metric is None:
        return {}
    iou = iou_per_class(np.asarray(metric.cm))
    names = class_names(learn, len(iou))
    return {f"iou_{n}": ("" if np.isnan(v) else float(v)) for n, v in zip(names, iou)}


def real_fit(learn) -> bool:
    """False inside lr_find and get_preds, which run fastai's fit events on a model they restore or only read."""
    return not hasattr(learn, "lr_finder") and not hasattr(learn, "gather_preds")


def state_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in get_model(model).state_dict().items()}


class CompleteEpochs(Callback):
    """Mixin: tells whether the epoch now ending both trained and validated.

    `learn.validate()` fires after_epoch without training, and `fit(start_epoch=k)` cancels the skipped
    epochs before anything runs; acting on those would save stale checkpoints or reuse a stale matrix.
    """

    def _reset_epoch_flags(self):
        self._trained = self._validated = False

    def after_train(self):
        self._trained = True

    def after_validate(self):
        self._validated = True

    def _epoch_complete(self) -> bool:
        done = getattr(self, "_trained", False) and getattr(self, "_validated", False)
        self._reset_epoch_flags()
        return done


def model_device(model: torch.nn.Module) -> torch.device:
    return next(get_model(model).parameters()).device
