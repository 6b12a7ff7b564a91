"""`trash fit` and `trash lr-find`: recipe → run directory with history, best model, export, metrics and plots."""

import csv
import dataclasses
import hashlib
import json
import time
import warnings
from pathlib import Path

import numpy as np
from fastai.callback.tracker import SaveModelCallback
from fastai.torch_core import set_seed
from fastprogress.fastprogress import progress_bar

from app.callbacks import HistoryCSV
from app.data import forget_training_items, load_items, make_dls
from app.evaluate import evaluate_items
from app.learner import build_learner, strip_training_callbacks
from app.models import check_model, count_parameters, norm_warning
from app.recipe import Recipe, load_recipe, resolve_paths
from app.runs import EXPORT, copy_recipe, create_run_dir, package_versions, write_json

DEBUG_FRACTION = 0.1  # `--debug`: this share of the images, one epoch, before every long run


def debug_recipe(recipe: Recipe) -> Recipe:
    """A quick dry run of a recipe: 10% of the data, one epoch at the first stage's size."""
    data = dataclasses.replace(
        recipe.data, fraction=min(recipe.data.fraction, DEBUG_FRACTION), stages=(), size=recipe.stages()[0][0]
    )
    return dataclasses.replace(recipe, data=data, train=dataclasses.replace(recipe.train, epochs=1))


def prepare(recipe_file, overrides=(), out="runs", suffix="", debug=False, run_dir: Path | None = None):
    """Validates the recipe, checks and prepares the data, creates the run directory and the Learner.

    Returns:
        (recipe, items, learn): `learn.path` is the run directory, which already holds the recipe copy and
        resolved.json.
    """
    recipe = resolve_paths(load_recipe(recipe_file, overrides))
    recipe = debug_recipe(recipe) if debug else recipe
    # Fail on a typo or an impossible size before rasterizing anything.
    check_model(recipe.model, [size for size, _ in recipe.stages()])
    notes = [n for n in [norm_warning(recipe.data.batch_size, recipe.train.effective_batch, recipe.model.norm)] if n]
    for note in notes:
        warnings.warn(note, stacklevel=2)
    items = load_items(recipe, progress=progress_bar)
    set_seed(recipe.train.seed, reproducible=True)
    run = run_dir or create_run_dir(out, recipe.name, suffix + ("-debug" if debug else ""))
    run.mkdir(parents=True, exist_ok=True)
    learn = build_learner(recipe, items, run)
    copy_recipe(recipe_file, run)
    weights = learn.loss_func.class_weights
    write_json(
        run / "resolved.json",
        {
            **recipe.to_dict(),
            "overrides": list(overrides),
            "debug": debug,
            "classes": items.codes,
            "class_weights": None if weights is None else [round(float(w), 6) for w in weights],
            "data_sources": items.sources,
            "data_fingerprints": items.fingerprints,
            "dropped": items.dropped,
            "warnings": notes,
            "images": {"train": len(items.train), "valid": len(items.valid)},
            "versions": package_versions(),
        },
    )
    return recipe, items, learn


def fit(
    recipe_file: str | Path, overrides=(), out: str | Path = "runs", debug: bool = False, run_dir: Path | None = None
) -> Path:
    """Trains a recipe through its progressive-resizing stages and writes a self-contained run directory.

    Returns:
        The run directory (recipe.py, resolved.json, history.csv, models/, export.pkl, metrics.json, plots).
    """
    from app import schedule

    started = time.time()
    recipe, items, learn = prepare(recipe_file, overrides, out, debug=debug, run_dir=run_dir)
    run, t = learn.path, recipe.train
    averaged = t.averaging != "none"
    lr = t.lr
    done = freeze_phase(learn, recipe, run)
    if done:  # after the frozen epochs the encoder trains at lr / encoder_lr_div (discriminative lrs)
        lr = slice(t.lr / recipe.model.encoder_lr_div, t.lr)
    for stage, (size, epochs) in enumerate(recipe.stages()):
        if stage:  # progressive resizing: same model, new loaders at the next size
            learn.dls = make_dls(items, recipe, size, *learn.trash_norm)
        # The best epoch by validation mIoU (NaN never compares greater) is reloaded at the end of each stage,
        # unless weights are averaged: then the averaged weights are the result.
        for cb in learn.cbs:  # epoch numbers in checkpoints and logs run on across stages
            if hasattr(cb, "epoch_offset"):
                cb.epoch_offset = done
        best = SaveModelCallback(monitor="miou", comp=np.greater, fname="best", at_end=averaged)
        cbs = [best, HistoryCSV(run / "history.csv", stage, size, done)]
        schedule.fit(
            learn,
            t.schedule,
            epochs,
            lr,
            cbs=cbs,
            warmup_pct=t.warmup_pct,
            step_epochs=t.step_epochs,
            step_gamma=t.step_gamma,
            plateau_patience=t.plateau_patience,
        )
        done += epochs
    strip_training_callbacks(learn)
    forget_training_items(learn.dls)
    learn.export(EXPORT)  # relative to learn.path, the run directory
    write_metrics(learn, recipe, items, run, time.time() - started)
    return run


