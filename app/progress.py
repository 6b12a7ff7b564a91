"""Progress bars: fastprogress's in a terminal, each ending its own line; none when stdout is a file or a pipe.

fastprogress draws bars whether or not stdout is a terminal (its check takes `sys.stdout.isatty` itself, not its
result, for true) and leaves the cursor on the bar's line, so the next message was glued to a half-drawn bar and a
redirected log got a line per redraw. The CLI calls `quiet_outside_terminal()` first; library loops take `bar`.
"""

import sys


def quiet_outside_terminal() -> None:
    """No bars at all when stdout is not a terminal (fastai's training bars included: one line per epoch then)."""
    from fastprogress import fastprogress

    if not sys.stdout.isatty():
        fastprogress.NO_BAR = True


def bars_on() -> bool:
    from fastprogress import fastprogress

    return not fastprogress.NO_BAR


def bar(gen, total=None, **kwargs):
    """Iterates `gen` under a progress bar that ends its line when the loop ends (or nothing, see above)."""
    if not bars_on():
        yield from gen
        return
    from fastprogress.fastprogress import progress_bar

    try:
        yield from progress_bar(gen, total=total, **kwargs)
    finally:
        print(flush=True)  # end the bar's line before anything else is printed
