"""Learning-rate schedules by name: `fit(learn, schedule, epochs, lr, ...)` runs one fastai fit with it.

| schedule        | lr over training (pos = fraction of the `epochs` done)                                      |
|-----------------|---------------------------------------------------------------------------------------------|
| `one_cycle`     | fastai `fit_one_cycle`: cosine lr/25 -> lr over the first 25%, then cosine down to lr/1e5;     |
|                 | momentum cycles 0.95 -> 0.85 -> 0.95                                                         |
| `flat_cos`      | fastai's flat-cos (as `fit_flat_cos`): lr for 75%, then cosine down to lr/1e5               |
| `warmup_cosine` | linear lr/100 -> lr over `warmup_pct`, then cosine down to lr/1e5                            |
| `step`          | lr, multiplied by `step_gamma` at the start of each epoch in `step_epochs`                   |
| `plateau`       | lr, multiplied by `plateau_factor` after `plateau_patience` epochs without `monitor` improving |

All but `plateau` are pure functions of the position in training, applied per batch by fastai's
`ParamScheduler`; the schedule functions are module-level (picklable) even though the scheduler callbacks
are only attached for the fit and never exported.

Resuming (`start_epoch=k`): fastai's `Learner.fit(start_epoch=k)` skips epochs `0..k-1` and the position
continues from `k / epochs`, so the first four schedules give the remaining batches exactly the lrs of an
uninterrupted run. (fastai 2.8's own `fit_flat_cos` drops `start_epoch`, so `flat_cos` is built here.)
For `plateau` the lr depends on the validation history, which is not saved: a resumed run starts again at
`lr` with a fresh best value and patience counter, and only the epoch numbering continues. Pass the lr the
interrupted run had reached as `lr` to continue from it.
"""

import difflib
from functools import partial

import numpy as np
from fastai.callback.schedule import ParamScheduler, sched_cos, sched_lin
from fastai.callback.tracker import ReduceLROnPlateau, TrackerCallback
from fastcore.foundation import L

from app.errors import TrashError

SCHEDULES: tuple[str, ...] = ("one_cycle", "flat_cos", "warmup_cosine", "step", "plateau")

FLAT_PCT = 0.75  # flat_cos: share of training at the full lr (fastai's `fit_flat_cos` default)
WARMUP_DIV = 100.0  # warmup_cosine starts at lr / WARMUP_DIV
FINAL_DIV = 1e5  # flat_cos and warmup_cosine end at lr / FINAL_DIV (fastai's `div_final`)


def flat_cos_lr(pos: float, lr, flat_pct: float = FLAT_PCT, final_div: float = FINAL_DIV):
    """lr at training position `pos` in [0, 1]: `lr` up to `flat_pct`, then cosine down to lr/final_div.

    The same curve as fastai's `fit_flat_cos` (`combined_cos(flat_pct, lr, lr, lr/final_div)`).
    """
    if pos < flat_pct:
        return lr
    return sched_cos(lr, lr / final_div, (pos - flat_pct) / (1 - flat_pct))


def warmup_cosine_lr(pos: float, lr, warmup_pct: float, start_div: float = WARMUP_DIV, final_div: float = FINAL_DIV):
    """lr at position `pos` in [0, 1]: linear lr/start_div -> lr over `warmup_pct`, then cosine to lr/final_div.

    `lr` may be a float or a numpy array (one value per parameter group).
    """
    if pos < warmup_pct:
        return sched_lin(lr / start_div, lr, pos / warmup_pct)
    return sched_cos(lr, lr / final_div, (pos - warmup_pct) / (1 - warmup_pct))


def step_lr(pos: float, lr, epochs: int, step_epochs: tuple[int, ...], gamma: float):
    """lr at training position `pos`: `lr * gamma**n`, n = how many of `step_epochs` have started by `pos`.

    `pos * epochs` is the (fractional) epoch; the small tolerance keeps an epoch's first batch, whose position
    is exactly `epoch / epochs`, on the right side of the step despite float rounding.
    """
    epoch = pos * epochs + 1e-6
    return lr * gamma ** sum(1 for e in step_epochs if epoch >= e)


class PlateauLR(ReduceLROnPlateau):
    """fastai's `ReduceLROnPlateau`, made to work with resumed fits and with `OptimWrapper` optimizers.

    - Epochs skipped by `Learner.fit(start_epoch=k)` have no recorded values; fastai's version indexes them
      and fails. They are ignored here.
    - fastai's version edits `opt.hypers` in place, which an `OptimWrapper` (e.g. `adamp`) rebuilds on every
      read, so the new lr was lost; here it goes through `opt.set_hyper`.

    `factor` keeps fastai's meaning: the lr is divided by it.
    """

    def __init__(self, monitor="valid_loss", patience=1, factor=10.0, min_lr=0, start_epoch: int = 0, **kwargs):
        super().__init__(monitor=monitor, patience=patience, factor=factor, min_lr=min_lr, **kwargs)
        self.start_epoch = start_epoch

    def after_epoch(self):
        if self.epoch < self.start_epoch or not len(self.recorder.values[-1]):
            return  # skipped by SkipToEpoch: nothing was trained or validated
        TrackerCallback.after_epoch(self)
        if self.new_best:
            self.wait = 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            old = self.opt.hypers[-1]["lr"]
            self.opt.set_hyper("lr", [max(h["lr"] / self.factor, self.min_lr) for h in self.opt.hypers])
            self.wait = 0
            new = self.opt.hypers[-1]["lr"]
            if new < old:
                print(f"Epoch {self.epoch}: reducing lr to {new}")


