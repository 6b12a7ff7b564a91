"""Albumentations presets, named in recipes as `data.augment`.

Only the training split is augmented (the fastai glue lives in app/data/loaders.py); images arrive already
squished to the square training size, so every op here keeps the size (90-degree rotations and transposes
included). Albumentations is imported inside the builders so that validating a recipe stays instant.

Presets:

- `none`: identity.
- `hflip`: horizontal flips only (a forward-looking camera: no upside-down or rotated scenes).
- `light`: flips, RandomRotate90, mild brightness/contrast.
- `medium`: light's flips + one warp (a small Affine shift/scale/rotate or an ElasticTransform) + one of
  several mild colour ops.
- `heavy`: the OneOf blocks the trash-segmentation competition teams used: one of flips/rot90/transpose,
  one warp (Affine, or one of Elastic/Grid/Optical distortion), one of GridDropout/MotionBlur/GaussNoise,
  one of CLAHE/RGBShift/HueSaturationValue/RandomBrightnessContrast.

Image/mask alignment rules, followed by every op:

- masks are always resampled with nearest-neighbour interpolation (`mask_interpolation=cv2.INTER_NEAREST`);
- at most one resampling (warp) per draw: each one lets nearest-neighbour mask edges and interpolated image
  edges round differently by up to half a pixel, and blurs the image; chained warps would add both up;
- MotionBlur is symmetric (`direction_range=(0, 0)`, `allow_shifted=False`): albumentations' defaults smear
  one way or off-centre, which shifts the image against the mask;
- where geometry exposes pixels outside the image, the image is filled with 0 and the mask with 0 (background)
  (`border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0`), so black borders are labelled background;
- GridDropout blacks out small squares of the *image only* (`fill_mask=None`: the mask is unchanged), i.e.
  the model learns to label objects through occlusions. The holes are kept small (a grid of 10 x 10 cells, hole
  side 15 % of a cell, about 2 % of the image) so that the label under them stays a fair guess.

`crop_non_empty(size, seed)` is an optional crop centred on labelled pixels (background 0 ignored);
`build_preset(name, seed, crop=size)` puts it in front of a preset.
"""

from collections.abc import Callable

from app.registry import Registry


def _compose(transforms: list, seed: int):
    """`A.Compose(transforms, seed=seed)` whose ops share one random stream instead of identical copies of one.

    albumentations 2.0.8 seeds every op of a seeded Compose with the same seed, each with its own generator, so
    sibling ops draw the same numbers: with seed=0, HorizontalFlip(p=0.5) and VerticalFlip(p=0.5) fire
    together or not at all (never a mirror image), and all OneOf blocks are skipped together. Handing every op
    the Compose's own two generators keeps the draws seeded (same seed, same sequence) but independent.
    """
    import random

    import albumentations as A
    import numpy as np

    aug = A.Compose(transforms, seed=seed)
    aug.set_random_state(np.random.default_rng(seed), random.Random(seed))
    return aug


def _flips():
    """Horizontal and vertical flips and 90-degree rotations, each with probability 0.5 (8 orientations)."""
    import albumentations as A

    return [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5), A.RandomRotate90(p=0.5)]


def _aligned() -> dict:
    """Arguments every warp shares: bilinear image, nearest mask, exposed borders image 0 / mask background."""
    import cv2

    return dict(
        interpolation=cv2.INTER_LINEAR,
        mask_interpolation=cv2.INTER_NEAREST,
        border_mode=cv2.BORDER_CONSTANT,
        fill=0,
        fill_mask=0,
    )


def _affine(shift: float, scale: float, rotate: float, p: float):
    """Shift/scale/rotate (ShiftScaleRotate's replacement); exposed borders are image 0, mask background."""
    import albumentations as A

    return A.Affine(
        translate_percent=(-shift, shift), scale=(1 - scale, 1 + scale), rotate=(-rotate, rotate), p=p, **_aligned()
    )


def _elastic(alpha: float, sigma: float, p: float = 1.0):
    """Elastic deformation (albumentations 2: displacement = alpha * blurred normalised noise, in pixels)."""
    import albumentations as A

    return A.ElasticTransform(alpha=alpha, sigma=sigma, p=p, **_aligned())


def _distortions(p: float):
    """One of elastic, grid and optical distortion, all with nearest masks and background borders."""
    import albumentations as A

    border = dict(p=1.0, **_aligned())
    return A.OneOf(
        [
            _elastic(alpha=120, sigma=6),
            A.GridDistortion(num_steps=5, distort_limit=0.2, **border),
            A.OpticalDistortion(distort_limit=0.3, **border),
        ],
        p=p,
    )


def _mild_colour(p: float):
    """One of a few gentle colour ops (image only); one at a time, so their shifts never add up."""
    import albumentations as A

    return A.OneOf(
        [
            A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=1.0),
            A.HueSaturationValue(hue_shift_limit=5, sat_shift_limit=15, val_shift_limit=10, p=1.0),
            A.RGBShift(r_shift_limit=10, g_shift_limit=10, b_shift_limit=10, p=1.0),
        ],
        p=p,
    )


