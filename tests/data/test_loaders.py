"""The recipe's data levers reach the DataLoader: crops, copy-paste / mosaic, balanced sampler, rare classes."""

import dataclasses

import numpy as np
import pytest

from app.data.items import load_items
from app.data.loaders import RareClassMix, forget_training_items, make_dls
from app.errors import TrashError
from app.recipe import Data, Recipe

STATS = ((0.5,) * 3, (0.5,) * 3)


@pytest.fixture(scope="module")
def setup(demo, tmp_path_factory):
    data = Data(
        annotations=str(demo["train"]),
        valid_annotations=str(demo["val"]),
        images=str(demo["images"]),
        size=64,
        batch_size=4,
        augment="none",
        mask_cache=str(tmp_path_factory.mktemp("cache")),
    )
    recipe = Recipe(data=data)
    return recipe, load_items(recipe)


def with_data(recipe, **change):
    return dataclasses.replace(recipe, data=dataclasses.replace(recipe.data, **change))


def test_crop_gives_crop_sized_training_batches_and_full_size_validation(setup):
    recipe, items = setup
    dls = make_dls(items, with_data(recipe, crop=32), 64, *STATS)
    assert dls.train.one_batch()[0].shape[-2:] == (32, 32)
    assert dls.valid.one_batch()[0].shape[-2:] == (64, 64)


def test_balanced_sampler_uses_weights_that_favour_rare_images(setup):
    recipe, items = setup
    dls = make_dls(items, with_data(recipe, sampler="balanced"), 64, *STATS)
    weights = dls.train.wgts
    assert len(weights) == len(items.train) and weights.max() > weights.min()
    assert type(make_dls(items, recipe, 64, *STATS).train).__name__ == "TfmdDL"


def test_copy_paste_and_mosaic_are_on_the_training_split_and_forgotten_before_export(setup):
    recipe, items = setup
    dls = make_dls(items, with_data(recipe, copy_paste=1.0, mosaic=0.5), 64, *STATS)
    mix = [t for t in dls.train.after_item.fs if isinstance(t, RareClassMix)]
    assert len(mix) == 1 and mix[0].donors and mix[0].split_idx == 0
    x, y = dls.train.one_batch()
    assert x.shape[-2:] == y.shape[-2:] == (64, 64)
    forget_training_items(dls)
    assert mix[0].donors == []


def test_unknown_rare_class_is_named(setup):
    recipe, items = setup
    with pytest.raises(TrashError, match="Unicorn"):
        make_dls(items, with_data(recipe, copy_paste=0.5, rare_classes=("Unicorn",)), 64, *STATS)


def test_copy_paste_raises_rare_pixels_in_batches(setup):
    recipe, items = setup
    rare = [items.codes.index("Battery"), items.codes.index("Clothing")]

    def share(r):
        from fastai.torch_core import set_seed

        set_seed(0)
        dls = make_dls(items, r, 64, *STATS)
        ys = [y.numpy() for _ in range(3) for _, y in dls.train]
        return np.mean([np.isin(y, rare).mean() for y in ys])

    assert share(with_data(recipe, copy_paste=1.0, rare_classes=("Battery", "Clothing"))) > 1.2 * share(recipe)


def test_dataloader_workers_draw_different_augmentations(setup):
    """Every worker holds a copy of the seeded Compose; they must not repeat each other's draws."""
    recipe, items = setup
    same = dataclasses.replace(items, train=[items.train[0]] * 8)  # only augmentation can tell batches apart
    dls = make_dls(same, with_data(recipe, augment="light", workers=2, batch_size=2), 64, *STATS)
    batches = [y.numpy() for _, y in dls.train]
    assert not all(np.array_equal(batches[0], b) for b in batches[1:])
    assert not np.array_equal(batches[0], batches[1])  # batch 1 comes from the second worker
