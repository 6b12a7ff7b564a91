"""Inference as a user runs it: ensembles of exports, overlays, saved probabilities, evaluate, pseudo, ensemble."""

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from app.cli import app
from tests.conftest import write_recipe

runner = CliRunner()


def invoke(*args, code=0):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output
    return result


@pytest.fixture(scope="session")
def second_run(demo, tmp_path_factory) -> Path:
    """Another encoder (timm's tiny test EfficientNet) that keeps its 2 best epochs, for ensembles and --topk."""
    from app.train.run import fit

    root = tmp_path_factory.mktemp("runs2")
    recipe = write_recipe(
        root / "effnet.py", demo, model=dict(encoder="test_efficientnet"), train=dict(epochs=2, top_k=2, lr=3e-3)
    )
    return fit(recipe, out=root / "runs")


def _mask(path):
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def test_an_ensemble_of_two_encoders_writes_masks_overlays_probs_and_a_checked_csv(
    trained_run, second_run, demo, tmp_path
):
    out = tmp_path / "ens"
    result = invoke(
        "predict", trained_run, second_run, "--weights", "0.7,0.3", "--images", demo["images"],
        "--data", demo["test"], "--save-probs", "--out", out,
    )  # fmt: skip
    assert "read back and checked" in result.output
    images = json.loads(Path(demo["test"]).read_text())["images"]
    summary = json.loads((out / "predictions.json").read_text())
    assert [m["weight"] for m in summary["members"]] == [0.7, 0.3]
    for im in images:
        stem = Path(im["file_name"]).with_suffix("")
        assert _mask(out / "masks" / stem.with_suffix(".png")).shape == (im["height"], im["width"])
        assert cv2.imread(str(out / "overlays" / stem.with_suffix(".jpg"))).shape[:2] == (im["height"], im["width"])
        probs = np.load(out / "probs" / stem.with_suffix(".npy"))
        assert probs.dtype == np.float16 and probs.shape == (11, im["height"], im["width"])
        assert np.allclose(probs.astype(np.float32).sum(0), 1, atol=1e-2)
    assert (out / "preview.png").is_file()
    # the saved probabilities are an ensemble member: predicting from them alone gives the same masks
    again = tmp_path / "again"
    invoke("predict", out, "--images", demo["images"], "--data", demo["test"], "--no-overlays", "--out", again)
    for im in images:
        name = Path(im["file_name"]).with_suffix(".png")
        assert (_mask(again / "masks" / name) == _mask(out / "masks" / name)).mean() > 0.999
    rows_a = list(csv.reader((out / "submission.csv").open()))
    rows_b = list(csv.reader((again / "submission.csv").open()))
    assert [r[0] for r in rows_a] == [r[0] for r in rows_b]


def test_ensemble_members_differ_and_the_ensemble_is_between_them(trained_run, second_run, demo, tmp_path):
    out = tmp_path / "cmp"
    invoke(
        "evaluate", trained_run, second_run, "--data", demo["val"], "--images", demo["images"],
        "--compare", "identity,flip", "--out", out,
    )  # fmt: skip
    report = json.loads((out / "evaluate.json").read_text())
    rows = list(csv.DictReader((out / "comparison.csv").open()))
    assert [(r["model"].split(" ")[0], r["tta"]) for r in rows] == [
        ("#1", "identity"), ("#1", "flip"), ("#2", "identity"), ("#2", "flip"), ("ensemble", "identity"),
        ("ensemble", "flip"),
    ]  # fmt: skip
    ensemble_plain = next(r for r in rows if r["model"] == "ensemble" and r["tta"] == "identity")
    assert float(ensemble_plain["miou"]) == pytest.approx(report["miou"], abs=1e-4)  # the same ensemble, twice
    assert {"miou_per_image", "per_class_iou"} <= set(report)
    assert (out / "confusion.png").is_file()
    page = (out / "comparison.html").read_text()  # the same rows as a page
    assert all(f"{float(r['miou']):.4f}" in page for r in rows)


