"""What `trash data audit` writes: audit.csv / audit.json / images.csv, the gallery PNG, and the cleaned json.

The cleaned json is the audited one with the confident findings applied, every change listed beside it
(`<clean>.changes.csv`), so that a `data v2` is one command and one review:

* wrong_class: the annotation's category becomes the suggested class;
* spurious: the annotation is dropped;
* missing: the region joins the image's `ignore_mask` (rasterized as 255, skipped by the loss and the metric):
  the model saw an object there, but only a person can draw it, so it stops counting as background;
* loose_boundary: listed for review, never changed (a better polygon needs a person).

Findings under the clean score but at least the doubt score are pruned instead, as Confident Learning cleans by
default (Northcutt et al. 2021 train on the data with the issues removed): a doubted annotation leaves the json
and its visible pixels join the ignore_mask, so that the training neither learns its class there nor background;
a doubted missing region is ignored as a confident one is. A wrong prune costs one annotation's supervision, a
wrong relabel or drop teaches an error, hence two scores.
"""

import csv
import json
from pathlib import Path

import numpy as np

from app.atomic import atomic_open, copy_file, write_json
from app.data.coco import IGNORE_KEY
from app.data.masks import annotation_mask
from app.errors import TrashError
from app.infer.label_issues import Finding
from app.plots import save_findings_gallery
from app.runs import AUDIT_GALLERY, AUDIT_SUMMARY

FINDING_COLUMNS = (  # Finding.row()'s keys
    "image_id", "file_name", "annotation_id", "kind", "score", "label", "suggested", "pixels", "bbox", "fold",
)  # fmt: skip
IMAGE_COLUMNS = ("image_id", "file_name", "fold", "score", "findings")
CHANGE_COLUMNS = ("action", "image_id", "annotation_id", "kind", "score", "from", "to", "pixels")
#: findings scoring at least this are applied by default: on out-of-fold probabilities of clean labels plus noise
#: (tests/infer/test_audit.py) every finding above it was a planted error
CLEAN_MIN_SCORE = 0.3
#: findings from this score up to CLEAN_MIN_SCORE are pruned (ignored) rather than relabelled or dropped
DOUBT_MIN_SCORE = 0.1
ACTIONS = {"wrong_class": "relabel", "spurious": "drop", "missing": "ignore"}  # loose_boundary: review only


def _write_csv(path: Path, columns: tuple[str, ...], rows: list[dict]) -> Path:
    with atomic_open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_audit(report: dict, gallery: list[dict], codes: list[str], out: str | Path) -> dict[str, Path]:
    """audit.json (everything), audit.csv (findings, best first), images.csv (worst first), gallery.png."""
    out = Path(out)
    rows = [f.row() for f in report["findings"]]
    written = {
        "json": write_json(out / "audit.json", {**report, "findings": rows}),
        "csv": _write_csv(out / "audit.csv", FINDING_COLUMNS, rows),
        "images": _write_csv(out / "images.csv", IMAGE_COLUMNS, report["images"]),
    }
    if gallery:
        written["gallery"] = save_findings_gallery(gallery, codes, out / "gallery.png")
    return written


def record_in_group(group: str | Path, report: dict, written: dict[str, Path], top: int) -> Path:
    """The group's own copy of what its page shows of the audit: counts, the top findings, the gallery (so that
    `trash report GROUP` shows them without the audit's folder)."""
    group = Path(group)
    if "gallery" in written:
        copy_file(written["gallery"], group / AUDIT_GALLERY)
    else:
        (group / AUDIT_GALLERY).unlink(missing_ok=True)
    summary = {
        "out": str(Path(written["json"]).parent.resolve()),
        "data": str(report["data"]),
        "images_audited": report["images_audited"],
        "oof_miou": report["oof_miou"],
        "counts": report["counts"],
        "top": [f.row() for f in report["findings"][:top]],
    }
    return write_json(group / AUDIT_SUMMARY, summary)


def _rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _action(finding: Finding, min_score: float, doubt_score: float) -> str | None:
    """What --write-clean does with a finding: its kind's action, "ignore" when only doubted, or nothing."""
    if finding.kind not in ACTIONS or finding.score < doubt_score:
        return None
    return ACTIONS[finding.kind] if finding.score >= min_score else "ignore"


def _change(finding: Finding, action: str) -> dict:
    to = {"relabel": finding.suggested, "drop": "", "ignore": "ignore"}[action]
    return {
        "action": action,
        "image_id": finding.image_id,
        "annotation_id": finding.annotation_id,
        "kind": finding.kind,
        "score": round(finding.score, 4),
        "from": finding.label,
        "to": to,
        "pixels": finding.pixels,
    }