def freeze_phase(learn, recipe: Recipe, run: Path) -> int:
    """fastai's fine_tune idea for pretrained encoders: `model.freeze_epochs` with only the decoder training.

    Returns:
        The number of epochs trained (0 when there is no freeze phase).
    """
    epochs = recipe.model.freeze_epochs
    if not epochs or not (recipe.model.pretrained or recipe.model.weights):
        return 0
    learn.freeze()
    best = SaveModelCallback(monitor="miou", comp=np.greater, fname="best")
    learn.fit_one_cycle(
        epochs, recipe.train.lr, cbs=[best, HistoryCSV(run / "history.csv", -1, recipe.stages()[0][0], 0)]
    )
    learn.unfreeze()
    return epochs


def write_metrics(learn, recipe: Recipe, items, run: Path, seconds: float) -> dict:
    """metrics.json, out-of-fold probabilities and plots: the exported model on the validation images."""
    import torch.nn.functional as F

    from app.plots import plot_confusion, plot_history

    size = recipe.stages()[-1][0]
    oof = {}

    def keep(pred):  # compact out-of-fold probabilities at the training size, for ensembling later
        oof[pred.image_id] = F.interpolate(pred.probs[None], size=(size, size), mode="area")[0].half().numpy()

    report = evaluate_items(
        [learn], items.valid, items.codes, ignore_index=recipe.loss.ignore_index, on_prediction=keep
    )
    np.savez_compressed(run / "oof.npz", image=np.array(list(oof)), probs=np.stack(list(oof.values())))
    with (run / "history.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    last_stage = [r for r in rows if r["stage"] == rows[-1]["stage"]]
    best = max(last_stage, key=lambda r: _score(r["miou"]))
    report.update(
        best_epoch=int(best["epoch"]),
        best_valid_miou_at_train_size=_score(best["miou"]),
        epochs=len(rows),
        train_seconds=round(seconds, 1),
        parameters=count_parameters(learn.model),
        recipe=recipe.name,
        fold=recipe.data.fold,
        data_fingerprint=_fingerprint(items),
    )
    write_json(run / "metrics.json", report)
    plot_history(run / "history.csv", run / "curves.png")
    plot_confusion(report["confusion_matrix"], items.codes, run / "confusion.png")
    return report


def _score(value: str) -> float:
    try:
        value = float(value)
    except ValueError:
        return float("-inf")
    return value if np.isfinite(value) else float("-inf")


def _fingerprint(items) -> str:
    return hashlib.sha256(repr(sorted(items.fingerprints.items())).encode()).hexdigest()[:16]


def fit_folds(recipe_file: str | Path, overrides=(), out: str | Path = "runs", debug: bool = False) -> Path:
    """Trains every fold of the recipe's data.split into one run group `<out>/<recipe>/<time>-folds/fold<k>/`.

    The group's summary.json has each fold's mIoU and the out-of-fold mIoU from the summed confusion matrices.
    """
    from app.errors import TrashError
    from app.metrics import iou_report

    recipe = load_recipe(recipe_file, [*overrides, "data.fold=0"])
    folds = sorted(Path(recipe.data.split).glob("fold*/train.json")) if recipe.data.split else []
    if not folds:
        raise TrashError(f"recipe {recipe_file}: --fold all needs data.split, a folder made by `trash data split`")
    group = create_run_dir(out, recipe.name, "-folds" + ("-debug" if debug else ""))
    runs = []
    for k in range(len(folds)):
        runs.append(fit(recipe_file, [*overrides, f"data.fold={k}"], debug=debug, run_dir=group / f"fold{k}"))
    metrics = [json.loads((r / "metrics.json").read_text()) for r in runs]
    cm = np.sum([np.array(m["confusion_matrix"]) for m in metrics], axis=0)
    summary = {
        "recipe": recipe.name,
        "folds": {r.name: m["miou"] for r, m in zip(runs, metrics)},
        "mean_fold_miou": float(np.mean([m["miou"] for m in metrics])),
        "oof": iou_report(cm, json.loads((runs[0] / "resolved.json").read_text())["classes"]),
    }
    write_json(group / "summary.json", summary)
    return group


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
    strip_training_callbacks(learn)
    found = learn.lr_find(num_it=iters, suggest_funcs=(minimum, steep, valley), show_plot=True)
    plt.gcf().savefig(run / "lr_find.png", dpi=110, bbox_inches="tight")
    plt.close("all")
    suggestions = {name: float(value) for name, value in found._asdict().items()}
    write_json(run / "lr_find.json", {"suggestions": suggestions, "recipe_lr": recipe.train.lr})
    return run, suggestions
