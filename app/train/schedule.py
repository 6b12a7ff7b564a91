"""Learning-rate schedules by name (`SCHEDULES`): `fit(learn, options, epochs, lr)` runs one fastai fit with one.

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

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
from fastai.callback.schedule import ParamScheduler, combined_cos, sched_cos, sched_lin
from fastai.callback.tracker import ReduceLROnPlateau, TrackerCallback
from fastcore.foundation import L

from app.errors import TrashError
from app.recipe import Train
from app.registry import Registry
from app.train.budget import BudgetScheduler

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


@dataclass(frozen=True)
class ScheduleOptions:
    """A schedule by name and its settings (each used by the schedule it names).

    Attributes:
        name: One of `SCHEDULES` (see the module docstring for the shapes).
        warmup_pct: warmup_cosine: fraction of all training batches spent warming up linearly.
        step_epochs: step: the epochs (0-based) at whose start the lr is multiplied by `step_gamma`.
        step_gamma: step: lr multiplier per step (0.1 = ten times smaller).
        plateau_patience: plateau: epochs in a row without improvement of `monitor` before the lr drops.
        plateau_factor: plateau: lr multiplier at each drop (0.2 = five times smaller). fastai's own
            `ReduceLROnPlateau(factor=...)` divides instead; it gets `1 / plateau_factor`.
        monitor: plateau: the recorder column watched (`valid_loss` or a metric name such as `miou`;
            lower is better for names with "loss" or "error", higher otherwise, as in fastai).
    """

    name: str = "one_cycle"
    warmup_pct: float = 0.1
    step_epochs: tuple[int, ...] = ()
    step_gamma: float = 0.1
    plateau_patience: int = 2
    plateau_factor: float = 0.2
    monitor: str = "valid_loss"
    cpu_budget: float = 0.0  # > 0: the position in training is the share of this budget used (app/train/budget.py)
    budget_used: float = 0.0  # CPU-seconds of training a resumed run had already used

    @classmethod
    def of(cls, t: Train, name: str | None = None, budget_used: float = 0.0) -> "ScheduleOptions":
        """The recipe's train section's schedule (or the one `name`s, with the recipe's settings)."""
        return cls(
            name or t.schedule,
            t.warmup_pct,
            tuple(t.step_epochs),
            t.step_gamma,
            t.plateau_patience,
            cpu_budget=t.cpu_budget,
            budget_used=budget_used,
        )


def _peak_lrs(learn, lr) -> np.ndarray:
    """`lr` (float, or slice for discriminative lrs) spread over the optimizer's groups, as fastai's fit_* do."""
    if learn.opt is None:
        learn.create_opt()
    learn.opt.set_hyper("lr", lr)
    return np.array([h["lr"] for h in learn.opt.hypers])


def _check(o: ScheduleOptions, epochs: int, start_epoch: int) -> None:
    SCHEDULES[o.name]
    if epochs < 1 or not 0 <= start_epoch < epochs:
        raise TrashError(
            f"need epochs >= 1 and 0 <= start_epoch < epochs, got epochs={epochs}, start_epoch={start_epoch}"
        )
    if o.name == "warmup_cosine" and not 0 <= o.warmup_pct < 1:
        raise TrashError(f"warmup_pct must be in [0, 1), got {o.warmup_pct}")
    if o.name == "step":
        if not o.step_gamma > 0:
            raise TrashError(f"step_gamma must be > 0, got {o.step_gamma}")
        if any(not 0 < e < epochs for e in o.step_epochs):
            raise TrashError(f"step_epochs must lie strictly between 0 and epochs={epochs}, got {tuple(o.step_epochs)}")
    if o.name == "plateau":
        if not 0 < o.plateau_factor < 1:
            raise TrashError(f"plateau_factor (lr multiplier) must be in (0, 1), got {o.plateau_factor}")
        if o.plateau_patience < 1:
            raise TrashError(f"plateau_patience must be >= 1, got {o.plateau_patience}")


@dataclass(frozen=True)
class Schedule:
    """One schedule: how it runs a fit by epochs, and its shape as functions of the position for a CPU budget."""

    fit: Callable  # (learn, options, epochs, lr, callbacks, start_epoch)
    scheds: Callable | None = None  # (peak lrs, options, epochs) -> {hyper: f(position)}; None: epochs only


def _one_cycle(learn, o: ScheduleOptions, epochs: int, lr, cbs, start_epoch: int) -> None:
    learn.fit_one_cycle(epochs, lr, cbs=cbs, start_epoch=start_epoch)


def _one_cycle_scheds(peak, o: ScheduleOptions, epochs: int) -> dict:
    """fastai's fit_one_cycle shapes (pct_start 0.25, div 25, div_final 1e5, moms 0.95-0.85-0.95)."""
    return {"lr": combined_cos(0.25, peak / 25, peak, peak / 1e5), "mom": combined_cos(0.25, 0.95, 0.85, 0.95)}


def _plateau(learn, o: ScheduleOptions, epochs: int, lr, cbs, start_epoch: int) -> None:
    plateau = PlateauLR(
        monitor=o.monitor, patience=o.plateau_patience, factor=1 / o.plateau_factor, start_epoch=start_epoch
    )
    learn.fit(epochs, lr, cbs=L(plateau) + L(cbs), start_epoch=start_epoch)


def _scheduled(make_sched: Callable, learn, o: ScheduleOptions, epochs: int, lr, cbs, start_epoch: int) -> None:
    """A plain fit with fastai's ParamScheduler driving the lr along `make_sched(peak lrs, options, epochs)`."""
    scheds = make_sched(_peak_lrs(learn, lr), o, epochs)
    learn.fit(epochs, lr, cbs=L(ParamScheduler(scheds)) + L(cbs), start_epoch=start_epoch)


def _flat_cos(peak, o: ScheduleOptions, epochs: int) -> dict:
    return {"lr": partial(flat_cos_lr, lr=peak)}


def _warmup_cosine(peak, o: ScheduleOptions, epochs: int) -> dict:
    return {"lr": partial(warmup_cosine_lr, lr=peak, warmup_pct=o.warmup_pct)}


def _step(peak, o: ScheduleOptions, epochs: int) -> dict:
    return {"lr": partial(step_lr, lr=peak, epochs=epochs, step_epochs=tuple(o.step_epochs), gamma=o.step_gamma)}


SCHEDULES: Registry[Schedule] = Registry(
    "schedule",
    {
        "one_cycle": Schedule(_one_cycle, _one_cycle_scheds),
        "flat_cos": Schedule(partial(_scheduled, _flat_cos), _flat_cos),
        "warmup_cosine": Schedule(partial(_scheduled, _warmup_cosine), _warmup_cosine),
        "step": Schedule(partial(_scheduled, _step)),  # steps at epochs: not a function of a budget's share
        "plateau": Schedule(_plateau),  # follows the validation score: not a function of a budget's share
    },
    key="train.schedule",
)


def _budget_fit(learn, o: ScheduleOptions, epochs: int, lr, cbs, start_epoch: int) -> None:
    """One fit whose schedule follows the CPU budget used (app/train/budget.py); `epochs` is a cap."""
    make = SCHEDULES[o.name].scheds
    if make is None:
        raise TrashError(
            f"schedule {o.name!r} steps by epochs or score, not by a CPU budget: use one of "
            f"{', '.join(n for n, s in SCHEDULES.items() if s.scheds)} with train.cpu_budget"
        )
    scheduler = BudgetScheduler(make(_peak_lrs(learn, lr), o, epochs), o.cpu_budget, o.budget_used)
    learn.fit(epochs, lr, cbs=L(scheduler) + L(cbs), start_epoch=start_epoch)


def fit(learn, schedule: str | ScheduleOptions, epochs: int, lr, cbs=None, start_epoch: int = 0) -> None:
    """Trains `learn` for `epochs` epochs with the named lr schedule peaking at (or starting from) `lr`.

    Args:
        learn: A fastai Learner (optimizer from `app.train.optim`, or any fastai optimizer).
        schedule: A `SCHEDULES` name (with default settings) or `ScheduleOptions`.
        epochs: Total epochs of the schedule, including any already done before a resume.
        lr: Peak lr (one_cycle, warmup_cosine), flat lr (flat_cos), starting lr (step, plateau).
            A `slice` gives discriminative lrs across parameter groups, as in fastai.
        cbs: Extra callbacks for this fit only.
        start_epoch: Resume: skip epochs `0..start_epoch-1` and continue the schedule from there
            (for `plateau`, see the module docstring).

    Raises:
        TrashError: Unknown schedule (names listed) or an out-of-range setting.
    """
    options = ScheduleOptions(schedule) if isinstance(schedule, str) else schedule
    _check(options, epochs, start_epoch)
    run = _budget_fit if options.cpu_budget else SCHEDULES[options.name].fit
    run(learn, options, epochs, lr, cbs, start_epoch)
