"""The `trash` command line: parse, call one library function, print. Heavy imports live in the bodies."""

import functools
import os
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
        except KeyboardInterrupt:  # Ctrl-C outside training (which stops cleanly itself, see app/checkpoint.py)
            typer.echo("error: interrupted", err=True)
            raise typer.Exit(130) from None

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
    recipe: Annotated[Path | None, typer.Argument(help="Recipe file, e.g. recipes/unet_effb4.py")] = None,
    set_: SetOption = None,
    out: OutOption = Path("runs"),
    fold: Annotated[
        str | None, typer.Option(help="Fold K of the recipe's data.split (same as --set data.fold=K), or 'all'")
    ] = None,
    debug: Annotated[bool, typer.Option(help="Dry run: 10% of the images, one epoch (before every long run)")] = False,
    resume: Annotated[
        Path | None,
        typer.Option(help="Continue this stopped run directory (or --fold all group) from its last checkpoint"),
    ] = None,
    gpus: Annotated[
        int,
        typer.Option(
            help="Data-parallel processes on this machine (PyTorch DDP via accelerate, launched with torchrun): "
            "one per GPU, or CPU processes with gloo when there is no GPU. data.batch_size is per process"
        ),
    ] = 1,
    parallel: Annotated[
        int, typer.Option(help="With --fold all: train this many folds at once, one process each (one GPU each)")
    ] = 1,
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
    if gpus < 1 or parallel < 1:
        raise TrashError(f"--gpus and --parallel must be at least 1, got {gpus} and {parallel}")
    if parallel > 1 and fold != "all":
        raise TrashError("--parallel N trains folds side by side: use it with --fold all")
    if gpus > 1 and "WORLD_SIZE" not in os.environ:  # relaunch this command in `gpus` processes
        import subprocess
        import sys

        from app.distributed import launch_command

        argv = _without_option(sys.argv[1:], "--gpus")
        raise typer.Exit(subprocess.run(launch_command(gpus, argv)).returncode)
    from app import train
    from app.distributed import is_main

    if resume is not None:
        if recipe is not None or set_ or fold is not None or debug:
            raise TrashError("--resume continues a run with its own recipe and settings: give only the run directory")
        run = train.resume(resume)
        if is_main():
            _print_group(run) if (run / train.FOLDS).is_file() else _print_run(run)
        return
    if recipe is None:
        raise TrashError("give a RECIPE file to train, or --resume RUN_DIR to continue a run")
    overrides = list(set_ or [])
    if fold == "all":
        group = train.fit_folds(recipe, overrides, out, debug, parallel)
        if is_main():
            _print_group(group)
        return
    if fold is not None:
        if not fold.isdigit():
            raise TrashError(f"--fold must be a fold number or 'all', got {fold!r}")
        overrides.append(f"data.fold={fold}")
    run = train.fit(recipe, overrides, out, debug)
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


WeightsOption = Annotated[
    str | None, typer.Option(help="Comma-separated weight per model argument, e.g. 0.6,0.4 (a fold group shares its)")
]
ClassWeightsOption = Annotated[
    Path | None,
    typer.Option(
        help='JSON with per-class weights per model: {"class_weights": [[w_c...] or null, ...]} '
        "(as written by `trash ensemble`)"
    ),
]
TopkOption = Annotated[
    bool, typer.Option("--topk", help="Use each run's top-k epochs (train.top_k) as an epoch ensemble")
]
TileOption = Annotated[
    bool,
    typer.Option(
        "--tile",
        help="Predict at each image's own resolution with overlapping tiles of the training size "
        "(Gaussian-blended), instead of resizing it to the training size",
    ),
]
MinAreaOption = Annotated[
    float,
    typer.Option(
        help="Post-processing: drop foreground components under this share of the image, e.g. 0.001 (0 = off)"
    ),
]

CrfOption = Annotated[
    bool, typer.Option("--crf", help="Post-processing: dense CRF on the image colours (pydensecrf2; about 1 s/image)")
]


