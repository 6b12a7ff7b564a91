"""`trash data audit` on planted errors: the top findings are the planted ones far more often than chance.

The fold group here is fabricated: each fold's oof.npz holds what the CLEAN labels say plus smooth noise (what a
good out-of-fold model sees), at the training size, under the same keys and in the same layout as `trash fit
--fold all` writes them; the noisy json (errors planted with a seed) is what the group "trained" on.
tests/cli/test_audit_cli.py runs the command on a real (tiny) fold group.
"""

import collections
import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from app.atomic import savez, write_json
from app.data.check import check_coco
from app.data.coco import ignore_value, load_coco
from app.data.masks import annotation_mask, rasterize
from app.data.noise import plant_errors
from app.data.split import make_folds, write_folds
from app.errors import TrashError
from app.infer.audit import GALLERY_PER_IMAGE, audit, stream_oof
from app.infer.audit_outputs import write_audit, write_clean

OOF_SIZE = 64  # the training size the fabricated folds "trained" at


def fabricated_oof(clean: Path, val_json: Path, images: Path, seed: int) -> dict[str, np.ndarray]:
    """Image path -> (C, 64, 64) float16: softmax of 3 x one-hot(clean labels) + blurred unit noise."""
    rng = np.random.default_rng(seed)
    coco = load_coco(clean)
    by_id = {im.id: im for im in coco.images}
    out = {}
    for im in load_coco(val_json).images:
        mask = cv2.resize(rasterize(coco, by_id[im.id]), (OOF_SIZE, OOF_SIZE), interpolation=cv2.INTER_NEAREST)
        logits = 3.0 * np.eye(len(coco.codes), dtype=np.float32)[mask].transpose(2, 0, 1)
        noise = rng.normal(0, 1.5, logits.shape).astype(np.float32)
        logits += np.stack([cv2.GaussianBlur(n, (0, 0), 1.5) for n in noise]) * 3
        probs = np.exp(logits - logits.max(0))
        out[str(images / im.file_name)] = (probs / probs.sum(0)).astype(np.float16)
    return out


def fake_group(root: Path, noisy: Path, clean: Path, images: Path, folds: int = 2) -> Path:
    """A fold group folder as `trash fit --fold all` leaves it, as far as the audit reads it."""
    split = root / "split"
    write_folds(noisy, make_folds(noisy, folds, group="video", seed=0), split)
    group = root / "group"
    write_json(group / "folds.json", {"folds": folds})
    codes = load_coco(noisy).codes
    for k in range(folds):
        val = split / f"fold{k}" / "val.json"
        resolved = {"classes": codes, "data": {"images": str(images), "valid_images": "", "overlap": "largest-first"}}
        write_json(group / f"fold{k}" / "resolved.json", {**resolved, "data_sources": {"valid": str(val)}})
        oof = fabricated_oof(clean, val, images, seed=k)
        savez(group / f"fold{k}" / "oof.npz", image=np.array(list(oof)), probs=np.stack(list(oof.values())))
    return group


@pytest.fixture(scope="module")
def planted(demo, tmp_path_factory):
    root = tmp_path_factory.mktemp("audit")
    data = json.loads(Path(demo["train"]).read_text())
    for i, image in enumerate(data["images"]):
        image["video"] = f"v{i % 4}"
    (root / "clean.json").write_text(json.dumps(data))
    noisy, record = plant_errors(data, seed=7, relabel=0.15, delete=0.10, spurious=0.10)
    record["loose"] = loosen(noisy, record, count=6, seed=7)
    (root / "noisy.json").write_text(json.dumps(noisy))
    group = fake_group(root, root / "noisy.json", root / "clean.json", Path(demo["images"]))
    report, gallery = audit(group, root / "out", gallery_size=6)
    return dict(root=root, group=group, noisy=noisy, record=record, report=report, gallery=gallery, data=data)


