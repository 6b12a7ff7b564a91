"""Which page for which paths, written atomically; the hook `trash fit` calls when a run or group finishes."""

import warnings
from pathlib import Path

from app.atomic import write_text
from app.errors import TrashError
from app.report.compare import compare_page, evaluate_page
from app.report.group import group_page
from app.report.index import runs_page
from app.report.run import run_page
from app.report.rundata import is_group, load_group, load_run
from app.runs import REPORT


def build_page(paths: list[str | Path]) -> str:
    """One run's page, one fold group's page, or the comparison of several runs (a group counts as its folds'
    out-of-fold result only on its own page; in a comparison, give its fold runs)."""
    if not paths:
        raise TrashError("give at least one run directory or fold group")
    for path in paths:
        if not Path(path).is_dir():
            raise TrashError(f"{path} is not a folder (give run directories or fold groups of `trash fit`)")
    if len(paths) == 1 and is_group(paths[0]):
        return group_page(Path(paths[0]).resolve(), *load_group(paths[0]))
    runs = [r for path in paths for r in (load_group(path)[1] if is_group(path) else [load_run(path)])]
    return run_page(runs[0]) if len(runs) == 1 else compare_page(runs)


def write_report(paths: list[str | Path], out: str | Path | None = None) -> Path:
    """Writes the page of `paths` to `out` (default: report.html inside the one run or group given)."""
    if out is None:
        if len(paths) != 1:
            raise TrashError("comparing several runs: say where the page goes with --out FILE.html")
        out = Path(paths[0]) / REPORT
    return write_text(out, build_page(list(paths)))


def report_after_fit(path: Path) -> Path | None:
    """report.html in a finished run or group; any failure is a warning (the run itself is complete)."""
    try:
        return write_report([path])
    except Exception as e:  # noqa: BLE001 - a page must never cost the run it describes
        warnings.warn(
            f"the report of {path} could not be written ({type(e).__name__}: {e}); try again with: trash report {path}",
            stacklevel=2,
        )
        return None


def write_runs_page(root: str | Path, rows: list[dict], out: str | Path) -> Path:
    """The runs table (`trash runs --html`) as a page linking to each run's report."""
    return write_text(out, runs_page(root, rows, Path(out).resolve().parent))


def write_evaluate_page(report: dict, codes: list[str], out: str | Path) -> Path:
    return write_text(out, evaluate_page(report, codes))
