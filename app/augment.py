"""Albumentations presets, named in recipes as `data.augment`.

Only the training split is augmented (the fastai glue lives in app/data.py); images arrive already
squished to the training size, so every op here keeps the size. Albumentations is imported inside
the builders so that validating a recipe stays instant.
"""

from collections.abc import Callable


def _none(seed: int):
    import albumentations as A

    return A.Compose([], seed=seed)


def _light(seed: int):
    """Flips, 90-degree rotations, mild colour: safe on any photo of objects seen from above."""
    import albumentations as A

    return A.Compose(
        [
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
            A.RandomRotate90(p=0.5),
            A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=0.3),
        ],
        seed=seed,
    )


def _medium(seed: int):
    """Light plus elastic deformation: the reference Unet+EffB4 set-up (flips/rot90/elastic)."""
    import albumentations as A

    return A.Compose(
        [*_light(seed).transforms, A.ElasticTransform(alpha=30, sigma=6, p=0.3)],
        seed=seed,
    )


PRESETS: dict[str, Callable] = {"none": _none, "light": _light, "medium": _medium}


def build_preset(name: str, seed: int):
    """Returns the albumentations Compose for preset `name`, seeded (albumentations 2 ignores global seeds)."""
    return PRESETS[name](seed)
