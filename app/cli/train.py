"""Training commands: fit, lr-find, recipes, runs, models. Each body parses, calls the library, prints."""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from app.cli.base import app, friendly, progress
from app.cli.options import OutOption, SetOption
from app.errors import TrashError
from app.runs import FOLDS, REPORT, RESOLVED, RUN_COLUMNS, SUMMARY

Fold = Annotated[
    str | None, typer.Option(help="Fold K of the recipe's data.split (same as --set data.fold=K), or 'all'")
]
Resume = Annotated[
    Path | None, typer.Option(help="Continue this stopped run directory (or --fold all group) from its last checkpoint")
]
Gpus = Annotated[
    int,
    typer.Option(
        help="Data-parallel processes on this machine (PyTorch DDP via accelerate, launched with torchrun): "
        "one per GPU, or CPU processes with gloo when there is no GPU. data.batch_size is per process"
    ),
]
Parallel = Annotated[
    int, typer.Option(help="With --fold all: train this many folds at once, one process each (one GPU each)")
]


@app.command(short_help="Train a recipe into a run directory.  e.g. trash fit recipes/demo.py")
@friendly
def fit(
    recipe: Annotated[Path | None, typer.Argument(help="Recipe file, e.g. recipes/unet_effb4.py")] = None,
    set_: SetOption = None,
    out: OutOption = Path("runs"),
    fold: Fold = None,
    debug: Annotated[bool, typer.Option(help="Dry run: 10% of the images, one epoch (before every long run)")] = False,
    resume: Resume = None,
    gpus: Gpus = 1,
    parallel: Parallel = 1,
):
    """Train RECIPE; write recipe copy, resolved values, history.csv, best model, export.pkl, metrics and plots.

    With --fold all, every fold of data.split is trained into one run group with an out-of-fold mIoU.
    A checkpoint is written every epoch; --resume RUN_DIR continues a killed or interrupted run with its own
    recipe. Exit codes: 3 the loss became NaN/inf, 4 a file could not be written, 130/143 interrupted.

    With --gpus N the run is data-parallel over N processes (the same as `torchrun --nproc_per_node N -m app fit
    RECIPE` or `accelerate launch -m app fit RECIPE`); only rank 0 writes the run directory.

    Examples:

      trash fit recipes/demo.py --set train.epochs=3 --set data.batch_size=4

      trash fit recipes/unet_effb4.py --gpus 4 --fold all
    """
    _check_launch(fold, gpus, parallel)
    progress()  # bars in a terminal, one line per epoch in a log
    if gpus > 1 and "WORLD_SIZE" not in os.environ:  # relaunch this command in `gpus` processes
        from app.train.distributed import launch_command

        raise typer.Exit(subprocess.run(launch_command(gpus, _without_option(sys.argv[1:], "--gpus"))).returncode)
    if resume is not None:
        if recipe is not None or set_ or fold is not None or debug:
            raise TrashError("--resume continues a run with its own recipe and settings: give only the run directory")
        return _fit_resume(resume)
    if recipe is None:
        raise TrashError("give a RECIPE file to train, or --resume RUN_DIR to continue a run")
    if fold == "all":
        return _fit_group(recipe, list(set_ or []), out, debug, parallel)
    _fit_run(recipe, list(set_ or []) + _fold_override(fold), out, debug)


def _check_launch(fold: str | None, gpus: int, parallel: int) -> None:
    if gpus < 1 or parallel < 1:
        raise TrashError(f"--gpus and --parallel must be at least 1, got {gpus} and {parallel}")
    if parallel > 1 and fold != "all":
        raise TrashError("--parallel N trains folds side by side: use it with --fold all")


def _fold_override(fold: str | None) -> list[str]:
    if fold is None:
        return []
    if not fold.isdigit():
        raise TrashError(f"--fold must be a fold number or 'all', got {fold!r}")
    return [f"data.fold={fold}"]


def _fit_resume(run_dir: Path) -> None:
    from app.train.distributed import is_main
    from app.train.folds import resume

    run = resume(run_dir)
    if is_main():
        _print_group(run) if (run / FOLDS).is_file() else _print_run(run)


def _fit_group(recipe: Path, overrides: list[str], out: Path, debug: bool, parallel: int) -> None:
    from app.train.distributed import is_main
    from app.train.folds import fit_folds

    group = fit_folds(recipe, overrides, out, debug, parallel)
    if is_main():
        _print_group(group)


def _fit_run(recipe: Path, overrides: list[str], out: Path, debug: bool) -> None:
    from app.train.distributed import is_main
    from app.train.run import fit as train_run

    run = train_run(recipe, overrides, out, debug)
    if is_main():
        _print_run(run)


