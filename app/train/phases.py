"""Training one phase of a run (app/train/plan.py): its loaders, frozen or not, its schedule and callbacks.

After the frozen-encoder phase the encoder is unfrozen: later phases train it at lr / encoder_lr_div. The best
epoch by validation mIoU (NaN never counts) is reloaded at the end of a phase, unless weights are averaged:
then the averaged weights are the result.
"""

import json
import time
from pathlib import Path

import numpy as np

from app.data.loaders import make_dls
from app.model.encoders import freeze_stages
from app.recipe import Recipe
from app.runs import HISTORY
from app.train import checkpoint as ckpt
from app.train.callbacks.history import HistoryCSV
from app.train.callbacks.tracking import BestModel, StopOnNonFinite
from app.train.plan import Phase, training_phases
from app.train.schedule import ScheduleOptions, fit
from app.train.signals import SignalFlag, StopOnSignal


def run_phase(learn, recipe: Recipe, items, phase: Phase, start_epoch: int = 0, state: dict | None = None, **kw):
    """Trains one phase of the run from `start_epoch` (with `state`, the checkpoint it resumes from).

    Keyword args:
        flag: The SignalFlag of the run (a new one by default).
        started: The run's start time (seconds since the epoch), for the checkpoints' wall time.
    """
    _enter_phase(learn, recipe, items, phase, state)
    cbs = _phase_callbacks(learn, recipe, phase, start_epoch, state, kw.get("flag") or SignalFlag(), kw.get("started"))
    if phase.frozen:  # fastai's fine_tune idea: one-cycle over the decoder alone
        fit(learn, "one_cycle", phase.epochs, recipe.train.lr, cbs=cbs, start_epoch=start_epoch)
        learn.unfreeze()
        freeze_stages(learn.model, recipe.model.freeze_stages)  # unfreeze() made every stage trainable again
        return
    frozen_before = any(p.frozen for p in training_phases(recipe))
    t = recipe.train
    lr = slice(t.lr / recipe.model.encoder_lr_div, t.lr) if frozen_before else t.lr  # discriminative lrs
    used = float(state.get("budget_used", 0.0)) if state else 0.0  # CPU-seconds a resumed budget run had spent
    fit(learn, ScheduleOptions.of(t, budget_used=used), phase.epochs, lr, cbs=cbs, start_epoch=start_epoch)


def _enter_phase(learn, recipe: Recipe, items, phase: Phase, state: dict | None) -> None:
    """Loaders at the phase's size, the encoder frozen for the frozen phase, and a checkpoint's position."""
    if phase.stage > 0:  # progressive resizing: same model, new loaders at the next size
        learn.dls = make_dls(items, recipe, phase.size, *learn.trash_norm)
    if phase.frozen:  # fastai's fine_tune idea for pretrained encoders: first only the decoder trains
        learn.freeze()
    if state:
        ckpt.restore_position(learn, state, phase)


def _phase_callbacks(learn, recipe: Recipe, phase: Phase, start_epoch: int, state, flag, started) -> list:
    """The callbacks of this phase's fit: best epoch, history, NaN stop, signal stop, checkpoints."""
    run = learn.path
    for cb in learn.cbs:  # epoch numbers in checkpoints and logs run on across stages
        if hasattr(cb, "epoch_offset"):
            cb.epoch_offset = phase.start
    # Averaged weights, and a run to a CPU budget (its lr anneals to the end), keep their last weights, not the best.
    averaged = (recipe.train.averaging != "none" or recipe.train.cpu_budget > 0) and not phase.frozen
    best = BestModel(monitor="miou", comp=np.greater, at_end=averaged, stage=phase.stage, epoch_offset=phase.start)
    best.resume_best = _resume_best(run, phase) if start_epoch else None
    return [
        best,
        HistoryCSV(run / HISTORY, phase.stage, phase.size, phase.start),
        StopOnNonFinite(phase.start),
        StopOnSignal(flag, phase.start),
        ckpt.Checkpoint(phase, started or time.time(), resumed=state if start_epoch else None),
    ]


def _resume_best(run: Path, phase: Phase) -> float | None:
    """The score models/best.pth holds when it is from this phase (a resumed phase must not replace it
    with a worse epoch)."""
    info = Path(run) / "models" / "best.json"
    if not info.is_file():
        return None
    saved = json.loads(info.read_text())
    return saved["score"] if saved["stage"] == phase.stage and saved["score"] is not None else None
