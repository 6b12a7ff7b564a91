"""The runs table (`trash runs --html`): one row per finished run, each linking to its report.html."""

import os
from pathlib import Path

from app.report import page
from app.report.page import Raw, bar, number
from app.runs import REPORT, RUN_COLUMNS


def runs_page(root: str | Path, rows: list[dict], here: Path) -> str:
    """The page; links are relative to `here` (the page's folder), so the page and runs can move together."""
    best = max([r["miou"] for r in rows if r["miou"] is not None] + [1e-9])
    body = [_row(r, best, here) for r in rows]
    numeric = [c in ("fold", "miou", "epochs", "seconds") for c in RUN_COLUMNS]
    table = page.table(RUN_COLUMNS, body, numeric) if rows else f"<p>No finished runs under {page.esc(root)}.</p>"
    head = f"<header><h1>Runs under {page.esc(root)}</h1><p class=sub>{len(rows)} finished runs.</p></header>"
    return page.document(f"trash runs · {root}", [head, page.section("Runs", table)])


def _row(r: dict, best: float, here: Path) -> list:
    report = Path(r["run"]) / REPORT
    target = os.path.relpath(report, here) if report.is_file() else ""
    run = Raw(page.link(target, r["run"])) if target else r["run"] + " (no report.html: trash report RUN)"
    values = {**r, "miou": bar(r["miou"], number(r["miou"]), scale=best), "run": run}
    return [values[c] if values[c] is not None else "–" for c in RUN_COLUMNS]
