"""fastai callbacks that change trash's training loop (module level: they are pickled into exports).

- `CPUMixedPrecision`: bf16 autocast on CPU.
- `HistoryCSV`: one row per epoch in history.csv across stages, with `iou_<class>` columns.
- `BestModel`: fastai's SaveModelCallback, safe to resume (`fit(start_epoch=k)`) and written atomically.
- `StopOnNonFinite`: a NaN/inf loss stops training with `TrainingDiverged` (exit code 3), never silently.
- `ModelEMA`: timm EMA of the weights after each optimizer step; copied into the model after fit,
  optionally used for each epoch's validation.
- `SWA`: torch SWA, one weight snapshot per epoch from `start_epoch`; BatchNorm statistics recomputed.
- `TopKCheckpoints`: `<folder>/epoch_<n>.pth` of the k best epochs by a metric, and `topk.json`.
- `SegCutMix`: pastes one box from other samples of the batch into images and masks alike.
- `AdaptiveClassWeights`: loss class weights from validation IoU each epoch; class_weights.csv.

`average_checkpoints(paths)` averages the files TopKCheckpoints keeps (an "epoch ensemble" in one model).

Heavy state (the EMA / SWA copies of the model, a swapped-out state_dict) is listed in `_stateattrs`, which
fastai's `Stateful` leaves out when a learner is exported: exports carry the callbacks' settings, not extra
copies of the weights. ModelEMA, SWA, TopKCheckpoints and AdaptiveClassWeights sit out `lr_find` and
`get_preds`; the last three act only on epochs that both trained and validated, not on `learn.validate()`
or the epochs `fit(start_epoch=k)` skips.

Callbacks whose state a resumed run needs (ModelEMA, SWA, AdaptiveClassWeights) have `checkpoint_state()`
and `load_checkpoint_state(state)`, which app/checkpoint.py saves and restores with every checkpoint. Every
file here is written atomically (app/atomic.py): a killed run or a full disk never leaves half a file.
"""

import json
import math
from pathlib import Path

import numpy as np
import torch
from fastai.callback.core import Callback
from fastai.callback.fp16 import MixedPrecision
from fastai.callback.tracker import SaveModelCallback, TerminateOnNaNCallback, TrackerCallback
from fastai.learner import Recorder
from fastai.torch_core import get_model
from fastcore.foundation import L
from timm.utils import ModelEmaV3
from torch.amp import GradScaler
from torch.optim.swa_utils import AveragedModel, update_bn

from app.atomic import append_csv_row, torch_save, write_text
from app.errors import DIVERGED, TrashError
from app.metrics import iou_per_class

#: After fastai's TrackerCallbacks (SaveModelCallback, EarlyStopping: 60): their after_epoch sees the
#: weights that were validated, and our after_fit overrides SaveModelCallback's reload of the best epoch.
AFTER_TRACKERS = TrackerCallback.order + 1


class CPUMixedPrecision(MixedPrecision):
    """bf16 autocast on CPU.

    fastai's `to_bf16()` / MixedPrecision enter `autocast('cuda')` only, which changes nothing on CPU;
    this keeps its loop (fp32 loss, no-op scaler: bf16 has fp32's range) with a CPU autocast.
    """

    def __init__(self):
        super().__init__(amp_mode="bf16")

    def before_fit(self):
        self.autocast = torch.autocast("cpu", dtype=torch.bfloat16)
        self.learn.scaler, self.scales = GradScaler("cpu", enabled=False), L()


class HistoryCSV(Callback):
    """Appends one row per epoch to history.csv, numbering epochs across progressive-resizing stages.

    fastai's CSVLogger restarts epoch numbers and rewrites its header at every `fit` call (each stage).
    Columns: epoch, stage, size, the recorder's columns, lr, then `iou_<class>` per class from the
    learner's confusion-matrix metric (`MeanIoU`), empty for a class absent from truth and prediction.
    The per-class columns come last so that readers splitting the leading columns by position still work.
    Epochs that `fit(start_epoch=k)` skips (a resumed run) get no row; each append rewrites the file
    atomically.
    """

    order = Recorder.order + 1  # after the Recorder has filled `recorder.log` for the epoch

    def __init__(self, path: Path, stage: int, size: int, epoch_offset: int):
        self.path, self.stage, self.size, self.epoch_offset = Path(path), stage, size, epoch_offset

    def after_epoch(self):
        names, values = self.recorder.metric_names, self.recorder.log
        if len(values) < len(names) - 1:  # a skipped epoch: only the epoch number (and time) was logged
            return
        row = dict(zip(names, values))
        row.update(epoch=self.epoch_offset + self.epoch, stage=self.stage, size=self.size, lr=self.opt.hypers[-1]["lr"])
        ious = class_iou_columns(self.learn)
        row.update(ious)
        fields = ["epoch", "stage", "size", *[n for n in names if n not in ("epoch",)], "lr", *ious]
        append_csv_row(self.path, fields, {k: _plain(v) for k, v in row.items()})