def _pruned_regions(data: dict, pruned: set[tuple], dropped: set[tuple]) -> dict[int, list[dict]]:
    """RLEs of each pruned annotation's pixels that no kept annotation of its image covers, per image id."""
    sizes = {im["id"]: (int(im["height"]), int(im["width"])) for im in data["images"]}
    by_image: dict[int, list[dict]] = {}
    for ann in data.get("annotations", []):
        by_image.setdefault(ann.get("image_id"), []).append(ann)
    gone, regions = pruned | dropped, {}
    for image_id in {key[0] for key in pruned}:
        h, w = sizes[image_id]
        kept = np.zeros((h, w), bool)
        for ann in by_image[image_id]:
            if (image_id, ann.get("id")) not in gone:
                kept |= annotation_mask(ann, h, w)
        own = [annotation_mask(ann, h, w) for ann in by_image[image_id] if (image_id, ann.get("id")) in pruned]
        regions[image_id] = [_rle(mask & ~kept) for mask in own]
    return regions


def _ignore_regions(data: dict, regions: dict[int, list[dict]]) -> None:
    """Adds each image's regions (RLEs) to its ignore_mask (the union with any ignore_mask it had)."""
    for image in data["images"]:
        if image["id"] not in regions:
            continue
        h, w = int(image["height"]), int(image["width"])
        mask = np.zeros((h, w), bool)
        for rle in regions[image["id"]] + ([image[IGNORE_KEY]] if image.get(IGNORE_KEY) else []):
            mask |= annotation_mask({"id": f"{IGNORE_KEY} of image {image['id']}", "segmentation": rle}, h, w)
        image[IGNORE_KEY] = _rle(mask)


def write_clean(
    source: str | Path,
    findings: list[Finding],
    path: str | Path,
    min_score: float = CLEAN_MIN_SCORE,
    doubt_score: float = DOUBT_MIN_SCORE,
) -> dict:
    """Writes the cleaned json `path` and `<path stem>.changes.csv`; returns the counts of each action.

    Args:
        source: The audited json (report["data"]).
        findings: The audit's findings; those of at least `min_score` whose kind has an action are applied.
        min_score: The least score a finding needs to be applied (0..1).
        doubt_score: The least score a finding needs to be pruned (its pixels ignored; 0..1; min_score or
            more: nothing is pruned).
    """
    if not 0 <= min_score <= 1:
        raise TrashError(f"--clean-min-score must be in [0, 1], got {min_score}")
    if not 0 <= doubt_score <= 1:
        raise TrashError(f"--clean-doubt-score must be in [0, 1], got {doubt_score}")
    doubt_score = min(doubt_score, min_score)  # from the clean score up, a finding is applied, not pruned
    data = json.loads(Path(source).read_text())
    applied = [(f, a) for f in findings if (a := _action(f, min_score, doubt_score))]
    category = {i + 1: c["id"] for i, c in enumerate(sorted(data["categories"], key=lambda c: c["id"]))}
    relabel = {(f.image_id, f.annotation_id): category[f.suggested_class] for f, a in applied if a == "relabel"}
    drop = {(f.image_id, f.annotation_id) for f, a in applied if a == "drop"}
    pruned = {(f.image_id, f.annotation_id) for f, a in applied if a == "ignore" and f.annotation_id is not None}
    regions: dict[int, list[dict]] = {}
    for f, a in applied:
        if a == "ignore" and f.annotation_id is None:  # a missing region
            regions.setdefault(f.image_id, []).append(f.region)
    for image_id, masks in _pruned_regions(data, pruned, drop).items():
        regions.setdefault(image_id, []).extend(masks)
    gone = drop | pruned
    data["annotations"] = [
        {**ann, "category_id": relabel[key]} if key in relabel else ann
        for ann in data.get("annotations", [])
        if (key := (ann.get("image_id"), ann.get("id"))) not in gone
    ]
    _ignore_regions(data, regions)
    data.setdefault("info", {})["trash_audit"] = f"cleaned from {source}; changes in {Path(path).stem}.changes.csv"
    write_json(path, data)
    listing = Path(path).with_name(f"{Path(path).stem}.changes.csv")
    changes = _write_csv(listing, CHANGE_COLUMNS, [_change(f, a) for f, a in applied])
    counts = {action: sum(a == action for _, a in applied) for action in ("relabel", "drop", "ignore")}
    return {"json": Path(path), "changes": changes, **counts, "pruned": len(pruned)}
