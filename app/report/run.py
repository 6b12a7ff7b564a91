"""One run's page: what it was, how it trained, which classes fail, on which images, confused with what."""

import base64
import json

from app.plots import confusion_figure
from app.report import page
from app.report.figures import class_iou_heatmap, class_weights_figure, curves_figure
from app.report.page import esc, number
from app.report.parts import class_table, missing_note, picks, score_list, weak_class_images, worst_and_best
from app.report.rundata import RunData, changed_values
from app.report.rundata import class_table as class_rows
from app.runs import PER_IMAGE


def run_page(run: RunData) -> str:
    """The whole HTML page of one finished run."""
    rows = class_rows(run)
    body = [
        header(run),
        class_table(rows),
        confusion(run),
        *images(run),
        training(run),
        setup(run),
        extras(run),
    ]
    return page.document(f"trash report · {run.name}", body)


def header(run: RunData) -> str:
    m, r = run.metrics, run.resolved
    description = f'<p class="sub">{esc(r.get("description", ""))}</p>' if r.get("description") else ""
    facts = [
        ("validation mIoU", number(m.get("miou"))),
        ("mean per-image mIoU", number(m.get("miou_per_image"))),
        ("pixel accuracy", number(m.get("pixel_accuracy"))),
        ("best epoch (from 0)", f"{m.get('best_epoch', '–')} of {m.get('epochs', '–')}"),
        ("train / valid images", f"{r.get('images', {}).get('train', '–')} / {r.get('images', {}).get('valid', '–')}"),
        ("wall time", _duration(m.get("train_seconds"))),
        ("CPU time", _duration(m.get("cpu_seconds"))),
    ]
    where = f"<p class=sub>{esc(run.path)}</p>"
    return f"<header><h1>{esc(run.name)}</h1>{description}{where}{page.kpis(facts)}</header>"


def training(run: RunData) -> str:
    if not run.history:
        return page.section("Training", missing_note("history.csv is missing"))
    curves = page.img(page.figure_uri(curves_figure({run.name: run.history})), "loss, mIoU and learning rate")
    heat = page.img(page.figure_uri(class_iou_heatmap(run.history, run.classes)), "per-class IoU per epoch")
    sub = (
        "Dashed vertical lines: a new stage (progressive resizing or unfrozen encoder). In the heat map, grey: the "
        "class was absent from truth and prediction that epoch."
    )
    return page.section("Training", curves, "<h3>Per-class IoU over epochs</h3>", heat, anchor="training", sub=sub)


def confusion(run: RunData) -> str:
    figure = page.img(page.figure_uri(confusion_figure(run.confusion(), run.classes)), "confusion matrix")
    sub = "Rows: true class, columns: predicted class; each row sums to 1 (where that class's pixels went)."
    return page.section("Confusion matrix", figure, anchor="confusion", sub=sub)


def images(run: RunData) -> list[str]:
    if run.per_image is None:
        return [page.section("Validation images", missing_note(f"this run has no {PER_IMAGE} (trained before it)"))]
    chosen = picks(run.per_image, run.classes)
    weak = weak_class_images(class_rows(run), run.per_image, run.classes)
    return [weak, worst_and_best(chosen, run.classes, "validation"), score_list(chosen)]


def setup(run: RunData) -> str:
    r, m = run.resolved, run.metrics
    changed = page.table(("value", "this run"), [(k, _value(v)) for k, v in changed_values(r).items()])
    sources = page.table(
        ("role", "json", "fingerprint"),
        [(k, v, r.get("data_fingerprints", {}).get(k, "")) for k, v in r.get("data_sources", {}).items()],
    )
    versions = page.table(("package", "version"), list(r.get("versions", {}).items()))
    machine = page.table(("", ""), [(k, _value(v)) for k, v in r.get("machine", {}).items()])
    notes = "".join(f'<p class="note">{esc(w)}</p>' for w in r.get("warnings", []) + r.get("dropped", []))
    facts = f"<p>data fingerprint <code>{esc(m.get('data_fingerprint', ''))}</code>; overrides: "
    facts += (
        f"<code>{esc(' '.join(r.get('overrides', [])) or 'none')}</code>; parameters {m.get('parameters', '–')}</p>"
    )
    parts = [
        facts,
        notes,
        '<div class="grid2"><div><h3>Values that differ from the defaults</h3>',
        changed,
        "</div><div><h3>Data</h3>",
        sources,
        "<h3>Machine</h3>" + machine if r.get("machine") else "",
        "<h3>Package versions</h3>",
        versions,
        "</div></div>",
    ]
    return page.section("Recipe, data and software", *parts, anchor="setup")


def extras(run: RunData) -> str:
    """The lr_find plot and class-weight history, when the run has them."""
    parts = []
    if (run.path / "lr_find.png").is_file():
        uri = "data:image/png;base64," + base64.b64encode((run.path / "lr_find.png").read_bytes()).decode()
        parts.append("<h3>Learning-rate finder</h3>" + page.img(uri, "lr_find"))
    weights = run.log("class_weights.csv")
    if weights:
        parts.append(
            "<h3>Class weights (adaptive)</h3>" + page.img(page.figure_uri(class_weights_figure(weights)), "w")
        )
    return page.section("More", *parts) if parts else ""


def _value(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _duration(seconds) -> str:
    if seconds is None:
        return "–"
    seconds = float(seconds)
    return (
        f"{seconds:.0f} s"
        if seconds < 120
        else f"{seconds / 60:.1f} min"
        if seconds < 7200
        else f"{seconds / 3600:.1f} h"
    )