def _precision_at_k(findings, kind: str, planted_ids: set, k: int) -> float:
    top = [f for f in findings if f.kind == kind][:k]
    return sum(f.annotation_id in planted_ids for f in top) / k


def test_top_wrong_class_findings_are_the_relabelled_annotations(planted):
    relabelled = set(planted["record"]["relabel"])
    rate = len(relabelled) / len(planted["noisy"]["annotations"])  # what a random ranking would hit
    precision = _precision_at_k(planted["report"]["findings"], "wrong_class", relabelled, len(relabelled))
    assert precision >= max(0.6, 3 * rate), (precision, rate)
    top = next(f for f in planted["report"]["findings"] if f.kind == "wrong_class")
    names = {c["id"]: c["name"] for c in planted["data"]["categories"]}
    assert top.suggested == names[planted["record"]["relabel"][top.annotation_id][0]]  # its true class


def test_top_spurious_findings_are_the_planted_boxes(planted):
    added = set(planted["record"]["spurious"])
    rate = len(added) / len(planted["noisy"]["annotations"])
    precision = _precision_at_k(planted["report"]["findings"], "spurious", added, len(added))
    assert precision >= max(0.6, 3 * rate), (precision, rate)


def _visible(coco, image, ann: dict) -> np.ndarray:
    """The pixels of `ann` the clean mask gives its class (others painted over it are not its pixels)."""
    index = coco.class_of_category[ann["category_id"]]
    return annotation_mask(ann, image.height, image.width) & (rasterize(coco, image) == index)


def test_missing_regions_are_the_deleted_annotations(planted):
    clean = load_coco(planted["root"] / "clean.json")
    by_id = {im.id: im for im in clean.images}
    deleted = [(a, _visible(clean, by_id[a["image_id"]], a)) for a in planted["record"]["delete"]]
    deleted = [(a, v) for a, v in deleted if v.sum() >= 64]  # visible enough to be found at all

    def covers(finding) -> bool:
        image = by_id[finding.image_id]
        region = annotation_mask({"segmentation": finding.region}, image.height, image.width)
        return any(a["image_id"] == image.id and region[v].mean() > 0.3 for a, v in deleted)

    missing = [f for f in planted["report"]["findings"] if f.kind == "missing"]
    k = len(deleted)
    assert k and sum(covers(f) for f in missing[:k]) / k >= 0.6, [(f.image_id, f.pixels) for f in missing[:k]]


def test_loose_boundaries_are_the_grown_polygons(planted):
    grown = planted["record"]["loose"]
    loose = [f for f in planted["report"]["findings"] if f.kind == "loose_boundary"]
    assert loose and _precision_at_k(planted["report"]["findings"], "loose_boundary", grown, len(loose)) >= 0.6
    assert sum(f.annotation_id in grown for f in loose) >= len(grown) / 2


