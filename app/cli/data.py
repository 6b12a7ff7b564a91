"""Data commands: demo-data, and `trash data` check / masks / stats / split / show / audit."""

import json
from pathlib import Path
from typing import Annotated

import typer

from app.cli.base import app, friendly, progress
from app.cli.options import ImagesOption
from app.data.masks import OVERLAP_RULES
from app.data.stats import WEIGHT_SCHEMES
from app.errors import DATA_ERRORS, TrashError

data_app = typer.Typer(
    help="Look at and prepare COCO data: check, masks, stats, split, show, audit.\n\n"
    "Example: trash data check data/train.json --images data",
    no_args_is_help=True,
    rich_markup_mode="rich",
)
app.add_typer(
    data_app,
    name="data",
    short_help="check / masks / stats / split / show / audit.  e.g. trash data check a.json --images DIR",
)
AnnArg = Annotated[Path, typer.Argument(help="COCO json")]


@app.command("demo-data", short_help="Write the synthetic demo dataset.  e.g. trash demo-data data/demo")
@friendly
def demo_data(
    out: Annotated[Path, typer.Argument(help="Folder to write images/ and train/val/test json into")],
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same files")] = 0,
):
    """Write a synthetic COCO dataset with the reference dataset's 10 object classes (+ background).

    Example: trash demo-data data/demo --seed 0
    """
    from app.data.synthetic import make_demo_dataset

    paths = make_demo_dataset(out, seed=seed)
    for split in ("train", "val", "test"):
        typer.echo(f"{split:5s} {paths[split]}")


@data_app.command("check", short_help="Every problem of a COCO json + images in one report.")
@friendly
def data_check(annotations: AnnArg, images: ImagesOption):
    """Validate a COCO json and its images before anything reaches pycocotools; exit 1 when errors are found.

    Example: trash data check data/train.json --images data
    """
    from app.data.check import check_coco

    report = check_coco(annotations, images, progress=progress())
    typer.echo(report.summary())
    if not report.ok:
        raise typer.Exit(DATA_ERRORS)


@data_app.command("masks", short_help="One class-mask PNG per image (pixel = class index).")
@friendly
def data_masks(
    annotations: AnnArg,
    images: ImagesOption,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the mask PNGs (named like the images)")],
    overlap: Annotated[
        str,
        typer.Option(
            help="Paint order of overlapping annotations: "
            + "; ".join(f"{k}: {v.help}" for k, v in OVERLAP_RULES.items())
        ),
    ] = "largest-first",
):
    """Rasterize a COCO json into class-index PNGs: 0 background, category ids ascending → 1..N.

    Overlaps are painted in the order of the --overlap rule; training uses the same function.

    Example: trash data masks data/train.json --images data --out data/masks
    """
    from app.data.coco import load_coco
    from app.data.masks import write_masks

    OVERLAP_RULES[overlap]
    _refuse_bad_data(annotations, images)
    coco = load_coco(annotations)
    written = write_masks(coco, out, overlap, progress())
    typer.echo(f"{len(written)} masks in {out} (classes: {', '.join(f'{i}={c}' for i, c in enumerate(coco.codes))})")


@data_app.command("stats", short_help="Per-class instances, images, pixels, class weights, bar chart.")
@friendly
def data_stats(
    annotations: AnnArg,
    images: ImagesOption,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full statistics as JSON")] = False,
    plot: Annotated[Path | None, typer.Option(help="Bar-chart PNG (default: <json stem>_stats.png here)")] = None,
):
    """Class statistics from the rasterized masks and class-weight suggestions (loss.class_weight_scheme).

    Example: trash data stats data/train.json --images data --json
    """
    from app.data.coco import load_coco
    from app.data.stats import dataset_stats, plot_stats

    _refuse_bad_data(annotations, images)
    stats = dataset_stats(load_coco(annotations), progress=progress())
    png = plot_stats(stats, plot or Path(f"{annotations.stem}_stats.png"))
    if as_json:
        typer.echo(json.dumps(stats, indent=2))
        return
    _print_stats(stats)
    typer.echo(f"bar chart {png}")


def _print_stats(stats: dict) -> None:
    header = f"{'class':24s} {'instances':>9s} {'images':>7s} {'pixels':>12s} {'share':>9s} "
    typer.echo(header + " ".join(f"{s:>8s}" for s in WEIGHT_SCHEMES))
    for i, (name, row) in enumerate(stats["classes"].items()):
        weights = " ".join(f"{stats['weights'][s][i]:8.3f}" for s in WEIGHT_SCHEMES)
        counts = f"{row['instances']:9d} {row['images']:7d} {row['pixels']:12d} {row['share']:9.5f}"
        typer.echo(f"{name[:24]:24s} {counts} {weights}")


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
    from app.data.split import make_folds, write_folds

    _refuse_bad_data(annotations, None)
    made = make_folds(annotations, folds, group, seed, progress=progress())
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
    from app.data.show import show_coco

    typer.echo(f"grid {show_coco(annotations, images, out, count, seed, masks)}")


