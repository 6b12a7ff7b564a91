"""`trash fit` and `trash lr-find`: recipe → run directory with history, best model, export, metrics and plots.

`fit` trains the recipe's phases (app/checkpoint.py: frozen-encoder epochs, then each progressive-resizing
stage) with a checkpoint after every epoch; `resume` continues a run (or a `--fold all` group) from its last
checkpoint. A NaN/inf loss stops with TrainingDiverged (exit 3), SIGINT/SIGTERM with TrainingInterrupted
(exit 130/143), each naming the checkpoint kept; every file is written atomically.
"""

import csv
import dataclasses
import hashlib
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from fastai.torch_core import set_seed
from fastprogress.fastprogress import progress_bar

from app import checkpoint as ckpt
from app import distributed
from app.atomic import atomic_open, atomic_path
from app.callbacks import BestModel, HistoryCSV, StopOnNonFinite, TrainingDiverged
from app.data import forget_training_items, load_items, make_dls
from app.errors import TrashError
from app.evaluate import evaluate_items
from app.export import export_run
from app.learner import build_learner, strip_training_callbacks
from app.models import check_model, count_parameters, norm_warning
from app.recipe import Recipe, load_recipe, recipe_from_dict, resolve_paths
from app.runs import copy_recipe, create_run_dir, package_versions, write_json

DEBUG_FRACTION = 0.1  # `--debug`: this share of the images, one epoch, before every long run
FOLDS = "folds.json"  # in a `--fold all` group: how to train (and resume) each fold


def debug_recipe(recipe: Recipe) -> Recipe:
    """A quick dry run of a recipe: 10% of the data, one epoch at the first stage's size."""
    data = dataclasses.replace(
        recipe.data, fraction=min(recipe.data.fraction, DEBUG_FRACTION), stages=(), size=recipe.stages()[0][0]
    )
    return dataclasses.replace(recipe, data=data, train=dataclasses.replace(recipe.train, epochs=1))


def prepare(
    recipe_file,
    overrides=(),
    out="runs",
    suffix="",
    debug=False,
    run_dir: Path | None = None,
    recipe: Recipe | None = None,
):
    """Validates the recipe, checks and prepares the data, creates the run directory and the Learner.

    Args:
        recipe: An already resolved recipe to use instead of loading `recipe_file` with `overrides` (a fold
            of a resumed group); `recipe_file` is then only copied into the run.

    Returns:
        (recipe, items, learn): `learn.path` is the run directory, which already holds the recipe copy and
        resolved.json.
    """
    distributed.init()  # a no-op unless launched as one of several processes (trash fit --gpus N, torchrun)
    recipe = recipe or resolve_paths(load_recipe(recipe_file, overrides))
    recipe = debug_recipe(recipe) if debug else recipe
    notes, items = _check_and_load(recipe)
    recipe, note = enough_for_a_batch(recipe, len(items.train), debug)
    notes += [note] if note else []
    set_seed(recipe.train.seed, reproducible=True)
    if distributed.is_main():
        run = run_dir or create_run_dir(out, recipe.name, suffix + ("-debug" if debug else ""))
        run.mkdir(parents=True, exist_ok=True)
    run = distributed.broadcast_object(run if distributed.is_main() else None)
    learn = build_learner(recipe, items, _writable(run))
    learn.trash_run = run
    if not distributed.is_main():
        return recipe, items, learn
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
            "distributed": distributed_report(recipe),
            "versions": package_versions(),
        },
    )
    return recipe, items, learn


def _writable(run: Path) -> Path:
    """Where this process writes: the run directory on rank 0; a scratch folder on the other ranks of a
    data-parallel run, so history, checkpoints and exports are written once (rank 0) and by one code path."""
    if distributed.is_main():
        return run
    import tempfile

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


def _check_and_load(recipe: Recipe) -> tuple[list[str], object]:
    """Fails on a typo or an impossible size before rasterizing anything, then loads the data items."""
    check_model(recipe.model, [size for size, _ in recipe.stages()])
    notes = [n for n in [norm_warning(recipe.data.batch_size, recipe.train.effective_batch, recipe.model.norm)] if n]
    for note in notes:
        warnings.warn(note, stacklevel=3)
    return notes, load_items(recipe, progress=progress_bar)


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
    if not debug:
        raise TrashError(
            f"{problem}: fastai drops the last partial batch, so no training step would be taken; "
            f"set data.batch_size to at most {n_train} or add training images"
        )
    note = f"{problem}: the dry run uses batches of {n_train}"
    warnings.warn(note, stacklevel=3)
    return dataclasses.replace(recipe, data=dataclasses.replace(recipe.data, batch_size=n_train)), note