def test_evaluate_equals_an_independent_confusion_matrix_of_the_predicted_pngs(trained_run, demo, tmp_path):
    from sklearn.metrics import confusion_matrix

    invoke(
        "predict", trained_run, "--images", demo["images"], "--data", demo["val"], "--tta", "--save-probs",
        "--out", tmp_path / "p",
    )  # fmt: skip
    invoke("data", "masks", demo["val"], "--images", demo["images"], "--out", tmp_path / "truth")
    invoke("evaluate", trained_run, "--data", demo["val"], "--images", demo["images"], "--tta", "--out", tmp_path / "e")
    report = json.loads((tmp_path / "e" / "evaluate.json").read_text())
    n = len(report["per_class_iou"])
    total, per_image = np.zeros((n, n)), []
    for im in json.loads(Path(demo["val"]).read_text())["images"]:
        name = Path(im["file_name"]).with_suffix(".png")
        truth, pred = _mask(tmp_path / "truth" / name).ravel(), _mask(tmp_path / "p" / "masks" / name).ravel()
        cm = confusion_matrix(truth, pred, labels=range(n))
        total += cm
        inter, union = np.diag(cm), cm.sum(0) + cm.sum(1) - np.diag(cm)
        per_image.append(np.mean(inter[union > 0] / union[union > 0]))
    inter, union = np.diag(total), total.sum(0) + total.sum(1) - np.diag(total)
    assert report["miou"] == pytest.approx(np.mean(inter[union > 0] / union[union > 0]), abs=1e-6)
    assert report["miou_per_image"] == pytest.approx(np.mean(per_image), abs=1e-6)
    # the saved probabilities (fp16) score the same when evaluated as a predictions folder
    invoke("evaluate", tmp_path / "p", "--data", demo["val"], "--images", demo["images"], "--out", tmp_path / "e2")
    saved = json.loads((tmp_path / "e2" / "evaluate.json").read_text())
    assert saved["miou"] == pytest.approx(report["miou"], abs=2e-3)


def test_topk_epochs_are_an_ensemble_of_the_same_architecture(second_run, demo, tmp_path):
    kept = json.loads((second_run / "models" / "topk.json").read_text())
    invoke("predict", second_run, "--topk", "--images", demo["images"], "--data", demo["test"], "--out", tmp_path)
    members = json.loads((tmp_path / "predictions.json").read_text())["members"]
    assert len(members) == len(kept) == 2
    assert sum(m["weight"] for m in members) == pytest.approx(1.0)


def test_topk_without_kept_epochs_says_how_to_get_them(trained_run, demo, tmp_path):
    result = invoke("predict", trained_run, "--topk", "--images", demo["images"], "--out", tmp_path, code=2)
    assert "train.top_k" in result.output


def test_tiled_prediction_of_a_large_image_keeps_its_size(trained_run, demo, tmp_path):
    first = json.loads(Path(demo["test"]).read_text())["images"][0]["file_name"]
    image = cv2.imread(str(Path(demo["images"]) / first))
    big = cv2.resize(image, None, fx=1.6, fy=1.6, interpolation=cv2.INTER_LINEAR)
    (tmp_path / "in").mkdir()
    cv2.imwrite(str(tmp_path / "in" / "big.png"), big)
    invoke("predict", trained_run, "--images", tmp_path / "in", "--tile", "--out", tmp_path / "out")
    mask = _mask(tmp_path / "out" / "masks" / "big.png")
    assert mask.shape == big.shape[:2] and mask.max() < 11


def test_an_export_for_other_classes_is_refused(trained_run, demo, tmp_path, monkeypatch):
    from fastai.learner import load_learner

    monkeypatch.setenv("TRASH_TRUST_EXPORTS", "1")  # a hand-made export has no manifest

    learn = load_learner(trained_run / "export.pkl")
    learn.trash_classes = [*learn.trash_classes[:-1], "Something else"]
    learn.path = tmp_path
    learn.export("other.pkl")
    result = invoke("predict", trained_run, tmp_path / "other.pkl", "--images", demo["images"], "--out", tmp_path,
                    code=2)  # fmt: skip
    assert "Something else" in result.output
    result = invoke("predict", tmp_path / "other.pkl", "--images", demo["images"], "--data", demo["test"],
                    "--out", tmp_path, code=2)  # fmt: skip
    assert "classes" in result.output


