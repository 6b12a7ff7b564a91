"""Weight averaging: timm's EMA after every step, torch's SWA once per epoch, and averaging saved epochs.

Heavy state (the EMA / SWA copies of the model, a swapped-out state_dict) is listed in `_stateattrs`, which
fastai's `Stateful` leaves out when a learner is exported: exports carry the callbacks' settings, not extra
copies of the weights. Both sit out `lr_find` and `get_preds`, and both have `checkpoint_state()` /
`load_checkpoint_state(state)`, which app/train/checkpoint.py saves and restores with every checkpoint.
"""

import torch
from fastai.callback.core import Callback
from fastai.torch_core import get_model
from timm.utils import ModelEmaV3
from torch.optim.swa_utils import AveragedModel, update_bn

from app.train.callbacks.base import AFTER_TRACKERS, CompleteEpochs, real_fit, state_copy


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
        self.run, self._stepped, self._cancelled_step = real_fit(self.learn), False, False
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
            self._raw = state_copy(self.learn.model)
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


class SWA(CompleteEpochs):
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
        self.run, self.swa_model = real_fit(self.learn), None
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
