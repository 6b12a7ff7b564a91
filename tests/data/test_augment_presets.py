"""Every augmentation preset: size and dtype kept, image and mask aligned, seeded, and the non-empty crop.

Alignment uses the technique of tests/test_augment.py (the red channel says the mask, with a wide gap
between 40 and 215) at a realistic training size: 256 px, 8 x 8 blocks of 32 px.
"""

import subprocess
import sys
import warnings

import numpy as np
import pytest

from app.data.augment import PRESETS, build_preset, crop_non_empty

SIZE = 256

# Least per-draw agreement between "red > 127" and "mask == 1". Flips are exact; one warp (medium) costs
# the pixels where linear image interpolation and nearest mask resampling round an edge differently (< 0.6 %
# measured). Heavy adds effects on top of a warp that move the red value of edge pixels across the fixed 127
# threshold without moving anything: motion blur rounds block corners, CLAHE / brightness-contrast shift the
# middle of a blurred edge away from 127, and GridDropout blacks out ~2 % of the image under an unchanged mask
# (by design). Measured worst of 300 draws: 2.6 %, hence 97 %. A real shift of 4 px already costs ~6 %.
MIN_AGREEMENT = {"none": 1.0, "hflip": 1.0, "light": 1.0, "medium": 0.99, "heavy": 0.97}


def blocky_pair(rng, size=SIZE, blocks=8):
    """An image whose red channel is 215 exactly where the mask is 1 and 40 elsewhere."""
    cell = size // blocks
    mask = np.kron(rng.integers(0, 2, (blocks, blocks)), np.ones((cell, cell), int)).astype(np.uint8)
    image = rng.integers(0, 40, (size, size, 3)).astype(np.uint8)
    image[..., 0] = np.where(mask == 1, 215, 40)
    return image, mask


def agreement(image, mask):
    """Share of pixels where the red channel and the mask tell the same story."""
    return ((image[..., 0] > 127) == (mask == 1)).mean()


def multi_class_pair(rng, size=96):
    """A textured image and a mask with classes 0..3 in blobs."""
    image = rng.integers(0, 256, (size, size, 3)).astype(np.uint8)
    mask = np.kron(rng.integers(0, 4, (6, 6)), np.ones((size // 6, size // 6), int)).astype(np.uint8)
    return image, mask


def test_importing_augment_does_not_import_albumentations():
    code = "import sys, app.data.augment; assert 'albumentations' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_presets_include_the_recipe_names():
    assert {"none", "light", "medium", "heavy"} <= set(PRESETS)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_keep_size_dtype_and_labels(preset):
    rng = np.random.default_rng(0)
    aug = build_preset(preset, seed=0)
    for _ in range(20):
        image, mask = multi_class_pair(rng)
        out = aug(image=image, mask=mask)
        assert out["image"].shape == image.shape and out["image"].dtype == np.uint8
        assert out["mask"].shape == mask.shape and out["mask"].dtype == np.uint8
        # Nearest-neighbour masks: no blended in-between labels; borders are background (0).
        assert set(np.unique(out["mask"])) <= set(np.unique(mask)) | {0}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_build_and_run_without_warnings(preset):
    image, mask = multi_class_pair(np.random.default_rng(1))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        warnings.simplefilter("error", UserWarning)
        aug = build_preset(preset, seed=0)
        for _ in range(30):
            aug(image=image, mask=mask)
        crop_non_empty(48, seed=0)(image=image, mask=mask)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_image_and_mask_stay_aligned(preset):
    rng = np.random.default_rng(0)
    aug = build_preset(preset, seed=0)
    scores = []
    for _ in range(30):
        image, mask = blocky_pair(rng)
        out = aug(image=image, mask=mask)
        scores.append(agreement(out["image"], out["mask"]))
    assert min(scores) >= MIN_AGREEMENT[preset], f"{preset}: worst draw agrees on {min(scores):.2%} of pixels"
    assert np.mean(scores) >= 0.99, f"{preset}: mean agreement {np.mean(scores):.2%}"


def test_agreement_catches_a_small_shift():
    """The measure is sharp enough: shifting the image 4 px (1.6 % of the side) against the mask fails it."""
    image, mask = blocky_pair(np.random.default_rng(0))
    assert agreement(image, mask) == 1.0
    assert agreement(np.roll(image, 4, axis=1), mask) < MIN_AGREEMENT["heavy"]


@pytest.mark.parametrize("preset", sorted(set(PRESETS) - {"none"}))
def test_presets_are_seeded(preset):
    image, mask = multi_class_pair(np.random.default_rng(2))

    def draws(seed):
        aug = build_preset(preset, seed=seed)
        return [aug(image=image, mask=mask) for _ in range(8)]

    same = zip(draws(5), draws(5))
    assert all(np.array_equal(a["image"], b["image"]) and np.array_equal(a["mask"], b["mask"]) for a, b in same)
    other = zip(draws(5), draws(6))
    assert not all(np.array_equal(a["image"], b["image"]) for a, b in other)


def test_heavy_changes_images():
    rng = np.random.default_rng(3)
    aug = build_preset("heavy", seed=0)
    image_changed = mask_changed = 0
    for _ in range(30):
        image, mask = blocky_pair(rng)
        out = aug(image=image, mask=mask)
        image_changed += not np.array_equal(out["image"], image)
        mask_changed += not np.array_equal(out["mask"], mask)
    assert image_changed >= 25 and mask_changed >= 15, (image_changed, mask_changed)


def small_object_pair(rng, size=128, side=6):
    """A mask with one small object of class 1..3 somewhere, and a random image."""
    mask = np.zeros((size, size), np.uint8)
    y, x = rng.integers(0, size - side, 2)
    mask[y : y + side, x : x + side] = rng.integers(1, 4)
    return rng.integers(0, 256, (size, size, 3)).astype(np.uint8), mask


def test_crop_non_empty_keeps_foreground():
    rng = np.random.default_rng(4)
    crop = crop_non_empty(32, seed=0)
    for _ in range(40):
        image, mask = small_object_pair(rng)
        out = crop(image=image, mask=mask)
        assert out["image"].shape == (32, 32, 3) and out["mask"].shape == (32, 32)
        assert out["mask"].any(), "the crop missed the only object"


def test_crop_non_empty_on_background_only_and_small_images():
    crop = crop_non_empty(64, seed=0)
    empty = crop(image=np.full((100, 80, 3), 7, np.uint8), mask=np.zeros((100, 80), np.uint8))
    assert empty["image"].shape == (64, 64, 3) and not empty["mask"].any()
    small = crop(image=np.full((40, 50, 3), 7, np.uint8), mask=np.ones((40, 50), np.uint8))
    assert small["image"].shape == (64, 64, 3)
    assert small["mask"].sum() == 40 * 50  # padded, nothing cut: padding is background


def test_build_preset_with_crop():
    rng = np.random.default_rng(5)
    aug = build_preset("heavy", seed=0, crop=48)
    for _ in range(10):
        image, mask = small_object_pair(rng, side=12)
        out = aug(image=image, mask=mask)
        assert out["image"].shape == (48, 48, 3) and out["mask"].shape == (48, 48)
