"""Evaluation of exported (or in-memory) learners against COCO ground truth at the images' original size.

Both mIoU definitions the competition editions used:

* `miou`: one confusion matrix accumulated over the whole dataset, IoU per class, mean over the classes present
  in truth or prediction (the training metric and the later editions' leaderboard);
* `miou_per_image`: mIoU of each image on its own (over the classes in that image's truth or prediction), then
  the mean over images (the first edition's leaderboard). It weighs small images and rare classes differently.

With `compare`, every member alone and the ensemble are scored with each TTA set in one pass over the images,
so a user sees what each model and each view set adds.
"""

import csv
import dataclasses
from pathlib import Path

import cv2
import numpy as np
import torch

from app.atomic import atomic_open, write_json
from app.data.check import check_coco
from app.data.coco import ignore_value, load_coco
from app.data.images import image_size
from app.data.items import coco_items
from app.errors import TrashError
from app.infer.members import combine, load_members
from app.infer.options import InferenceOptions, view_spec
from app.infer.stream import member_probs, stream_predictions
from app.infer.tta import parse_views
from app.model.metrics import confusion_matrix, iou_report, mean_iou
from app.plots import plot_confusion

COMPARISON_COLUMNS = ("model", "tta", "views", "miou", "miou_per_image", "pixel_accuracy")


class Scores:
    """Accumulates a dataset confusion matrix and the per-image mIoUs."""

    def __init__(self, n_classes: int, ignore_index: int = 255):
        self.n, self.ignore_index = n_classes, ignore_index
        self.cm = torch.zeros(n_classes, n_classes, dtype=torch.int64)
        self.per_image: list[float] = []

    def add(self, pred: torch.Tensor, target: torch.Tensor, image_id: str = "") -> torch.Tensor:
        """Adds one image; returns its confusion matrix."""
        try:
            cm = confusion_matrix(pred, target, self.n, self.ignore_index)
        except ValueError as e:  # a json whose size disagrees with its image: never score misaligned pixels
            raise TrashError(f"{image_id}: {e} (run `trash data check` on the json and its images)") from None
        self.cm += cm
        if cm.sum():
            self.per_image.append(mean_iou(cm.numpy()))
        return cm

    def report(self, codes: list[str]) -> dict:
        out = iou_report(self.cm.numpy(), codes)
        out["miou_per_image"] = float(np.mean(self.per_image)) if self.per_image else 0.0
        return out


def read_mask(path) -> np.ndarray:
    """A mask PNG as it is (uint8 or uint16 class ids)."""
    mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise TrashError(f"ground-truth mask {path} cannot be read")
    return mask


def _read_mask(path) -> torch.Tensor:
    return torch.from_numpy(read_mask(path).astype(np.int64))


class PerImage:
    """Per validation image: the pixels of truth, of prediction and of both per class (at the original size),
    and the predicted mask at `shape` (the training size): per-image scores and pictures for the report
    without predicting again."""

    def __init__(self, valid: list, n_classes: int, shape: tuple[int, int]):
        self.masks = {str(image): mask for image, mask in valid}
        self.n, self.shape, self.rows = n_classes, tuple(shape), []

    def add(self, pred, cm: torch.Tensor) -> None:
        """`cm`: the image's confusion matrix, as `evaluate_items` scored it (its mask is not read again)."""
        label, cm = pred.probs.argmax(0), cm.numpy()
        small = torch.nn.functional.interpolate(label[None, None].float(), size=self.shape, mode="nearest")[0, 0]
        small = small.numpy().astype(np.uint8 if self.n <= 256 else np.uint16)
        self.rows.append((pred.image_id, self.masks[pred.image_id], np.diag(cm), cm.sum(1), cm.sum(0), small))

    def arrays(self) -> dict[str, np.ndarray]:
        """image, mask (paths); both, truth, pred (images x classes pixels); prediction (images x h x w)."""
        columns = list(zip(*self.rows)) or [[], [], [], [], [], []]
        out = {k: np.array([str(v) for v in c]) for k, c in zip(("image", "mask"), columns[:2])}
        out.update(
            {k: np.array(c, np.int64).reshape(-1, self.n) for k, c in zip(("both", "truth", "pred"), columns[2:5])}
        )
        out["prediction"] = (
            np.array(columns[5], np.uint8).reshape(-1, *self.shape) if not self.rows else np.stack(columns[5])
        )
        return out

    def truth_pixels(self) -> list[int]:
        return [int(v) for v in np.sum([r[3] for r in self.rows], axis=0)] if self.rows else [0] * self.n


def _pairs(items: list[tuple[Path, Path]], root: str | Path | None) -> list[tuple[str, Path]]:
    """(image id, image path) per item; ids relative to `root` when given (see evaluate_items)."""
    if root is None:
        return [(str(img), img) for img, _ in items]
    return [(Path(img).relative_to(root).as_posix(), img) for img, _ in items]


def evaluate_items(
    learners: list,
    items: list[tuple[Path, Path]],
    codes: list[str],
    options: InferenceOptions = InferenceOptions(),
    ignore_index: int = 255,
    progress=None,
    on_prediction=None,
    root: str | Path | None = None,
) -> dict:
    """mIoU (dataset confusion matrix and mean per image) and per-class IoU over (image, mask PNG) items.

    Args:
        learners: Learners or app.infer.members.Member objects (an ensemble).
        on_prediction: When given, sees every Prediction and its confusion matrix (e.g. to keep out-of-fold
            probabilities and per-image scores).
        root: The images folder: image ids are then paths relative to it (the json's file_names), the names
            `predict --save-probs` gives its probability files; otherwise the full paths.
    """
    scores = Scores(len(codes), ignore_index)
    pairs = _pairs(items, root)
    truth = {image_id: mask for (image_id, _), (_, mask) in zip(pairs, items)}
    stream = stream_predictions(learners, pairs, options)
    for pred in progress(stream, total=len(items)) if progress else stream:
        cm = scores.add(pred.probs.argmax(0), _read_mask(truth[pred.image_id]), pred.image_id)
        if on_prediction:
            on_prediction(pred, cm)
    report = scores.report(codes)
    report.update(images=len(items), tta=view_spec(options.tta), confusion_matrix=scores.cm.tolist())
    return report


