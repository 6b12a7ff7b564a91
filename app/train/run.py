"""`trash fit` of one run: recipe → run directory with history, best model, export, metrics and plots.

Reads top to bottom: `fit` validates the recipe and loads the data (`prepare`), trains the plan's phases with
a checkpoint after every epoch (`_train`), then exports and scores the model (`_finish`). `resume_run` continues
a stopped run from its last checkpoint. A NaN/inf loss stops with TrainingDiverged (exit 3), SIGINT/SIGTERM
with TrainingInterrupted (exit 130/143), each naming the checkpoint kept; every file is written atomically.
Fold groups (`--fold all`) are app/train/folds.py.
"""

import csv
import hashlib
import json
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from fastai.torch_core import set_seed

from app.atomic import savez, write_json
from app.data.coco import ignore_value
from app.data.items import Items, load_items
from app.data.loaders import forget_training_items
from app.data.stats import mask_pixel_counts
from app.errors import TrainingDiverged, TrainingInterrupted, TrashError
from app.export import export_run
from app.infer.evaluate import PerImage, evaluate_items
from app.model.encoders import count_parameters
from app.model.norms import norm_warning
from app.plots import plot_confusion, plot_history
from app.progress import bar
from app.recipe import Recipe, recipe_from_dict, resolve_paths
from app.report.build import report_after_fit
from app.runs import (
    FOLDS,
    HISTORY,
    METRICS,
    PER_IMAGE,
    RESOLVED,
    copy_recipe,
    create_run_dir,
    machine,
    package_versions,
    point_latest,
)
from app.train import checkpoint as ckpt
from app.train import distributed
from app.train.budget import process_cpu_seconds
from app.train.learner import build_learner, strip_training_callbacks
from app.train.phases import run_phase
from app.train.plan import debug_recipe, enough_for_a_batch, training_phases
from app.train.signals import stop_on_signals
from app.train.validate import load_checked, model_problems

RESUME_HINT = "Continue with: trash fit --resume "  # the end of an interruption's message: what to resume


def fit(recipe_file: str | Path, overrides=(), out: str | Path = "runs", debug: bool = False, **kw) -> Path:
    """Trains a recipe through its phases and writes a self-contained run directory.

    Keyword args:
        run_dir: Train into this folder instead of a new `<out>/<recipe>/<time>/` (a fold of a group).
        recipe: An already resolved recipe instead of `recipe_file` + `overrides` (a fold of a resumed group);
            `recipe_file` is then only copied into the run.

    Returns:
        The run directory (recipe.py, resolved.json, history.csv, models/, export.pkl, weights.pth,
        manifest.json, metrics.json, plots).

    Raises:
        TrainingDiverged: NaN/inf loss (exit code 3); the last checkpoint is kept.
        TrainingInterrupted: SIGINT/SIGTERM; continue with `resume_run(run)`.
    """
    started = time.time()
    recipe, items, learn = prepare(recipe_file, overrides, out, debug, **kw)
    run = _train(recipe, items, learn, started)
    if distributed.is_main() and not debug and "run_dir" not in kw:
        point_latest(run)  # `latest` is the last finished full run; a fold's group is pointed at by folds.py
    return run


def prepare(recipe_file, overrides=(), out="runs", debug=False, suffix="", run_dir=None, recipe=None):
    """Validates the recipe, checks and prepares the data, creates the run directory and the Learner.

    Returns:
        (recipe, items, learn): `learn.path` is the run directory, which already holds the recipe copy and
        resolved.json.
    """
    distributed.init()  # a no-op unless launched as one of several processes (trash fit --gpus N, torchrun)
    recipe = recipe or resolve_paths(load_checked(recipe_file, overrides))
    recipe = debug_recipe(recipe) if debug else recipe
    use_threads(recipe.train.threads)
    notes, items = _check_and_load(recipe)
    recipe, note = enough_for_a_batch(recipe, len(items.train), debug)
    notes += [note] if note else []
    set_seed(recipe.train.seed, reproducible=True)
    run = None
    if distributed.is_main():
        run = run_dir or create_run_dir(out, recipe.name, suffix + ("-debug" if debug else ""))
        run.mkdir(parents=True, exist_ok=True)
    run = distributed.broadcast_object(run)
    learn = build_learner(recipe, items, _writable(run))
    learn.trash_run = run
    if distributed.is_main():
        copy_recipe(recipe_file, run)
        write_json(run / RESOLVED, _resolved(recipe, items, learn, overrides, debug, notes))
    return recipe, items, learn


def _resolved(recipe: Recipe, items: Items, learn, overrides, debug: bool, notes: list[str]) -> dict:
    """resolved.json: every value the run used, the data it read and what it warned about."""
    weights = learn.loss_func.class_weights
    return {
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
        "distributed": distributed_report(recipe),
        "versions": package_versions(),
        "machine": machine(),
    }


