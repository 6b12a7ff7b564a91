"""End to end as a user runs it: fit → run directory → export loaded in a fresh process → predict → evaluate."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from app.cli import app
from tests.conftest import REPO, shared_dataset, write_recipe

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def test_run_directory_stands_alone(trained_run, demo):
    for name in ["recipe.py", "resolved.json", "history.csv", "export.pkl", "metrics.json", "models/best.pth"]:
        assert (trained_run / name).is_file(), name
    resolved = json.loads((trained_run / "resolved.json").read_text())
    metrics = json.loads((trained_run / "metrics.json").read_text())
    classes = json.loads(Path(demo["train"]).read_text())["categories"]
    assert resolved["classes"] == ["Background"] + [c["name"] for c in sorted(classes, key=lambda c: c["id"])]
    assert list(metrics["per_class_iou"]) == resolved["classes"]
    assert 0 <= metrics["miou"] <= 1 and metrics["images"] == 8
    rows = list(csv.DictReader((trained_run / "history.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [0, 1] and all(r["miou"] for r in rows)
    assert (trained_run.parent / "latest").resolve() == trained_run.resolve()


FRESH = """
import sys, numpy as np
from app.infer.members import load_learners
from app.infer.stream import stream_predictions
from app.data.images import list_images
learners = load_learners([sys.argv[1]])
preds = stream_predictions(learners, list_images(sys.argv[2], sys.argv[3]))
np.savez(sys.argv[4], *[p.probs.numpy() for p in preds])
"""


def test_export_predicts_the_same_in_a_fresh_process(trained_run, demo, tmp_path):
    from app.data.images import list_images
    from app.infer.members import load_learners
    from app.infer.stream import stream_predictions

    out = tmp_path / "fresh.npz"
    args = [trained_run, demo["images"], demo["test"], out]
    subprocess.run([sys.executable, "-c", FRESH, *map(str, args)], check=True, cwd=tmp_path)
    here = [p.probs.numpy() for p in stream_predictions(load_learners([trained_run]), list_images(*args[1:3]))]
    fresh = np.load(out)
    assert len(fresh.files) == len(here) == 4
    for i, probs in enumerate(here):  # images keep their own sizes, so compare one by one
        np.testing.assert_allclose(fresh[f"arr_{i}"], probs, atol=1e-5)


def test_predict_writes_masks_and_a_submission_in_json_order(trained_run, demo, tmp_path):
    invoke("predict", trained_run, "--images", demo["images"], "--data", demo["test"], "--tta", "--out", tmp_path)
    images = json.loads(Path(demo["test"]).read_text())["images"]
    rows = list(csv.DictReader((tmp_path / "submission.csv").open()))
    assert [r["image_id"] for r in rows] == [im["file_name"] for im in images]
    n_classes = len(json.loads(Path(demo["test"]).read_text())["categories"]) + 1
    for row, im in zip(rows, images):
        values = np.array(row["PredictionString"].split(), dtype=int)
        assert values.size == 256 * 256 and values.max() < n_classes
        mask = cv2.imread(str(tmp_path / "masks" / Path(im["file_name"]).with_suffix(".png")), cv2.IMREAD_UNCHANGED)
        assert mask.shape == (im["height"], im["width"])
        small = cv2.resize(mask, (256, 256), interpolation=cv2.INTER_NEAREST)
        assert (small == values.reshape(256, 256)).mean() > 0.9  # same prediction, resized two ways


def test_tta_prediction_of_a_flipped_image_is_the_flipped_prediction(trained_run, demo, tmp_path):
    first = json.loads(Path(demo["test"]).read_text())["images"][0]["file_name"]
    image = cv2.imread(str(Path(demo["images"]) / first))
    (tmp_path / "in").mkdir()
    cv2.imwrite(str(tmp_path / "in" / "orig.png"), image)  # PNG: no JPEG re-encoding differences
    cv2.imwrite(str(tmp_path / "in" / "flipped.png"), image[:, ::-1])
    invoke("predict", trained_run, "--images", tmp_path / "in", "--tta", "--out", tmp_path / "out")
    orig, flipped = (cv2.imread(str(tmp_path / "out" / "masks" / f"{n}.png"), -1) for n in ("orig", "flipped"))
    assert (flipped == orig[:, ::-1]).mean() > 0.999


def test_evaluate_matches_fit_metrics_on_the_same_images(trained_run, demo, tmp_path):
    invoke("evaluate", trained_run, "--data", demo["val"], "--images", demo["images"], "--out", tmp_path / "eval")
    report = json.loads((tmp_path / "eval" / "evaluate.json").read_text())
    assert (tmp_path / "eval" / "confusion.png").is_file()
    fit_metrics = json.loads((trained_run / "metrics.json").read_text())
    assert report["miou"] == pytest.approx(fit_metrics["miou"], abs=1e-6)
    cm = np.array(report["confusion_matrix"])
    assert cm.sum() == report["pixels"] == fit_metrics["pixels"]


def test_lr_find_writes_plot_and_suggestions(demo, tmp_path):
    recipe = write_recipe(tmp_path / "lr.py", demo)
    result = invoke("lr-find", recipe, "--out", tmp_path / "runs", "--iters", 20)
    (run,) = (tmp_path / "runs" / "lr").glob("*-lr_find")
    assert not (tmp_path / "runs" / "lr" / "latest").exists()  # `latest` is the last finished training run
    assert (run / "lr_find.png").stat().st_size > 1000
    suggestions = json.loads((run / "lr_find.json").read_text())["suggestions"]
    assert set(suggestions) == {"minimum", "steep", "valley"} and "valley" in result.output


def test_fit_on_real_photos_fruits_nuts(tmp_path):
    root = shared_dataset("fruits_nuts")
    recipe = tmp_path / "fruits.py"
    recipe.write_text(
        '"""fruits"""\n'
        f'data = {{"annotations": "{root}/annotations.json", "images": "{root}/images", "size": 64, '
        '"batch_size": 4, "valid_fraction": 0.25}\n'
        'model = {"encoder": "test_efficientnet", "last_cross": False}\ntrain = {"epochs": 1, "precision": "bf16"}\n'
    )
    result = invoke("fit", recipe, "--out", tmp_path / "runs")
    run = (tmp_path / "runs" / "fruits" / "latest").resolve()
    metrics = json.loads((run / "metrics.json").read_text())
    assert list(metrics["per_class_iou"]) == ["Background", "date", "fig", "hazelnut"]
    assert metrics["images"] == 4 and "validation mIoU" in result.output
    invoke("predict", run, "--images", root / "images", "--out", tmp_path / "preds")
    assert len(list((tmp_path / "preds" / "masks").glob("*.png"))) == 18


def test_repo_has_the_promised_layout():
    for name in [
        "pyproject.toml",
        "README.md",
        "data/README.md",
        "recipes/demo.py",
        "recipes/unet_effb4.py",
        ".ci/run",
    ]:
        assert (REPO / name).is_file(), name


def test_reference_recipe_runs_unchanged_on_the_documented_layout(tmp_path, monkeypatch):
    """recipes/unet_effb4.py on data/train.json + data/val.json, shrunk only through --set (tiny and offline)."""
    from app.data.synthetic import make_demo_dataset

    make_demo_dataset(tmp_path / "data", seed=2, n_train=12, n_val=4, n_test=2)
    monkeypatch.chdir(tmp_path)
    small = [
        "model.encoder=test_efficientnet",  # timm's tiny EfficientNet
        "model.pretrained=false",
        "data.stages=((64, 1), (96, 1))",
        "data.batch_size=4",
        "train.effective_batch=8",
    ]
    invoke("fit", REPO / "recipes" / "unet_effb4.py", *[a for s in small for a in ("--set", s)], "--out", "runs")
    run = (tmp_path / "runs" / "unet_effb4" / "latest").resolve()
    rows = list(csv.DictReader((run / "history.csv").open()))
    assert [(r["epoch"], r["stage"], r["size"]) for r in rows] == [("0", "0", "64"), ("1", "1", "96")]
    resolved = json.loads((run / "resolved.json").read_text())
    assert resolved["loss"]["focal"] == 0.1 and resolved["data"]["augment"] == "medium"
    assert resolved["data"]["annotations"] == str(tmp_path / "data" / "train.json")


def test_d4_tta_prediction_of_a_rotated_image_is_the_rotated_prediction(trained_run, demo, tmp_path):
    first = json.loads(Path(demo["test"]).read_text())["images"][0]["file_name"]
    image = cv2.imread(str(Path(demo["images"]) / first))
    side = min(image.shape[:2])
    image = np.ascontiguousarray(image[:side, :side])  # square, so a quarter turn keeps the size
    (tmp_path / "in").mkdir()
    cv2.imwrite(str(tmp_path / "in" / "orig.png"), image)
    cv2.imwrite(str(tmp_path / "in" / "rotated.png"), np.rot90(image))
    result = invoke("predict", trained_run, "--images", tmp_path / "in", "--tta-views", "d4", "--out", tmp_path / "o")
    assert "rot90" in result.output
    orig, rotated = (cv2.imread(str(tmp_path / "o" / "masks" / f"{n}.png"), -1) for n in ("orig", "rotated"))
    assert (rotated == np.rot90(orig)).mean() > 0.999