def _plain(value):
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


# -- shared helpers ------------------------------------------------------------------------------------


def confusion_metric(learn):
    """The learner's first metric with a `cm` confusion matrix (app.metrics.MeanIoU), or None."""
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


def _real_fit(learn) -> bool:
    """False inside lr_find and get_preds, which run fastai's fit events on a model they restore or only read."""
    return not hasattr(learn, "lr_finder") and not hasattr(learn, "gather_preds")


def _state_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in get_model(model).state_dict().items()}


class _CompleteEpochs(Callback):
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


# -- stopping and the best model -------------------------------------------------------------------


class TrainingDiverged(TrashError):
    """The loss became NaN or inf: training stopped (exit code 3); a lower learning rate usually helps."""

    def __init__(self, message: str):
        super().__init__(message, DIVERGED)


class StopOnNonFinite(Callback):
    """Stops training with `TrainingDiverged` at the first NaN or inf loss of a training or validation batch.

    fastai's TerminateOnNaNCallback raises CancelFitException: `fit` then returns as if it had finished,
    SaveModelCallback reloads its file and the run goes on to export a model. Here the exception leaves
    `fit` before any after_epoch / after_fit hook (no checkpoint or best model of the diverged epoch is
    written), and the CLI exits non-zero.

    Args:
        epoch_offset: Added to `learn.epoch` in the message (epochs of earlier stages).
    """

    order = TerminateOnNaNCallback.order  # before the Recorder (50) takes the loss into its averages

    def __init__(self, epoch_offset: int = 0):
        self.epoch_offset = epoch_offset

    def after_batch(self):
        loss = getattr(self.learn, "loss", None)
        if not isinstance(loss, torch.Tensor) or bool(torch.isfinite(loss.detach()).all()):
            return
        value = "nan" if bool(torch.isnan(loss.detach()).any()) else "inf"
        phase = "training" if self.training else "validation"
        lr = self.opt.hypers[-1]["lr"]
        raise TrainingDiverged(
            f"training diverged: the {phase} loss is {value} at epoch {self.epoch_offset + self.epoch} "
            f"(batch {self.iter + 1} of {self.n_iter}, lr {lr:.3g})"
        )


