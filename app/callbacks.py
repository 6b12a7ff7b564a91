"""fastai callbacks that change trash's training loop (module level: they are pickled into exports)."""

import csv
from pathlib import Path

import torch
from fastai.callback.core import Callback
from fastai.callback.fp16 import MixedPrecision
from fastai.learner import Recorder
from fastcore.foundation import L
from torch.amp import GradScaler


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
    """

    order = Recorder.order + 1  # after the Recorder has filled `recorder.log` for the epoch

    def __init__(self, path: Path, stage: int, size: int, epoch_offset: int):
        self.path, self.stage, self.size, self.epoch_offset = Path(path), stage, size, epoch_offset

    def after_epoch(self):
        names, values = self.recorder.metric_names, self.recorder.log
        row = dict(zip(names, values))
        row.update(epoch=self.epoch_offset + self.epoch, stage=self.stage, size=self.size, lr=self.opt.hypers[-1]["lr"])
        fields = ["epoch", "stage", "size", *[n for n in names if n not in ("epoch",)], "lr"]
        new = not self.path.exists()
        with self.path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow({k: _plain(v) for k, v in row.items()})


def _plain(value):
    if isinstance(value, float):
        return f"{value:.6g}"
    return value
