"""fastai DataLoaders from a recipe's items: the squish to the training size, augmentations, rare-class levers.

Everything here that ends up pickled inside an exported learner (`item_image`, `item_mask`,
`AlbumentationsTransform`, `RareClassMix`) is defined at module level so exports load in a fresh process.
Images are decoded by app/data/images.py's `read_rgb` (EXIF orientation, 16-bit) through `RGBImage`, never by
fastai's PIL loader.
"""

import random
from pathlib import Path

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

from app.data import rare
from app.data.augment import build_preset
from app.data.images import read_rgb
from app.data.items import Items, Sample
from app.errors import TrashError
from app.recipe import Recipe
from app.registry import Registry


def item_image(item) -> Path:
    """The image path of an item; prediction passes bare paths, training Samples."""
    return item.image if isinstance(item, Sample) else item


def item_mask(item: Sample) -> Path:
    return item.mask


class RGBImage(PILImage):
    """fastai's PILImage, decoded by `read_rgb` (EXIF orientation, 16-bit scaled) instead of PIL's own loader.

    The type transform of the image block: exports pickle `RGBImage.create`. Exports made before it pickled
    `PILImage.create` and keep decoding as they did when they were trained.
    """

    @classmethod
    def create(cls, fn, **kwargs):
        if isinstance(fn, str | Path):
            fn = read_rgb(fn)
        return super().create(fn, **kwargs)


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

    return read_rgb(sample.image), cv2.imread(str(sample.mask), cv2.IMREAD_UNCHANGED)


def forget_training_items(dls) -> None:
    """Drops the training file list from transforms before export (an export must not carry the dataset)."""
    for tfm in dls.train.after_item.fs:
        if isinstance(tfm, RareClassMix):
            tfm.donors = []


def rare_class_indices(items: Items, names: tuple[str, ...], presence: np.ndarray) -> list[int]:
    """Class indices of `names`; with no names, the classes present in under 10% of training images."""
    if names:
        unknown = [n for n in names if n not in items.codes]
        if unknown:
            raise TrashError(f"'data.rare_classes' names {unknown}, not classes of the data: {items.codes[1:]}")
        return [items.codes.index(n) for n in names]
    share = presence.mean(0)
    return [c for c in range(1, len(items.codes)) if 0 < share[c] < 0.1]


def _uniform(presence: np.ndarray, rare_classes: list[int]) -> None:
    return None


def _balanced(presence: np.ndarray, rare_classes: list[int]) -> np.ndarray:
    return rare.balanced_weights(presence, rare_classes or None)


#: sampler -> per-training-image sampling weights (None = every image once per epoch, shuffled)
SAMPLERS: Registry = Registry("sampler", {"uniform": _uniform, "balanced": _balanced}, key="data.sampler")


def _rare_levers(items: Items, recipe: Recipe) -> tuple[list, np.ndarray | None]:
    """The copy-paste / mosaic transform and the sampler's weights, from which images hold rare classes."""
    d = recipe.data
    if not (d.copy_paste or d.mosaic or d.sampler != "uniform"):
        return [], None
    presence = rare.class_presence([s.mask for s in items.train], len(items.codes))
    rare_classes = rare_class_indices(items, d.rare_classes, presence)
    donors = [s for s, row in zip(items.train, presence) if row[rare_classes].any()] if rare_classes else []
    tfms = (
        [RareClassMix(donors or items.train, rare_classes, d.copy_paste, d.mosaic)] if d.copy_paste or d.mosaic else []
    )
    weights = SAMPLERS[d.sampler](presence, rare_classes)
    return tfms, None if weights is None else np.concatenate([weights, np.ones(len(items.valid))])


def make_dls(items: Items, recipe: Recipe, size: int, mean: tuple, std: tuple, device=None):
    """fastai DataLoaders at one training size (its height: `recipe.shape(size)` gives height and width),
    normalised with the encoder's statistics."""
    d = recipe.data
    shape = recipe.shape(size)
    crop = d.crop if d.crop and (d.crop < shape[0] or d.crop < shape[1]) else None  # crop x crop windows
    item_tfms = [Resize(shape, method=ResizeMethod.Squish)]  # Squish keeps every pixel and inverts exactly
    aug = build_preset(d.augment, recipe.train.seed, crop=crop, square=shape[0] == shape[1])
    item_tfms.append(AlbumentationsTransform(aug))
    rare_tfms, weights = _rare_levers(items, recipe)
    block = DataBlock(
        blocks=(ImageBlock(cls=RGBImage), MaskBlock(items.codes)),
        get_x=item_image,
        get_y=item_mask,
        splitter=IndexSplitter(range(len(items.train), len(items.train) + len(items.valid))),
        item_tfms=item_tfms + rare_tfms,
        batch_tfms=[Normalize.from_stats(mean, std)],
    )
    source, kwargs = items.train + items.valid, dict(bs=d.batch_size, num_workers=d.workers, device=device)
    if weights is not None:  # fastai's WeightedDL: the training set is sampled with these weights
        from fastai.callback.data import weighted_dataloaders  # noqa: F401  (patches DataBlock)

        return block.weighted_dataloaders(source, weights, **kwargs)
    return block.dataloaders(source, **kwargs)
