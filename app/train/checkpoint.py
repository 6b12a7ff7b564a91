"""Checkpoints and resuming: `trash fit --resume RUN_DIR` continues a run where it stopped.

A run's training is a list of phases (`training_phases`): the frozen-encoder epochs (`model.freeze_epochs`),
then one phase per progressive-resizing stage; epochs are numbered across all of them. A checkpoint is
written after every epoch and after every phase (then with the best weights reloaded and any weight average
applied, as the next phase starts from them). It holds the model, the optimizer, how many epochs are done,
the random states (Python, numpy, torch, the training loader's shuffling, the augmentation pipeline) and
the state of the callbacks that have one (EMA, SWA, adaptive class weights), so a resumed run continues the
schedule (fastai's `fit(start_epoch=k)`) with the lrs, batches and augmentations of an uninterrupted one.

Files, in `<run>/models/`: `checkpoint_<epochs done>.pth` (the newest two) and `checkpoint.json`, which lists
them newest first with their sha256. Each file is written atomically, then the index: the index is the
commit point, so a run killed at any moment leaves the index pointing at complete files. Before loading,
the file's sha256 is checked against the index (a truncated or altered file is refused, the older one used),
and it is read with `torch.load(weights_only=True)`: a checkpoint holds tensors and plain values, no code.
The checkpoints are deleted once the run has written its export and metrics.

The position inside an epoch is not saved: a run stopped mid-epoch (SIGINT, SIGTERM, SIGKILL, power loss)
resumes at the start of that epoch, which is trained again from the checkpoint before it.
SIGINT / SIGTERM (`stop_on_signals`) let the current batch finish, then stop with `TrainingInterrupted`
(exit code 128 + signal number); a second signal stops at once.
"""

import csv
import json
import time
import warnings
from pathlib import Path

import torch
from fastai.torch_core import get_model

from app.atomic import atomic_open, sha256, torch_save, write_text
from app.errors import TrashError
from app.train.budget import budget_used
from app.train.callbacks.base import AFTER_TRACKERS, CompleteEpochs
from app.train.plan import Phase
from app.train.state import as_fastai_opt_state, global_rng, loader_rng, plain, set_global_rng, set_loader_rng

FORMAT = 1
INDEX = "checkpoint.json"  # in the run's models/ folder
KEEP = 2  # checkpoints kept: the newest, and the one before in case the newest is damaged
LOGS = ("history.csv", "class_weights.csv")  # per-epoch logs trimmed to the checkpoint's epochs on resume


# -- writing ----------------------------------------------------------------------------------------


class Checkpoint(CompleteEpochs):
    """Writes a checkpoint after every epoch of a phase that trained and validated, but the last.

    The phase's last epoch is saved by the training loop after `fit` returns, when the best weights have been
    reloaded and weight averages applied: what the next phase starts from.
    """

    order = AFTER_TRACKERS + 1  # after BestModel, TopKCheckpoints, EMA and SWA have finished with the epoch

    def __init__(self, phase: Phase, started: float, resumed: dict | None = None):
        self.phase, self.started, self.resumed = phase, started, resumed

    def before_fit(self):
        # The Recorder (order 50) has just reset its smoothed training loss; a resumed phase continues the
        # average of the epochs before the stop, as the train_loss column of an uninterrupted run does.
        if self.resumed and self.resumed.get("smooth_loss") and hasattr(self.learn, "recorder"):
            smooth = self.learn.recorder.smooth_loss
            smooth.count, smooth.val = self.resumed["smooth_loss"]["count"], self.resumed["smooth_loss"]["val"]

    def after_epoch(self):
        if not self._epoch_complete() or self.epoch == self.n_epoch - 1:
            return
        save_checkpoint(self.learn, self.phase.start + self.epoch + 1, self.phase, time.time() - self.started)


def save_checkpoint(learn, epochs_done: int, phase: Phase, seconds: float = 0.0) -> Path:
    """Writes `models/checkpoint_<epochs_done>.pth`, then the index naming it; keeps the newest KEEP files.

    Args:
        seconds: Training wall time so far (a resumed run adds its own to it).
    """
    folder = Path(learn.path) / learn.model_dir
    name = f"checkpoint_{epochs_done}.pth"
    state = {
        "format": FORMAT,
        "epochs_done": epochs_done,
        "seconds": float(seconds),
        "budget_used": float(budget_used(learn)),  # CPU-seconds of training, for a run to train.cpu_budget
        "loaders": phase.loaders,
        "model": get_model(learn.model).state_dict(),
        "opt": plain(learn.opt.state_dict()) if learn.opt is not None else None,
        "rng": global_rng(),
        "loader_rng": loader_rng(learn.dls),
        "callbacks": {
            type(cb).__name__: plain(cb.checkpoint_state()) for cb in learn.cbs if hasattr(cb, "checkpoint_state")
        },
        "smooth_loss": plain(_smooth_loss(learn)),
    }
    path = torch_save(state, folder / name)
    entry = {"file": name, "epochs_done": epochs_done, "bytes": path.stat().st_size, "sha256": sha256(path)}
    kept = [entry, *[e for e in read_index(folder) if e["file"] != name]][:KEEP]
    write_text(folder / INDEX, json.dumps(kept, indent=2) + "\n")
    for old in folder.glob("checkpoint_*.pth"):
        if old.name not in {e["file"] for e in kept}:
            old.unlink(missing_ok=True)
    return path