def fit(
    recipe_file: str | Path,
    overrides=(),
    out: str | Path = "runs",
    debug: bool = False,
    run_dir: Path | None = None,
    recipe: Recipe | None = None,
) -> Path:
    """Trains a recipe through its phases and writes a self-contained run directory.

    Args:
        recipe: An already resolved recipe instead of `recipe_file` + `overrides` (see `prepare`).

    Returns:
        The run directory (recipe.py, resolved.json, history.csv, models/, export.pkl, weights.pth,
        manifest.json, metrics.json, plots).

    Raises:
        TrainingDiverged: NaN/inf loss (exit code 3); the last checkpoint is kept.
        TrainingInterrupted: SIGINT/SIGTERM; continue with `resume(run)`.
    """
    started = time.time()
    recipe, items, learn = prepare(recipe_file, overrides, out, debug=debug, run_dir=run_dir, recipe=recipe)
    return _train(recipe, items, learn, started)


def resume(run_dir: str | Path) -> Path:
    """Continues a stopped run (or every unfinished fold of a `--fold all` group) from its last checkpoint.

    The run's own resolved.json gives the recipe (the recipe file may have changed since); the data must be
    the one the run started with (same fingerprints). A run that stopped before its first checkpoint starts
    again from epoch 0 in the same directory.

    Raises:
        TrashError: Not a run directory, a finished run, changed data, or no intact checkpoint.
    """
    distributed.init()
    run = Path(run_dir).resolve()
    if (run / FOLDS).is_file():
        if (run / "summary.json").is_file():
            raise TrashError(f"{run_dir} has already finished (summary.json is written); there is nothing to resume")
        return _fit_group(run)
    if not (run / "resolved.json").is_file():
        raise TrashError(f"{run_dir} is not a run directory of `trash fit` (no resolved.json)")
    if (run / "metrics.json").is_file():
        raise TrashError(f"{run_dir} has already finished (metrics.json is written); there is nothing to resume")
    state = ckpt.load_checkpoint(run) if ckpt.has_checkpoint(run) else None
    resolved = json.loads((run / "resolved.json").read_text())
    recipe = recipe_from_dict(resolved)
    _, items = _check_and_load(recipe)
    changed = sorted(k for k, v in resolved["data_fingerprints"].items() if items.fingerprints.get(k) != v)
    if changed:
        raise TrashError(
            f"the data of {run_dir} changed since it started ({', '.join(changed)} differ from resolved.json); "
            "a run resumes only on the data it started with"
        )
    set_seed(recipe.train.seed, reproducible=True)
    learn = build_learner(recipe, items, _writable(run))
    learn.trash_run = run
    return _train(recipe, items, learn, time.time() - (state["seconds"] if state else 0.0), state)


def _train(recipe: Recipe, items, learn, started: float, state: dict | None = None) -> Path:
    """Runs the phases not yet done (all, or those after `state`'s checkpoint), then exports and scores."""
    run = learn.path  # rank 0: the run directory; other ranks of a data-parallel run: their scratch folder
    done = state["epochs_done"] if state else 0
    if distributed.active() and distributed.is_main():
        print(_distributed_line(recipe), flush=True)
    ckpt.trim_logs(run, done)  # rows of epochs after the checkpoint are trained (and logged) again
    if state:
        ckpt.restore_weights(learn, state)
    try:
        with ckpt.stop_on_signals() as flag, distributed.distributed(learn):
            for phase in ckpt.training_phases(recipe):
                if done >= phase.end:
                    continue
                run_phase(learn, recipe, items, phase, done - phase.start, state, flag, started)
                state, done = None, phase.end
                ckpt.save_checkpoint(learn, done, phase, time.time() - started)
                if flag.signum:
                    raise ckpt.TrainingInterrupted(f"{flag.name} at the end of epoch {done - 1}", flag.signum)
    except TrainingDiverged as e:
        raise TrainingDiverged(
            f"{e.message}. Training stopped; {_kept(run)}. Lower the learning rate (e.g. "
            f"--set train.lr={recipe.train.lr / 10:.2g}) and train again"
        ) from None
    except ckpt.TrainingInterrupted as e:
        raise ckpt.TrainingInterrupted(
            f"interrupted by {e.message}; {_kept(run)}. Continue with: trash fit --resume {run}", e.signum
        ) from None
    if not distributed.is_main():  # rank 0 exports and scores; the others wait for it, then leave
        import shutil

        distributed.barrier()
        shutil.rmtree(run, ignore_errors=True)
        return learn.trash_run
    strip_training_callbacks(learn)
    forget_training_items(learn.dls)
    export_run(learn, recipe, run)
    write_metrics(learn, recipe, items, run, time.time() - started)
    ckpt.remove_checkpoints(run)
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


