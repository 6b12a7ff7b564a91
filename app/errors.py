"""The one exception type the CLI turns into a one-line message and a non-zero exit (no traceback)."""


class TrashError(Exception):
    """A problem the user can fix: a bad recipe, a missing file, bad data.

    Args:
        message: One line naming the bad input (key, file, id) and, where possible, the fix.
        exit_code: Process exit status the CLI uses (2 = bad input, see README).
    """

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code
