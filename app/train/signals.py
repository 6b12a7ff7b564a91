"""SIGINT / SIGTERM during training: finish the batch, keep the checkpoint, exit 130 / 143 (then `--resume`)."""

import os
import signal
import threading
from contextlib import contextmanager

from fastai.callback.core import Callback

from app.errors import TrainingInterrupted


class SignalFlag:
    """Set by the SIGINT / SIGTERM handler of `stop_on_signals`; read between batches."""

    def __init__(self):
        self.signum: int | None = None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""


@contextmanager
def stop_on_signals(signals=(signal.SIGINT, signal.SIGTERM)):
    """Replaces the handlers of `signals` with one that only records the signal (a `SignalFlag`).

    The training loop checks the flag after every batch (`StopOnSignal`) and between phases, so a Ctrl-C or a
    scheduler's SIGTERM ends training at a clean point instead of inside a write or an end-of-fit hook. A
    second signal runs the previous handler (KeyboardInterrupt for SIGINT, termination for SIGTERM).
    Outside the main thread, where Python cannot install handlers, nothing is replaced.
    """
    flag = SignalFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = {sig: signal.getsignal(sig) for sig in signals}

    def handler(signum, frame):
        if flag.signum is None:
            flag.signum = signum
            return
        old = previous[signum]
        signal.signal(signum, old)
        if callable(old):
            old(signum, frame)
        else:
            os.kill(os.getpid(), signum)

    for sig in signals:
        signal.signal(sig, handler)
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class StopOnSignal(Callback):
    """Raises `TrainingInterrupted` after the batch during which SIGINT / SIGTERM arrived."""

    order = -10  # before anything else looks at the batch

    def __init__(self, flag: SignalFlag, epoch_offset: int = 0):
        self.flag, self.epoch_offset = flag, epoch_offset

    def after_batch(self):
        if self.flag.signum is not None:
            raise TrainingInterrupted(
                f"{self.flag.name} during epoch {self.epoch_offset + self.epoch}", self.flag.signum
            )
