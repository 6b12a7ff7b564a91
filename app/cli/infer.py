"""Inference commands: predict, evaluate, ensemble, pseudo, export (ONNX). Each body parses, calls the library."""

from pathlib import Path
from typing import Annotated

import typer

from app.cli.base import app, friendly, progress
from app.cli.options import ImagesOption, ModelsArg, inference_options
from app.infer.options import InferenceOptions

SHARED = ("tta", "tta_views", "weights", "class_weights", "topk", "tile", "min_area", "crf")


@app.command(short_help="Masks + overlays + submission.csv.  e.g. trash predict runs/demo/latest --images DIR --out p")
@friendly
@inference_options(*SHARED, "overlays", "save_probs", "skip_bad_images", "backend", "batch_size")
def predict(
    models: ModelsArg,
    images: Annotated[Path, typer.Option(help="Folder of images (the json's file_names are relative to it)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for masks/, overlays/ and submission.csv")],
    data: Annotated[Path | None, typer.Option(help="COCO json listing the images, in submission order")] = None,
    options: InferenceOptions = InferenceOptions(),
):
    """Predict class masks (PNG, original size), colour overlays and the competition submission.csv.

    Several MODELS are an ensemble, averaged in probability space: run directories, fold groups
    (`trash fit --fold all`), or folders written by `trash predict --save-probs`.
    The submission is read back and checked after writing. With --backend auto (the default) each run's
    network runs on the fastest engine here (PyTorch fp32, bf16 + channels-last, ONNX Runtime) whose masks
    agree with fp32, timed on the first batch; the engine used is printed and kept in predictions.json.

    Examples:

      trash predict runs/demo/latest --images data/demo --data data/demo/test.json --tta --out preds

      trash predict runs/a/latest runs/b/latest --weights 0.6,0.4 --tta-views d4 --images DIR --out preds
    """
    from app.data.images import screen_listed
    from app.infer.predict import predict as run_predict

    if not options.skip_bad_images:
        screen_listed(images, data)  # corrupt or truncated images: all named now, not a traceback later
    summary = run_predict(models, images, out, data, options, progress())
    for message in summary["skipped"]:
        typer.echo(f"skipped    {message}", err=True)
    typer.echo(f"{summary['images']} images, {len(summary['members'])} member(s), TTA: {', '.join(summary['tta'])}")
    _print_backends(summary["members"])
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
@inference_options(*SHARED, "backend", "batch_size", backend="torch")
def evaluate(
    models: ModelsArg,
    data: Annotated[Path, typer.Option(help="COCO json with ground-truth annotations")],
    images: ImagesOption,
    compare: Annotated[
        str | None,
        typer.Option(help="Also score each model alone and the ensemble with these TTA sets, e.g. identity,flip,d4"),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Folder for evaluate.json, confusion.png, comparison.csv and .html"),
    ] = None,
    options: InferenceOptions = InferenceOptions(),
):
    """Score models against ground truth at the images' original size.

    Prints both mIoU definitions (dataset-level confusion matrix; mean of per-image mIoU) and per-class IoU;
    with --compare, a table of every member and the ensemble under each TTA set.

    Example: trash evaluate runs/a/latest runs/b/latest --data data/demo/val.json --images data/demo
    --compare identity,flip,d4 --out eval
    """
    from app.data.images import screen_listed
    from app.infer.evaluate import evaluate as run_evaluate

    screen_listed(images, data)  # corrupt or truncated images: all named now, not a traceback later
    sets = [s.strip() for s in compare.split(",")] if compare else None
    report = run_evaluate(models, data, images, options, sets, out, progress())
    _print_scores(report)
    _print_comparison(report.get("comparison", []))
    if out:
        typer.echo(f"report     {out / 'evaluate.json'}  (confusion.png{', comparison.csv' if compare else ''})")
    if out and compare:
        from app.report.build import write_evaluate_page

        typer.echo(f"page       {write_evaluate_page(report, list(report['per_class_iou']), out / 'comparison.html')}")


def _print_backends(members: list[dict]) -> None:
    """One line per engine used: which, why, and for how many members."""
    from app.infer.backend import describe

    used: dict[str, list[dict]] = {}
    for m in members:
        if m.get("backend"):
            used.setdefault(m["backend"]["engine"], []).append(m["backend"])
    for choices in used.values():
        count = f" [{len(choices)} members]" if len(members) > 1 else ""
        typer.echo(f"backend    {describe(choices[0])}{count}")


def _print_scores(report: dict) -> None:
    typer.echo(f"{report['images']} images, {len(report['members'])} member(s), TTA {report['tta']}")
    _print_backends(report["members"])
    typer.echo(f"mIoU (dataset confusion matrix) {report['miou']:.4f}")
    typer.echo(f"mIoU (mean of per-image mIoU)   {report['miou_per_image']:.4f}")
    typer.echo(f"pixel accuracy                  {report['pixel_accuracy']:.4f}")
    for name, iou in report["per_class_iou"].items():
        typer.echo(f"  {name[:24]:24s} {'-' if iou is None else f'{iou:.4f}'}")


