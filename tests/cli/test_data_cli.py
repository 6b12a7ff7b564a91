"""`trash data ...` as a user runs it, and `fit` refusing (or dropping) bad data and training a fold."""

import json
from pathlib import Path

import cv2
import numpy as np
from typer.testing import CliRunner

from app.cli import app
from app.data.coco import load_coco
from app.data.masks import rasterize
from tests.conftest import write_recipe

runner = CliRunner()


def run(*args, code=0):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output
    return result


def test_check_is_clean_on_demo_and_names_a_broken_annotation(demo, tmp_path):
    assert "0 error(s)" in run("data", "check", demo["train"], "--images", demo["images"]).output
    data = json.loads(Path(demo["train"]).read_text())
    data["annotations"][3]["segmentation"] = [[1.0, 2.0, float("nan"), 4.0, 5.0, 6.0]]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    result = run("data", "check", bad, "--images", demo["images"], code=1)
    assert f"annotation {data['annotations'][3]['id']}" in result.output and "polygon_nonfinite" in result.output


def test_masks_are_the_training_masks_and_overlap_rule_is_selectable(demo, tmp_path):
    run("data", "masks", demo["train"], "--images", demo["images"], "--out", tmp_path / "a")
    run(
        "data",
        "masks",
        demo["train"],
        "--images",
        demo["images"],
        "--out",
        tmp_path / "b",
        "--overlap",
        "smallest-first",
    )
    coco = load_coco(demo["train"])
    differs = 0
    for image in coco.images:
        name = Path(image.file_name).with_suffix(".png")
        a, b = (cv2.imread(str(tmp_path / d / name), cv2.IMREAD_UNCHANGED) for d in ("a", "b"))
        np.testing.assert_array_equal(a, rasterize(coco, image))
        differs += not np.array_equal(a, b)
    assert differs > 0  # the demo data has overlaps, so the rule matters


def test_stats_pixels_equal_the_written_masks(demo, tmp_path):
    run("data", "masks", demo["val"], "--images", demo["images"], "--out", tmp_path / "m")
    result = run("data", "stats", demo["val"], "--images", demo["images"], "--json", "--plot", tmp_path / "s.png")
    stats = json.loads(result.output)
    counts = np.zeros(len(stats["classes"]), np.int64)
    for path in (tmp_path / "m").rglob("*.png"):
        counts += np.bincount(cv2.imread(str(path), -1).ravel(), minlength=len(counts))[: len(counts)]
    assert [c["pixels"] for c in stats["classes"].values()] == counts.tolist()
    assert (tmp_path / "s.png").stat().st_size > 5000


def test_show_writes_a_grid(demo, tmp_path):
    run("data", "show", demo["val"], "--images", demo["images"], "--out", tmp_path / "g.png", "--count", 4)
    assert cv2.imread(str(tmp_path / "g.png")).shape[1] > 600


def test_fit_refuses_bad_data_then_drops_it_and_trains_a_fold(demo, tmp_path):
    data = json.loads(Path(demo["train"]).read_text())
    for i, image in enumerate(data["images"]):
        image["video"] = f"v{i % 4}"
    source = tmp_path / "all.json"
    source.write_text(json.dumps(data))
    run("data", "split", source, "--folds", 2, "--group", "video", "--out", tmp_path / "split")
    fold_train = tmp_path / "split" / "fold1" / "train.json"
    fold = json.loads(fold_train.read_text())
    bad_id = fold["annotations"][0]["id"]
    fold["annotations"][0]["segmentation"] = [[1.0, 2.0, 3.0, 4.0]]  # 4 numbers: pycocotools would read a box
    fold_train.write_text(json.dumps(fold))
    recipe = write_recipe(
        tmp_path / "r.py", demo, data={"split": str(tmp_path / "split"), "annotations": ""}, train={"epochs": 1}
    )
    refused = run("fit", recipe, "--fold", 1, "--out", tmp_path / "runs", code=2)
    assert f"annotation {bad_id} " in refused.output and "drop_bad_annotations" in refused.output
    result = run(
        "fit",
        recipe,
        "--fold",
        1,
        "--set",
        "data.drop_bad_annotations=true",
        "--set",
        "loss.class_weight_scheme=sqrt",
        "--out",
        tmp_path / "runs",
    )
    assert f"annotation {bad_id} " in result.output
    resolved = json.loads(((tmp_path / "runs" / "r" / "latest") / "resolved.json").read_text())
    assert resolved["data"]["fold"] == 1 and resolved["data_sources"]["valid"].endswith("fold1/val.json")
    assert len(resolved["dropped"]) == 1
    weights = resolved["class_weights"]  # computed from the fold's training masks: background is the most common
    assert len(weights) == len(resolved["classes"]) and weights[0] == min(w for w in weights if w > 0)