def _without_option(argv: list[str], name: str) -> list[str]:
    """`argv` without `name VALUE` / `name=VALUE` (to relaunch a command without its launcher option)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == name:
            skip = True
        elif not arg.startswith(name + "="):
            out.append(arg)
    return out


def _print_group(group: Path) -> None:
    summary = json.loads((group / SUMMARY).read_text())
    for name, miou in summary["folds"].items():
        typer.echo(f"{name:10s} validation mIoU {miou:.4f}  ({group / name})")
    typer.echo(f"out-of-fold mIoU {summary['oof']['miou']:.4f}  (mean of folds {summary['mean_fold_miou']:.4f})")
    typer.echo(f"group      {group}")
    _print_report(group)


def _print_run(run: Path) -> None:
    metrics = json.loads((run / "metrics.json").read_text())
    for message in json.loads((run / RESOLVED).read_text())["dropped"]:
        typer.echo(f"dropped    {message}", err=True)
    typer.echo(f"run        {run}")
    typer.echo(f"model      {run / 'export.pkl'}")
    typer.echo(f"metrics    {run / 'metrics.json'}  (validation mIoU {metrics['miou']:.4f})")
    typer.echo(f"history    {run / 'history.csv'}  (plots: curves.png, confusion.png)")
    _print_report(run)


def _print_report(run: Path) -> None:
    if (run / REPORT).is_file():
        typer.echo(f"report     {run / REPORT}  (open it in a browser)")


@app.command("lr-find", short_help="Plot loss vs learning rate.  e.g. trash lr-find recipes/demo.py")
@friendly
def lr_find(
    recipe: Annotated[Path, typer.Argument(help="Recipe file")],
    set_: SetOption = None,
    out: OutOption = Path("runs"),
    iters: Annotated[int, typer.Option(min=20, help="Mini-batches to try, learning rate rising exponentially")] = 100,
):
    """Run fastai's learning-rate finder on RECIPE's data and model; save lr_find.png and the suggestions.

    Example: trash lr-find recipes/unet_effb4.py --set data.batch_size=4
    """
    from app.train.lr_find import lr_find as run_lr_find

    progress()
    run, suggestions = run_lr_find(recipe, set_ or [], out, iters)
    for name, value in suggestions.items():
        typer.echo(f"{name:8s} {value:.2e}")
    typer.echo(f"plot     {run / 'lr_find.png'}")


recipes_app = typer.Typer(rich_markup_mode="rich")  # its help is recipes_list's docstring
app.add_typer(recipes_app, name="recipes", short_help="List recipes / show resolved values.  e.g. trash recipes")


@recipes_app.callback(invoke_without_command=True)
@friendly
def recipes_list(ctx: typer.Context, folder: Annotated[Path, typer.Option(help="Recipe folder")] = Path("recipes")):
    """List the recipes in FOLDER with their one-line descriptions.

    Example: trash recipes; trash recipes show recipes/unet_effb4.py
    """
    if ctx.invoked_subcommand:
        return
    from app.recipe_file import describe_recipes

    found = describe_recipes(folder)
    if not found:
        raise TrashError(f"no recipe files (*.py) in {folder.resolve()}; run trash in the repository or give --folder")
    for name, description in found:
        typer.echo(f"{name:24s} {description}")


@recipes_app.command("show")
@friendly
def recipes_show(recipe: Annotated[Path, typer.Argument(help="Recipe file")], set_: SetOption = None):
    """Print every resolved value of RECIPE (defaults included) as JSON, after checking every name in it.

    Example: trash recipes show recipes/unet_effb4.py --set train.lr=3e-4
    """
    from app.train.validate import load_checked

    typer.echo(json.dumps(load_checked(recipe, set_ or [], check_files=False).to_dict(), indent=2))


@app.command(short_help="Table of runs: recipe, fold, data, mIoU, epochs, time.  e.g. trash runs --sort miou")
@friendly
def runs(
    folder: Annotated[Path, typer.Argument(help="Folder holding run directories")] = Path("runs"),
    sort: Annotated[str, typer.Option(help=f"Column to sort by: {', '.join(RUN_COLUMNS)}")] = "miou",
    html: Annotated[
        Path | None, typer.Option(help="Also write the table as an HTML page linking to each run's report.html")
    ] = None,
):
    """The experiment log: one row per finished run under FOLDER, best first.

    Example: trash runs runs --sort seconds --html runs/index.html
    """
    from app.runs import list_runs, sort_runs

    rows = sort_runs(list_runs(folder), sort)
    if html:
        from app.report.build import write_runs_page

        typer.echo(f"page       {write_runs_page(folder, rows, html)}")
    typer.echo("  ".join(f"{c:>8s}" if c in ("fold", "miou", "epochs", "seconds") else f"{c:16s}" for c in RUN_COLUMNS))
    for r in rows:
        miou = "-" if r["miou"] is None else f"{r['miou']:.4f}"
        typer.echo(
            f"{r['recipe'][:16]:16s}  {r['fold']:>8}  {miou:>8s}  {str(r['epochs']):>8s}  "
            f"{str(r['seconds']):>8s}  {r['data'][:16]:16s}  {r['run']}"
        )
    if not rows:
        typer.echo(f"no finished runs under {folder}")


@app.command(short_help="Architectures and encoders with params and GFLOPs.  e.g. trash models --arch fpn")
@friendly
def models(
    arch: Annotated[
        str, typer.Option(help="Architecture whose size and GFLOPs to count (the first line lists them)")
    ] = "unet",
    encoder: Annotated[list[str] | None, typer.Option(help="Encoder(s) to list instead of the curated ones")] = None,
    quick: Annotated[bool, typer.Option(help="Names and encoder parameters only (no GFLOPs)")] = False,
):
    """List the registered architectures and encoders known to work, with parameters and forward GFLOPs.

    Any timm model with features_only support can be named in model.encoder; these are the tested ones.

    Example: trash models --arch deeplabv3plus --encoder resnet50 --encoder efficientnet_b4
    """
    from app.model.build import ARCHS, model_table

    typer.echo(f"architectures: {ARCHS.names()}")
    rows = model_table(encoder or None, quick=quick, arch=arch, progress=progress())
    typer.echo(f"{'encoder':32s} {'enc M':>7s} {arch + ' M':>10s} {'GFLOP@256':>10s} {'GFLOP@512':>10s}  archs")
    for r in rows:
        typer.echo(
            f"{r['encoder'][:32]:32s} {r['encoder_params_m']:7.1f} {r.get('params_m', '-'):>10} "
            f"{r.get('gflops_256', '-'):>10} {r.get('gflops_512', '-'):>10}  {', '.join(r['archs'])}"
        )