def _class_weights(path: Path | None) -> list | None:
    import json

    if path is None:
        return None
    try:
        return json.loads(path.read_text())["class_weights"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise TrashError(f"--class-weights {path}: expected a json with a 'class_weights' list ({e})") from None


def _weights(text: str | None) -> list[float] | None:
    if not text:
        return None
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise TrashError(f"--weights {text!r}: expected comma-separated numbers, e.g. 0.6,0.4") from None


@app.command(short_help="Masks + overlays + submission.csv.  e.g. trash predict runs/demo/latest --images DIR --out p")
@friendly
def predict(
    models: ModelsArg,
    images: Annotated[Path, typer.Option(help="Folder of images (the json's file_names are relative to it)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for masks/, overlays/ and submission.csv")],
    data: Annotated[Path | None, typer.Option(help="COCO json listing the images, in submission order")] = None,
    tta: TtaOption = False,
    tta_views: ViewsOption = None,
    weights: WeightsOption = None,
    class_weights: ClassWeightsOption = None,
    topk: TopkOption = False,
    tile: TileOption = False,
    min_area: MinAreaOption = 0.0,
    crf: CrfOption = False,
    overlays: Annotated[bool, typer.Option(help="Write overlays/*.jpg and preview.png")] = True,
    save_probs: Annotated[
        bool, typer.Option(help="Also write probs/*.npy (fp16): the folder can then be an ensemble member")
    ] = False,
    skip_bad_images: Annotated[
        bool,
        typer.Option(
            help="Leave corrupt or truncated images out (warned, listed in predictions.json) instead of stopping"
        ),
    ] = False,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass")] = 8,
):
    """Predict class masks (PNG, original size), colour overlays and the competition submission.csv.

    Several MODELS are an ensemble, averaged in probability space: run directories, fold groups
    (`trash fit --fold all`), or folders written by `trash predict --save-probs`.
    The submission is read back and checked after writing.

    Examples:

      trash predict runs/demo/latest --images data/demo --data data/demo/test.json --tta --out preds

      trash predict runs/a/latest runs/b/latest --weights 0.6,0.4 --tta-views d4 --images DIR --out preds
    """
    from fastprogress.fastprogress import progress_bar

    from app.images import screen_listed
    from app.predict import predict as run_predict

    if not skip_bad_images:
        screen_listed(images, data)  # corrupt or truncated images: all named now, not a traceback later
    summary = run_predict(
        models,
        images,
        out,
        data,
        tta_views or tta,
        _weights(weights),
        batch_size,
        progress=progress_bar,
        class_weights=_class_weights(class_weights),
        topk=topk,
        tile=tile,
        min_area=min_area,
        crf=crf,
        overlays=overlays,
        save_probs=save_probs,
        skip_bad_images=skip_bad_images,
    )
    for message in summary["skipped"]:
        typer.echo(f"skipped    {message}", err=True)
    typer.echo(f"{summary['images']} images, {len(summary['members'])} member(s), TTA: {', '.join(summary['tta'])}")
    typer.echo(f"masks      {summary['masks']}")
    if summary["overlays"]:
        typer.echo(f"overlays   {summary['overlays']}  (grid: {summary['preview']})")
    if summary["probs"]:
        typer.echo(f"probs      {summary['probs']}")
    typer.echo(f"submission {summary['submission']}  (read back and checked)")


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
    weights: WeightsOption = None,
    class_weights: ClassWeightsOption = None,
    topk: TopkOption = False,
    tile: TileOption = False,
    min_area: MinAreaOption = 0.0,
    crf: CrfOption = False,
    compare: Annotated[
        str | None,
        typer.Option(help="Also score each model alone and the ensemble with these TTA sets, e.g. identity,flip,d4"),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Folder for evaluate.json, confusion.png, comparison.csv")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass")] = 8,
):
    """Score models against ground truth at the images' original size.

    Prints both mIoU definitions (dataset-level confusion matrix; mean of per-image mIoU) and per-class IoU;
    with --compare, a table of every member and the ensemble under each TTA set.

    Example: trash evaluate runs/a/latest runs/b/latest --data data/demo/val.json --images data/demo
    --compare identity,flip,d4 --out eval
    """
    from fastprogress.fastprogress import progress_bar

    from app.evaluate import evaluate as run_evaluate
    from app.images import screen_listed

    screen_listed(images, data)  # corrupt or truncated images: all named now, not a traceback later
    report = run_evaluate(
        models,
        data,
        images,
        tta_views or tta,
        batch_size,
        progress=progress_bar,
        weights=_weights(weights),
        class_weights=_class_weights(class_weights),
        topk=topk,
        tile=tile,
        min_area=min_area,
        crf=crf,
        compare=[s.strip() for s in compare.split(",")] if compare else None,
        out=out,
    )
    typer.echo(f"{report['images']} images, {len(report['members'])} member(s), TTA {report['tta']}")
    typer.echo(f"mIoU (dataset confusion matrix) {report['miou']:.4f}")
    typer.echo(f"mIoU (mean of per-image mIoU)   {report['miou_per_image']:.4f}")
    typer.echo(f"pixel accuracy                  {report['pixel_accuracy']:.4f}")
    for name, iou in report["per_class_iou"].items():
        typer.echo(f"  {name[:24]:24s} {'-' if iou is None else f'{iou:.4f}'}")
    for row in report.get("comparison", []):
        if row is report["comparison"][0]:
            typer.echo(f"{'model':48s} {'tta':10s} {'views':>5s} {'mIoU':>7s} {'per-img':>7s}")
        typer.echo(
            f"{row['model'][-48:]:48s} {row['tta']:10s} {row['views']:5d} "
            f"{row['miou']:7.4f} {row['miou_per_image']:7.4f}"
        )
    if out:
        typer.echo(f"report     {out / 'evaluate.json'}  (confusion.png{', comparison.csv' if compare else ''})")


