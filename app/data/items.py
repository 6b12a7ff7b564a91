"""A recipe's data as items: (image path, cached mask path) pairs for training and validation, checked first.

`load_items` reads the recipe's json(s) (or one fold of a `trash data split` folder), refuses bad data the way
`trash data check` reports it (or drops it with `data.drop_bad_annotations`), rasterizes the masks into the
cache once, splits off validation and records what the run used (fingerprints, sources, dropped problems).
"""

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from app.data.check import check_coco
from app.data.coco import CocoSet, load_coco
from app.data.masks import cached_masks
from app.errors import TrashError
from app.recipe import Data, Recipe


class Sample(NamedTuple):
    """One training item. A NamedTuple, because fastai maps plain-tuple items element-wise through getters."""

    image: Path
    mask: Path


@dataclass
class Items:
    """Training and validation items plus what the run records about the data."""

    train: list[Sample]
    valid: list[Sample]
    codes: list[str]
    fingerprints: dict[str, str]
    sources: dict[str, str]  # the json files used, e.g. a fold's train.json / val.json
    dropped: list[str]  # problems whose annotations/images were left out (data.drop_bad_annotations)


def coco_items(
    coco: CocoSet, images_root: str | Path, cache_root: str = "", progress=None, overlap: str = "largest-first"
) -> list[Sample]:
    """(image path, cached mask path) for every image of the json; missing image files are an error."""
    root = Path(images_root)
    images = [root / im.file_name for im in coco.images]
    missing = [str(p) for p in images if not p.is_file()]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise TrashError(f"{coco.path}: {len(missing)} image file(s) not found, e.g. {', '.join(missing[:3])}{more}")
    return [Sample(i, m) for i, m in zip(images, cached_masks(coco, cache_root, progress, overlap))]


class _Collector:
    """The items of each json a recipe names, with what the run records about them."""

    def __init__(self, d: Data, progress):
        self.d, self.progress = d, progress
        self.fingerprints: dict[str, str] = {}
        self.sources: dict[str, str] = {}
        self.dropped: list[str] = []
        self.codes: list[str] | None = None
        self.annotations: dict[str, int] = {}

    def items(self, role: str, annotations, images) -> list[Sample]:
        coco = checked_coco(annotations, images, self.d.drop_bad_annotations, self.dropped)
        if self.codes is not None and coco.codes != self.codes:
            raise TrashError(
                f"{annotations} ({role}): classes {coco.codes} differ from the training json's {self.codes}"
            )
        self.codes = self.codes or coco.codes
        self.fingerprints[role], self.sources[role] = coco.fingerprint, str(annotations)
        self.annotations[role] = sum(len(anns) for anns in coco.anns_by_image.values())
        return coco_items(coco, images, self.d.mask_cache, self.progress, self.d.overlap)


def load_items(recipe: Recipe, progress=None) -> Items:
    """Checks the recipe's json(s), rasterizes (or reuses cached) masks and splits train/valid."""
    d = recipe.data
    train_json, valid_json = fold_files(d.split, d.fold) if d.split else (d.annotations, d.valid_annotations)
    found = _Collector(d, progress)
    train = found.items("train", train_json, d.images)
    if train and not found.annotations["train"]:  # no images at all is the empty-set error below
        raise TrashError(
            f"{train_json}: {len(train)} images but not one annotation: a model would learn background only "
            "(is the json's 'annotations' list empty, or its key spelled otherwise?)"
        )
    if valid_json:
        valid = found.items("valid", valid_json, d.valid_images or d.images)
    else:
        train, valid = _hold_out(train, d.valid_fraction, recipe.train.seed)
    if d.pseudo:  # pseudo-labelled images (unconfident pixels are 255) only ever train
        train = train + found.items("pseudo", d.pseudo, d.pseudo_images or d.images)
    if d.fraction < 1:  # --debug: a seeded share of the images
        train, valid = _sample(train, d.fraction, recipe.train.seed), _sample(valid, d.fraction, recipe.train.seed)
    if not train or not valid:
        raise TrashError(f"{train_json}: empty training or validation set ({len(train)} / {len(valid)} images)")
    found.fingerprints["images"] = _image_list_hash(train + valid)
    return Items(train, valid, found.codes, found.fingerprints, found.sources, found.dropped)


def _sample(items: list[Sample], fraction: float, seed: int) -> list[Sample]:
    """A seeded share of the items, at least 2 (BatchNorm cannot normalise a batch of one image)."""
    keep = sorted(random.Random(seed).sample(range(len(items)), min(len(items), max(2, round(len(items) * fraction)))))
    return [items[i] for i in keep]


def _image_list_hash(samples: list[Sample]) -> str:
    """Hash of the image files used (name and byte size): the teams versioned their data v1/v2/v3 by hand."""
    listing = sorted(f"{s.image.name}:{s.image.stat().st_size}" for s in samples)
    return hashlib.sha256("\n".join(listing).encode()).hexdigest()[:16]


def fold_files(split: str, fold: int) -> tuple[Path, Path]:
    """train.json and val.json of one fold written by `trash data split`."""
    folder = Path(split) / f"fold{fold}"
    if not (folder / "train.json").is_file() or not (folder / "val.json").is_file():
        found = sorted(p.name for p in Path(split).glob("fold*"))
        raise TrashError(
            f"'data.fold' {fold}: no {folder}/train.json and val.json (folds here: {', '.join(found) or 'none'})"
        )
    return folder / "train.json", folder / "val.json"


def checked_coco(annotations, images, drop: bool, dropped: list[str]) -> CocoSet:
    """Loads a json after `trash data check`'s validation: refuses bad data, or drops and records it."""
    report = check_coco(annotations, images)
    if report.ok:
        return load_coco(annotations)
    errors = report.errors
    undroppable = [p for p in errors if p.annotation_id is None and p.image_id is None]
    if not drop or undroppable:
        first = (undroppable or errors)[0].message
        hint = "" if undroppable else "; or set data.drop_bad_annotations=true to leave them out"
        raise TrashError(
            f"{annotations}: {len(errors)} data problem(s), e.g. {first}. "
            f"See `trash data check {annotations} --images {images}`{hint}"
        )
    bad_images = {p.image_id for p in errors if p.annotation_id is None}
    dropped += [p.message for p in errors]
    return load_coco(annotations, report.bad_annotation_ids(), bad_images)


def _hold_out(items: list[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """A seeded random `fraction` of the images for validation, when no validation json is given."""
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    held = set(order[: max(1, round(len(items) * fraction))])
    return [it for i, it in enumerate(items) if i not in held], [it for i, it in enumerate(items) if i in held]