def run_phase(
    learn,
    recipe: Recipe,
    items,
    phase: ckpt.Phase,
    start_epoch: int = 0,
    state: dict | None = None,
    flag: ckpt.SignalFlag | None = None,
    started: float | None = None,
) -> None:
    """Trains one phase of the run from `start_epoch` (with `state`, the checkpoint it resumes from).

    After the frozen-encoder phase the encoder is unfrozen: later phases train it at lr / encoder_lr_div.
    """
    _enter_phase(learn, recipe, items, phase, state)
    flag, started = flag or ckpt.SignalFlag(), started or time.time()
    _fit_phase(learn, recipe, phase, start_epoch, flag, started, state)
    if phase.frozen:
        learn.unfreeze()


def _enter_phase(learn, recipe: Recipe, items, phase: ckpt.Phase, state: dict | None) -> None:
    """Loaders at the phase's size, the encoder frozen for the frozen phase, and a checkpoint's position."""
    if phase.stage > 0:  # progressive resizing: same model, new loaders at the next size
        learn.dls = make_dls(items, recipe, phase.size, *learn.trash_norm)
    if phase.frozen:  # fastai's fine_tune idea for pretrained encoders: first only the decoder trains
        learn.freeze()
    if state:
        ckpt.restore_position(learn, state, phase)


def _fit_phase(
    learn, recipe: Recipe, phase: ckpt.Phase, start_epoch: int, flag, started: float, state: dict | None
) -> None:
    """One fit: the recipe's schedule (one-cycle for the frozen phase) from `start_epoch` of the phase
    (`state`: the checkpoint it resumes from).

    The best epoch by validation mIoU (NaN never counts) is reloaded at the end of the phase, unless weights
    are averaged: then the averaged weights are the result.
    """
    from app import schedule

    run, t = learn.path, recipe.train
    for cb in learn.cbs:  # epoch numbers in checkpoints and logs run on across stages
        if hasattr(cb, "epoch_offset"):
            cb.epoch_offset = phase.start
    averaged = t.averaging != "none" and not phase.frozen
    best = BestModel(monitor="miou", comp=np.greater, at_end=averaged, stage=phase.stage, epoch_offset=phase.start)
    best.resume_best = _resume_best(run, phase) if start_epoch else None
    cbs = [
        best,
        HistoryCSV(run / "history.csv", phase.stage, phase.size, phase.start),
        StopOnNonFinite(phase.start),
        ckpt.StopOnSignal(flag, phase.start),
        ckpt.Checkpoint(phase, started, resumed=state if start_epoch else None),
    ]
    if phase.frozen:
        schedule.fit(learn, "one_cycle", phase.epochs, t.lr, cbs=cbs, start_epoch=start_epoch)
        return
    frozen_before = any(p.frozen for p in ckpt.training_phases(recipe))
    lr = slice(t.lr / recipe.model.encoder_lr_div, t.lr) if frozen_before else t.lr  # discriminative lrs
    schedule.fit(
        learn,
        t.schedule,
        phase.epochs,
        lr,
        cbs=cbs,
        start_epoch=start_epoch,
        warmup_pct=t.warmup_pct,
        step_epochs=t.step_epochs,
        step_gamma=t.step_gamma,
        plateau_patience=t.plateau_patience,
    )


def _resume_best(run: Path, phase: ckpt.Phase) -> float | None:
    """The score models/best.pth holds when it is from this phase (a resumed phase must not replace it
    with a worse epoch)."""
    info = Path(run) / "models" / "best.json"
    if not info.is_file():
        return None
    saved = json.loads(info.read_text())
    return saved["score"] if saved["stage"] == phase.stage and saved["score"] is not None else None


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
    with atomic_open(run / "oof.npz", "wb") as f:
        np.savez_compressed(f, image=np.array(list(oof)), probs=np.stack(list(oof.values())))
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
    with atomic_path(run / "curves.png") as tmp:
        plot_history(run / "history.csv", tmp)
    with atomic_path(run / "confusion.png") as tmp:
        plot_confusion(report["confusion_matrix"], items.codes, tmp)
    write_json(run / "metrics.json", report)  # last: a run with metrics.json is finished
    return report


def _score(value: str) -> float:
    try:
        value = float(value)
    except ValueError:
        return float("-inf")
    return value if np.isfinite(value) else float("-inf")