@app.command(
    short_help="Pick models, TTA, weights on out-of-fold data.  e.g. trash ensemble runs/a/latest runs/b/latest"
)
@friendly
def ensemble(
    models: Annotated[list[str], typer.Argument(help="Run directories or fold groups (trash fit --fold all)")],
    tta_views: Annotated[
        str, typer.Option(help="TTA sets to try, comma-separated (each predicted once on the OOF images, cached)")
    ] = "identity,flip",
    max_members: Annotated[int, typer.Option(help="Most members (with repetition) the greedy search adds")] = 10,
    per_class: Annotated[bool, typer.Option(help="Try per-class weights from each member's OOF IoU")] = True,
    eval_size: Annotated[int, typer.Option(help="Side (px) the OOF predictions are scored at")] = 96,
    out: Annotated[Path, typer.Option("--out", "-o", help="The chosen ensemble as json")] = Path("ensemble.json"),
):
    """Choose the ensemble greedily on out-of-fold predictions and print the predict command that reproduces it.

    Each model's oof.npz (written by `trash fit`) gives its validation probabilities; models, TTA set,
    weights, per-class weights and small-component removal are kept only when they raise the OOF mIoU.

    Example: trash ensemble runs/trashcan/2026-folds runs/trashcan_deeplab/2026-folds --tta-views identity,flip,d4
    """
    from fastprogress.fastprogress import progress_bar

    from app.ensemble import predict_command, select

    result = select(
        models,
        [s.strip() for s in tta_views.split(",")],
        max_members,
        per_class,
        eval_size=eval_size,
        out=out,
        progress=progress_bar,
    )
    typer.echo(f"out-of-fold images: {result['oof_images']} (scored at {result['eval_size']} px)")
    typer.echo(f"{'model':56s} {'tta':10s} {'OOF mIoU':>8s}")
    for row in result["table"]:
        typer.echo(f"{row['model'][-56:]:56s} {row['tta']:10s} {row['miou']:8.4f}")
    for step in result["steps"]:
        typer.echo(f"greedy: + {step['added']}  ->  {step['miou']:.4f}")
    if "per_class_miou" in result:
        kept = "kept" if result["class_weights"] else "not kept"
        typer.echo(f"per-class weights: {result['per_class_miou']:.4f} ({kept})")
    if "crf_miou" in result:
        typer.echo(f"dense CRF: {result['crf_miou']:.4f} ({'kept' if result['crf'] else 'not kept'})")
    areas = ", ".join(f"{k}: {v:.4f}" for k, v in result["min_area_scores"].items())
    typer.echo(
        f"small-component removal: {areas} ({'min-area ' + str(result['min_area']) if result['min_area'] else 'off'})"
    )
    typer.echo(f"chosen: OOF mIoU {result['oof_miou']:.4f}, written to {out}")
    typer.echo(predict_command(result, out))


@app.command(
    short_help="Confident pixels as a COCO json.  e.g. trash pseudo runs/demo/latest --images DIR --out p.json"
)
@friendly
def pseudo(
    models: ModelsArg,
    images: Annotated[Path, typer.Option(help="Folder of unlabelled images (a json's file_names are relative to it)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Pseudo-label COCO json to write")],
    data: Annotated[Path | None, typer.Option(help="COCO json listing the images (ids and categories kept)")] = None,
    threshold: Annotated[float, typer.Option(help="Minimum top-class probability for a pixel to be labelled")] = 0.9,
    tta: TtaOption = False,
    tta_views: ViewsOption = None,
    weights: WeightsOption = None,
    class_weights: ClassWeightsOption = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass")] = 8,
):
    """Pseudo-label images with a model or ensemble: confident pixels become RLE annotations, the rest the
    image's `ignore_mask` (255, ignored by the loss). Add the json to a recipe with data.pseudo.

    Example: trash pseudo runs/demo/latest --images data/demo --data data/demo/test.json --tta --out pseudo.json
    """
    from fastprogress.fastprogress import progress_bar

    from app.pseudo import pseudo_labels

    summary = pseudo_labels(
        models,
        images,
        out,
        data,
        threshold,
        tta_views or tta,
        _weights(weights),
        _class_weights(class_weights),
        batch_size,
        progress=progress_bar,
    )
    typer.echo(
        f"{summary['images']} images, {summary['annotations']} annotations, "
        f"{summary['confident_share']:.1%} of pixels at p >= {threshold}"
    )
    typer.echo(f"pseudo-labels {out}  (recipe: data.pseudo={out})")


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
