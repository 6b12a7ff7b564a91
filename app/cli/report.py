"""`trash report`: one self-contained HTML page of a run, a fold group, or several runs side by side."""

from pathlib import Path
from typing import Annotated

import typer

from app.cli.base import app, friendly


@app.command(short_help="One HTML page of a run, fold group or comparison.  e.g. trash report runs/demo/latest")
@friendly
def report(
    runs: Annotated[list[Path], typer.Argument(help="Run directories or fold groups of `trash fit`")],
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="The page to write (default: report.html inside the one run or group)"),
    ] = None,
):
    """Write one self-contained HTML page (images inline, no script, opens offline from file://).

    One run: scores, curves, per-class table, confusion matrix, worst and best validation images. One fold
    group: each fold, the out-of-fold per-class IoU and the worst out-of-fold images. Several runs: the values
    that differ, mIoU and per-class IoU with deltas against the first, curves overlaid.

    Examples:

      trash report runs/demo/latest

      trash report runs/a/latest runs/b/latest --out compare.html
    """
    from app.report.build import write_report

    typer.echo(f"report     {write_report(runs, out)}")