def use_threads(threads: int) -> None:
    """`train.threads` for torch's and OpenCV's pools (0 keeps their defaults).

    One thread spends the least CPU time per image: on 2 cores, a Unet step with 2 threads cost 1.2-1.5x the
    CPU-seconds of 1 thread (spin-waits and synchronisation), for 1.6x the speed.
    """
    if threads:
        import cv2

        torch.set_num_threads(threads)
        cv2.setNumThreads(threads)


def _writable(run: Path) -> Path:
    """Where this process writes: the run directory on rank 0; a scratch folder on the other ranks of a
    data-parallel run, so history, checkpoints and exports are written once (rank 0) and by one code path."""
    if distributed.is_main():
        return run
    return Path(tempfile.mkdtemp(prefix=f"trash-rank{distributed.rank()}-"))


def distributed_report(recipe: Recipe) -> dict:
    """Processes, batch per process, effective batch and lr of a (possibly data-parallel) run, as recorded."""
    n = distributed.world_size()
    per_step = max(recipe.data.batch_size, recipe.train.effective_batch)  # GradientAccumulation counts samples
    backend = "" if n == 1 else ("nccl" if torch.cuda.is_available() else "gloo")
    return {
        "processes": n,
        "backend": backend,
        "batch_per_process": recipe.data.batch_size,
        "effective_batch": per_step * n,
        "lr": recipe.train.lr,
        "lr_scaled": False,
    }


def _check_and_load(recipe: Recipe) -> tuple[list[str], Items]:
    """Fails on an impossible model or size before rasterizing anything, then loads the data items."""
    problems = model_problems(recipe)  # a resumed run's recipe comes from resolved.json, not load_checked
    if problems:
        raise TrashError(problems[0])
    notes = [n for n in [norm_warning(recipe.data.batch_size, recipe.train.effective_batch, recipe.model.norm)] if n]
    for note in notes:
        warnings.warn(note, stacklevel=3)
    return notes, load_items(recipe, progress=bar)


def resume_run(run_dir: str | Path) -> Path:
    """Continues a stopped run from its last checkpoint (a fold group: app.train.folds.resume).

    The run's own resolved.json gives the recipe (the recipe file may have changed since); the data must be
    the one the run started with (same fingerprints). A run that stopped before its first checkpoint starts
    again from epoch 0 in the same directory.

    Raises:
        TrashError: Not a run directory, a finished run, changed data, or no intact checkpoint.
    """
    distributed.init()
    run = Path(run_dir).resolve()
    if not (run / RESOLVED).is_file():
        raise TrashError(f"{run_dir} is not a run directory of `trash fit` (no {RESOLVED})")
    if (run / METRICS).is_file():
        raise TrashError(f"{run_dir} has already finished ({METRICS} is written); there is nothing to resume")
    state = ckpt.load_checkpoint(run) if ckpt.has_checkpoint(run) else None
    resolved = json.loads((run / RESOLVED).read_text())
    recipe = recipe_from_dict(resolved)
    use_threads(recipe.train.threads)
    _, items = _check_and_load(recipe)
    _refuse_changed_data(run_dir, resolved, items)
    set_seed(recipe.train.seed, reproducible=True)
    learn = build_learner(recipe, items, _writable(run))
    learn.trash_run = run
    run = _train(recipe, items, learn, time.time() - (state["seconds"] if state else 0.0), state)
    if distributed.is_main() and not resolved.get("debug") and not (run.parent / FOLDS).is_file():
        point_latest(run)  # a fold's group is pointed at by folds.py when the group finishes
    return run


def _refuse_changed_data(run_dir, resolved: dict, items: Items) -> None:
    changed = sorted(k for k, v in resolved["data_fingerprints"].items() if items.fingerprints.get(k) != v)
    if changed:
        raise TrashError(
            f"the data of {run_dir} changed since it started ({', '.join(changed)} differ from {RESOLVED}); "
            "a run resumes only on the data it started with"
        )


def _train(recipe: Recipe, items: Items, learn, started: float, state: dict | None = None) -> Path:
    """Runs the phases not yet done (all, or those after `state`'s checkpoint), then exports and scores."""
    run = learn.path  # rank 0: the run directory; other ranks of a data-parallel run: their scratch folder
    if distributed.active() and distributed.is_main():
        print(_distributed_line(recipe), flush=True)
    ckpt.trim_logs(run, state["epochs_done"] if state else 0)  # epochs after the checkpoint are trained again
    if state:
        ckpt.restore_weights(learn, state)
    try:
        _train_phases(recipe, items, learn, started, state)
    except TrainingDiverged as e:
        raise TrainingDiverged(
            f"{e.message}. Training stopped; {_kept(run)}. Lower the learning rate (e.g. "
            f"--set train.lr={recipe.train.lr / 10:.2g}) and train again"
        ) from None
    except TrainingInterrupted as e:
        raise TrainingInterrupted(
            f"interrupted by {e.message}; {_kept(run)}. {RESUME_HINT}{learn.trash_run}", e.signum
        ) from None
    return _finish(recipe, items, learn, started)


