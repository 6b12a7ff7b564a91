"""The `trash` command line: parse, call one library function, print. Heavy imports live in the bodies."""

import functools
from pathlib import Path
from typing import Annotated

import typer

from app.errors import TrashError

EXAMPLES = """[bold]Examples[/bold] (first: make demo, or trash demo-data data/demo)

  trash fit recipes/demo.py --set train.epochs=3

  trash lr-find recipes/demo.py

  trash predict runs/demo/latest --images data/demo --data data/demo/test.json --tta --out preds

  trash evaluate runs/demo/latest --data data/demo/val.json --images data/demo
"""

app = typer.Typer(
    help="Train, export and run semantic-segmentation models for recycling-trash photos (fastai + timm).",
    epilog=EXAMPLES,
    rich_markup_mode="rich",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def friendly(fn):
    """Turns TrashError into `error: ...` lines on stderr and its exit code, without a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TrashError as e:
            for line in str(e).splitlines():
                typer.echo(f"error: {line}", err=True)
            raise typer.Exit(e.exit_code) from None

    return wrapper


SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a recipe value: section.key=value (repeatable), e.g. train.epochs=3"),
]
OutOption = Annotated[
    Path, typer.Option("--out", "-o", help="Folder that receives <recipe>/<timestamp>/ run directories")
]
ModelsArg = Annotated[
    list[str],
    typer.Argument(
        help="Exported models: run directories (or their `latest` link) or export.pkl files; several = ensemble"
    ),
]
TtaOption = Annotated[bool, typer.Option("--tta", help="Average flips (h, v, hv), each prediction un-flipped")]
ViewsOption = Annotated[
    str | None,
    typer.Option(help="TTA views instead of flips: flip, d4 (8 dihedral), ms (scales 0.75/1/1.25), or e.g. d4+ms"),
]


@app.command("demo-data", short_help="Write the synthetic demo dataset.  e.g. trash demo-data data/demo")
@friendly
def demo_data(
    out: Annotated[Path, typer.Argument(help="Folder to write images/ and train/val/test json into")],
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same files")] = 0,
):
    """Write a synthetic COCO dataset with the reference dataset's 10 object classes (+ background).

    Example: trash demo-data data/demo --seed 0
    """
    from app.synthetic import make_demo_dataset

    paths = make_demo_dataset(out, seed=seed)
    for split in ("train", "val", "test"):
        typer.echo(f"{split:5s} {paths[split]}")


@app.command(short_help="Train a recipe into a run directory.  e.g. trash fit recipes/demo.py")
@friendly
def fit(
    recipe: Annotated[Path, typer.Argument(help="Recipe file, e.g. recipes/unet_effb4.py")],
    set_: SetOption = None,
    out: OutOption = Path("runs"),
    fold: Annotated[
        str | None, typer.Option(help="Fold K of the recipe's data.split (same as --set data.fold=K), or 'all'")
    ] = None,
    debug: Annotated[bool, typer.Option(help="Dry run: 10% of the images, one epoch (before every long run)")] = False,
):
    """Train RECIPE; write recipe copy, resolved values, history.csv, best model, export.pkl, metrics and plots.

    With --fold all, every fold of data.split is trained into one run group with an out-of-fold mIoU.

    Example: trash fit recipes/demo.py --set train.epochs=3 --set data.batch_size=4
    """
    from app import train

    overrides = list(set_ or [])
    if fold == "all":
        group = train.fit_folds(recipe, overrides, out, debug)
        _print_group(group)
        return
    if fold is not None:
        if not fold.isdigit():
            raise TrashError(f"--fold must be a fold number or 'all', got {fold!r}")
        overrides.append(f"data.fold={fold}")
    _print_run(train.fit(recipe, overrides, out, debug))


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
    from app.train import lr_find as run_lr_find

    run, suggestions = run_lr_find(recipe, set_ or [], out, iters)
    for name, value in suggestions.items():
        typer.echo(f"{name:8s} {value:.2e}")
    typer.echo(f"plot     {run / 'lr_find.png'}")


@app.command(short_help="Masks + submission.csv.  e.g. trash predict runs/demo/latest --images DIR --out preds")
@friendly
def predict(
    models: ModelsArg,
    images: Annotated[Path, typer.Option(help="Folder of images (the json's file_names are relative to it)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for masks/ and submission.csv")],
    data: Annotated[Path | None, typer.Option(help="COCO json listing the images, in submission order")] = None,
    tta: TtaOption = False,
    tta_views: ViewsOption = None,
    weights: Annotated[str | None, typer.Option(help="Comma-separated weight per model, e.g. 0.6,0.4")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass")] = 8,
):
    """Predict class masks (PNG, original size) and the competition submission.csv with one or more models.

    Example: trash predict runs/demo/latest --images data/demo --data data/demo/test.json --tta --out preds
    """
    from fastprogress.fastprogress import progress_bar

    from app.predict import predict as run_predict

    w = [float(v) for v in weights.split(",")] if weights else None
    summary = run_predict(models, images, out, data, tta_views or tta, w, batch_size, progress=progress_bar)
    typer.echo(f"{summary['images']} images, TTA views: {', '.join(summary['tta'])}")
    typer.echo(f"masks      {summary['masks']}")
    typer.echo(f"submission {summary['submission']}")


@app.command(
    short_help="mIoU + per-class IoU on a COCO json.  e.g. trash evaluate runs/demo/latest --data val.json --images DIR"
)
@friendly
def evaluate(
    models: ModelsArg,
    data: Annotated[Path, typer.Option(help="COCO json with ground-truth annotations")],
    images: Annotated[Path, typer.Option(help="Folder the json's file_names are relative to")],
    tta: TtaOption = False,
    tta_views: ViewsOption = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Also write the JSON report here")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass")] = 8,
):
    """Score models against ground truth at the images' original size: dataset-level confusion-matrix mIoU.

    Example: trash evaluate runs/demo/latest --data data/demo/val.json --images data/demo --tta
    """
    import json

    from fastprogress.fastprogress import progress_bar

    from app.evaluate import evaluate as run_evaluate
    from app.runs import write_json

    report = run_evaluate(models, data, images, tta_views or tta, batch_size, progress=progress_bar)
    if out:
        write_json(out, report)
    typer.echo(json.dumps({k: v for k, v in report.items() if k != "confusion_matrix"}, indent=2))


data_app = typer.Typer(
    help="Look at and prepare COCO data: check, masks, stats, split, show.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)
app.add_typer(
    data_app, name="data", short_help="check / masks / stats / split / show.  e.g. trash data check a.json --images DIR"
)
AnnArg = Annotated[Path, typer.Argument(help="COCO json")]
ImagesOption = Annotated[Path, typer.Option(help="Folder the json's file_names are relative to")]


@data_app.command("check", short_help="Every problem of a COCO json + images in one report.")
@friendly
def data_check(annotations: AnnArg, images: ImagesOption):
    """Validate a COCO json and its images before anything reaches pycocotools; exit 1 when errors are found.

    Example: trash data check data/train.json --images data
    """
    from fastprogress.fastprogress import progress_bar

    from app.check import check_coco

    report = check_coco(annotations, images, progress=progress_bar)
    typer.echo(report.summary())
    if not report.ok:
        raise typer.Exit(1)


@data_app.command("masks", short_help="One class-mask PNG per image (pixel = class index).")
@friendly
def data_masks(
    annotations: AnnArg,
    images: ImagesOption,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the mask PNGs (named like the images)")],
    overlap: Annotated[
        str, typer.Option(help="Paint order of overlapping annotations: largest-first, smallest-first, json-order")
    ] = "largest-first",
):
    """Rasterize a COCO json into class-index PNGs: 0 background, category ids ascending → 1..N.

    Overlaps: largest-first (default) paints larger annotations first so smaller objects stay on top;
    smallest-first the opposite; json-order paints in file order. Training uses the same function.

    Example: trash data masks data/train.json --images data --out data/masks
    """
    from fastprogress.fastprogress import progress_bar

    from app.check import check_coco
    from app.coco import load_coco, write_masks

    _refuse_bad_data(check_coco(annotations, images, read_images=False))
    coco = load_coco(annotations)
    written = write_masks(coco, out, overlap, progress_bar)
    typer.echo(f"{len(written)} masks in {out} (classes: {', '.join(f'{i}={c}' for i, c in enumerate(coco.codes))})")


@data_app.command("stats", short_help="Per-class instances, images, pixels, class weights, bar chart.")
@friendly
def data_stats(
    annotations: AnnArg,
    images: ImagesOption,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full statistics as JSON")] = False,
    plot: Annotated[Path | None, typer.Option(help="Bar-chart PNG (default: <json stem>_stats.png here)")] = None,
):
    """Class statistics from the rasterized masks and class-weight suggestions (loss.class_weights schemes).

    Example: trash data stats data/train.json --images data --json
    """
    import json

    from fastprogress.fastprogress import progress_bar

    from app.check import check_coco
    from app.coco import load_coco
    from app.stats import WEIGHT_SCHEMES, dataset_stats, plot_stats

    _refuse_bad_data(check_coco(annotations, images, read_images=False))
    stats = dataset_stats(load_coco(annotations), progress=progress_bar)
    png = plot_stats(stats, plot or Path(f"{annotations.stem}_stats.png"))
    if as_json:
        typer.echo(json.dumps(stats, indent=2))
        return
    typer.echo(
        f"{'class':24s} {'instances':>9s} {'images':>7s} {'pixels':>12s} {'share':>9s} "
        + " ".join(f"{s:>8s}" for s in WEIGHT_SCHEMES)
    )
    for i, (name, row) in enumerate(stats["classes"].items()):
        weights = " ".join(f"{stats['weights'][s][i]:8.3f}" for s in WEIGHT_SCHEMES)
        typer.echo(
            f"{name[:24]:24s} {row['instances']:9d} {row['images']:7d} {row['pixels']:12d} "
            f"{row['share']:9.5f} {weights}"
        )
    typer.echo(f"bar chart {png}")


@data_app.command("split", short_help="Stratified group k-fold train/val json per fold.")
@friendly
def data_split(
    annotations: AnnArg,
    folds: Annotated[int, typer.Option(help="Number of folds K")] = 5,
    group: Annotated[
        str | None,
        typer.Option(help="Regex over file_name (e.g. 'vid_\\d+') or an image field; one group never spans two folds"),
    ] = None,
    seed: Annotated[int, typer.Option(help="Shuffling seed")] = 0,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for fold<k>/train.json, fold<k>/val.json, summary.json")
    ] = Path("splits"),
):
    """Split by StratifiedGroupKFold, stratified on each image's rarest class by pixel area.

    Recipes use a split with data.split=OUT and `trash fit RECIPE --fold K`.

    Example: trash data split ../shared/data/trashcan/annotations.json --folds 5 --group 'vid_\\d+' --out splits/tc
    """
    from fastprogress.fastprogress import progress_bar

    from app.check import check_coco
    from app.split import make_folds, write_folds

    _refuse_bad_data(check_coco(annotations, None, read_images=False))
    made = make_folds(annotations, folds, group, seed, progress=progress_bar)
    summary = write_folds(annotations, made, out)
    for fold in summary["folds"]:
        typer.echo(
            f"fold {fold['fold']}: train {fold['train']['images']:5d} images ({fold['train']['groups']} groups), "
            f"val {fold['val']['images']:5d} images ({fold['val']['groups']} groups)"
        )
    typer.echo(f"summary {Path(out) / 'summary.json'}")


@data_app.command("show", short_help="Grid of images with colour-coded masks and a legend.")
@friendly
def data_show(
    annotations: AnnArg,
    images: ImagesOption,
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG to write")] = Path("grid.png"),
    count: Annotated[int, typer.Option(help="Number of images")] = 12,
    seed: Annotated[int, typer.Option(help="Which images (random, reproducible)")] = 0,
    masks: Annotated[
        Path | None, typer.Option(help="Show these mask PNGs instead (e.g. trash predict's masks/)")
    ] = None,
):
    """Look at the data (or at predictions with --masks) as colour overlays.

    Example: trash data show data/val.json --images data --out grid.png --masks preds/masks
    """
    from app.overlay import show_coco

    typer.echo(f"grid {show_coco(annotations, images, out, count, seed, masks)}")


def _refuse_bad_data(report) -> None:
    if not report.ok:
        raise TrashError(
            f"{report.path} has errors; run `trash data check` for the full report:\n"
            + "\n".join(p.message for p in report.errors[:10])
        )


@app.command(short_help="Architectures and encoders with params and GFLOPs.  e.g. trash models --arch fpn")
@friendly
def models(
    arch: Annotated[str, typer.Option(help="Architecture whose size and GFLOPs to count")] = "unet",
    encoder: Annotated[list[str] | None, typer.Option(help="Encoder(s) to list instead of the curated ones")] = None,
    quick: Annotated[bool, typer.Option(help="Names and encoder parameters only (no GFLOPs)")] = False,
):
    """List the registered architectures and encoders known to work, with parameters and forward GFLOPs.

    Any timm model with features_only support can be named in model.encoder; these are the tested ones.

    Example: trash models --arch deeplabv3plus --encoder resnet50 --encoder efficientnet_b4
    """
    from app.models import ARCHS, model_table

    typer.echo(f"architectures: {', '.join(ARCHS)}")
    rows = model_table(encoder or None, quick=quick, arch=arch)
    typer.echo(f"{'encoder':32s} {'enc M':>7s} {arch + ' M':>10s} {'GFLOP@256':>10s} {'GFLOP@512':>10s}  archs")
    for r in rows:
        typer.echo(
            f"{r['encoder'][:32]:32s} {r['encoder_params_m']:7.1f} {r.get('params_m', '-'):>10} "
            f"{r.get('gflops_256', '-'):>10} {r.get('gflops_512', '-'):>10}  {', '.join(r['archs'])}"
        )


recipes_app = typer.Typer(help="The shipped recipes.", rich_markup_mode="rich")
app.add_typer(recipes_app, name="recipes", short_help="List recipes / show resolved values.  e.g. trash recipes")


@recipes_app.callback(invoke_without_command=True)
def recipes_list(ctx: typer.Context, folder: Annotated[Path, typer.Option(help="Recipe folder")] = Path("recipes")):
    """List the recipes in FOLDER with their one-line descriptions.

    Example: trash recipes; trash recipes show recipes/unet_effb4.py
    """
    if ctx.invoked_subcommand:
        return
    from app.recipe import describe_recipes

    for name, description in describe_recipes(folder):
        typer.echo(f"{name:24s} {description}")


@recipes_app.command("show")
@friendly
def recipes_show(recipe: Annotated[Path, typer.Argument(help="Recipe file")], set_: SetOption = None):
    """Print every resolved value of RECIPE (defaults included) as JSON.

    Example: trash recipes show recipes/unet_effb4.py --set train.lr=3e-4
    """
    import json

    from app.recipe import load_recipe

    typer.echo(json.dumps(load_recipe(recipe, set_ or [], check_files=False).to_dict(), indent=2))


@app.command(short_help="Table of runs: recipe, fold, data, mIoU, epochs, time.  e.g. trash runs --sort miou")
@friendly
def runs(
    folder: Annotated[Path, typer.Argument(help="Folder holding run directories")] = Path("runs"),
    sort: Annotated[
        str, typer.Option(help="Column to sort by: recipe, fold, miou, epochs, seconds, data, run")
    ] = "miou",
):
    """The experiment log: one row per finished run under FOLDER, best first.

    Example: trash runs runs --sort seconds
    """
    from app.runs import RUN_COLUMNS, list_runs, sort_runs

    rows = sort_runs(list_runs(folder), sort)
    typer.echo("  ".join(f"{c:>8s}" if c in ("fold", "miou", "epochs", "seconds") else f"{c:16s}" for c in RUN_COLUMNS))
    for r in rows:
        miou = "-" if r["miou"] is None else f"{r['miou']:.4f}"
        typer.echo(
            f"{r['recipe'][:16]:16s}  {r['fold']:>8}  {miou:>8s}  {str(r['epochs']):>8s}  "
            f"{str(r['seconds']):>8s}  {r['data'][:16]:16s}  {r['run']}"
        )
    if not rows:
        typer.echo(f"no finished runs under {folder}")


def _print_group(group: Path) -> None:
    import json

    summary = json.loads((group / "summary.json").read_text())
    for name, miou in summary["folds"].items():
        typer.echo(f"{name:10s} validation mIoU {miou:.4f}  ({group / name})")
    typer.echo(f"out-of-fold mIoU {summary['oof']['miou']:.4f}  (mean of folds {summary['mean_fold_miou']:.4f})")
    typer.echo(f"group      {group}")


def _print_run(run: Path) -> None:
    import json

    metrics = json.loads((run / "metrics.json").read_text())
    dropped = json.loads((run / "resolved.json").read_text())["dropped"]
    for message in dropped:
        typer.echo(f"dropped    {message}", err=True)
    typer.echo(f"run        {run}")
    typer.echo(f"model      {run / 'export.pkl'}")
    typer.echo(f"metrics    {run / 'metrics.json'}  (validation mIoU {metrics['miou']:.4f})")
    typer.echo(f"history    {run / 'history.csv'}  (plots: curves.png, confusion.png)")


def main() -> None:
    import warnings

    # Emitted at import by a dependency on every command; nothing a user can act on.
    warnings.filterwarnings("ignore", message=".*torch.jit.script. is deprecated", category=FutureWarning)
    app()


if __name__ == "__main__":
    main()
