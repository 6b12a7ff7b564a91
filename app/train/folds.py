"""`trash fit --fold all`: every fold of a split in one run group, resumable, optionally several folds at once.

A group is `<out>/<recipe>/<time>-folds/` with `folds.json` (how to train each fold), `fold<k>/` run
directories and, when every fold has finished, `summary.json`: each fold's mIoU and the out-of-fold mIoU from
the summed confusion matrices. `resume` continues a stopped run or group where it stopped.
"""

import dataclasses
import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from app.atomic import write_json
from app.errors import TrainingInterrupted, TrashError
from app.model.metrics import iou_report
from app.recipe import recipe_from_dict, resolve_paths
from app.report.build import report_after_fit
from app.runs import FOLDS, METRICS, RESOLVED, SUMMARY, copy_recipe, create_run_dir, point_latest
from app.train import distributed
from app.train.run import RESUME_HINT, fit, resume_run
from app.train.validate import load_checked


def fit_folds(
    recipe_file: str | Path, overrides=(), out: str | Path = "runs", debug: bool = False, parallel: int = 1
) -> Path:
    """Trains every fold of the recipe's data.split into one run group `<out>/<recipe>/<time>-folds/fold<k>/`.

    With `parallel` > 1, that many folds train at once, each in its own process (one GPU each, or a share of
    the CPU cores).
    """
    recipe = resolve_paths(load_checked(recipe_file, [*overrides, "data.fold=0"]))
    folds = sorted(Path(recipe.data.split).glob("fold*/train.json")) if recipe.data.split else []
    if not folds:
        raise TrashError(f"recipe {recipe_file}: --fold all needs data.split, a folder made by `trash data split`")
    distributed.init()
    group = None
    if distributed.is_main():
        group = create_run_dir(out, recipe.name, "-folds" + ("-debug" if debug else ""))
        copy_recipe(recipe_file, group)
        spec = {"folds": len(folds), "overrides": list(overrides), "debug": debug, "recipe": recipe.to_dict()}
        write_json(group / FOLDS, spec)
    return _fit_group(distributed.broadcast_object(group), parallel)


def resume(path: str | Path) -> Path:
    """Continues a stopped run, or every unfinished fold of a `--fold all` group, from its last checkpoint."""
    group = Path(path).resolve()
    if not (group / FOLDS).is_file():
        return resume_run(path)
    if (group / SUMMARY).is_file():
        raise TrashError(f"{path} has already finished ({SUMMARY} is written); there is nothing to resume")
    distributed.init()
    return _fit_group(group)


def _fit_fold(group: Path, k: int) -> Path:
    """Trains fold k of a group unless it has finished: resumes it when started, starts it otherwise.

    An interruption names the group to resume, not the fold.
    """
    spec = json.loads((group / FOLDS).read_text())
    run = group / f"fold{k}"
    try:
        if (run / RESOLVED).is_file() and not (run / METRICS).is_file():
            resume_run(run)
        elif not (run / METRICS).is_file():
            base = recipe_from_dict(spec["recipe"])
            recipe = dataclasses.replace(base, data=dataclasses.replace(base.data, fold=k))
            overrides = [*spec["overrides"], f"data.fold={k}"]
            fit(group / "recipe.py", overrides, debug=spec["debug"], run_dir=run, recipe=recipe)
    except TrainingInterrupted as e:
        raise TrainingInterrupted(e.message.split(RESUME_HINT)[0] + f"{RESUME_HINT}{group}", e.signum) from None
    return run


def _fold_worker(group: Path, k: int, slot: int, slots: int) -> Path:
    """One fold in its own process (`--parallel`): GPU `slot` when there are GPUs, else a share of the CPU cores."""
    if torch.cuda.device_count():
        torch.cuda.set_device(slot % torch.cuda.device_count())  # fastai's default_device is the current one
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // slots))
    return _fit_fold(group, k)


def _fit_folds_in_parallel(group: Path, folds: int, parallel: int) -> None:
    """Trains the folds `parallel` at a time, each in its own process (one per GPU when there are GPUs)."""
    if distributed.active():
        raise TrashError("--parallel trains folds side by side; it cannot be combined with --gpus (data parallel)")
    with ProcessPoolExecutor(parallel, mp_context=multiprocessing.get_context("spawn")) as pool:
        jobs = [pool.submit(_fold_worker, group, k, k % parallel, parallel) for k in range(folds)]
        for job in jobs:
            job.result()  # a fold's error (e.g. TrashError) is raised here, after the others have finished


def _fit_group(group: Path, parallel: int = 1) -> Path:
    """Trains the folds of a group that have not finished (`parallel` at a time), then writes summary.json."""
    spec = json.loads((group / FOLDS).read_text())
    if parallel > 1:
        _fit_folds_in_parallel(group, spec["folds"], parallel)
    runs = [_fit_fold(group, k) for k in range(spec["folds"])]  # with --parallel: all finished already
    if distributed.is_main():
        write_json(group / SUMMARY, group_summary(runs, recipe_from_dict(spec["recipe"]).name))
        report_after_fit(group)
        if not spec["debug"]:
            point_latest(group)
    distributed.barrier()
    return group


def group_summary(runs: list[Path], recipe_name: str) -> dict:
    """Each fold's mIoU, their mean, and the out-of-fold report from the summed confusion matrices."""
    metrics = [json.loads((r / METRICS).read_text()) for r in runs]
    cm = np.sum([np.array(m["confusion_matrix"]) for m in metrics], axis=0)
    return {
        "recipe": recipe_name,
        "folds": {r.name: m["miou"] for r, m in zip(runs, metrics)},
        "mean_fold_miou": float(np.mean([m["miou"] for m in metrics])),
        "oof": iou_report(cm, json.loads((runs[0] / RESOLVED).read_text())["classes"]),
    }
