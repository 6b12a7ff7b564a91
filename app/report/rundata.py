"""What a report reads from a run directory (and only from it): resolved values, metrics, history, per-image
scores, out-of-fold probabilities, lr_find and class-weight logs; plus the numbers derived from them.

A run written before per_image.npz existed still gets a page: the parts that need it say what is missing.
"""

import csv
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from app.errors import TrashError
from app.recipe import Recipe
from app.runs import FOLDS, HISTORY, METRICS, PER_IMAGE, RESOLVED, SUMMARY

SECTIONS = ("data", "model", "loss", "train")


@dataclass
class RunData:
    """One finished run directory, read once."""

    path: Path
    resolved: dict
    metrics: dict
    history: list[dict] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        return list(self.resolved["classes"])

    @property
    def name(self) -> str:
        fold = self.metrics.get("fold", -1)
        return f"{self.resolved.get('name', '?')}/{self.path.name}" + (
            f" (fold {fold})" if fold not in (-1, None) else ""
        )

    @cached_property
    def per_image(self) -> dict[str, np.ndarray] | None:
        """image, mask (paths), both/truth/pred (images x classes pixel counts); None when the run lacks it."""
        file = self.path / PER_IMAGE
        if not file.is_file():
            return None
        with np.load(file) as z:
            return {k: z[k] for k in z.files}

    def iou(self) -> dict[str, float | None]:
        return dict(self.metrics.get("per_class_iou", {}))

    def confusion(self) -> np.ndarray:
        return np.asarray(self.metrics["confusion_matrix"], dtype=np.float64)

    def log(self, name: str) -> list[dict]:
        """Rows of a CSV log in the run (class_weights.csv), [] when absent."""
        return read_csv(self.path / name)


def read_csv(file: Path) -> list[dict]:
    if not file.is_file():
        return []
    with file.open(newline="") as f:
        return list(csv.DictReader(f))


def load_run(path: str | Path) -> RunData:
    """Reads a finished run directory.

    Raises:
        TrashError: Not a finished run directory (no metrics.json / resolved.json).
    """
    run = Path(path).resolve()
    missing = [n for n in (RESOLVED, METRICS) if not (run / n).is_file()]
    if missing:
        raise TrashError(f"{path} is not a finished run directory of `trash fit` (no {', '.join(missing)})")
    try:
        resolved = json.loads((run / RESOLVED).read_text())
        metrics = json.loads((run / METRICS).read_text())
    except json.JSONDecodeError as e:
        raise TrashError(f"{path}: a damaged json file ({e})") from None
    return RunData(run, resolved, metrics, read_csv(run / HISTORY))


def is_group(path: str | Path) -> bool:
    return (Path(path) / FOLDS).is_file()


def load_group(path: str | Path) -> tuple[dict, list[RunData]]:
    """(summary.json, the fold runs) of a finished `--fold all` group."""
    group = Path(path).resolve()
    if not (group / SUMMARY).is_file():
        raise TrashError(
            f"{path} is a fold group that has not finished (no {SUMMARY}); resume it with trash fit --resume"
        )
    summary = json.loads((group / SUMMARY).read_text())
    return summary, [load_run(group / name) for name in summary["folds"]]


def changed_values(resolved: dict) -> dict[str, object]:
    """`section.key` -> value of the resolved recipe values that differ from the schema's defaults."""
    defaults = Recipe().to_dict()
    return {
        f"{s}.{k}": v
        for s in SECTIONS
        for k, v in resolved.get(s, {}).items()
        if k not in defaults.get(s, {}) or _plain(defaults[s][k]) != _plain(v)
    }


def flat_values(resolved: dict) -> dict[str, object]:
    return {f"{s}.{k}": v for s in SECTIONS for k, v in resolved.get(s, {}).items()}


def _plain(value):
    """A value as resolved.json holds it (tuples become lists), so a default compares equal to its json copy."""
    return json.loads(json.dumps(value))


def image_scores(per_image: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(mIoU per image over the classes in its truth or prediction, as `trash evaluate`'s miou_per_image
    averages them; (images x classes) IoU, NaN where a class is absent from both)."""
    both, truth, pred = (per_image[k].astype(np.float64) for k in ("both", "truth", "pred"))
    union = truth + pred - both
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, both / union, np.nan)
    present = np.isfinite(iou)
    miou = np.where(present.any(1), np.nansum(np.nan_to_num(iou), 1) / np.maximum(present.sum(1), 1), 0.0)
    return np.where(truth.sum(1) > 0, miou, np.nan), iou  # an image without a labelled pixel has no score


def class_table(run: RunData) -> list[dict]:
    """Per class: IoU, pixel share in training and validation, precision and recall (from the confusion matrix)."""
    cm = run.confusion()
    pixels = run.metrics.get("class_pixels", {})
    train = np.asarray(pixels.get("train") or [np.nan] * len(run.classes), np.float64)
    valid = cm.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.diag(cm) / cm.sum(0)
        recall = np.diag(cm) / valid
    ious = run.iou()
    return [
        {
            "id": i,
            "name": name,
            "iou": ious.get(name),
            "train_share": train[i] / train.sum() if np.nansum(train) > 0 else None,
            "valid_share": valid[i] / max(valid.sum(), 1),
            "precision": _finite(precision[i]),
            "recall": _finite(recall[i]),
            "confused_with": _confused_with(cm, i, run.classes),
        }
        for i, name in enumerate(run.classes)
    ]


def _confused_with(cm: np.ndarray, i: int, names: list[str]) -> str:
    """Where a class's missed pixels went most: 'plastic 41%' (share of the class's true pixels)."""
    row = cm[i].copy()
    total = row.sum()
    row[i] = 0
    if total <= 0:
        predicted = int(cm[:, i].sum())
        return f"(not in the validation truth; predicted on {predicted:,} px)" if predicted else "(not in validation)"
    if row.max() <= 0:
        return ""
    j = int(row.argmax())
    return f"{names[j]} {100 * row[j] / total:.0f}%"


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None