def _none(seed: int):
    return _compose([], seed=seed)


def _hflip(seed: int):
    """Horizontal flips only: photos from a camera that looks ahead (no upside-down or rotated scenes)."""
    import albumentations as A

    return _compose([A.HorizontalFlip(p=0.5)], seed=seed)


def _light(seed: int):
    """Flips, 90-degree rotations, mild colour: safe on any photo of objects seen from above."""
    import albumentations as A

    return _compose(
        [*_flips(), A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=0.3)],
        seed=seed,
    )


def _medium(seed: int):
    """Light's flips plus one warp (small affine or elastic) and one mild colour op (reference Unet+EffB4)."""
    import albumentations as A

    return _compose(
        [
            *_flips(),
            A.OneOf([_affine(shift=0.0625, scale=0.1, rotate=15, p=1.0), _elastic(alpha=120, sigma=6)], p=0.5),
            _mild_colour(p=0.5),
        ],
        seed=seed,
    )


def _heavy(seed: int):
    """Competition-style OneOf blocks: flips, one warp (affine or a distortion), dropout/blur/noise, colour."""
    import albumentations as A

    return _compose(
        [
            A.OneOf(
                [A.HorizontalFlip(p=1.0), A.VerticalFlip(p=1.0), A.RandomRotate90(p=1.0), A.Transpose(p=1.0)],
                p=0.75,
            ),
            # At most one resampling per draw (see the module docstring).
            A.OneOf([_affine(shift=0.1, scale=0.15, rotate=30, p=1.0), _distortions(p=1.0)], p=0.8),
            A.OneOf(
                [
                    # Image-only: fill_mask=None leaves the mask as it was (occlusion, not relabelling).
                    A.GridDropout(ratio=0.15, random_offset=True, fill=0, fill_mask=None, p=1.0),
                    # direction 0 = symmetric blur; the default (-1, 1) smears one way and shifts the image.
                    A.MotionBlur(blur_limit=(3, 7), allow_shifted=False, direction_range=(0.0, 0.0), p=1.0),
                    A.GaussNoise(std_range=(0.01, 0.03), p=1.0),
                ],
                p=0.3,
            ),
            A.OneOf(
                [
                    A.CLAHE(clip_limit=2.0, tile_grid_size=(8, 8), p=1.0),
                    A.RGBShift(r_shift_limit=15, g_shift_limit=15, b_shift_limit=15, p=1.0),
                    A.HueSaturationValue(hue_shift_limit=10, sat_shift_limit=20, val_shift_limit=15, p=1.0),
                    A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.2, p=1.0),
                ],
                p=0.5,
            ),
        ],
        seed=seed,
    )


PRESETS: Registry[Callable] = Registry(
    "augmentation preset",
    {"none": _none, "hflip": _hflip, "light": _light, "medium": _medium, "heavy": _heavy},
    key="data.augment",
)


def crop_non_empty(size: int, seed: int):
    """A size x size crop around labelled pixels, padded first when the image is smaller.

    Args:
        size: Side of the crop in pixels.
        seed: Seed of the Compose (albumentations 2 ignores global seeds).

    Returns:
        An `A.Compose`: PadIfNeeded (image 0, mask background) then CropNonEmptyMaskIfExists, which centres the
        crop on a random non-background pixel (value 0 is always ignored by albumentations; `ignore_values=[0]`
        only says so) or crops at random when the mask is all background.
    """
    import albumentations as A
    import cv2

    return _compose(
        [
            A.PadIfNeeded(min_height=size, min_width=size, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0),
            A.CropNonEmptyMaskIfExists(height=size, width=size, ignore_values=[0]),
        ],
        seed=seed,
    )


def build_preset(name: str, seed: int, crop: int | None = None, square: bool = True):
    """Returns the albumentations Compose for preset `name`, seeded (albumentations 2 ignores global seeds).

    Args:
        name: A key of PRESETS.
        seed: Seed of the Compose; the same seed gives the same sequence of draws.
        crop: Optional crop side; when given, `crop_non_empty(crop, seed)` runs before the preset's ops
            (the output is then crop x crop instead of the input size).
        square: Whether the images are square (`data.aspect` 1). Quarter turns and transposes of a non-square
            image would swap its sides and break the batch, so they are left out then (a square crop keeps them).
    """
    aug = PRESETS[name](seed)
    if crop is not None:
        return _compose([*crop_non_empty(crop, seed).transforms, *aug.transforms], seed=seed)
    return aug if square else _compose(_keep_shape(aug.transforms), seed=seed)


def _keep_shape(transforms) -> list:
    """`transforms` without the ones that swap height and width (RandomRotate90, Transpose), OneOf blocks too."""
    import albumentations as A

    kept = []
    for t in transforms:
        if isinstance(t, A.RandomRotate90 | A.Transpose):
            continue
        kept.append(A.OneOf(_keep_shape(t.transforms), p=t.p) if isinstance(t, A.OneOf) else t)
    return kept
