"""`trash data audit`: a fold group's out-of-fold probabilities against its labels, image by image.

Every image of a `trash fit --fold all` group was scored once by the fold model that never trained on it
(`fold<k>/oof.npz`, probabilities at the training size). Those are mapped back to each image's original size
(training squishes the whole image to its size, so a resize back is the exact inverse) and compared with the
json's annotations painted as training paints them (the group's overlap rule, `ignore_mask` pixels skipped).

Two passes over the oof files, each streamed one image at a time out of the compressed npz (memory does not
grow with the number of images): the first accumulates the per-class thresholds of Confident Learning, the
second finds the label issues (app/infer/label_issues.py) and scores each image. Outputs and the cleaned json
are app/infer/audit_outputs.py.
"""

import dataclasses
import heapq
import itertools
import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from app.atomic import write_json
from app.data.check import check_coco
from app.data.coco import BACKGROUND, IGNORE_KEY, CocoImage, CocoSet, ignore_value, load_coco
from app.data.images import read_rgb
from app.data.masks import OVERLAP_RULES, Layer, annotation_mask
from app.errors import TrashError
from app.infer.label_issues import (
    KINDS,
    AuditSettings,
    Finding,
    Labelled,
    Thresholds,
    annotation_findings,
    bbox,
    confident_classes,
    image_score,
    missing_regions,
)
from app.runs import FOLDS, RESOLVED, SUMMARY

OOF = "oof.npz"


@dataclass(frozen=True)
class Fold:
    """One fold run of the group: its oof file and how its validation images were found and painted."""

    k: int
    oof: Path
    classes: list[str]
    images: Path  # the folder its oof image ids (full paths) are under
    valid_json: Path
    overlap: str


def group_folds(group: str | Path) -> list[Fold]:
    """The folds of a `trash fit --fold all` group; TrashError for a single run or a fold without oof.npz."""
    group = Path(group)
    if not (group / FOLDS).is_file():
        if (group / RESOLVED).is_file():
            raise TrashError(
                f"{group} is a single run: only its validation images were scored out of fold. The audit needs a "
                "`trash fit RECIPE --fold all` group, in which every image is scored by a model that never saw it"
            )
        raise TrashError(f"{group} is not a fold group of `trash fit --fold all` (no {FOLDS})")
    count = json.loads((group / FOLDS).read_text())["folds"]
    runs = [group / f"fold{k}" for k in range(count)]
    missing = [r.name for r in runs if not (r / OOF).is_file() or not (r / RESOLVED).is_file()]
    if missing:
        raise TrashError(
            f"{group}: {', '.join(missing)} of {count} folds have no {OOF} (not finished); "
            f"`trash fit --resume {group}` finishes them"
        )
    return [_fold(k, run) for k, run in enumerate(runs)]


def _fold(k: int, run: Path) -> Fold:
    resolved = json.loads((run / RESOLVED).read_text())
    d = resolved["data"]
    valid = resolved.get("data_sources", {}).get("valid")
    if not valid:
        raise TrashError(f"{run}: its validation images came from no json (data_sources in {RESOLVED})")
    folder = Path(d.get("valid_images") or d["images"])
    return Fold(k, run / OOF, resolved["classes"], folder, Path(valid), d.get("overlap", "largest-first"))


def _npy(z: zipfile.ZipFile, name: str, path: Path):
    try:
        return z.open(name)
    except KeyError:
        raise TrashError(f"{path} has no '{name}' array: not an oof file written by `trash fit`") from None


def oof_image_ids(path: Path) -> list[str]:
    """The image ids (full image paths) an oof.npz holds, in order, without reading its probabilities."""
    try:
        with zipfile.ZipFile(path) as z, _npy(z, "image.npy", path) as f:
            return [str(i) for i in np.lib.format.read_array(f)]
    except (zipfile.BadZipFile, ValueError, OSError) as e:
        raise TrashError(f"{path} cannot be read as an oof file ({e})") from None