def _fingerprint(items) -> str:
    return hashlib.sha256(repr(sorted(items.fingerprints.items())).encode()).hexdigest()[:16]


def fit_folds(
    recipe_file: str | Path, overrides=(), out: str | Path = "runs", debug: bool = False, parallel: int = 1
) -> Path:
    """Trains every fold of the recipe's data.split into one run group `<out>/<recipe>/<time>-folds/fold<k>/`.

    With `parallel` > 1, that many folds train at once, each in its own process (one GPU each, or a share of
    the CPU cores).

    The group's summary.json has each fold's mIoU and the out-of-fold mIoU from the summed confusion matrices.
    """
    recipe = resolve_paths(load_recipe(recipe_file, [*overrides, "data.fold=0"]))
    folds = sorted(Path(recipe.data.split).glob("fold*/train.json")) if recipe.data.split else []
    if not folds:
        raise TrashError(f"recipe {recipe_file}: --fold all needs data.split, a folder made by `trash data split`")
    distributed.init()
    if distributed.is_main():
        group = create_run_dir(out, recipe.name, "-folds" + ("-debug" if debug else ""))
        copy_recipe(recipe_file, group)
        spec = {"folds": len(folds), "overrides": list(overrides), "debug": debug, "recipe": recipe.to_dict()}
        write_json(group / FOLDS, spec)
    group = distributed.broadcast_object(group if distributed.is_main() else None)
    return _fit_group(group, parallel)


def _fit_fold(group: Path, k: int) -> Path:
    """Trains fold k of a group unless it has finished: resumes it when started, starts it otherwise."""
    spec = json.loads((group / FOLDS).read_text())
    run = group / f"fold{k}"
    if (run / "resolved.json").is_file() and not (run / "metrics.json").is_file():
        resume(run)
    elif not (run / "metrics.json").is_file():
        base = recipe_from_dict(spec["recipe"])
        recipe = dataclasses.replace(base, data=dataclasses.replace(base.data, fold=k))
        overrides = [*spec["overrides"], f"data.fold={k}"]
        fit(group / "recipe.py", overrides, debug=spec["debug"], run_dir=run, recipe=recipe)
    return run


def _fold_worker(group: Path, k: int, slot: int, slots: int) -> Path:
    """One fold in its own process (`--parallel`): GPU `slot` when there are GPUs, else a share of the CPU cores."""
    import os

    if torch.cuda.device_count():
        torch.cuda.set_device(slot % torch.cuda.device_count())  # fastai's default_device is the current one
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // slots))
    return _fit_fold(group, k)


def _fit_folds_in_parallel(group: Path, folds: int, parallel: int) -> None:
    """Trains the folds `parallel` at a time, each in its own process (one per GPU when there are GPUs)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    if distributed.active():
        raise TrashError("--parallel trains folds side by side; it cannot be combined with --gpus (data parallel)")
    with ProcessPoolExecutor(parallel, mp_context=multiprocessing.get_context("spawn")) as pool:
        jobs = [pool.submit(_fold_worker, group, k, k % parallel, parallel) for k in range(folds)]
        for job in jobs:
            job.result()  # a fold's error (e.g. TrashError) is raised here, after the others have finished


def _fit_group(group: Path, parallel: int = 1) -> Path:
    """Trains the folds of a group that have not finished (`parallel` at a time), then writes summary.json."""
    from app.metrics import iou_report

    spec = json.loads((group / FOLDS).read_text())
    base = recipe_from_dict(spec["recipe"])
    if parallel > 1:
        _fit_folds_in_parallel(group, spec["folds"], parallel)
    runs = [_fit_fold(group, k) for k in range(spec["folds"])]  # with --parallel: all finished already
    metrics = [json.loads((r / "metrics.json").read_text()) for r in runs]
    cm = np.sum([np.array(m["confusion_matrix"]) for m in metrics], axis=0)
    summary = {
        "recipe": base.name,
        "folds": {r.name: m["miou"] for r, m in zip(runs, metrics)},
        "mean_fold_miou": float(np.mean([m["miou"] for m in metrics])),
        "oof": iou_report(cm, json.loads((runs[0] / "resolved.json").read_text())["classes"]),
    }
    if distributed.is_main():
        write_json(group / "summary.json", summary)
    distributed.barrier()
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
    with atomic_path(run / "lr_find.png") as tmp:
        plt.gcf().savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close("all")
    suggestions = {name: float(value) for name, value in found._asdict().items()}
    write_json(run / "lr_find.json", {"suggestions": suggestions, "recipe_lr": recipe.train.lr})
    return run, suggestions