def _train_phases(recipe: Recipe, items: Items, learn, started: float, state: dict | None) -> None:
    done = state["epochs_done"] if state else 0
    with stop_on_signals() as flag, distributed.distributed(learn):
        for phase in training_phases(recipe):
            if done >= phase.end:
                continue
            run_phase(learn, recipe, items, phase, done - phase.start, state, flag=flag, started=started)
            learn.trash_images_seen = getattr(learn, "trash_images_seen", 0) + learn.train_iter * recipe.data.batch_size
            state, done = None, phase.end
            ckpt.save_checkpoint(learn, done, phase, time.time() - started)
            if flag.signum:
                raise TrainingInterrupted(f"{flag.name} at the end of epoch {done - 1}", flag.signum)


def _finish(recipe: Recipe, items: Items, learn, started: float) -> Path:
    """Rank 0 exports and scores; the other ranks of a data-parallel run wait for it, then leave."""
    run = learn.path
    if not distributed.is_main():
        distributed.barrier()
        shutil.rmtree(run, ignore_errors=True)
        return learn.trash_run
    strip_training_callbacks(learn)
    forget_training_items(learn.dls)
    export_run(learn, recipe, run)
    write_metrics(learn, recipe, items, run, time.time() - started)
    ckpt.remove_checkpoints(run)
    report_after_fit(run)  # report.html; a failure only warns
    distributed.barrier()
    return run


def _distributed_line(recipe: Recipe) -> str:
    r = distributed_report(recipe)
    return (
        f"distributed: {r['processes']} processes ({r['backend']}), batch {r['batch_per_process']} per process, "
        f"effective batch {r['effective_batch']}, lr {r['lr']:g} (not scaled)"
    )


def _kept(run: Path) -> str:
    entries = ckpt.read_index(Path(run) / "models")
    if not entries:
        return "no epoch had finished, so there is no checkpoint"
    done = entries[0]["epochs_done"]
    return f"the last good checkpoint ({done} epoch{'s' * (done != 1)} done) is kept in {run / 'models'}"


def write_metrics(learn, recipe: Recipe, items: Items, run: Path, seconds: float) -> dict:
    """metrics.json, out-of-fold probabilities and plots: the exported model on the validation images."""
    shape = recipe.shape(recipe.stages()[-1][0])
    oof = {}
    ignore = ignore_value(len(items.codes), recipe.loss.ignore_index)
    per_image = PerImage(items.valid, len(items.codes), shape)

    def keep(pred, cm):  # compact out-of-fold probabilities at the training size, for ensembling later
        oof[pred.image_id] = F.interpolate(pred.probs[None], size=shape, mode="area")[0].half().numpy()
        per_image.add(pred, cm)

    report = evaluate_items(
        [learn],
        items.valid,
        items.codes,
        ignore_index=ignore,
        on_prediction=keep,
    )
    savez(run / "oof.npz", image=np.array(list(oof)), probs=np.stack(list(oof.values())))
    savez(run / PER_IMAGE, **per_image.arrays())
    report.update(_run_facts(learn, recipe, items, run, seconds))
    train_pixels = mask_pixel_counts([s.mask for s in items.train], len(items.codes)).tolist()
    report["class_pixels"] = {"train": train_pixels, "valid": per_image.truth_pixels()}
    plot_history(run / HISTORY, run / "curves.png")
    plot_confusion(report["confusion_matrix"], items.codes, run / "confusion.png")
    write_json(run / METRICS, report)  # last: a run with metrics.json is finished
    return report


def _run_facts(learn, recipe: Recipe, items: Items, run: Path, seconds: float) -> dict:
    with (run / HISTORY).open(newline="") as f:
        rows = list(csv.DictReader(f))
    last_stage = [r for r in rows if r["stage"] == rows[-1]["stage"]]
    best = max(last_stage, key=lambda r: _score(r["miou"]))
    return dict(
        best_epoch=int(best["epoch"]),
        best_valid_miou_at_train_size=_score(best["miou"]),
        epochs=len(rows),
        train_seconds=round(seconds, 1),
        cpu_seconds=round(process_cpu_seconds(), 1),  # of this process so far (a resumed run: since it resumed)
        images_seen=getattr(learn, "trash_images_seen", None),  # training images this process trained on
        parameters=count_parameters(learn.model),
        recipe=recipe.name,
        fold=recipe.data.fold,
        data_fingerprint=_fingerprint(items),
    )


def _score(value: str) -> float:
    try:
        value = float(value)
    except ValueError:
        return float("-inf")
    return value if np.isfinite(value) else float("-inf")


def _fingerprint(items: Items) -> str:
    return hashlib.sha256(repr(sorted(items.fingerprints.items())).encode()).hexdigest()[:16]