def _smooth_loss(learn) -> dict | None:
    smooth = getattr(getattr(learn, "recorder", None), "smooth_loss", None)
    if smooth is None or not isinstance(getattr(smooth, "val", None), torch.Tensor):
        return None
    return {"count": int(smooth.count), "val": smooth.val.detach().cpu()}


def remove_checkpoints(run: Path) -> None:
    """Deletes a finished run's checkpoints (its export and metrics are written)."""
    folder = Path(run) / "models"
    for path in folder.glob("checkpoint_*.pth"):
        path.unlink(missing_ok=True)
    (folder / INDEX).unlink(missing_ok=True)


# -- reading ----------------------------------------------------------------------------------------


def read_index(folder: Path) -> list[dict]:
    path = Path(folder) / INDEX
    if not path.is_file():
        return []
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise TrashError(f"{path} is damaged (not json); the checkpoints it listed cannot be verified") from None


def has_checkpoint(run: Path) -> bool:
    return (Path(run) / "models" / INDEX).is_file()


def load_checkpoint(run: Path) -> dict:
    """The newest intact checkpoint of a run (sha256 checked, then `torch.load(weights_only=True)`).

    A damaged newer checkpoint is reported with a warning and the one before it is used.

    Raises:
        TrashError: No checkpoint, or none that is intact.
    """
    folder = Path(run) / "models"
    entries = read_index(folder)
    if not entries:
        raise TrashError(
            f"{run} has no checkpoint to resume from (no models/{INDEX}): it stopped before its first epoch "
            "ended, or it is not a run directory; start it again with `trash fit RECIPE`"
        )
    problems = []
    for entry in entries:
        path = folder / entry["file"]
        problem = _damage(path, entry)
        if problem:
            problems.append(f"{path}: {problem}")
            continue
        for message in problems:
            warnings.warn(f"skipping a damaged checkpoint, {message}; resuming from the one before", stacklevel=2)
        return torch.load(path, map_location="cpu", weights_only=True)
    raise TrashError("no intact checkpoint to resume from: " + "; ".join(problems))


def _damage(path: Path, entry: dict) -> str:
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    if size != entry["bytes"]:
        return f"{size} bytes where {entry['bytes']} were written (truncated or overwritten)"
    if sha256(path) != entry["sha256"]:
        return "its sha256 does not match the one recorded when it was written (damaged or altered)"
    return ""


def restore_weights(learn, state: dict) -> None:
    """Model weights, the random states and the callbacks' states of a checkpoint."""
    get_model(learn.model).load_state_dict(state["model"])
    for cb in learn.cbs:
        saved = state["callbacks"].get(type(cb).__name__)
        if saved is not None and hasattr(cb, "load_checkpoint_state"):
            cb.load_checkpoint_state(saved)
    set_global_rng(state["rng"])


def restore_position(learn, state: dict, phase: Phase) -> None:
    """Optimizer state, and the loaders' random states when the checkpoint was taken with the same loaders.

    Called once the phase's loaders exist and the encoder is frozen or not as the phase wants (fastai's
    freeze/unfreeze clear the optimizer state).
    """
    if state["opt"] is not None:
        if learn.opt is None:
            learn.create_opt()
        learn.opt.load_state_dict(as_fastai_opt_state(learn, state["opt"]))
    if state["loaders"] == phase.loaders:
        set_loader_rng(learn.dls, state["loader_rng"])


def trim_logs(run: Path, epochs_done: int) -> None:
    """Drops the rows of epochs at or after `epochs_done` from the per-epoch logs and the top-k index.

    A run killed after logging an epoch but before its checkpoint trains that epoch again when resumed;
    without this it would appear twice.
    """
    for name in LOGS:
        path = Path(run) / name
        if not path.is_file():
            continue
        with path.open(newline="") as f:
            rows = list(csv.reader(f))
        kept = rows[:1] + [r for r in rows[1:] if r and _epoch(r[0]) is not None and _epoch(r[0]) < epochs_done]
        if kept != rows:
            with atomic_open(path, "w", newline="") as f:
                csv.writer(f).writerows(kept)
    _trim_topk(Path(run) / "models", epochs_done)


def _trim_topk(folder: Path, epochs_done: int) -> None:
    index = folder / "topk.json"
    if not index.is_file():
        return
    entries = json.loads(index.read_text())
    kept = [e for e in entries if e["epoch"] < epochs_done]
    if kept != entries:
        write_text(index, json.dumps(kept, indent=2) + "\n")
        for e in entries:
            if e not in kept:
                (folder / e["file"]).unlink(missing_ok=True)


def _epoch(cell: str) -> int | None:
    try:
        return int(cell)
    except ValueError:
        return None  # half a row left by a killed writer of an older version
