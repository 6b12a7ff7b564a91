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
    order = 3  # after fastai's Resize (order 1) and RareClassMix (2), before ToTensor (order 5)

    def __init__(self, aug):
        self.aug, self._worker = aug, None

    def encodes(self, x):
        img, mask = x
        self._reseed_in_worker()
        out = self.aug(image=np.array(img), mask=np.array(mask))
        return PILImage.create(out["image"]), PILMask.create(out["mask"])

    def _reseed_in_worker(self):
        """Each DataLoader worker holds a copy of the seeded Compose; without this they all draw the same.

        A worker is one core's worth of work (fastai gives it one torch thread): OpenCV's own thread pool is
        switched off too, else N workers run N x cores OpenCV threads. 0, not 1: `setNumThreads(1)` in a forked
        child of a process that used the pool hangs (opencv-python-headless 4.x, reproduced here).
        """
        import cv2
        import torch

        info = torch.utils.data.get_worker_info()
        if info is not None and self._worker != (info.id, info.seed):
            cv2.setNumThreads(0)
            self._worker = (info.id, info.seed)  # info.seed differs per worker and per epoch
            self.aug.set_random_state(np.random.default_rng(info.seed), random.Random(info.seed))


class RareClassMix(ItemTransform):
    """Copy-paste of rare-class objects from other training images, and 4-image mosaics (training split only).

    Donor images are drawn among the training images that contain a rare class. Random draws use Python's
    `random`, which fastai seeds per run and per DataLoader worker.
    """

    split_idx = 0
    order = 2  # after Resize: every image is already the training size

    def __init__(self, donors: list[Sample], rare: list[int], copy_paste: float, mosaic: float):
        self.donors, self.rare, self.copy_paste, self.mosaic = list(donors), list(rare), copy_paste, mosaic

    def encodes(self, x):
        from app import rare

        if not self.donors:  # exported learners forget their training images (see forget_training_items)
            return x
        img, mask = np.array(x[0]), np.array(x[1])
        rng = np.random.default_rng(random.getrandbits(64))
        if random.random() < self.mosaic:
            others = [_read_pair(random.choice(self.donors)) for _ in range(3)]
            img, mask = rare.mosaic([(img, mask), *others], img.shape[0], rng)
        if random.random() < self.copy_paste:
            donor_img, donor_mask = _read_pair(random.choice(self.donors))
            img, mask = rare.copy_paste(img, mask, donor_img, donor_mask, self.rare, rng)
        return PILImage.create(img), PILMask.create(mask)


def _read_pair(sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    import cv2

    image = cv2.cvtColor(cv2.imread(str(sample.image), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return image, cv2.imread(str(sample.mask), cv2.IMREAD_UNCHANGED)


def forget_training_items(dls) -> None:
    """Drops the training file list from transforms before export (an export must not carry the dataset)."""
    for tfm in dls.train.after_item.fs:
        if isinstance(tfm, RareClassMix):
            tfm.donors = []


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
    if d.pseudo:  # pseudo-labelled images (unconfident pixels are 255) only ever train
        pseudo_coco = checked_coco(d.pseudo, d.pseudo_images or d.images, d.drop_bad_annotations, dropped)
        if pseudo_coco.codes != train_coco.codes:
            raise TrashError(f"'data.pseudo' {d.pseudo}: classes {pseudo_coco.codes} differ from {train_coco.codes}")
        train = train + coco_items(pseudo_coco, d.pseudo_images or d.images, d.mask_cache, progress, d.overlap)
        fingerprints["pseudo"], sources["pseudo"] = pseudo_coco.fingerprint, str(d.pseudo)
    if d.fraction < 1:  # --debug: a seeded share of the images
        train, valid = _sample(train, d.fraction, recipe.train.seed), _sample(valid, d.fraction, recipe.train.seed)
    if not train or not valid:
        raise TrashError(f"{train_json}: empty training or validation set ({len(train)} / {len(valid)} images)")
    fingerprints["images"] = _image_list_hash(train + valid)
    return Items(train, valid, train_coco.codes, fingerprints, sources, dropped)


def _sample(items: list[Sample], fraction: float, seed: int) -> list[Sample]:
    keep = sorted(random.Random(seed).sample(range(len(items)), max(1, round(len(items) * fraction))))
    return [items[i] for i in keep]


def _image_list_hash(samples: list[Sample]) -> str:
    """Hash of the image files used (name and byte size): the teams versioned their data v1/v2/v3 by hand."""
    import hashlib

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


def rare_class_indices(items: Items, names: tuple[str, ...], presence: np.ndarray) -> list[int]:
    """Class indices of `names`; with no names, the classes present in under 10% of training images."""
    if names:
        unknown = [n for n in names if n not in items.codes]
        if unknown:
            raise TrashError(f"'data.rare_classes' names {unknown}, not classes of the data: {items.codes[1:]}")
        return [items.codes.index(n) for n in names]
    share = presence.mean(0)
    return [c for c in range(1, len(items.codes)) if 0 < share[c] < 0.1]


def make_dls(items: Items, recipe: Recipe, size: int, mean: tuple, std: tuple, device=None):
    """fastai DataLoaders at one training size, normalised with the encoder's statistics."""
    d = recipe.data
    item_tfms = [Resize(size, method=ResizeMethod.Squish)]  # Squish keeps every pixel and inverts exactly
    crop = d.crop if d.crop and d.crop < size else None
    item_tfms.append(AlbumentationsTransform(build_preset(d.augment, recipe.train.seed, crop=crop)))
    weights = None
    if d.copy_paste or d.mosaic or d.sampler == "balanced":
        from app.rare import balanced_weights, class_presence

        presence = class_presence([s.mask for s in items.train], len(items.codes))
        rare = rare_class_indices(items, d.rare_classes, presence)
        donors = [s for s, row in zip(items.train, presence) if row[rare].any()] if rare else []
        if d.copy_paste or d.mosaic:
            item_tfms.append(RareClassMix(donors or items.train, rare, d.copy_paste, d.mosaic))
        if d.sampler == "balanced":
            weights = np.concatenate([balanced_weights(presence, rare or None), np.ones(len(items.valid))])
    block = DataBlock(
        blocks=(ImageBlock, MaskBlock(items.codes)),
        get_x=item_image,
        get_y=item_mask,
        splitter=IndexSplitter(range(len(items.train), len(items.train) + len(items.valid))),
        item_tfms=item_tfms,
        batch_tfms=[Normalize.from_stats(mean, std)],
    )
    source, kwargs = items.train + items.valid, dict(bs=d.batch_size, num_workers=d.workers, device=device)
    if weights is not None:  # fastai's WeightedDL: the training set is sampled with these weights
        from fastai.callback.data import weighted_dataloaders  # noqa: F401  (patches DataBlock)

        return block.weighted_dataloaders(source, weights, **kwargs)
    return block.dataloaders(source, **kwargs)
