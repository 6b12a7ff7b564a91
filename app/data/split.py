"""Stratified group k-fold splits of one COCO json, written as per-fold train/val COCO json files.

Groups keep near-duplicate images (e.g. frames of one video) on the same side of every split, so
validation scores do not leak. Stratification balances class pixel area: each image is labelled
with its rarest present class, so rare classes are spread over the folds as evenly as the groups
allow (scikit-learn's StratifiedGroupKFold).
"""

import hashlib
import json
import re
import warnings
from pathlib import Path

import numpy as np

from app.atomic import write_json
from app.data.coco import CocoImage, CocoSet, load_coco
from app.data.stats import pixel_counts
from app.errors import TrashError


def group_of(image: CocoImage, raw_image: dict, group: str | None) -> str:
    """The group name of one image.

    Args:
        image: The parsed image entry.
        raw_image: The same entry as a dict from the json (for extra fields such as "video_id").
        group: None (each image is its own group), the name of a field of `raw_image`, or else a
            regex searched in `file_name` whose whole match is the group.

    Raises:
        TrashError: the regex is invalid or does not match the image's file name.
    """
    if group is None:
        return f"image {image.id}"
    if group in raw_image:
        return str(raw_image[group])
    try:
        match = re.search(group, image.file_name)
    except re.error as e:
        raise TrashError(f"group {group!r} is neither an image field nor a valid regex: {e}") from None
    if match is None:
        raise TrashError(f"group regex {group!r} does not match file_name {image.file_name!r} (image {image.id})")
    return match.group(0)


def image_groups(coco: CocoSet, raw_images: list[dict], group: str | None) -> list[str]:
    """Group name per image (coco.images order); a field must then be present in every image."""
    if group is not None and any(group in raw for raw in raw_images):
        for image, raw in zip(coco.images, raw_images):
            if group not in raw:
                raise TrashError(f"image {image.id} ({image.file_name}) lacks the group field {group!r}")
    return [group_of(image, raw, group) for image, raw in zip(coco.images, raw_images)]


def rarest_class_labels(counts: np.ndarray) -> np.ndarray:
    """Per image, its present foreground class with the smallest dataset-wide pixel share (0 if none).

    Args:
        counts: (images, classes) pixel counts, as from `app.data.stats.pixel_counts`.
    """
    totals = counts.sum(axis=0).astype(float)
    rank = np.where(counts[:, 1:] > 0, totals[1:], np.inf)  # background never labels an image
    labels = rank.argmin(axis=1) + 1
    return np.where(np.isfinite(rank.min(axis=1)), labels, 0)


def _check_k(k: int, n_groups: int, group: str | None) -> None:
    if not isinstance(k, int) or k < 2:
        raise TrashError(f"k = {k!r}: a k-fold split needs an integer k >= 2")
    if k > n_groups:
        what = "images" if group is None else f"groups (by {group!r})"
        raise TrashError(f"k = {k} is more than the {n_groups} {what}; use k <= {n_groups}")


def make_folds(
    annotations: str | Path,
    k: int,
    group: str | None = None,
    seed: int = 0,
    cache_root: str | Path = "",
    progress=None,
) -> list[dict]:
    """Stratified group k-fold over the images of one COCO json.

    scikit-learn's shuffle only reorders groups whose class spread ties, so different seeds often
    give the same folds; the same seed always does. A rare class with fewer groups than k cannot
    reach every fold; scikit-learn's warning about it is silenced, the per-fold pixel shares in
    the fold dicts show the outcome.

    Args:
        annotations: The COCO json.
        k: Number of folds (2 <= k <= number of groups).
        group: See `group_of`; a name present as a key in the image dicts is a field, else a regex.
        seed: random_state of the shuffled StratifiedGroupKFold; same seed, same folds.
        cache_root: Mask cache folder (see `app.data.masks.cached_masks`); "" = the default cache.
        progress: Optional wrapper for the rasterization loop of masks not cached yet.

    Returns:
        One dict per fold: {"fold": i, "train_ids": [...], "val_ids": [...]} (image ids, json order),
        plus what `write_folds` summarises: "group", "seed", "train_groups", "val_groups" (sorted
        names) and "val_pixels" ({class name: pixel count of the val images}).
    """
    from sklearn.model_selection import StratifiedGroupKFold

    coco = load_coco(annotations)
    raw_images = json.loads(Path(annotations).read_bytes())["images"]
    groups = image_groups(coco, raw_images, group)
    _check_k(k, len(set(groups)), group)
    counts = pixel_counts(coco, cache_root, progress)
    labels = rarest_class_labels(counts)
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        splits = list(splitter.split(np.zeros((len(groups), 1)), labels, groups))
    return [_fold(i, train, val, coco, groups, counts, group, seed) for i, (train, val) in enumerate(splits)]


