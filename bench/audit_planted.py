"""The audit's proof on planted errors (docs/audit.md; not part of `make bench`: hours on 2 CPU cores).

1. A video split of the dataset: fold 0's validation videos are the held-out test set (never trained on, nothing
   chosen on them); the rest (dev) is what gets noisy.
2. Errors planted into dev with `--seed` (app/data/noise.py): 10% of the annotations relabelled, 5% deleted,
   spurious background boxes for 3% more.
3. `trash fit RECIPE --fold all` on a K-fold video split of the noisy dev json, then `trash data audit` of that
   group with `--write-clean`.
4. Precision and recall of the planted errors among each kind's top-k findings, against a random ranking.
5. The same recipe trained once on the noisy, the cleaned and the original dev json (20% of the images held out
   for its own validation), each scored on the test videos.

    .venv/bin/python -m bench.audit_planted --out runs/audit-planted                      # trashcan, the protocol
    .venv/bin/python -m bench.audit_planted --out /tmp/smoke --data data/demo/train.json --images data/demo \\
        --group '' --recipe recipes/demo.py --set data.size=64 --set train.epochs=1 --set model.encoder=test_resnet

Each step is skipped when its output exists, so an interrupted run continues. results.json and results.md are
written in --out.
"""

import argparse
import json
from pathlib import Path

import numpy as np

from bench.common import REPO, SHARED_DATA

TRASHCAN = SHARED_DATA / "trashcan"
RANKS = (1.0, 2.0)  # k as a multiple of the planted count of each kind
TOPS = (10, 25, 50)  # and fixed k: what a person reviewing the top of the list sees
COVER = 0.3  # a missing finding finds a deleted annotation when it covers this share of its visible pixels


def _split(source: Path, out: Path, folds: int, group: str) -> Path:
    from app.data.split import make_folds, write_folds

    if not (out / "summary.json").is_file():
        write_folds(source, make_folds(source, folds, group or None, seed=0), out)
    return out


def _plant(dev: Path, out: Path, seed: int, rates: tuple[float, float, float]) -> tuple[Path, dict]:
    from app.atomic import write_json
    from app.data.noise import plant_errors

    if not (out / "planted.json").is_file():
        noisy, record = plant_errors(json.loads(dev.read_text()), seed, *rates)
        write_json(out / "noisy.json", noisy)
        write_json(out / "planted.json", record)
    return out / "noisy.json", json.loads((out / "planted.json").read_text())


def _group(recipe: Path, split: Path, overrides: list[str], out: Path) -> Path:
    from app.train.folds import fit_folds

    marker = out / "group.txt"
    if not marker.is_file():
        sets = [*overrides, f"data.split={split}", "data.annotations=", "data.valid_annotations="]
        group = fit_folds(recipe, sets, out=out / "runs")
        marker.write_text(str(group))
    return Path(marker.read_text())


def _audit(group: Path, out: Path) -> tuple[dict, Path]:
    from app.data.coco import load_coco
    from app.infer.audit import audit
    from app.infer.audit_outputs import write_audit, write_clean

    clean = out / "clean.json"
    if not clean.is_file():
        report, gallery = audit(group, out / "audit")
        write_audit(report, gallery, load_coco(report["data"]).codes, out / "audit")
        write_clean(report["data"], report["findings"], clean)
    return json.loads((out / "audit" / "audit.json").read_text()), clean


def _visible(coco, image, ann: dict) -> np.ndarray:
    from app.data.masks import annotation_mask, rasterize

    painted = rasterize(coco, image) == coco.class_of_category[ann["category_id"]]
    return annotation_mask(ann, image.height, image.width) & painted


def _ranking(findings: list[dict], kind: str, hit, planted: int, pool: int) -> dict:
    """precision@k and recall@k of one kind's ranked findings at k = RANKS x planted, and a random ranking's."""
    ranked = [hit(f) for f in findings if f["kind"] == kind]
    out = {"planted": planted, "found": len(ranked)}
    for r in RANKS:
        k = max(1, round(r * planted))
        hits = sum(ranked[:k])
        out[f"precision@{r:g}x"] = hits / k
        out[f"recall@{r:g}x"] = hits / planted if planted else None
        out[f"random_precision@{r:g}x"] = planted / pool if pool else None  # the planted rate
        out[f"random_recall@{r:g}x"] = min(1.0, k / pool) if pool else None
    for k in TOPS:
        out[f"precision@{k}"] = sum(ranked[:k]) / k
    return out


def score_findings(report: dict, record: dict, original: Path, noisy: Path) -> dict:
    """Each kind's ranking against the planted errors (a missing region finds a deleted annotation it covers)."""
    from app.data.coco import load_coco

    findings, pool = report["findings"], len(json.loads(noisy.read_text())["annotations"])
    relabel, spurious = {int(i) for i in record["relabel"]}, set(record["spurious"])
    coco = load_coco(original)
    images = {im.id: im for im in coco.images}
    deleted = [(a, _visible(coco, images[a["image_id"]], a)) for a in record["delete"] if a["image_id"] in images]
    deleted = [(a, v) for a, v in deleted if v.sum() >= report["settings"]["min_pixels"]]

    def finds_deleted(f: dict) -> bool:  # its box holds COVER of a deleted annotation's visible pixels
        x, y, w, h = f["bbox"]
        return any(
            a["image_id"] == f["image_id"] and v[y : y + h, x : x + w].sum() >= COVER * v.sum() for a, v in deleted
        )

    return {
        "wrong_class": _ranking(findings, "wrong_class", lambda f: f["annotation_id"] in relabel, len(relabel), pool),
        "spurious": _ranking(findings, "spurious", lambda f: f["annotation_id"] in spurious, len(spurious), pool),
        "missing": _ranking(findings, "missing", finds_deleted, len(deleted), 0),
    }