@data_app.command("audit", short_help="Wrong-class, missing, spurious, loose labels from a fold group's OOF.")
@friendly
def data_audit(
    group: Annotated[Path, typer.Argument(help="A `trash fit RECIPE --fold all` group folder")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for audit.csv, audit.json, images.csv, gallery.png")],
    data: Annotated[
        Path | None, typer.Option(help="The json to audit (default: the folds' validation jsons, merged)")
    ] = None,
    images: Annotated[Path | None, typer.Option(help="Images folder for the gallery (default: the group's)")] = None,
    top: Annotated[int, typer.Option(help="Findings shown in gallery.png (and printed)")] = 24,
    write_clean: Annotated[
        Path | None, typer.Option(help="Also write this cleaned COCO json (+ <name>.changes.csv listing each change)")
    ] = None,
    clean_min_score: Annotated[float, typer.Option(help="Least score (0..1) of a finding --write-clean applies")] = 0.3,
    clean_doubt_score: Annotated[
        float, typer.Option(help="Findings from this score up to --clean-min-score are pruned: their pixels ignored")
    ] = 0.1,
):
    """Confident Learning on out-of-fold probabilities: every image scored by a fold model that never saw it.

    Finds wrong_class (another class is confidently seen), spurious (background is), missing (an unlabelled
    object-sized region of a class) and loose_boundary annotations, each with a score in 0..1 (higher = more
    likely an error) and the class the model suggests; ranks images by label quality (images.csv, worst first).
    --write-clean relabels wrong classes, drops spurious annotations and adds missing regions to the image's
    ignore_mask (255: neither background nor a class), listing every change; findings it only doubts (score
    between --clean-doubt-score and --clean-min-score) are pruned: the annotation leaves the json, its pixels are
    ignored. See docs/audit.md.

    Example: trash data audit runs/base/latest --out audit --write-clean data/clean.json

    Example (relabel and drop only, prune nothing): trash data audit runs/base/latest --out audit
    --write-clean data/clean.json --clean-doubt-score 0.3
    """
    from app.data.coco import load_coco
    from app.infer.audit import audit
    from app.infer.audit_outputs import record_in_group, write_audit
    from app.infer.audit_outputs import write_clean as clean_json
    from app.report.build import report_after_fit

    report, gallery = audit(group, out, data, gallery_size=top, progress=progress(), images=images)
    written = write_audit(report, gallery, load_coco(report["data"]).codes, out)
    record_in_group(group, report, written, top)
    page = report_after_fit(group)  # the group's page gains the audit (a failing page only warns)
    if page:
        written["page"] = page
    _print_audit(report, written, top)
    if write_clean:
        done = clean_json(report["data"], report["findings"], write_clean, clean_min_score, clean_doubt_score)
        typer.echo(
            f"clean    {done['json']}: {done['relabel']} relabelled, {done['drop']} dropped, "
            f"{done['ignore']} ignored ({done['pruned']} of them doubted annotations); changes in {done['changes']}"
        )


WEAK_MIOU = 0.3  # out-of-fold mIoU under which the audit warns that its models are too weak to judge labels


def _print_audit(report: dict, written: dict, top: int) -> None:
    counts = ", ".join(f"{kind} {n}" for kind, n in report["counts"].items())
    typer.echo(f"{report['images_audited']} images audited; findings: {counts}")
    if report["oof_miou"] is not None and report["oof_miou"] < WEAK_MIOU:
        typer.echo(
            f"warning: the fold models' out-of-fold mIoU is {report['oof_miou']:.3f}: classes they have not learned "
            "look spurious; review the gallery before using --write-clean",
            err=True,
        )
    for f in report["findings"][:top]:
        who = f"annotation {f.annotation_id}" if f.annotation_id is not None else f"region {list(f.bbox)}"
        typer.echo(f"  {f.score:.2f} {f.kind:14s} image {f.image_id} {who}: {f.label} -> {f.suggested} ({f.pixels} px)")
    for name, path in written.items():
        typer.echo(f"{name:8s} {path}")


def _refuse_bad_data(annotations: Path, images: Path | None) -> None:
    """The json's own errors (not its image files'), as `trash data check` reports them, refuse the command."""
    from app.data.check import check_coco

    report = check_coco(annotations, images, read_images=False)
    if not report.ok:
        raise TrashError(
            f"{report.path} has errors; run `trash data check` for the full report:\n"
            + "\n".join(p.message for p in report.errors[:10])
        )