def _peak_lrs(learn, lr) -> np.ndarray:
    """`lr` (float, or slice for discriminative lrs) spread over the optimizer's groups, as fastai's fit_* do."""
    if learn.opt is None:
        learn.create_opt()
    learn.opt.set_hyper("lr", lr)
    return np.array([h["lr"] for h in learn.opt.hypers])


def _check(schedule, epochs, start_epoch, warmup_pct, step_epochs, step_gamma, plateau_patience, plateau_factor):
    if schedule not in SCHEDULES:
        close = difflib.get_close_matches(str(schedule), SCHEDULES, n=3)
        hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
        raise TrashError(f"unknown schedule {schedule!r}{hint}; choose one of {', '.join(SCHEDULES)}")
    if epochs < 1 or not 0 <= start_epoch < epochs:
        raise TrashError(
            f"need epochs >= 1 and 0 <= start_epoch < epochs, got epochs={epochs}, start_epoch={start_epoch}"
        )
    if schedule == "warmup_cosine" and not 0 <= warmup_pct < 1:
        raise TrashError(f"warmup_pct must be in [0, 1), got {warmup_pct}")
    if schedule == "step":
        if not step_gamma > 0:
            raise TrashError(f"step_gamma must be > 0, got {step_gamma}")
        if any(not 0 < e < epochs for e in step_epochs):
            raise TrashError(f"step_epochs must lie strictly between 0 and epochs={epochs}, got {tuple(step_epochs)}")
    if schedule == "plateau":
        if not 0 < plateau_factor < 1:
            raise TrashError(f"plateau_factor (lr multiplier) must be in (0, 1), got {plateau_factor}")
        if plateau_patience < 1:
            raise TrashError(f"plateau_patience must be >= 1, got {plateau_patience}")


def fit(
    learn,
    schedule: str,
    epochs: int,
    lr: float,
    cbs=None,
    start_epoch: int = 0,
    warmup_pct: float = 0.1,
    step_epochs: tuple[int, ...] = (),
    step_gamma: float = 0.1,
    plateau_patience: int = 2,
    plateau_factor: float = 0.2,
    monitor: str = "valid_loss",
) -> None:
    """Trains `learn` for `epochs` epochs with the named lr schedule peaking at (or starting from) `lr`.

    Args:
        learn: A fastai Learner (optimizer from `app.optim`, or any fastai optimizer).
        schedule: One of `SCHEDULES` (see the module docstring for the shapes).
        epochs: Total epochs of the schedule, including any already done before a resume.
        lr: Peak lr (one_cycle, warmup_cosine), flat lr (flat_cos), starting lr (step, plateau).
            A `slice` gives discriminative lrs across parameter groups, as in fastai.
        cbs: Extra callbacks for this fit only.
        start_epoch: Resume: skip epochs `0..start_epoch-1` and continue the schedule from there
            (for `plateau`, see the module docstring).
        warmup_pct: warmup_cosine: fraction of all training batches spent warming up linearly.
        step_epochs: step: the epochs (0-based) at whose start the lr is multiplied by `step_gamma`.
        step_gamma: step: lr multiplier per step (0.1 = ten times smaller).
        plateau_patience: plateau: epochs in a row without improvement of `monitor` before the lr drops.
        plateau_factor: plateau: lr multiplier at each drop (0.2 = five times smaller). fastai's own
            `ReduceLROnPlateau(factor=...)` divides instead; it gets `1 / plateau_factor`.
        monitor: plateau: the recorder column watched (`valid_loss` or a metric name such as `miou`;
            lower is better for names with "loss" or "error", higher otherwise, as in fastai).

    Raises:
        TrashError: Unknown schedule (names listed) or an out-of-range setting.
    """
    _check(schedule, epochs, start_epoch, warmup_pct, step_epochs, step_gamma, plateau_patience, plateau_factor)
    if schedule == "one_cycle":
        learn.fit_one_cycle(epochs, lr, cbs=cbs, start_epoch=start_epoch)
        return
    if schedule == "plateau":
        plateau = PlateauLR(
            monitor=monitor, patience=plateau_patience, factor=1 / plateau_factor, start_epoch=start_epoch
        )
        learn.fit(epochs, lr, cbs=L(plateau) + L(cbs), start_epoch=start_epoch)
        return
    peak = _peak_lrs(learn, lr)
    if schedule == "flat_cos":
        sched = partial(flat_cos_lr, lr=peak)
    elif schedule == "warmup_cosine":
        sched = partial(warmup_cosine_lr, lr=peak, warmup_pct=warmup_pct)
    else:  # step
        sched = partial(step_lr, lr=peak, epochs=epochs, step_epochs=tuple(step_epochs), gamma=step_gamma)
    learn.fit(epochs, lr, cbs=L(ParamScheduler({"lr": sched})) + L(cbs), start_epoch=start_epoch)
