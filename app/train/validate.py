"""A recipe checked down to its names and its model, every problem at once, before any image is read.

app/recipe.py checks keys, types and ranges; this module adds every name a recipe gives against the registry
that owns the kind (archs, norms, loss terms, optimizers, schedules, precisions, weight averaging, class-weight
schemes, augmentation presets, samplers, overlap rules) and then the model itself on the meta device: the
encoder exists, the arch takes it, every stage's size fits (torchtune's validate idea: bind, collect, raise once).
"""

import typing
from pathlib import Path

from app.data.augment import PRESETS
from app.data.loaders import SAMPLERS
from app.data.masks import OVERLAP_RULES
from app.data.stats import WEIGHT_SCHEMES
from app.errors import TrashError
from app.model.build import ARCHS, check_model
from app.model.loss import LOSS_TERMS
from app.model.norms import NORMS
from app.recipe import Loss, Recipe
from app.recipe_file import load_recipe
from app.registry import Registry, did_you_mean
from app.train.learner import AVERAGING, PRECISIONS
from app.train.optim import OPTIMIZERS
from app.train.schedule import SCHEDULES

#: every registry a recipe key names a value of (`Registry.key`)
RECIPE_REGISTRIES: tuple[Registry, ...] = (
    ARCHS,
    NORMS,
    PRESETS,
    SAMPLERS,
    OVERLAP_RULES,
    WEIGHT_SCHEMES,
    OPTIMIZERS,
    SCHEDULES,
    PRECISIONS,
    AVERAGING,
)


def name_problems(recipe: Recipe) -> list[str]:
    """Every recipe value that is not a name of its registry (unset optional names are fine)."""
    errors = [r.problem(recipe.get(r.key)) for r in RECIPE_REGISTRIES if recipe.get(r.key)]
    if recipe.train.cpu_budget and recipe.train.schedule in SCHEDULES and not SCHEDULES[recipe.train.schedule].scheds:
        errors.append(
            f"'train.schedule' {recipe.train.schedule!r} steps by epochs or score: with train.cpu_budget use "
            + ", ".join(n for n, s in SCHEDULES.items() if s.scheds)
        )
    for term, _ in recipe.loss.terms:
        if term not in LOSS_TERMS:
            fields = [f"loss.{name}" for name in typing.get_type_hints(Loss) if name != "terms"]
            close = did_you_mean(term, [*LOSS_TERMS, *(f.split(".")[1] for f in fields)], "loss.")
            errors.append(f"unknown loss term 'loss.{term}'{close}; terms: {LOSS_TERMS.names()}")
    return [e for e in errors if e]


def model_problems(recipe: Recipe) -> list[str]:
    """What keeps the model from being built at every stage's size (checked on the meta device)."""
    try:
        check_model(recipe.model, [recipe.shape(size) for size, _ in recipe.stages()])
    except TrashError as e:
        return [str(e)]
    return []


def recipe_problems(recipe: Recipe) -> list[str]:
    """Names first; the model only when its names are right (an unknown arch has no size rule to check)."""
    return name_problems(recipe) or model_problems(recipe)


def load_checked(path: str | Path, overrides: typing.Sequence[str] = (), check_files: bool = True) -> Recipe:
    """`load_recipe` plus every name and the model, all problems in one TrashError (one line each)."""
    return load_recipe(path, overrides, check_files, checks=recipe_problems)