def test_pseudo_labels_pass_the_check_and_train(trained_run, demo, tmp_path):
    from app.data.check import check_coco
    from app.data.coco import IGNORE, load_coco
    from app.data.images import list_images
    from app.data.masks import rasterize
    from app.infer.members import load_learners
    from app.infer.stream import stream_predictions
    from app.train.run import fit

    # thresholds at the tiny model's own confidence quantiles: about half, then a tenth, of the pixels labelled
    preds = stream_predictions(load_learners([trained_run]), list_images(demo["images"], demo["test"]))
    top = np.concatenate([p.probs.max(0).values.flatten().numpy() for p in preds])
    low, high = np.quantile(top, 0.5), np.quantile(top, 0.9)
    out = tmp_path / "pseudo.json"
    invoke("pseudo", trained_run, "--images", demo["images"], "--data", demo["test"], "--threshold", low,
           "--out", out)  # fmt: skip
    report = check_coco(out, demo["images"])
    assert report.ok, report.summary()
    coco = load_coco(out)
    assert coco.codes == load_coco(demo["train"]).codes
    masks = [rasterize(coco, im) for im in coco.images]
    ignored = np.mean([(m == IGNORE).mean() for m in masks])
    assert 0 < ignored < 1
    strict = tmp_path / "strict.json"
    invoke("pseudo", trained_run, "--images", demo["images"], "--data", demo["test"], "--threshold", high,
           "--out", strict)  # fmt: skip
    stricter = np.mean([(rasterize(load_coco(strict), im) == IGNORE).mean() for im in load_coco(strict).images])
    assert stricter > ignored
    recipe = write_recipe(tmp_path / "with_pseudo.py", demo, data=dict(pseudo=str(out)), train=dict(epochs=1))
    run = fit(recipe, out=tmp_path / "runs")
    resolved = json.loads((run / "resolved.json").read_text())
    assert resolved["images"]["train"] == 24 + len(coco.images) and "pseudo" in resolved["data_sources"]


def test_a_corrupt_ignore_mask_is_reported_by_the_check(demo, tmp_path):
    from app.data.check import check_coco

    data = json.loads(Path(demo["test"]).read_text())
    data["images"][0]["ignore_mask"] = {"size": [3, 3], "counts": [9]}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    report = check_coco(bad, demo["images"], read_images=False)
    assert not report.ok and any(p.kind == "bad_ignore_mask" for p in report.errors)


def test_ensemble_chooses_on_out_of_fold_data_and_prints_the_command(trained_run, second_run, tmp_path):
    from app.infer.ensemble import OOFSet, _weighted, candidates

    out = tmp_path / "ensemble.json"
    result = invoke("ensemble", trained_run, second_run, "--tta-views", "identity,flip", "--out", out)
    chosen = json.loads(out.read_text())
    assert "trash predict" in result.output and chosen["tta"] in ("identity", "flip")
    assert (trained_run / "oof_flip.npz").is_file()  # the flip OOF predictions are cached beside the run
    # the reported score is reproduced from the OOF files independently of the greedy search
    cands = candidates([trained_run, second_run])
    oof = OOFSet(cands, chosen["tta"], chosen["eval_size"])
    weights = np.array([chosen["weights"][chosen["members"].index(c.name)] if c.name in chosen["members"] else 0
                        for c in cands])  # fmt: skip
    class_weights = None
    if chosen["class_weights"]:
        class_weights = np.zeros((len(cands), oof.n_classes))
        for name, cw in zip(chosen["members"], chosen["class_weights"]):
            class_weights[[c.name for c in cands].index(name)] = cw
    probs = _weighted(oof, weights, class_weights)
    if chosen["crf"]:
        from app.infer.postprocess import dense_crf

        probs = torch.stack([dense_crf(im, p) for im, p in zip(oof.images, probs)])
    if chosen["min_area"]:
        from app.infer.postprocess import remove_small_components

        probs = torch.stack([remove_small_components(p, chosen["min_area"]) for p in probs])
    assert oof.score(probs) == pytest.approx(chosen["oof_miou"], abs=1e-6)
    singles = [r["miou"] for r in chosen["table"] if r["model"] != "greedy ensemble"]
    assert chosen["oof_miou"] >= max(singles) - 1e-9


def test_ensemble_needs_runs_with_out_of_fold_predictions(tmp_path):
    result = invoke("ensemble", tmp_path, code=2)
    assert "oof.npz" in result.output


def test_corrupt_images_stop_predict_unless_skipped(trained_run, demo, tmp_path):
    first = json.loads(Path(demo["test"]).read_text())["images"][0]["file_name"]
    (tmp_path / "in").mkdir()
    good = (Path(demo["images"]) / first).read_bytes()
    (tmp_path / "in" / "good.jpg").write_bytes(good)
    (tmp_path / "in" / "cut.jpg").write_bytes(good[: len(good) // 3])  # a truncated download
    result = invoke("predict", trained_run, "--images", tmp_path / "in", "--out", tmp_path / "a", code=2)
    assert "cut.jpg" in result.output and not (tmp_path / "a" / "submission.csv").exists()
    result = invoke("predict", trained_run, "--images", tmp_path / "in", "--skip-bad-images", "--out", tmp_path / "b")
    assert "skipped" in result.output and "cut.jpg" in result.output
    rows = list(csv.DictReader((tmp_path / "b" / "submission.csv").open()))
    assert [r["image_id"] for r in rows] == ["good.jpg"]
    assert json.loads((tmp_path / "b" / "predictions.json").read_text())["skipped"][0].startswith("cut.jpg")
