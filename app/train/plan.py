"""The plan of one run: which phases it trains in which order, and how a dry run or a tiny dataset changes it.

A run's training is a list of phases (`training_phases`): the frozen-encoder epochs (`model.freeze_epochs`),
then one phase per progressive-resizing stage; epochs are numbered across all of them.
"""

import dataclasses
import warnings
from dataclasses import dataclass

from app.errors import TrashError
from app.recipe import Recipe

DEBUG_FRACTION = 0.1  # `--debug`: this share of the images, one epoch, before every long run


@dataclass(frozen=True)
class Phase:
    """One `fit` call of a run: the frozen-encoder epochs (stage -1) or a progressive-resizing stage."""

    stage: int
    size: int
    epochs: int
    start: int  # epochs of the run done before this phase

    @property
    def end(self) -> int:
        return self.start + self.epochs

    @property
    def frozen(self) -> bool:
        return self.stage < 0

    @property
    def loaders(self) -> int:
        """The stage whose DataLoaders this phase trains on (the frozen phase uses the first stage's)."""
        return max(self.stage, 0)


def training_phases(recipe: Recipe) -> list[Phase]:
    """The run's phases in order; the frozen-encoder phase only for pretrained encoders, as in train.fit."""
    stages = recipe.stages()
    phases, start = [], 0
    freeze = recipe.model.freeze_epochs if (recipe.model.pretrained or recipe.model.weights) else 0
    if freeze:
        phases.append(Phase(-1, stages[0][0], freeze, 0))
        start = freeze
    for stage, (size, epochs) in enumerate(stages):
        phases.append(Phase(stage, size, epochs, start))
        start += epochs
    return phases


def debug_recipe(recipe: Recipe) -> Recipe:
    """A quick dry run of a recipe: 10% of the data, one epoch at the first stage's size."""
    data = dataclasses.replace(
        recipe.data, fraction=min(recipe.data.fraction, DEBUG_FRACTION), stages=(), size=recipe.stages()[0][0]
    )
    return dataclasses.replace(recipe, data=data, train=dataclasses.replace(recipe.train, epochs=1))


def enough_for_a_batch(recipe: Recipe, n_train: int, debug: bool = False) -> tuple[Recipe, str]:
    """fastai drops the last partial training batch: with fewer images than `data.batch_size` an epoch would
    take no step at all (train_loss nan, an untrained model exported). A dry run (`--debug`) gets a smaller
    batch and a note; a real run is refused.

    Returns:
        (recipe, note): the recipe (batch size lowered for a dry run) and the note ("" when nothing changed).
    """
    if n_train >= recipe.data.batch_size:
        return recipe, ""
    problem = f"{n_train} training image(s) but data.batch_size={recipe.data.batch_size}"
    if n_train < 2:  # BatchNorm (and DeepLab's image pooling) cannot train on a batch of one image
        raise TrashError(f"{problem}: training needs at least 2 images per batch; add training images")
    if not debug:
        raise TrashError(
            f"{problem}: fastai drops the last partial batch, so no training step would be taken; "
            f"set data.batch_size to at most {n_train} or add training images"
        )
    note = f"{problem}: the dry run uses batches of {n_train}"
    warnings.warn(note, stacklevel=3)
    return dataclasses.replace(recipe, data=dataclasses.replace(recipe.data, batch_size=n_train)), note