def test_image_scores_rank_images_with_planted_errors_first(planted):
    touched = {a["image_id"] for a in planted["record"]["delete"]}
    touched |= {a["image_id"] for a in planted["noisy"]["annotations"] if a["id"] in planted["record"]["relabel"]}
    planted_ids = set(planted["record"]["spurious"]) | planted["record"]["loose"]
    touched |= {a["image_id"] for a in planted["noisy"]["annotations"] if a["id"] in planted_ids}
    images = planted["report"]["images"]
    rate = len(touched) / len(images)
    k = max(1, len(images) // 4)
    assert sum(r["image_id"] in touched for r in images[:k]) / k >= min(1.0, rate + 0.2), rate


def test_outputs_and_the_clean_json_undo_the_planted_errors(planted, demo):
    root, report = planted["root"], planted["report"]
    written = write_audit(report, planted["gallery"], load_coco(report["data"]).codes, root / "out")
    rows = (root / "out" / "audit.csv").read_text().splitlines()
    assert len(rows) == len(report["findings"]) + 1 and rows[0].startswith("image_id,file_name,annotation_id,kind")
    assert cv2.imread(str(written["gallery"])) is not None
    clean = write_clean(report["data"], report["findings"], root / "clean_out.json")
    assert check_coco(clean["json"], demo["images"], read_images=False).ok
    changes = clean["changes"].read_text().splitlines()
    assert len(changes) == 1 + clean["relabel"] + clean["drop"] + clean["ignore"] > 1
    out = json.loads(clean["json"].read_text())
    cats = {a["id"]: a["category_id"] for a in out["annotations"]}
    truth = {a["id"]: a["category_id"] for a in planted["data"]["annotations"]}
    relabelled = planted["record"]["relabel"]
    fixed = sum(cats.get(i) == truth[int(i)] for i in relabelled)
    assert fixed >= len(relabelled) / 2, (fixed, len(relabelled))
    assert sum(i not in cats for i in planted["record"]["spurious"]) >= len(planted["record"]["spurious"]) / 2
    assert any("ignore_mask" in im for im in out["images"]) == (clean["ignore"] > 0)


def test_oof_is_streamed_image_by_image_as_written(planted):
    data = np.load(planted["group"] / "fold0" / "oof.npz")
    streamed = list(stream_oof(planted["group"] / "fold0" / "oof.npz"))
    assert [i for i, _ in streamed] == [str(i) for i in data["image"]]
    assert all(np.array_equal(p, q) for (_, p), q in zip(streamed, data["probs"]))


def test_a_single_run_a_missing_fold_and_another_json_are_refused(planted, tmp_path):
    group = planted["group"]
    with pytest.raises(TrashError, match="single run"):
        audit(group / "fold0", tmp_path)
    (tmp_path / "g" / "fold0").mkdir(parents=True)
    (tmp_path / "g" / "folds.json").write_text(json.dumps({"folds": 2}))
    for name in ("resolved.json", "oof.npz"):
        (tmp_path / "g" / "fold0" / name).write_bytes((group / "fold0" / name).read_bytes())
    with pytest.raises(TrashError, match="fold1 of 2 folds have no oof.npz"):
        audit(tmp_path / "g", tmp_path)
    other = json.loads((planted["root"] / "noisy.json").read_text())
    other["categories"][0]["name"] = "Something else"
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(TrashError, match="has classes"):
        audit(group, tmp_path, data=tmp_path / "other.json")
    other = json.loads((planted["root"] / "noisy.json").read_text())
    other["images"] = other["images"][1:]
    other["annotations"] = [a for a in other["annotations"] if a["image_id"] != planted["data"]["images"][0]["id"]]
    (tmp_path / "fewer.json").write_text(json.dumps(other))
    with pytest.raises(TrashError, match="lacks 1 image"):
        audit(group, tmp_path, data=tmp_path / "fewer.json")


def loosen(noisy: dict, record: dict, count: int, seed: int, grow: float = 0.4) -> set[int]:
    """Replaces `count` untouched annotations' polygons by their box grown by `grow` (a loose boundary)."""
    rng = np.random.default_rng(seed)
    planted = {int(i) for i in record["relabel"]} | set(record["spurious"])
    sizes = {im["id"]: (im["width"], im["height"]) for im in noisy["images"]}
    free = [a for a in noisy["annotations"] if a["id"] not in planted and a["area"] >= 400]
    chosen = [free[i] for i in rng.choice(len(free), min(count, len(free)), replace=False)]
    for ann in chosen:
        x, y, w, h = ann["bbox"]
        width, height = sizes[ann["image_id"]]
        x0, y0 = max(0.0, x - grow * w / 2), max(0.0, y - grow * h / 2)
        x1, y1 = min(width - 1.0, x + w * (1 + grow / 2)), min(height - 1.0, y + h * (1 + grow / 2))
        ann["segmentation"] = [[x0, y0, x1, y0, x1, y1, x0, y1]]
        ann["bbox"], ann["area"] = [x0, y0, x1 - x0, y1 - y0], (x1 - x0) * (y1 - y0)
    return {a["id"] for a in chosen}


def test_each_pass_runs_under_the_progress_bar_once_over_every_image(planted, tmp_path):
    seen = []

    def progress(gen, total=None):  # app/progress.py `bar` takes the same arguments
        seen.append([total, 0])
        for item in gen:
            seen[-1][1] += 1
            yield item

    audit(planted["group"], tmp_path, progress=progress, gallery_size=0)
    n = planted["report"]["images_audited"]
    assert seen == [[n, n], [n, n]] and n == len(planted["data"]["images"])


def test_doubted_findings_are_pruned_their_pixels_ignored_and_the_rest_kept(planted, tmp_path):
    """Between the doubt and the clean score an annotation leaves the json and only its own pixels turn 255."""
    report = planted["report"]
    doubted = [replace(f, score=0.2) for f in report["findings"] if f.kind in ("wrong_class", "spurious")][:6]
    assert doubted, "the planted errors give annotation findings"
    done = write_clean(report["data"], doubted, tmp_path / "pruned.json", min_score=0.3, doubt_score=0.1)
    assert (done["relabel"], done["drop"], done["ignore"], done["pruned"]) == (0, 0, len(doubted), len(doubted))
    pruned = {f.annotation_id for f in doubted}
    cleaned = load_coco(done["json"])
    assert not pruned & {a["id"] for a in json.loads(done["json"].read_text())["annotations"]}
    noisy = json.loads(Path(report["data"]).read_text())
    (tmp_path / "without.json").write_text(
        json.dumps({**noisy, "annotations": [a for a in noisy["annotations"] if a["id"] not in pruned]})
    )
    without = load_coco(tmp_path / "without.json")
    ignore = ignore_value(len(cleaned.codes))
    for image in cleaned.images:
        mask = rasterize(cleaned, image)
        base = rasterize(without, {im.id: im for im in without.images}[image.id])
        anns = without.anns_by_image.get(image.id, [])
        kept = np.zeros(mask.shape, bool)
        for ann in anns:
            kept |= annotation_mask(ann, image.height, image.width)
        gone = np.zeros(mask.shape, bool)
        for ann in noisy["annotations"]:
            if ann["image_id"] == image.id and ann["id"] in pruned:
                gone |= annotation_mask(ann, image.height, image.width)
        assert np.array_equal(mask == ignore, gone & ~kept), image.id
        assert np.array_equal(mask[mask != ignore], base[mask != ignore]), image.id
    rows = done["changes"].read_text().splitlines()
    assert len(rows) == 1 + len(doubted) and all(r.startswith("ignore,") for r in rows[1:])
    for doubt in (0.3, 0.5):  # at or above the clean score nothing is pruned
        same = write_clean(report["data"], doubted, tmp_path / "same.json", min_score=0.3, doubt_score=doubt)
        assert same["ignore"] == 0 and json.loads(same["json"].read_text())["annotations"] == noisy["annotations"]
    with pytest.raises(TrashError, match="clean-doubt-score"):
        write_clean(report["data"], doubted, tmp_path / "bad.json", min_score=0.3, doubt_score=-0.1)


def test_the_gallery_shows_each_image_best_findings_only(planted, tmp_path):
    per_image = collections.Counter(f.image_id for f in planted["report"]["findings"])
    assert max(per_image.values()) > GALLERY_PER_IMAGE, "the planted errors give some image several findings"
    _, gallery = audit(planted["group"], tmp_path, gallery_size=len(planted["report"]["findings"]))
    shown = collections.Counter(row["finding"].image_id for row in gallery)
    assert shown == {image: min(n, GALLERY_PER_IMAGE) for image, n in per_image.items()}
    for image in shown:  # the image's best ones
        best = sorted((f.score for f in planted["report"]["findings"] if f.image_id == image), reverse=True)
        assert (
            sorted((r["finding"].score for r in gallery if r["finding"].image_id == image), reverse=True)
            == best[: shown[image]]
        )