def _fold(i: int, train, val, coco: CocoSet, groups, counts: np.ndarray, group, seed) -> dict:
    if len(val) == 0:
        raise TrashError(f"fold {i} got no validation images; use a smaller k")
    train, val = sorted(train), sorted(val)  # json order
    val_pixels = counts[val].sum(axis=0)
    return {
        "fold": i,
        "train_ids": [coco.images[j].id for j in train],
        "val_ids": [coco.images[j].id for j in val],
        "group": group,
        "seed": seed,
        "train_groups": sorted({groups[j] for j in train}),
        "val_groups": sorted({groups[j] for j in val}),
        "val_pixels": {name: int(n) for name, n in zip(coco.codes, val_pixels)},
    }


def subset(data: dict, image_ids: list[int]) -> dict:
    """A COCO dict holding only these images (json order) and their annotations; other keys are kept."""
    keep = set(image_ids)
    known = {im["id"] for im in data["images"]}
    missing = sorted(keep - known)
    if missing:
        raise TrashError(f"fold names image ids that are not in the json: {missing[:10]}")
    return {
        **data,
        "images": [im for im in data["images"] if im["id"] in keep],
        "annotations": [a for a in data.get("annotations", []) if a["image_id"] in keep],
    }


def _shares(pixels: dict[str, int]) -> dict[str, float]:
    total = sum(pixels.values())
    return {name: n / total if total else 0.0 for name, n in pixels.items()}


def _fold_summary(fold: dict, folder: Path) -> dict:
    return {
        "fold": fold["fold"],
        "train": {
            "images": len(fold["train_ids"]),
            "groups": len(fold["train_groups"]),
            "json": str(folder / "train.json"),
        },
        "val": {
            "images": len(fold["val_ids"]),
            "groups": len(fold["val_groups"]),
            "json": str(folder / "val.json"),
            "share": _shares(fold["val_pixels"]),
        },
    }


def write_folds(annotations: str | Path, folds: list[dict], out: str | Path) -> dict:
    """Writes out/fold{i}/train.json and val.json (COCO subsets) and out/summary.json.

    file_names are unchanged, so the same images root serves every fold.

    Args:
        annotations: The COCO json the folds were made from.
        folds: The result of `make_folds`.
        out: Output folder (created if missing).

    Returns:
        The summary: k, seed, group, source json path and sha256, image count, dataset pixel share per
        class, and per fold the images and groups of train and val plus the val pixel share per class.
    """
    if not folds:
        raise TrashError("no folds to write")
    annotations, out = Path(annotations), Path(out)
    raw = annotations.read_bytes()
    data = json.loads(raw)
    entries = []
    for fold in folds:
        folder = out / f"fold{fold['fold']}"
        write_json(folder / "train.json", subset(data, fold["train_ids"]))
        write_json(folder / "val.json", subset(data, fold["val_ids"]))
        entries.append(_fold_summary(fold, folder))
    names = list(folds[0]["val_pixels"])
    summary = {
        "k": len(folds),
        "seed": folds[0]["seed"],
        "group": folds[0]["group"],
        "source": str(annotations.resolve()),
        "sha256": hashlib.sha256(raw).hexdigest(),
        "images": len(data["images"]),
        "share": _shares({n: sum(f["val_pixels"][n] for f in folds) for n in names}),
        "folds": entries,
    }
    write_json(out / "summary.json", summary)
    return summary
