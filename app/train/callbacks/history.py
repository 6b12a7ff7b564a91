"""history.csv: one row per epoch across progressive-resizing stages, with per-class IoU columns."""

from pathlib import Path

from fastai.callback.core import Callback
from fastai.callback.progress import ProgressCallback
from fastai.learner import Recorder

from app.atomic import append_csv_row
from app.train.callbacks.base import class_iou_columns


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


class EpochLines(Callback):
    """One plain line per epoch (`epoch 3  train_loss 0.5213  valid_loss 0.3105  miou 0.4812  time 00:14`) in place
    of fastai's progress bars, for logs and pipes where every redraw of a bar would be a line of noise."""

    order = ProgressCallback.order

    def before_fit(self):
        self.old_logger, self.learn.logger = self.learn.logger, self._line

    def after_fit(self):
        self.learn.logger = self.old_logger

    def _line(self, log):
        names = self.recorder.metric_names
        cells = [f"{n} {v:.4f}" if isinstance(v, float) else f"{n} {v}" for n, v in zip(names, log)]
        print("  ".join(cells), flush=True)
