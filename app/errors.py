"""Every exception the CLI turns into `error: ...` lines and an exit code (no traceback), and the codes.

Exit codes (README and docs/errors.md list them): 1 `data check` found errors, 2 bad input, 3 training
diverged (NaN/inf loss), 4 an output could not be written (disk full, no permission...), 5 an exported ONNX file
does not predict what PyTorch predicts (`trash export`; nothing written), 128 + signal number
when training was interrupted by SIGINT (130) or SIGTERM (143) after saving its checkpoint. Any other exception
reaching the CLI is a bug and keeps its traceback.
"""

import errno
import shutil
from pathlib import Path

DATA_ERRORS = 1
BAD_INPUT = 2
DIVERGED = 3
WRITE_FAILED = 4
EXPORT_MISMATCH = 5


class TrashError(Exception):
    """A problem the user can fix: a bad recipe, a missing file, bad data.

    Args:
        message: One line naming the bad input (key, file, id) and, where possible, the fix.
        exit_code: Process exit status the CLI uses (2 = bad input, see README).
    """

    def __init__(self, message: str, exit_code: int = BAD_INPUT):
        super().__init__(message)
        self.message, self.exit_code = message, exit_code

    def __str__(self) -> str:
        # fastai re-words exceptions raised in callbacks ("Exception occured in `X` when calling event ...")
        # by replacing their args; the message the user sees stays the one given here.
        return self.message


class WriteFailed(TrashError):
    """An output file could not be written (exit 4); the previous version of it (if any) is intact."""

    def __init__(self, path: Path, error: Exception):
        self.errno = getattr(error, "errno", None)
        reason = getattr(error, "strerror", None) or str(error).splitlines()[0]
        full = self.errno in (errno.ENOSPC, errno.EDQUOT) or _no_space_left(Path(path).parent)
        hint = " (disk full: free some space and run again)" if full else ""
        if self.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            hint = " (no permission to write there: choose another --out folder)"
        super().__init__(f"could not write {path}: {reason}{hint}; the previous file, if any, is intact", WRITE_FAILED)


class TrainingDiverged(TrashError):
    """The loss became NaN or inf: training stopped (exit code 3); a lower learning rate usually helps."""

    def __init__(self, message: str):
        super().__init__(message, DIVERGED)


class ExportMismatch(TrashError):
    """An exported graph's predictions differ from PyTorch's beyond the tolerance (exit code 5); nothing written."""

    def __init__(self, message: str):
        super().__init__(message, EXPORT_MISMATCH)


class TrainingInterrupted(TrashError):
    """SIGINT or SIGTERM stopped training after the current batch; exit code 128 + the signal number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message, 128 + signum)
        self.signum = signum


def _no_space_left(folder: Path) -> bool:
    try:
        return shutil.disk_usage(folder).free == 0
    except OSError:
        return False