class BestModel(_CompleteEpochs, SaveModelCallback):
    """fastai's SaveModelCallback (the best epoch by `monitor` in `models/<fname>.pth`, reloaded after fit),
    made safe to resume and to crash:

    - the epochs `fit(start_epoch=k)` skips have no recorded values; fastai's version indexes them and
      raises IndexError. They are ignored here.
    - fastai's `learn.save` writes in place (a full disk leaves a truncated best.pth over the good one);
      here the weights (no optimizer state) are written atomically and reloaded with `weights_only=True`.
    - `<fname>.json` beside the file says which epoch, stage and score it holds; a resumed stage starts
      from that score (`resume_best`) instead of -inf, so a worse epoch never replaces the file.
    - a NaN score is never the best (fastai's `np.greater(nan, best)` is False too; checked explicitly).

    Args:
        monitor, comp, fname, at_end: As fastai's SaveModelCallback (every_epoch and with_opt are not offered).
        stage: Stage index written to `<fname>.json` (-1 = the frozen-encoder phase).
        epoch_offset: Added to `learn.epoch` in `<fname>.json` (epochs of earlier stages).
    """

    def __init__(self, monitor="miou", comp=None, fname="best", at_end=False, stage: int = 0, epoch_offset: int = 0):
        super().__init__(monitor=monitor, comp=comp, fname=fname, at_end=at_end)
        self.stage, self.epoch_offset, self.resume_best = stage, epoch_offset, None

    @property
    def file(self) -> Path:
        return Path(self.learn.path) / self.learn.model_dir / f"{self.fname}.pth"

    def before_fit(self):
        super().before_fit()
        self._reset_epoch_flags()
        if self.resume_best is not None:
            self.best = self.resume_best

    def after_epoch(self):
        if not self._epoch_complete():
            return
        if math.isnan(float(self.recorder.values[-1][self.idx])):
            self.new_best = False
            return
        super().after_epoch()

    def _save(self, name):
        torch_save(get_model(self.learn.model).state_dict(), self.file)
        score = None if self.at_end and not self.new_best else float(self.best)
        info = {"epoch": self.epoch_offset + self.epoch, "stage": self.stage, "monitor": self.monitor, "score": score}
        write_text(self.file.with_suffix(".json"), json.dumps(info, indent=2) + "\n")
        self.last_saved_path = self.file

    def after_fit(self, **kwargs):
        if self.at_end:
            self.new_best = False  # the weights saved now are the averaged ones, with no validation score yet
            self._save(self.fname)
        elif self.file.is_file():
            state = torch.load(self.file, map_location=_model_device(self.learn.model), weights_only=True)
            get_model(self.learn.model).load_state_dict(state)


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(get_model(model).parameters()).device


# -- weight averaging ----------------------------------------------------------------------------------


class ModelEMA(Callback):
    """Exponential moving average of the weights (and buffers) with timm's `ModelEmaV3`.

    Updated after every optimizer step (not after micro-batches that gradient accumulation or an fp16
    overflow cancels). The EMA persists across `fit` calls of the same instance (progressive-resizing stages).

    Args:
        decay: EMA decay per step (timm's `decay`).
        warmup: timm's decay warmup: decay = 1 - (1 + step)^(-2/3), capped at `decay` (short runs need it).
        validate_with_ema: Validate each epoch with the EMA weights. They are swapped in before validation
            and the training weights back at the end of the epoch (not right after validation), so that
            SaveModelCallback / TopKCheckpoints save the weights that got the recorded score.
        apply_after_fit: At the end of each fit that trained, copy the EMA weights (BatchNorm running stats
            included) into the model, so that validation, export and the next stage use them.
        device: Keep the EMA on this device (e.g. "cpu" to save GPU memory); None = the model's.
    """

    order = AFTER_TRACKERS
    _stateattrs = ("ema", "_raw")

    def __init__(
        self,
        decay: float = 0.999,
        warmup: bool = True,
        validate_with_ema: bool = False,
        apply_after_fit: bool = True,
        device: str | torch.device | None = None,
    ):
        self.decay, self.warmup, self.validate_with_ema = decay, warmup, validate_with_ema
        self.apply_after_fit, self.ema_device = apply_after_fit, device
        self._init_state()

    def _init_state(self):
        self.ema, self._raw, self.ema_steps = None, None, 0

    def before_fit(self):
        self.run, self._stepped, self._cancelled_step = _real_fit(self.learn), False, False
        if self.run and self.ema is None:
            device = None if self.ema_device is None else torch.device(self.ema_device)
            self.ema = ModelEmaV3(get_model(self.learn.model), decay=self.decay, use_warmup=self.warmup, device=device)
            self.ema_steps = 0

    def after_cancel_step(self):
        self._cancelled_step = True  # fastai still calls after_step when a callback cancels the step

    def after_step(self):
        if self._cancelled_step:
            self._cancelled_step = False
            return
        self.ema_steps += 1
        self.ema.update(get_model(self.learn.model), step=self.ema_steps)  # step 1 copies, then `decay`
        self._stepped = True

    def before_validate(self):
        if self.validate_with_ema and self.ema is not None and self._raw is None:
            self._raw = _state_copy(self.learn.model)
            get_model(self.learn.model).load_state_dict(self.ema.module.state_dict())

    def after_epoch(self):
        self._restore_raw()

    def after_fit(self):
        self._restore_raw()
        if self._stepped and self.apply_after_fit:
            self.copy_to_model()

    def copy_to_model(self):
        """Copies the EMA weights and buffers into the learner's model (load_state_dict: any device)."""
        get_model(self.learn.model).load_state_dict(self.ema.module.state_dict())

    def checkpoint_state(self) -> dict:
        if self.ema is None:
            return {}
        return {"ema": self.ema.module.state_dict(), "steps": self.ema_steps}

    def load_checkpoint_state(self, state: dict) -> None:
        if not state:
            return
        device = None if self.ema_device is None else torch.device(self.ema_device)
        self.ema = ModelEmaV3(get_model(self.learn.model), decay=self.decay, use_warmup=self.warmup, device=device)
        self.ema.module.load_state_dict(state["ema"])
        self.ema_steps = state["steps"]

    def _restore_raw(self):
        if self._raw is not None:
            get_model(self.learn.model).load_state_dict(self._raw)
            self._raw = None


