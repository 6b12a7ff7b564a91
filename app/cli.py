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
):
    """Train RECIPE; write recipe copy, resolved values, history.csv, best model, export.pkl and metrics.json.

    Example: trash fit recipes/demo.py --set train.epochs=3 --set data.batch_size=4
    """
    from app.train import fit as run_fit

    run = run_fit(recipe, set_ or [], out)
    _print_run(run)


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
    weights: Annotated[str | None, typer.Option(help="Comma-separated weight per model, e.g. 0.6,0.4")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass")] = 8,
):
    """Predict class masks (PNG, original size) and the competition submission.csv with one or more models.

    Example: trash predict runs/demo/latest --images data/demo --data data/demo/test.json --tta --out preds
    """
    from fastprogress.fastprogress import progress_bar

    from app.predict import predict as run_predict

    w = [float(v) for v in weights.split(",")] if weights else None
    summary = run_predict(models, images, out, data, tta, w, batch_size, progress=progress_bar)
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

    report = run_evaluate(models, data, images, tta, batch_size, progress=progress_bar)
    if out:
        write_json(out, report)
    typer.echo(json.dumps({k: v for k, v in report.items() if k != "confusion_matrix"}, indent=2))


def _print_run(run: Path) -> None:
    import json

    metrics = json.loads((run / "metrics.json").read_text())
    typer.echo(f"run        {run}")
    typer.echo(f"model      {run / 'export.pkl'}")
    typer.echo(f"metrics    {run / 'metrics.json'}  (validation mIoU {metrics['miou']:.4f})")
    typer.echo(f"history    {run / 'history.csv'}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
