"""Watching the validation score: stop on a NaN loss, keep the best epoch, keep the k best epochs.

Every file here is written atomically (app/atomic.py): a killed run or a full disk never leaves half a file.
fastai's SaveModelCallback keeps only the single best epoch and writes in place, hence BestModel and
TopKCheckpoints.
"""

import json
import math
from pathlib import Path

import torch
from fastai.callback.core import Callback
from fastai.callback.tracker import SaveModelCallback, TerminateOnNaNCallback, TrackerCallback
from fastai.torch_core import get_model

from app.atomic import torch_save, write_text
from app.errors import TrainingDiverged, TrashError
from app.train.callbacks.base import CompleteEpochs, model_device, real_fit


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


class BestModel(CompleteEpochs, SaveModelCallback):
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
            state = torch.load(self.file, map_location=model_device(self.learn.model), weights_only=True)
            get_model(self.learn.model).load_state_dict(state)


class TopKCheckpoints(CompleteEpochs, TrackerCallback):
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
        if real_fit(self.learn) and self.monitor not in self.recorder.metric_names[1:]:
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
