"""A fold group's page: each fold's scores, the out-of-fold mIoU and per-class IoU, the worst OOF images, and the
data audit's findings when `trash data audit` has read the group."""

import base64
import json
from pathlib import Path

import numpy as np

from app.report import page
from app.report.figures import curves_figure
from app.report.page import esc, number
from app.report.parts import class_table, picks, score_list, weak_class_images, worst_and_best
from app.report.rundata import RunData
from app.report.rundata import class_table as class_rows
from app.runs import AUDIT_GALLERY, AUDIT_SUMMARY


def group_page(path, summary: dict, runs: list[RunData]) -> str:
    """The whole HTML page of a finished `--fold all` group (summary.json and its fold runs)."""
    oof = _oof_run(path, summary, runs)
    body = [
        _header(path, summary, runs),
        _fold_table(runs),
        class_table(class_rows(oof), "Per-class out-of-fold results"),
        _weak(oof, runs),
        page.section(
            "Training of each fold",
            page.img(page.figure_uri(curves_figure({r.path.name: r.history for r in runs if r.history})), "curves"),
        ),
        *_images(runs),
        _audit(Path(path)),
    ]
    return page.document(f"trash report · {summary.get('recipe', '?')} fold group", body)


def _oof_run(path, summary: dict, runs: list[RunData]) -> RunData:
    """The group as one 'run': the summed confusion matrices and pixel counts of its folds."""
    metrics = dict(summary["oof"])
    metrics["confusion_matrix"] = np.sum([r.confusion() for r in runs], axis=0).tolist()
    trains = [r.metrics.get("class_pixels", {}).get("train") for r in runs]
    if all(trains):
        metrics["class_pixels"] = {"train": np.sum(trains, axis=0).tolist()}
    return RunData(path, runs[0].resolved, metrics)


def _header(path, summary: dict, runs: list[RunData]) -> str:
    first = runs[0].resolved
    facts = [
        ("out-of-fold mIoU", number(summary["oof"]["miou"])),
        ("mean of fold mIoUs", number(summary.get("mean_fold_miou"))),
        ("folds", str(len(runs))),
        ("wall time (sum)", f"{sum(r.metrics.get('train_seconds') or 0 for r in runs) / 60:.1f} min"),
    ]
    description = f'<p class="sub">{esc(first.get("description", ""))}</p>'
    title = f"<h1>{esc(summary.get('recipe', '?'))} · fold group</h1>"
    return f"<header>{title}{description}<p class=sub>{esc(path)}</p>{page.kpis(facts)}</header>"


def _fold_table(runs: list[RunData]) -> str:
    rows = [
        (
            page.Raw(page.link(f"{r.path.name}/report.html", r.path.name)),
            number(r.metrics.get("miou")),
            number(r.metrics.get("miou_per_image")),
            r.metrics.get("best_epoch", "–"),
            r.resolved.get("images", {}).get("train", "–"),
            r.resolved.get("images", {}).get("valid", "–"),
            r.metrics.get("train_seconds", "–"),
        )
        for r in runs
    ]
    headers = ("fold", "mIoU", "per-image mIoU", "best epoch", "train images", "valid images", "seconds")
    return page.section("Folds", page.table(headers, rows, numeric=(False, True, True, True, True, True, True)))


def _weak(oof: RunData, runs: list[RunData]) -> str:
    """The weakest classes' images across the folds (their per-image arrays end to end)."""
    arrays = [r.per_image for r in runs if r.per_image is not None]
    if len(arrays) != len(runs) or any(set(a) != set(arrays[0]) for a in arrays):
        return ""
    merged = {k: np.concatenate([a[k] for a in arrays]) for k in arrays[0]}
    return weak_class_images(class_rows(oof), merged, oof.classes)


def _images(runs: list[RunData]) -> list[str]:
    chosen = [p for r in runs if r.per_image is not None for p in picks(r.per_image, r.classes, label=r.path.name)]
    if not chosen:
        return []
    return [worst_and_best(chosen, runs[0].classes, "out-of-fold"), score_list(chosen)]


def _audit(path: Path) -> str:
    """The audit's counts, gallery and top findings (audit_summary.json + audit_gallery.png), or nothing."""
    if not (path / AUDIT_SUMMARY).is_file():
        return ""
    summary = json.loads((path / AUDIT_SUMMARY).read_text())
    facts = [("images audited", str(summary["images_audited"]))] + [(k, str(n)) for k, n in summary["counts"].items()]
    parts = [page.kpis(facts)]
    if (path / AUDIT_GALLERY).is_file():
        uri = "data:image/png;base64," + base64.b64encode((path / AUDIT_GALLERY).read_bytes()).decode()
        parts.append(page.img(uri, "the audit's top findings: image, annotation, out-of-fold prediction"))
    rows = [
        (number(f["score"], 2), f["kind"], f["file_name"], "–" if f["annotation_id"] is None else f["annotation_id"],
         f["label"], f["suggested"], f["pixels"])
        for f in summary["top"]
    ]  # fmt: skip
    headers = ("score", "kind", "image", "annotation", "labelled", "model sees", "pixels")
    parts.append(page.table(headers, rows, numeric=(True, False, False, True, False, False, True)))
    sub = f"Confident Learning on the out-of-fold probabilities of {summary['data']}; all findings: {summary['out']}"
    return page.section("Data audit: likely label errors", *parts, anchor="audit", sub=sub)