class SWA(_CompleteEpochs):
    """Stochastic weight averaging with torch's `AveragedModel` and `update_bn`, within one fit.

    From epoch `start_epoch` (of this fit, 0-based) on, the weights at the end of each epoch are averaged
    uniformly; at the end of the fit they replace the model's and the BatchNorm running statistics are
    recomputed with one pass over the training loader (averaged weights make the old statistics wrong).

    Args:
        start_epoch: First epoch whose final weights enter the average.
        lr: Constant lr (all parameter groups) from `start_epoch` on, as in the SWA paper; None keeps the
            schedule. Set here rather than with torch's `SWALR`, which drives a torch optimizer's
            param_groups, while fastai's optimizer keeps its own hypers that ParamScheduler rewrites each batch.
        bn_batches: Use at most this many training batches for the BatchNorm pass (None = all).
    """

    order = AFTER_TRACKERS  # before_batch after ParamScheduler (60); after_fit after SaveModelCallback
    _stateattrs = ("swa_model", "_resumed")

    def __init__(self, start_epoch: int, lr: float | None = None, bn_batches: int | None = None):
        self.start_epoch, self.swa_lr, self.bn_batches = start_epoch, lr, bn_batches
        self._init_state()

    def _init_state(self):
        self.swa_model, self._resumed = None, None

    def before_fit(self):
        self.run, self.swa_model = _real_fit(self.learn), None
        self._reset_epoch_flags()
        resumed, self._resumed = getattr(self, "_resumed", None), None
        if resumed and self.run:  # a resumed fit continues the average of the epochs before the stop
            self.swa_model = AveragedModel(get_model(self.learn.model))
            self.swa_model.load_state_dict(resumed["averaged"])

    def checkpoint_state(self) -> dict:
        return {} if self.swa_model is None else {"averaged": self.swa_model.state_dict()}

    def load_checkpoint_state(self, state: dict) -> None:
        self._resumed = state or None

    def before_batch(self):
        if self.swa_lr is not None and self.training and self.epoch >= self.start_epoch:
            self.opt.set_hyper("lr", self.swa_lr)

    def after_epoch(self):
        if not self._epoch_complete() or self.epoch < self.start_epoch:
            return
        model = get_model(self.learn.model)
        if self.swa_model is None:
            self.swa_model = AveragedModel(model)
        self.swa_model.update_parameters(model)

    def after_fit(self):
        if self.swa_model is None or not int(self.swa_model.n_averaged):
            return
        model = get_model(self.learn.model)
        model.load_state_dict(self.swa_model.module.state_dict())
        update_bn(_inputs(self.learn.dls.train, self.bn_batches), model)
        self.swa_model = None


def _inputs(dl, limit: int | None = None):
    """The first element (the images) of each fastai batch, at most `limit` batches.

    `update_bn` calls `model(batch[0])` on tuple batches itself; yielding the inputs here keeps the masks
    out of its loop and lets `bn_batches` stop it early.
    """
    for i, batch in enumerate(dl):
        if limit is not None and i >= limit:
            return
        yield batch[0]


# -- checkpoints ---------------------------------------------------------------------------------------