def compare_items(
    members: list,
    items: list[tuple[Path, Path]],
    codes: list[str],
    tta_sets: list[str],
    options: InferenceOptions = InferenceOptions(),
    progress=None,
    root: str | Path | None = None,
) -> list[dict]:
    """Rows (model, tta, miou, miou_per_image, per-class IoU) for each member alone and the ensemble, per TTA set.

    One pass over the images: each member predicts each image once per TTA set, and the ensemble row combines
    those predictions with the members' weights (as `predict` would).
    """
    labels = [f"#{i + 1} {m.name}" if len(members) > 1 else m.name for i, m in enumerate(members)]
    names = labels + (["ensemble"] if len(members) > 1 else [])
    scores = {(name, s): Scores(len(codes), ignore_value(len(codes))) for name in names for s in tta_sets}
    pairs = _pairs(items, root)
    truth = {image_id: mask for (image_id, _), (_, mask) in zip(pairs, items)}
    starts = range(0, len(pairs), options.batch_size)
    for start in progress(starts) if progress else starts:
        chunk = pairs[start : start + options.batch_size]
        _compare_chunk(members, labels, chunk, [_read_mask(truth[i]) for i, _ in chunk], scores, options)
    return [_comparison_row(name, s, sc.report(codes)) for (name, s), sc in scores.items()]


def _compare_chunk(members, labels, chunk, targets, scores: dict, options: InferenceOptions) -> None:
    sizes = [image_size(p) for _, p in chunk]
    for s in {s for _, s in scores}:
        per_member = [
            member_probs(m, chunk, sizes, dataclasses.replace(options, tta=view_spec(s), tile=False)) for m in members
        ]
        for k, (target, (image_id, _)) in enumerate(zip(targets, chunk)):
            probs = [pm[k] for pm in per_member]
            for label, p in zip(labels, probs):
                scores[(label, s)].add(p.argmax(0), target, image_id)
            if len(members) > 1:
                scores[("ensemble", s)].add(combine(probs, members).argmax(0), target, image_id)


def _comparison_row(name: str, tta: str, report: dict) -> dict:
    return {"model": name, "tta": view_spec(tta), "views": len(parse_views(view_spec(tta))), **report}


def evaluate(
    models: list[str | Path],
    data: str | Path,
    images: str | Path,
    options: InferenceOptions = InferenceOptions(),
    compare: list[str] | None = None,
    out: str | Path | None = None,
    progress=None,
    mask_cache: str = "",
) -> dict:
    """Evaluates exported models (an ensemble when several) on a COCO json whose `file_name`s are relative to
    `images`.

    Args:
        compare: TTA sets to compare every member and the ensemble with (e.g. ["identity", "flip", "d4"]).
        out: Folder for evaluate.json, confusion.png and, with `compare`, comparison.csv.
    """
    for s in compare or []:
        parse_views(view_spec(s))  # fail on a typo before the long pass
    members = load_members(models, options.weights, options.class_weights, options.topk)
    coco = _ground_truth(data, images)
    if members[0].classes != list(coco.codes):
        raise TrashError(
            f"the model {members[0].name} predicts {members[0].classes} but {data} has classes {list(coco.codes)}"
        )
    items = coco_items(coco, images, mask_cache)
    ignore = ignore_value(len(coco.codes))
    report = evaluate_items(members, items, coco.codes, options, ignore, progress=progress, root=images)
    members_used = [{"name": m.name, "weight": m.weight, "backend": m.backend} for m in members]
    report.update(data=str(data), models=[str(m) for m in models], members=members_used)
    if compare:
        report["comparison"] = compare_items(members, items, coco.codes, compare, options, progress, images)
    if out:
        write_outputs(report, coco.codes, Path(out))
    return report


def _ground_truth(data, images):
    """The json, refused when `trash data check` finds errors in it (scores on bad truth mean nothing)."""
    report = check_coco(data, images, read_images=False)
    if not report.ok:
        first = report.errors[0].message
        raise TrashError(f"{data}: {len(report.errors)} data problem(s), e.g. {first}; see `trash data check {data}`")
    coco = load_coco(data)
    if not coco.images:
        raise TrashError(f"{data} lists no images: there is nothing to evaluate")
    return coco


def write_outputs(report: dict, codes: list[str], out: Path) -> None:
    """evaluate.json, confusion.png and comparison.csv (one row per member/ensemble and TTA set) in `out`."""
    write_json(out / "evaluate.json", report)
    plot_confusion(report["confusion_matrix"], codes, out / "confusion.png")
    if not report.get("comparison"):
        return
    with atomic_open(out / "comparison.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*COMPARISON_COLUMNS, *(f"iou_{c}" for c in codes)])
        for r in report["comparison"]:
            ious = ["" if v is None else f"{v:.4f}" for v in r["per_class_iou"].values()]
            writer.writerow([r[c] if isinstance(r[c], str | int) else f"{r[c]:.4f}" for c in COMPARISON_COLUMNS] + ious)
