"""Pages that set results side by side: several runs (values that differ, mIoU and per-class IoU with deltas
against the first run, curves overlaid), and `trash evaluate --compare`'s member x TTA table."""

from app.report import page
from app.report.figures import curves_figure
from app.report.page import Raw, bar, delta, esc, number
from app.report.rundata import RunData, flat_values


def compare_page(runs: list[RunData]) -> str:
    """The whole HTML page comparing runs; deltas are against the first run given (the baseline)."""
    labels = _labels(runs)
    body = [
        f"<header><h1>Comparison of {len(runs)} runs</h1><p class=sub>Deltas are against the first run, "
        f"<b>{esc(labels[0])}</b>.</p></header>",
        _scores(runs, labels),
        _differences(runs, labels),
        _per_class(runs, labels),
        _curves(runs, labels),
    ]
    return page.document(f"trash report · {len(runs)} runs", body)


def _curves(runs: list[RunData], labels: list[str]) -> str:
    histories = {k: r.history for k, r in zip(labels, runs) if r.history}
    return page.section("Training curves", page.img(page.figure_uri(curves_figure(histories)), "curves overlaid"))


def _labels(runs: list[RunData]) -> list[str]:
    """'#1 recipe/20260101-120000' ...: short, unique, in the order given."""
    return [f"#{i + 1} {r.name}" for i, r in enumerate(runs)]


def _scores(runs: list[RunData], labels: list[str]) -> str:
    base = runs[0].metrics.get("miou")
    rows = [
        (
            Raw(page.link(str(r.path / "report.html"), label)),
            bar(r.metrics.get("miou"), number(r.metrics.get("miou"))),
            delta(_minus(r.metrics.get("miou"), base)),
            number(r.metrics.get("miou_per_image")),
            r.metrics.get("best_epoch", "–"),
            r.metrics.get("epochs", "–"),
            r.metrics.get("train_seconds", "–"),
        )
        for label, r in zip(labels, runs)
    ]
    headers = ("run", "mIoU", "Δ mIoU", "per-image mIoU", "best epoch", "epochs", "seconds")
    return page.section("Scores", page.table(headers, rows, numeric=(False, False, True, True, True, True, True)))


def _differences(runs: list[RunData], labels: list[str]) -> str:
    values = [flat_values(r.resolved) for r in runs]
    keys = sorted({k for v in values for k in v})
    differ = [k for k in keys if len({repr(v.get(k)) for v in values}) > 1]
    rows = [(k, *[_short(v.get(k, "–")) for v in values]) for k in differ]
    prints = [r.resolved.get("data_fingerprints", {}) for r in runs]
    data = [(f"data {role}", *[p.get(role, "–") for p in prints]) for role in ("train", "valid")]
    rows += [row for row in data if len(set(row[1:])) > 1]
    if not rows:
        return page.section("Resolved values that differ", "<p>None: every run used the same values and data.</p>")
    return page.section("Resolved values that differ", page.table(("value", *labels), rows))


def _per_class(runs: list[RunData], labels: list[str]) -> str:
    classes = runs[0].classes
    ious = [r.iou() for r in runs]
    rows = []
    for name in classes:
        base = ious[0].get(name)
        cells = [name, number(base)]
        for iou in ious[1:]:
            cells += [number(iou.get(name)), delta(_minus(iou.get(name), base))]
        rows.append(cells)
    headers = ["class", labels[0]] + [h for label in labels[1:] for h in (label, "Δ")]
    same = all(r.classes == classes for r in runs)
    note = "" if same else '<p class="note">The runs have different classes; rows follow the first run.</p>'
    sub = "Validation IoU per class; Δ against the first run (green: better)."
    table = page.table(headers, rows, numeric=[False] + [True] * len(runs) * 2)
    return page.section("Per-class IoU", note, table, sub=sub)


def evaluate_page(report: dict, codes: list[str]) -> str:
    """`trash evaluate --compare`: each member and the ensemble with each TTA set, per-class IoU beside."""
    rows = sorted(report["comparison"], key=lambda r: -r["miou"])
    best = rows[0]["miou"] if rows else 1.0
    table_rows = [
        (
            r["model"],
            r["tta"],
            r["views"],
            bar(r["miou"], number(r["miou"]), scale=best),
            number(r["miou_per_image"]),
            number(r["pixel_accuracy"]),
            *[number(r["per_class_iou"].get(c), 3) for c in codes],
        )
        for r in rows
    ]
    headers = ("model", "TTA", "views", "mIoU", "per-image mIoU", "pixel acc.", *codes)
    numeric = (False, False, True, False, True, True, *[True] * len(codes))
    head = f"<header><h1>Evaluation: members × TTA</h1><p class=sub>{esc(report.get('data', ''))}</p></header>"
    table = page.section("Best first", f'<div style="overflow-x:auto">{page.table(headers, table_rows, numeric)}</div>')
    return page.document("trash evaluate --compare", [head, table])


def _minus(a, b) -> float | None:
    if a is None or b is None:
        return None
    return float(a) - float(b)


def _short(value) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
