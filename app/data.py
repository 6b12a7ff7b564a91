"""fastai DataLoaders from a recipe: items (image path, cached mask path), the split and the transforms.

Everything here that ends up pickled inside an exported learner (`item_image`, `item_mask`,
`AlbumentationsTransform`) is defined at module level so exports load in a fresh process.
"""

import random
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from fastai.vision.all import (
    DataBlock,
    ImageBlock,
    IndexSplitter,
    ItemTransform,
    MaskBlock,
    Normalize,
    PILImage,
    PILMask,
    Resize,
    ResizeMethod,
)

from app.augment import build_preset
from app.coco import CocoSet, cached_masks, load_coco
from app.errors import TrashError
from app.recipe import Recipe


class Sample(NamedTuple):
    """One training item. A NamedTuple, because fastai maps plain-tuple items element-wise through getters."""

    image: Path
    mask: Path


def item_image(item) -> Path:
    """The image path of an item; prediction passes bare paths, training Samples."""
    return item.image if isinstance(item, Sample) else item


def item_mask(item: Sample) -> Path:
    return item.mask


class AlbumentationsTransform(ItemTransform):
    """Applies an albumentations Compose to (image, mask) pairs of the training split only."""

    split_idx = 0  # 0 = training split; validation and prediction are never augmented
    order = 2  # after fastai's Resize (order 1), before ToTensor (order 5)

    def __init__(self, aug):
        self.aug = aug

    def encodes(self, x):
        img, mask = x
        out = self.aug(image=np.array(img), mask=np.array(mask))
        return PILImage.create(out["image"]), PILMask.create(out["mask"])


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


def load_items(recipe: Recipe, progress=None) -> Items:
    """Checks the recipe's json(s), rasterizes (or reuses cached) masks and splits train/valid."""
    d = recipe.data
    train_json, valid_json = fold_files(d.split, d.fold) if d.split else (d.annotations, d.valid_annotations)
    dropped: list[str] = []
    train_coco = checked_coco(train_json, d.images, d.drop_bad_annotations, dropped)
    train = coco_items(train_coco, d.images, d.mask_cache, progress, d.overlap)
    fingerprints, sources = {"train": train_coco.fingerprint}, {"train": str(train_json)}
    if valid_json:
        valid_images = d.valid_images or d.images
        valid_coco = checked_coco(valid_json, valid_images, d.drop_bad_annotations, dropped)
        if valid_coco.codes != train_coco.codes:
            raise TrashError(f"{valid_json}: categories differ from {train_json}")
        valid = coco_items(valid_coco, valid_images, d.mask_cache, progress, d.overlap)
        fingerprints["valid"], sources["valid"] = valid_coco.fingerprint, str(valid_json)
    else:
        train, valid = _hold_out(train, d.valid_fraction, recipe.train.seed)
    if not train or not valid:
        raise TrashError(f"{train_json}: empty training or validation set ({len(train)} / {len(valid)} images)")
    return Items(train, valid, train_coco.codes, fingerprints, sources, dropped)


def fold_files(split: str, fold: int) -> tuple[Path, Path]:
    """train.json and val.json of one fold written by `trash data split`."""
    folder = Path(split) / f"fold{fold}"
    if not (folder / "train.json").is_file() or not (folder / "val.json").is_file():
        found = sorted(p.name for p in Path(split).glob("fold*"))
        raise TrashError(
            f"'data.fold' {fold}: no {folder}/train.json and val.json (folds here: {', '.join(found) or 'none'})"
        )
    return folder / "train.json", folder / "val.json"


def checked_coco(annotations, images, drop: bool, dropped: list[str]):
    """Loads a json after `trash data check`'s validation: refuses bad data, or drops and records it."""
    from app.check import check_coco

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


def make_dls(items: Items, recipe: Recipe, size: int, mean: tuple, std: tuple, device=None):
    """fastai DataLoaders at one training size, normalised with the encoder's statistics."""
    d = recipe.data
    block = DataBlock(
        blocks=(ImageBlock, MaskBlock(items.codes)),
        get_x=item_image,
        get_y=item_mask,
        splitter=IndexSplitter(range(len(items.train), len(items.train) + len(items.valid))),
        # Squish (no crop) keeps every labelled pixel and is exactly invertible at prediction time.
        item_tfms=[
            Resize(size, method=ResizeMethod.Squish),
            AlbumentationsTransform(build_preset(d.augment, recipe.train.seed)),
        ],
        batch_tfms=[Normalize.from_stats(mean, std)],
    )
    return block.dataloaders(items.train + items.valid, bs=d.batch_size, num_workers=d.workers, device=device)