class TopKCheckpoints(_CompleteEpochs, TrackerCallback):
    """Keeps the model state_dicts of the k best epochs by a recorder column, and topk.json listing them.

    Files: `<learn.path>/<folder>/epoch_<n>.pth` (loadable with `learn.load("epoch_<n>")` when `folder` is
    the learner's model_dir) and `topk.json`: [{"epoch", "score", "file"}, ...] best first, `file` relative
    to the folder. A file that drops out of the top k is deleted; an epoch with a NaN score is never kept;
    ties keep the earlier epoch. Writes go through a temporary file and os.replace. When the folder already
    has a topk.json (an earlier stage's instance), its entries whose files exist are carried on.
    fastai's SaveModelCallback keeps only the single best epoch, hence this one.

    Args:
        k: How many epochs to keep.
        monitor: Recorder column (a metric name or "valid_loss").
        folder: Folder under `learn.path`.
        comp: np.greater / np.less; default lower-is-better for names with "loss" or "error" (as fastai).
        epoch_offset: Added to `learn.epoch` in names and topk.json (epochs of earlier stages).
    """

    def __init__(self, k: int = 3, monitor: str = "miou", folder: str = "models", comp=None, epoch_offset: int = 0):
        super().__init__(monitor=monitor, comp=comp)
        if k < 1:
            raise TrashError(f"TopKCheckpoints needs k >= 1, got {k}")
        self.k, self.folder, self.epoch_offset, self.kept = k, folder, epoch_offset, []

    @property
    def directory(self) -> Path:
        return Path(self.learn.path) / self.folder

    def before_fit(self):
        if _real_fit(self.learn) and self.monitor not in self.recorder.metric_names[1:]:
            raise TrashError(f"TopKCheckpoints monitors {self.monitor!r}, not one of {self.recorder.metric_names[1:]}")
        super().before_fit()  # TrackerCallback: skips lr_find / get_preds, finds the monitored column
        self._reset_epoch_flags()
        if self.run and not self.kept:
            self.kept = self._read_index()

    def after_epoch(self):
        if not self._epoch_complete() or len(self.recorder.values[-1]) <= self.idx:
            return
        score = float(self.recorder.values[-1][self.idx])
        if math.isnan(score):
            return
        epoch = self.epoch_offset + self.epoch
        entry = {"epoch": epoch, "score": score, "file": f"epoch_{epoch}.pth"}
        ranked = sorted([*self.kept, entry], key=lambda e: e["score"], reverse=bool(self.comp(1.0, 0.0)))
        if entry not in ranked[: self.k]:
            return
        torch_save(get_model(self.learn.model).state_dict(), self.directory / entry["file"])
        self._replace_kept(ranked[: self.k])

    def _replace_kept(self, kept: list[dict]):
        dropped = [e for e in self.kept if e not in kept]
        self.kept = kept
        write_text(self.directory / "topk.json", json.dumps(kept, indent=2) + "\n")
        for e in dropped:
            (self.directory / e["file"]).unlink(missing_ok=True)

    def _read_index(self) -> list[dict]:
        index = self.directory / "topk.json"
        if not index.is_file():
            return []
        return [e for e in json.loads(index.read_text()) if (self.directory / e["file"]).is_file()]


def average_checkpoints(paths) -> dict[str, torch.Tensor]:
    """Uniform average of state_dict files: float tensors averaged, the rest (e.g. num_batches_tracked)
    taken from the first file. Written here: torch's AveragedModel averages live modules, not files.

    Args:
        paths: state_dict files with the same keys (e.g. TopKCheckpoints' epoch_<n>.pth).

    Returns:
        The averaged state_dict on the CPU, each tensor in its original dtype.

    Raises:
        ValueError: No paths, or files whose keys differ.
    """
    paths = list(paths)
    if not paths:
        raise ValueError("average_checkpoints needs at least one checkpoint")
    first = torch.load(paths[0], map_location="cpu", weights_only=True)
    sums = {k: v.double() for k, v in first.items() if v.is_floating_point()}
    for path in paths[1:]:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.keys() != first.keys():
            raise ValueError(f"{path} has other keys than {paths[0]}: {sorted(state.keys() ^ first.keys())[:5]}")
        for k in sums:
            sums[k] += state[k].double()
    return {k: (sums[k] / len(paths)).to(v.dtype) if k in sums else v for k, v in first.items()}


# -- data and loss levers ------------------------------------------------------------------------------


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


class AdaptiveClassWeights(_CompleteEpochs):
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
        self.run = _real_fit(self.learn)
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