def _print_comparison(rows: list[dict]) -> None:
    if rows:
        typer.echo(f"{'model':48s} {'tta':10s} {'views':>5s} {'mIoU':>7s} {'per-img':>7s}")
    for row in rows:
        typer.echo(
            f"{row['model'][-48:]:48s} {row['tta']:10s} {row['views']:5d} "
            f"{row['miou']:7.4f} {row['miou_per_image']:7.4f}"
        )


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
    weights, per-class weights and small-component removal are kept only when they raise the OOF mIoU
    (by at least 0.001).

    Example: trash ensemble runs/trashcan/2026-folds runs/trashcan_deeplab/2026-folds --tta-views identity,flip,d4
    """
    from app.infer.ensemble import Search, predict_command, select

    sets = tuple(s.strip() for s in tta_views.split(","))
    result = select(models, Search(sets, max_members, per_class, eval_size=eval_size), out, progress())
    _print_ensemble(result)
    typer.echo(f"chosen: OOF mIoU {result['oof_miou']:.4f}, written to {out}")
    typer.echo(predict_command(result, out))


def _print_ensemble(result: dict) -> None:
    typer.echo(f"out-of-fold images: {result['oof_images']} (scored at {result['eval_size']} px)")
    typer.echo(f"{'model':56s} {'tta':10s} {'OOF mIoU':>8s}")
    for row in result["table"]:
        typer.echo(f"{row['model'][-56:]:56s} {row['tta']:10s} {row['miou']:8.4f}")
    for step in result["steps"]:
        typer.echo(f"greedy: + {step['added']}  ->  {step['miou']:.4f}")
    base = result["steps"][-1]["miou"]
    if "per_class_miou" in result:
        kept = "kept" if result["class_weights"] else "not kept"
        typer.echo(
            f"per-class weights: {result['per_class_miou']:.5f} ({result['per_class_miou'] - base:+.5f}, {kept})"
        )
    if "crf_miou" in result:
        typer.echo(f"dense CRF: {result['crf_miou']:.5f} ({'kept' if result['crf'] else 'not kept'})")
    areas = ", ".join(f"{k}: {v:.5f}" for k, v in result["min_area_scores"].items())
    chosen = "min-area " + str(result["min_area"]) if result["min_area"] else "off"
    typer.echo(f"small-component removal: {areas} ({chosen})")


@app.command(
    short_help="Confident pixels as a COCO json.  e.g. trash pseudo runs/demo/latest --images DIR --out p.json"
)
@friendly
@inference_options("tta", "tta_views", "weights", "class_weights", "batch_size")
def pseudo(
    models: ModelsArg,
    images: Annotated[Path, typer.Option(help="Folder of unlabelled images (a json's file_names are relative to it)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Pseudo-label COCO json to write")],
    data: Annotated[Path | None, typer.Option(help="COCO json listing the images (ids and categories kept)")] = None,
    threshold: Annotated[float, typer.Option(help="Minimum top-class probability for a pixel to be labelled")] = 0.9,
    options: InferenceOptions = InferenceOptions(),
):
    """Pseudo-label images with a model or ensemble: confident pixels become RLE annotations, the rest the
    image's `ignore_mask` (255, ignored by the loss). Add the json to a recipe with data.pseudo.

    Example: trash pseudo runs/demo/latest --images data/demo --data data/demo/test.json --tta --out pseudo.json
    """
    from app.infer.pseudo import pseudo_labels

    summary = pseudo_labels(models, images, out, data, threshold, options, progress())
    typer.echo(
        f"{summary['images']} images, {summary['annotations']} annotations, "
        f"{summary['confident_share']:.1%} of pixels at p >= {threshold}"
    )
    typer.echo(f"pseudo-labels {out}  (recipe: data.pseudo={out})")


@app.command(
    name="export",
    short_help="A run as a verified ONNX file.  e.g. trash export runs/demo/latest --out model.onnx",
)
@friendly
def export_model(
    run: Annotated[Path, typer.Argument(help="Run directory (or its `latest` link, export.pkl or weights.pth)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The ONNX file to write")],
    format: Annotated[str, typer.Option("--format", help="Export format (only onnx)")] = "onnx",
    size: Annotated[
        str | None, typer.Option(help="Input HxW of the graph (multiples of the stride); default the training size")
    ] = None,
    dynamic: Annotated[bool, typer.Option(help="Free height and width (multiples of the stride) instead")] = False,
    fp16: Annotated[bool, typer.Option(help="float16 weights and arithmetic (input/output stay float32)")] = False,
    images: Annotated[
        Path | None, typer.Option(help="Folder of images to verify on; default the run's validation images")
    ] = None,
    check_images: Annotated[int, typer.Option(help="Images ONNX Runtime and PyTorch are compared on")] = 8,
):
    """Write the run's network as ONNX (normalisation inside, probabilities out, metadata: classes, colours,
    size, stride, recipe), then check it: ONNX Runtime against PyTorch on real images. Above the tolerance
    (fp32: 1e-3 on probabilities and 99.9% identical mask pixels) it fails with exit code 5 and writes nothing.

    The file then runs anywhere ONNX Runtime does, and in `trash predict model.onnx` / `trash evaluate model.onnx`.

    Examples:

      trash export runs/demo/latest --out model.onnx

      trash export runs/demo/latest --dynamic --fp16 --images data/demo/images --out model_fp16.onnx
    """
    from app.errors import TrashError
    from app.infer.onnx_export import export_onnx
    from app.infer.onnx_runtime import parse_size

    if format.lower() != "onnx":
        raise TrashError(f"unknown export format {format!r}; valid: onnx")
    if size and dynamic:
        raise TrashError("--size and --dynamic exclude each other: one fixed size, or any multiple of the stride")
    precision = "fp16" if fp16 else "fp32"
    report = export_onnx(run, out, parse_size(size) if size else None, dynamic, precision, images, check_images)
    shape = "dynamic (N, 3, H, W)" if dynamic else f"(N, 3, {report['size'][0]}, {report['size'][1]})"
    typer.echo(f"wrote      {out}  input {shape} RGB 0..255, output probabilities, {precision}")
    typer.echo(
        f"verified   {report['images']} image(s) at {', '.join(report['checked_sizes'])}: max |Δ prob| "
        f"{report['max_prob_diff']:.2e}, identical mask pixels {report['same_pixels']:.4%}"
    )
