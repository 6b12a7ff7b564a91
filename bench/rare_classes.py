"""Rare classes: share of rare-class pixels the model sees per epoch, through the real training DataLoader,
with copy-paste, mosaic and the balanced sampler against plain uniform sampling."""

import dataclasses
import tempfile
from pathlib import Path

import numpy as np

from bench.common import row

SETTINGS = {
    "copy_paste=0.5": {"copy_paste": 0.5},
    "mosaic=0.5": {"mosaic": 0.5},
    "sampler=balanced": {"sampler": "balanced"},
}


def rare_share(items, recipe, epochs: int = 3) -> float:
    """Mean share of rare-class pixels in the training batches over `epochs` epochs."""
    from fastai.torch_core import set_seed

    from app.data.loaders import make_dls, rare_class_indices
    from app.data.rare import class_presence

    rare = rare_class_indices(items, (), class_presence([s.mask for s in items.train], len(items.codes)))
    set_seed(0)
    dls = make_dls(items, recipe, recipe.data.size, (0.5,) * 3, (0.5,) * 3)
    rare_px = total = 0
    for _ in range(epochs):
        for _, y in dls.train:
            rare_px += int(np.isin(y.numpy(), rare).sum())
            total += y.numel()
    return rare_px / total


def run() -> list[dict]:
    from app.data.items import load_items
    from app.data.synthetic import make_demo_dataset
    from app.recipe import Data, Recipe

    with tempfile.TemporaryDirectory() as folder:
        paths = make_demo_dataset(Path(folder), seed=0)
        data = Data(
            annotations=str(paths["train"]),
            valid_annotations=str(paths["val"]),
            images=folder,
            size=96,
            augment="none",
            mask_cache=str(Path(folder) / "cache"),
        )
        recipe = Recipe(data=data)
        items = load_items(recipe)
        base = rare_share(items, recipe)
        rows = []
        for name, change in SETTINGS.items():
            share = rare_share(items, dataclasses.replace(recipe, data=dataclasses.replace(data, **change)))
            rows.append(
                row(
                    f"rare-class pixels per epoch: {name} / uniform",
                    share / base,
                    "> 1",
                    share > base,
                    rare_share=round(share, 5),
                    uniform_share=round(base, 5),
                    dataset="demo (Battery, Clothing)",
                )
            )
    return rows
