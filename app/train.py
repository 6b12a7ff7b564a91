"""`trash fit` and `trash lr-find`: recipe → run directory with history, best model, export and metrics."""

import time
from pathlib import Path

import numpy as np
from fastai.callback.tracker import SaveModelCallback
from fastai.torch_core import set_seed
from fastprogress.fastprogress import progress_bar

from app.callbacks import HistoryCSV
from app.data import forget_training_items, load_items, make_dls
from app.evaluate import evaluate_items
from app.learner import build_learner
from app.models import check_encoder, count_parameters
from app.recipe import Recipe, load_recipe, resolve_paths
from app.runs import EXPORT, copy_recipe, create_run_dir, package_versions, write_json


def prepare(recipe_file: str | Path, overrides=(), out: str | Path = "runs", suffix: str = ""):
    """Validates the recipe, checks and prepares the data, creates the run directory and the Learner.

    Returns:
        (recipe, items, learn): `learn.path` is the new run directory, which already holds the recipe
        copy and resolved.json.
    """
    recipe = resolve_paths(load_recipe(recipe_file, overrides))
    check_encoder(recipe.model.encoder)  # fail on a typo before rasterizing anything
    items = load_items(recipe, progress=progress_bar)
    set_seed(recipe.train.seed, reproducible=True)
    run = create_run_dir(out, recipe.name, suffix)
    learn = build_learner(recipe, items, run)
    copy_recipe(recipe_file, run)
    weights = learn.loss_func.class_weights
    write_json(
        run / "resolved.json",
        {
            **recipe.to_dict(),
            "overrides": list(overrides),
            "classes": items.codes,
            "class_weights": None if weights is None else [round(float(w), 6) for w in weights],
            "data_sources": items.sources,
            "data_fingerprints": items.fingerprints,
            "dropped": items.dropped,
            "images": {"train": len(items.train), "valid": len(items.valid)},
            "versions": package_versions(),
        },
    )
    return recipe, items, learn


def fit(recipe_file: str | Path, overrides=(), out: str | Path = "runs") -> Path:
    """Trains a recipe through its progressive-resizing stages and writes a self-contained run directory.

    Returns:
        The run directory (history.csv, models/best.pth, export.pkl, metrics.json, recipe.py, resolved.json).
    """
    started = time.time()
    recipe, items, learn = prepare(recipe_file, overrides, out)
    run = learn.path
    done = 0
    for stage, (size, epochs) in enumerate(recipe.stages()):
        if stage:  # progressive resizing: same model, new loaders at the next size
            learn.dls = make_dls(items, recipe, size, *learn.trash_norm)
        # The best epoch by validation mIoU (NaN never compares greater) is reloaded at the end of each stage.
        cbs = [
            SaveModelCallback(monitor="miou", comp=np.greater, fname="best"),
            HistoryCSV(run / "history.csv", stage, size, done),
        ]
        learn.fit_one_cycle(epochs, recipe.train.lr, cbs=cbs)
        done += epochs
    forget_training_items(learn.dls)
    learn.export(EXPORT)  # relative to learn.path, the run directory
    write_metrics(learn, recipe, items, run, time.time() - started)
    return run


def write_metrics(learn, recipe: Recipe, items, run: Path, seconds: float) -> dict:
    """metrics.json: the exported model's mIoU on the validation images at their original size."""
    report = evaluate_items([learn], items.valid, items.codes, ignore_index=recipe.loss.ignore_index)
    history = [line.split(",") for line in (run / "history.csv").read_text().splitlines()]
    header, rows = history[0], history[1:]
    last_stage = [r for r in rows if r[header.index("stage")] == rows[-1][header.index("stage")]]
    best = max(last_stage, key=lambda r: float(r[header.index("miou")]))
    report.update(
        best_epoch=int(best[header.index("epoch")]),
        best_valid_miou_at_train_size=float(best[header.index("miou")]),
        train_seconds=round(seconds, 1),
        parameters=count_parameters(learn.model),
        recipe=recipe.name,
    )
    write_json(run / "metrics.json", report)
    return report


def lr_find(recipe_file: str | Path, overrides=(), out: str | Path = "runs", iters: int = 100) -> tuple[Path, dict]:
    """Runs fastai's lr_find at the first stage's size; saves lr_find.png and lr_find.json in a run directory.

    fastai's `slide` suggestion is left out: it indexes 16 points back and fails when lr_find stops early.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from fastai.callback.schedule import minimum, steep, valley

    recipe, items, learn = prepare(recipe_file, overrides, out, suffix="-lr_find")
    run = learn.path
    found = learn.lr_find(num_it=iters, suggest_funcs=(minimum, steep, valley), show_plot=True)
    plt.gcf().savefig(run / "lr_find.png", dpi=110, bbox_inches="tight")
    plt.close("all")
    suggestions = {name: float(value) for name, value in found._asdict().items()}
    write_json(run / "lr_find.json", {"suggestions": suggestions, "recipe_lr": recipe.train.lr})
    return run, suggestions
