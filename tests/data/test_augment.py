"""The fastai glue: AlbumentationsTransform keeps image and mask aligned, on the training split only.

The presets themselves are tested in depth in tests/test_augment_presets.py."""

import numpy as np
import pytest
from fastai.vision.all import PILImage, PILMask

from app.data.augment import PRESETS, build_preset
from app.data.loaders import AlbumentationsTransform

# heavy's blur and contrast ops move blurred edge pixels across the fixed 127 threshold (see
# tests/test_augment_presets.py); at 64 px with 8 px blocks that is most pixels, hence 256 px and 97 %.
MIN_AGREEMENT = {"heavy": 0.97}


def blocky_pair(rng, size=256):
    """An image whose red channel says the mask: > 127 exactly where the mask is 1 (gap survives colour jitter)."""
    mask = np.kron(rng.integers(0, 2, (8, 8)), np.ones((size // 8, size // 8), int)).astype(np.uint8)
    image = rng.integers(0, 40, (size, size, 3)).astype(np.uint8)
    image[..., 0] = np.where(mask == 1, 215, 40)
    return image, mask


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_image_and_mask_stay_aligned(preset):
    rng = np.random.default_rng(0)
    tfm = AlbumentationsTransform(build_preset(preset, seed=0))
    changed = 0
    for _ in range(30):
        image, mask = blocky_pair(rng)
        out_img, out_mask = tfm((PILImage.create(image), PILMask.create(mask)), split_idx=0)
        out_img, out_mask = np.array(out_img), np.array(out_mask)
        agreement = ((out_img[..., 0] > 127) == (out_mask == 1)).mean()
        least = MIN_AGREEMENT.get(preset, 0.99)
        assert agreement > least, f"{preset}: image and mask disagree on {1 - agreement:.1%} of pixels"
        changed += not np.array_equal(out_mask, mask)
    assert changed > 0 or preset == "none", f"{preset} never changed the geometry in 30 draws"


def test_validation_split_is_not_augmented():
    rng = np.random.default_rng(1)
    image, mask = blocky_pair(rng)
    tfm = AlbumentationsTransform(build_preset("medium", seed=0))
    for _ in range(10):
        out_img, out_mask = tfm((PILImage.create(image), PILMask.create(mask)), split_idx=1)
        assert np.array_equal(np.array(out_img), image) and np.array_equal(np.array(out_mask), mask)