def cleaning_tally(changes: Path, record: dict) -> dict:
    """Per action of the cleaned json (changes.csv): how many changes touch a planted annotation (relabelled or
    spurious) and how many a real one (the planting left it as it was); missing regions are counted as changes only."""
    import csv

    planted = {int(i) for i in record["relabel"]} | set(record["spurious"])
    tally: dict[str, dict[str, int]] = {}
    for row in csv.DictReader(changes.open()):
        counts = tally.setdefault(row["action"], {"changes": 0, "planted": 0, "real": 0})
        counts["changes"] += 1
        if not row["annotation_id"]:  # a missing region: scored by the ranking, not here
            continue
        ann = int(row["annotation_id"])
        counts["planted" if ann in planted else "real"] += 1
    return tally


def _held_out_miou(name: str, recipe: Path, train_json: Path, test: Path, images: str, sets: list[str], out: Path,
                   seed: int | None = None):  # fmt: skip
    """Held-out mIoU of the recipe trained on `train_json` (with the recipe's own seed, or `seed`)."""
    from app.infer.evaluate import evaluate
    from app.train.run import fit

    name = name if seed is None else f"{name}-s{seed}"
    result = out / f"eval-{name}.json"
    if not result.is_file():
        sets = [*sets, f"data.annotations={train_json}", "data.valid_annotations=", "data.split=", "data.fold=-1"]
        sets += [] if seed is None else [f"train.seed={seed}"]
        run = fit(recipe, sets, out=out / f"runs-{name}")
        result.write_text(json.dumps(evaluate([run], test, images, out=out / f"eval-{name}")))
    return json.loads(result.read_text())["miou"]


def _held_out(a, jsons: tuple, test: Path, overrides: list[str]) -> dict[str, list[float]]:
    """Each json's held-out mIoU per training seed, seed by seed (an interrupted run leaves whole seeds)."""
    miou: dict[str, list[float]] = {name: [] for name, _ in jsons}
    for seed in (None, *a.train_seeds):
        for name, j in jsons:
            miou[name].append(_held_out_miou(name, a.recipe, j, test, a.images, overrides, a.out, seed))
    return miou


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=TRASHCAN / "annotations.json")
    p.add_argument("--images", default=str(TRASHCAN / "images"))
    p.add_argument("--group", default=r"vid_\d+", help="video regex or image field of the splits ('' = per image)")
    p.add_argument("--recipe", type=Path, default=REPO / "recipes" / "trashcan.py")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="recipe override, repeatable")
    p.add_argument("--seed", type=int, default=2026, help="which errors are planted")
    rates = ("RELABEL", "DELETE", "SPURIOUS")
    p.add_argument("--rates", type=float, nargs=3, default=(0.10, 0.05, 0.03), metavar=rates)
    p.add_argument("--folds", type=int, default=3, help="folds of the noisy dev json (the audit's group)")
    more = "more seeds for the noisy / cleaned / original trainings (the recipe's own always runs)"
    p.add_argument("--train-seeds", type=int, nargs="*", default=[], help=more)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    overrides = [*a.overrides, f"data.images={a.images}"]
    test_split = _split(a.data, a.out / "split-test", 5, a.group)
    dev, test = test_split / "fold0" / "train.json", test_split / "fold0" / "val.json"
    noisy, record = _plant(dev, a.out, a.seed, tuple(a.rates))
    group = _group(a.recipe, _split(noisy, a.out / "split-noisy", a.folds, a.group), overrides, a.out)
    report, clean = _audit(group, a.out)
    results = {
        "seed": a.seed, "rates": list(a.rates), "group": str(group), "counts": report["counts"],
        "ranking": score_findings(report, record, dev, noisy),
        "cleaning": cleaning_tally(clean.with_name(f"{clean.stem}.changes.csv"), record),
        "held_out_miou": _held_out(a, (("noisy", noisy), ("cleaned", clean), ("original", dev)), test, overrides),
        "train_seeds": ["recipe", *a.train_seeds],
    }  # fmt: skip
    (a.out / "results.json").write_text(json.dumps(results, indent=2))
    (a.out / "results.md").write_text(markdown(results))
    print(markdown(results))
    return results


def markdown(results: dict) -> str:
    """The ranking table (k = the planted count of the kind) and the held-out mIoU table."""
    head = ("kind", "planted", "found", "precision@k", "random", "recall@k", "precision@2k", "recall@2k",
            *(f"precision@{k}" for k in TOPS))  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for kind, r in results["ranking"].items():
        cells = [kind, r["planted"], r["found"], _f(r["precision@1x"]), _f(r["random_precision@1x"])]
        cells += [_f(r["recall@1x"]), _f(r["precision@2x"]), _f(r["recall@2x"])]
        cells += [_f(r.get(f"precision@{k}")) for k in TOPS]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    lines += ["", "| cleaned json: action | changes | of planted errors | of real annotations |", "|---|---|---|---|"]
    for action, t in results.get("cleaning", {}).items():
        lines.append(f"| {action} | {t['changes']} | {t['planted']} | {t['real']} |")
    miou, seeds = results["held_out_miou"], results.get("train_seeds", ["recipe"])
    head = ["trained on", *(f"seed {s}" for s in seeds), "mean"] if len(seeds) > 1 else ["trained on", "held-out mIoU"]
    lines += ["", "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for name, values in miou.items():
        values = values if isinstance(values, list) else [values]
        cells = [f"{v:.4f}" for v in values] + ([f"{np.mean(values):.4f}"] if len(values) > 1 else [])
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _f(value) -> str:
    return "-" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    main()
