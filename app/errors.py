"""The one exception type the CLI turns into a one-line message and a non-zero exit (no traceback).

Exit codes (README and docs/errors.md list them): 1 `data check` found errors, 2 bad input, 3 training
diverged (NaN/inf loss), 4 an output could not be written (disk full...), 128 + signal number when
training was interrupted by SIGINT (130) or SIGTERM (143) after saving its checkpoint.
"""

BAD_INPUT = 2
DIVERGED = 3
WRITE_FAILED = 4


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
