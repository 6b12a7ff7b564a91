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


def coco_items(coco: CocoSet, images_root: str | Path, cache_root: str = "", progress=None) -> list[Sample]:
    """(image path, cached mask path) for every image of the json; missing image files are an error."""
    root = Path(images_root)
    images = [root / im.file_name for im in coco.images]
    missing = [str(p) for p in images if not p.is_file()]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise TrashError(f"{coco.path}: {len(missing)} image file(s) not found, e.g. {', '.join(missing[:3])}{more}")
    return [Sample(i, m) for i, m in zip(images, cached_masks(coco, cache_root, progress))]


def load_items(recipe: Recipe, progress=None) -> Items:
    """Reads the recipe's json(s), rasterizes (or reuses cached) masks and splits train/valid."""
    d = recipe.data
    train_coco = load_coco(d.annotations)
    train = coco_items(train_coco, d.images, d.mask_cache, progress)
    fingerprints = {"train": train_coco.fingerprint}
    if d.valid_annotations:
        valid_coco = load_coco(d.valid_annotations)
        if valid_coco.codes != train_coco.codes:
            raise TrashError(f"{d.valid_annotations}: categories differ from {d.annotations}")
        valid = coco_items(valid_coco, d.valid_images or d.images, d.mask_cache, progress)
        fingerprints["valid"] = valid_coco.fingerprint
    else:
        order = list(range(len(train)))
        random.Random(recipe.train.seed).shuffle(order)
        n_valid = max(1, round(len(train) * d.valid_fraction))
        held = set(order[:n_valid])
        valid = [it for i, it in enumerate(train) if i in held]
        train = [it for i, it in enumerate(train) if i not in held]
    if not train or not valid:
        raise TrashError(f"{d.annotations}: empty training or validation set ({len(train)} / {len(valid)} images)")
    return Items(train, valid, train_coco.codes, fingerprints)


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