def stream_oof(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    """(image id, (C, h, w) float16 probabilities) one image at a time, read straight out of the compressed npz.

    np.load would decompress every image's probabilities at once (GBs at trashcan_large scale): the npy member
    is read sequentially instead, one image's bytes at a time.
    """
    ids = oof_image_ids(path)
    with zipfile.ZipFile(path) as z, _npy(z, "probs.npy", path) as f:
        version = np.lib.format.read_magic(f)
        header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = header(f)
        if fortran or len(shape) != 4 or shape[0] != len(ids):
            raise TrashError(f"{path}: probabilities of shape {shape} for {len(ids)} images")
        size = int(np.prod(shape[1:])) * dtype.itemsize
        for image_id in ids:
            yield image_id, np.frombuffer(f.read(size), dtype).reshape(shape[1:])


def at_size(probs: np.ndarray, height: int, width: int) -> np.ndarray:
    """(C, H, W) float32 probabilities at the image's size: the inverse of training's squish (bilinear)."""
    p = probs.astype(np.float32).transpose(1, 2, 0)
    if p.shape[:2] != (height, width):
        p = cv2.resize(p, (width, height), interpolation=cv2.INTER_LINEAR)
        p = p.reshape(height, width, -1)  # cv2 drops a single channel's axis
    return np.ascontiguousarray(p.transpose(2, 0, 1))


def labelled(coco: CocoSet, image: CocoImage, overlap: str) -> Labelled:
    """The image's class mask painted as training paints it (app/data/masks.py), with the owner of each pixel."""
    index, rule = coco.class_of_category, OVERLAP_RULES[overlap]
    anns = coco.anns_by_image.get(image.id, [])
    layers = []
    for position, ann in enumerate(anns):
        region = annotation_mask(ann, image.height, image.width)
        layers.append(Layer(int(region.sum()), ann.get("id", 0), position, index[ann["category_id"]], region))
    mask = np.zeros((image.height, image.width), np.int32)
    owner = np.full(mask.shape, -1, np.int32)
    for layer in sorted(layers, key=rule.order):
        mask[layer.mask], owner[layer.mask] = layer.cls, layer.position
    ignore = ignore_value(len(coco.codes))
    if image.ignore:
        region = annotation_mask({"id": f"{IGNORE_KEY} of image {image.id}", "segmentation": image.ignore}, *mask.shape)
        mask[region], owner[region] = ignore, -1
    return Labelled(mask, owner, [(a.get("id", 0), index[a["category_id"]]) for a in anns], ignore)


def dataset_json(folds: list[Fold], data: str | Path | None, out: Path) -> Path:
    """The json audited: `data` when given, else the folds' validation jsons merged (written to out/audited.json)."""
    if data:
        return Path(data)
    merged: dict = {}
    for fold in folds:
        part = json.loads(fold.valid_json.read_text())
        if not merged:
            merged = {**part, "images": [], "annotations": []}
        merged["images"] += part["images"]
        merged["annotations"] += part.get("annotations", [])
    return write_json(out / "audited.json", merged)


def checked_dataset(path: Path, folds: list[Fold]) -> tuple[CocoSet, dict[str, CocoImage]]:
    """The json, refused when it has errors or when its classes or images are not the group's."""
    report = check_coco(path, None, read_images=False)
    if not report.ok:
        raise TrashError(f"{path}: {len(report.errors)} data problem(s), e.g. {report.errors[0].message}")
    coco = load_coco(path)
    if coco.codes != folds[0].classes:
        raise TrashError(f"{path} has classes {coco.codes} but the fold group was trained on {folds[0].classes}")
    by_name = {im.file_name: im for im in coco.images}
    absent = [name for fold in folds for name in _file_names(fold) if name not in by_name]
    if absent:
        raise TrashError(
            f"{path} lacks {len(absent)} image(s) the fold group scored, e.g. {absent[0]}: audit the json the "
            "group was trained on (or its superset)"
        )
    return coco, by_name


def _file_names(fold: Fold) -> list[str]:
    names = []
    for image_id in oof_image_ids(fold.oof):
        try:
            names.append(Path(image_id).relative_to(fold.images).as_posix())
        except ValueError:
            raise TrashError(
                f"{fold.oof}: image {image_id} is not under the fold's images folder {fold.images}"
            ) from None
    return names


@dataclass
class _Pass:
    """What the audit streams over: the folds, the json, and each oof image's entry in it."""

    folds: list[Fold]
    coco: CocoSet
    by_name: dict[str, CocoImage]
    progress: object = None
    total: int = 0

    def images(self) -> Iterator[tuple[Fold, CocoImage, np.ndarray]]:
        """(fold, image entry, (C, H, W) probabilities at its size), one image at a time, under the progress bar."""
        stream = ((f, img, p) for f in self.folds for img, p in stream_oof(f.oof))
        if self.progress:  # one bar per pass (fastprogress's console bar takes no label)
            stream = self.progress(stream, total=self.total)
        for fold, image_id, probs in stream:
            image = self.by_name[Path(image_id).relative_to(fold.images).as_posix()]
            yield fold, image, at_size(probs, image.height, image.width)


@dataclass
class Gallery:
    """The top findings with what their picture needs (prediction and region), kept as the second pass runs."""

    size: int
    heap: list = field(default_factory=list)
    counter: itertools.count = field(default_factory=itertools.count)

    def offer(self, finding: Finding, prediction: np.ndarray, region: np.ndarray) -> None:
        if self.size <= 0:
            return
        entry = (finding.score, next(self.counter), finding, prediction, region)
        (heapq.heappush if len(self.heap) < self.size else heapq.heappushpop)(self.heap, entry)

    def entries(self) -> list[tuple[Finding, np.ndarray, np.ndarray]]:
        return [(f, p, r) for _, _, f, p, r in sorted(self.heap, key=lambda e: (-e[0], e[1]))]


def thresholds(run: _Pass) -> Thresholds:
    """Confident Learning's per-class thresholds over every out-of-fold image (the first pass)."""
    acc = Thresholds(len(run.coco.codes))
    for fold, image, probs in run.images():
        acc.add(probs, labelled(run.coco, image, fold.overlap))
    return acc


def _rle(region: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(region.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def image_findings(
    probs: np.ndarray, lab: Labelled, t: Thresholds, s: AuditSettings, where: dict, codes: list[str]
) -> list[tuple[Finding, np.ndarray]]:
    """Every finding of one image with its region; `where` gives the image_id, file_name and fold."""
    thresholds = t.values()
    confident = confident_classes(probs, thresholds)
    missing, grown = missing_regions(probs, confident, lab, t.typical_areas(), s)
    found = []
    for i, kind, score, k, region in annotation_findings(probs, confident, lab, grown, t, s):
        ann_id, given = lab.annotations[i]
        facts = dict(kind=kind, score=score, label=codes[given], suggested=codes[k], suggested_class=k)
        found.append((Finding(**where, **facts, **_extent(region), annotation_id=ann_id), region))
    for score, k, region in missing:
        facts = dict(kind="missing", score=score, label=BACKGROUND, suggested=codes[k], suggested_class=k)
        found.append((Finding(**where, **facts, **_extent(region), annotation_id=None, region=_rle(region)), region))
    return found


def _extent(region: np.ndarray) -> dict:
    return dict(pixels=int(region.sum()), bbox=bbox(region))


#: the gallery shows an image's best findings only (a weak model's one mistaken image would fill it otherwise);
#: audit.csv keeps every finding
GALLERY_PER_IMAGE = 2


def find_issues(run: _Pass, t: Thresholds, s: AuditSettings, gallery: Gallery) -> tuple[list[Finding], list[dict]]:
    """The second pass: every finding (best first) and each image's label-quality score (worst first)."""
    findings, images = [], []
    for fold, image, probs in run.images():
        lab = labelled(run.coco, image, fold.overlap)
        where = dict(image_id=image.id, file_name=image.file_name, fold=fold.k)
        found = image_findings(probs, lab, t, s, where, run.coco.codes)
        prediction = probs.argmax(0).astype(np.uint16 if len(run.coco.codes) > 255 else np.uint8)
        for finding, region in sorted(found, key=lambda e: -e[0].score)[:GALLERY_PER_IMAGE]:
            gallery.offer(finding, prediction, region)
        findings += [f for f, _ in found]
        score = image_score(probs, lab.mask, lab.ignore)
        images.append({**where, "score": round(score, 4), "findings": len(found)})
    findings.sort(key=lambda f: -f.score)
    images.sort(key=lambda r: r["score"])
    return findings, images


def audit(
    group: str | Path,
    out: str | Path,
    data: str | Path | None = None,
    settings: AuditSettings = AuditSettings(),
    gallery_size: int = 24,
    progress=None,
    images: str | Path | None = None,
) -> tuple[dict, list[dict]]:
    """Finds the label issues of the json a fold group was trained on; returns the report and the gallery's entries.

    Args:
        group: A `trash fit --fold all` group folder.
        out: Folder for audited.json when `data` is not given (the outputs are written by audit_outputs).
        data: The json to audit (default: the folds' validation jsons, i.e. every image the group scored).
        gallery_size: How many top findings to keep pictures of.
        progress: Optional progress bar for the loops (app/progress.py `bar`).
        images: The images folder for the gallery's pictures (default: the one the group trained from).

    Returns:
        The report (findings best first, images worst first) and the gallery's rows (app.plots.save_findings_gallery).
    """
    folds = group_folds(group)
    source = dataset_json(folds, data, Path(out))
    coco, by_name = checked_dataset(source, folds)
    run = _Pass(folds, coco, by_name, progress, sum(len(oof_image_ids(f.oof)) for f in folds))
    t = thresholds(run)
    gallery = Gallery(gallery_size)
    findings, image_rows = find_issues(run, t, settings, gallery)
    report = {
        "group": str(group),
        "oof_miou": _oof_miou(Path(group)),
        "data": str(source),
        "images_audited": run.total,
        "images_not_audited": len(coco.images) - run.total,  # in the json, scored by no fold: left as they are
        "thresholds": {name: round(float(v), 4) for name, v in zip(coco.codes, t.values())},
        "typical_areas": {name: round(float(v), 1) for name, v in zip(coco.codes, t.typical_areas())},
        "counts": {kind: sum(f.kind == kind for f in findings) for kind in KINDS},
        "settings": dataclasses.asdict(settings),
        "images": image_rows,
        "findings": findings,
    }
    return report, gallery_rows(run, gallery, images)


def _oof_miou(group: Path) -> float | None:
    """The group's out-of-fold mIoU (summary.json): how far its models' opinion of the labels can be trusted."""
    summary = group / SUMMARY
    return json.loads(summary.read_text())["oof"]["miou"] if summary.is_file() else None


def gallery_rows(run: _Pass, gallery: Gallery, images: str | Path | None) -> list[dict]:
    """The pictures of the kept findings: image, labels, out-of-fold prediction, region, a title."""
    folds = {f.k: f for f in run.folds}
    rows = []
    for finding, prediction, region in gallery.entries():
        image = run.by_name[finding.file_name]
        fold = folds[finding.fold]
        rgb = read_rgb(Path(images or fold.images) / image.file_name)
        if rgb.shape[:2] != prediction.shape:  # a json whose size disagrees with its file: squish as training does
            rgb = cv2.resize(rgb, prediction.shape[::-1], interpolation=cv2.INTER_AREA)
        who = f"ann {finding.annotation_id}" if finding.annotation_id is not None else "region"
        title = f"{finding.kind} {finding.score:.2f}: {who} {finding.label} -> {finding.suggested}"
        label = labelled(run.coco, image, fold.overlap).mask
        rows.append(dict(image=rgb, label=label, prediction=prediction, region=region, title=title, finding=finding))
    return rows
