"""Training to a CPU-time budget (`train.cpu_budget`): the schedule runs on the share of the budget used.

The budget is what `/usr/bin/time` reports for the whole `trash fit` (user + sys of the process and every process it
starts): imports, the data check, the mask cache, training, validation, export. A fixed number of epochs either
wastes such a budget or overruns it as soon as the machine is faster or slower; here the one-cycle (or flat-cos,
warmup-cosine) shape is a function of the CPU-seconds used instead of the batches done, so the learning rate
anneals exactly as the budget runs out. Training stops early enough to leave `reserve` CPU-seconds, measured on
the validation loader before training starts, for the last validation, the export and the metrics.
`train.epochs` stays a cap: the schedule's position is the larger of the budget's and the epochs'.
"""

import psutil
import torch
from fastai.callback.core import CancelFitException, CancelTrainException
from fastai.callback.schedule import ParamScheduler

#: CPU-seconds kept for everything after the last training batch besides the validation passes (export, plots, json)
FIXED_RESERVE = 20.0
#: validation passes left after training: the last epoch's (training size) and metrics.json's (original size, a bit
#: larger and resized back): measured as this many times one pass at the training size
VALIDATION_PASSES = 2.5


def process_cpu_seconds() -> float:
    """User + system CPU-seconds of this process and its children (DataLoader workers), alive or finished."""
    proc = psutil.Process()
    times = proc.cpu_times()
    total = times.user + times.system + times.children_user + times.children_system
    for child in proc.children(recursive=True):
        try:
            child_times = child.cpu_times()
            total += child_times.user + child_times.system
        except psutil.Error:  # it exited between listing and reading: its time is in children_* now
            continue
    return total


class BudgetScheduler(ParamScheduler):
    """fastai's ParamScheduler with the position in training taken from the CPU budget used.

    Args:
        scheds: Hyper-parameter name -> function of the position in [0, 1] (as fastai's scheds).
        budget: CPU-seconds the whole process may use.
        used: CPU-seconds a checkpoint's run had used in training before this process resumed it.
    """

    order = ParamScheduler.order

    def __init__(self, scheds: dict, budget: float, used: float = 0.0):
        super().__init__(scheds)
        self.budget, self.resumed_used, self.done = budget, used, False

    def before_fit(self):
        super().before_fit()
        self.reserve = FIXED_RESERVE + VALIDATION_PASSES * self._validation_seconds()
        self.start = process_cpu_seconds() - self.resumed_used
        self.stop_at = self.budget - self.reserve
        if self.stop_at <= self.start + 1:
            raise CancelFitException()  # nothing left to train with: the export still happens

    def position(self) -> float:
        """Share of the training budget used, or of the epochs done when those run out first."""
        used = (process_cpu_seconds() - self.start) / max(self.stop_at - self.start, 1e-9)
        return min(1.0, max(used, self.pct_train))

    def before_epoch(self):
        if self.done:
            raise CancelFitException()

    def before_batch(self):
        if self.training:
            self._update_val(self.position())

    def after_batch(self):
        super().after_batch()
        if self.training and self.position() >= 1.0:
            self.done = True
            raise CancelTrainException()  # this epoch still validates and is logged; the next one never starts

    def after_cancel_train(self):
        # fastai's Recorder (order 50, before this one) drops the training loss of an epoch whose training was
        # cancelled; this epoch trained to the budget on purpose, so its loss is logged like any other epoch's.
        if self.done and hasattr(self.learn, "recorder"):
            self.learn.recorder.cancel_train = False

    def _validation_seconds(self) -> float:
        """CPU-seconds of one validation pass at the training size, from one batch of the validation loader."""
        dl = self.dls.valid
        if not len(dl):
            return 0.0
        batch = dl.one_batch()
        model = self.learn.model
        training, started = model.training, process_cpu_seconds()
        with torch.no_grad():
            model.eval()(batch[0])
        model.train(training)
        per_batch = process_cpu_seconds() - started
        return per_batch * len(dl)


def budget_used(learn) -> float:
    """CPU-seconds the run's training has used so far (0 without a budget), for checkpoints."""
    for cb in learn.cbs:
        if isinstance(cb, BudgetScheduler) and hasattr(cb, "start"):
            return process_cpu_seconds() - cb.start
    return 0.0
