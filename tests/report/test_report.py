"""Report pages built from the tiny trained run (and fold group): what they hold, that they stand alone."""

import base64
import json
import re
import shutil
import warnings

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from app.cli import app
from app.errors import TrashError
from app.report.build import build_page, report_after_fit, write_report
from app.report.compare import evaluate_page
from app.report.rundata import changed_values, image_scores, load_run
from app.runs import PER_IMAGE, REPORT

MAX_BYTES = 15 * 2**20
SMALL_FILES = ("resolved.json", "metrics.json", "history.csv", PER_IMAGE)


def decoded_images(html: str) -> list[np.ndarray | None]:
    """Every <img>'s data: URI decoded (None where it does not decode)."""
    found = re.findall(r'<img [^>]*src="data:image/(?:png|jpeg);base64,([^"]+)"', html)
    return [cv2.imdecode(np.frombuffer(base64.b64decode(b), np.uint8), cv2.IMREAD_COLOR) for b in found]


def copy_run(run, target, **metrics):
    """A copy of a run's small files (not its model), metrics.json changed by `metrics`."""
    target.mkdir(parents=True)
    for name in SMALL_FILES:
        shutil.copy(run / name, target / name)
    values = {**json.loads((run / "metrics.json").read_text()), **metrics}
    (target / "metrics.json").write_text(json.dumps(values))
    return target


def test_fit_writes_the_per_image_scores_and_the_report(trained_run):
    run = load_run(trained_run)
    per_image = run.per_image
    n, classes = len(per_image["image"]), len(run.classes)
    assert n == run.resolved["images"]["valid"]
    assert per_image["both"].shape == per_image["truth"].shape == per_image["pred"].shape == (n, classes)
    cm = run.confusion()
    # the per-image counts add up to the run's own confusion matrix: its diagonal, truth rows and predicted columns
    assert np.array_equal(per_image["both"].sum(0), np.diag(cm))
    assert np.array_equal(per_image["truth"].sum(0), cm.sum(1))
    assert np.array_equal(per_image["pred"].sum(0), cm.sum(0))
    assert per_image["prediction"].shape[0] == n
    assert run.metrics["class_pixels"]["valid"] == cm.sum(1).astype(int).tolist()
    assert sum(run.metrics["class_pixels"]["train"]) > 0
    assert (trained_run / REPORT).is_file()  # written by fit
    miou, _ = image_scores(per_image)
    assert np.isclose(np.nanmean(miou), run.metrics["miou_per_image"], atol=1e-6)


def test_the_run_page_holds_its_scores_class_names_and_images(trained_run, tmp_path):
    out = write_report([trained_run], tmp_path / "page.html")
    html = out.read_text()
    run = load_run(trained_run)
    assert f"{run.metrics['miou']:.4f}" in html
    assert all(name in html for name in run.classes)
    images = decoded_images(html)
    assert len(images) == html.count("<img ") and len(images) >= 4  # curves, heat map, confusion, thumbnails
    assert all(image is not None and image.shape[0] > 0 for image in images)
    assert not re.search(r'(src|href)="(https?:)?//', html)  # nothing from the network
    assert "<script" not in html
    assert out.stat().st_size < MAX_BYTES
    assert "The 8 worst validation images" in html or "worst validation images" in html


def test_the_changed_values_are_those_the_recipe_set(trained_run):
    changed = changed_values(load_run(trained_run).resolved)
    assert changed["train.epochs"] == 2 and changed["data.size"] == 64
    assert "model.encoder" not in changed  # the recipe names resnet18, the default


def test_a_run_without_per_image_scores_still_gets_a_page(trained_run, tmp_path):
    old = copy_run(trained_run, tmp_path / "old")
    (old / PER_IMAGE).unlink()
    html = build_page([old])
    assert f"no {PER_IMAGE}" in html
    assert all(image is not None for image in decoded_images(html))


def test_several_runs_make_a_comparison_with_deltas(trained_run, tmp_path):
    base = json.loads((trained_run / "metrics.json").read_text())["miou"]
    other = copy_run(trained_run, tmp_path / "other", miou=base + 0.125)
    resolved = json.loads((other / "resolved.json").read_text())
    resolved["train"]["lr"] = 0.5
    (other / "resolved.json").write_text(json.dumps(resolved))
    html = build_page([trained_run, other])
    assert "Comparison of 2 runs" in html and "+0.1250" in html
    assert "train.lr" in html and "0.5" in html


def test_a_fold_group_page_shows_each_fold_and_the_out_of_fold_score(fold_group):
    _, _, group = fold_group
    html = (group / REPORT).read_text()  # written when the group finished
    summary = json.loads((group / "summary.json").read_text())
    assert f"{summary['oof']['miou']:.4f}" in html
    assert all(f"{name}/report.html" in html for name in summary["folds"])
    assert "worst out-of-fold images" in html


def test_a_report_that_fails_only_warns(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert report_after_fit(tmp_path) is None
    assert any("trash report" in str(w.message) for w in caught)


def test_bad_paths_name_the_input(tmp_path):
    with pytest.raises(TrashError, match="not a finished run directory"):
        build_page([tmp_path])
    with pytest.raises(TrashError, match="not a folder"):
        build_page([tmp_path / "missing"])
    with pytest.raises(TrashError, match="--out"):
        write_report([tmp_path, tmp_path])


def test_the_evaluate_comparison_page_lists_members_and_tta_sets():
    codes = ["background", "can"]
    rows = [
        {"model": m, "tta": t, "views": v, "miou": s, "miou_per_image": s, "pixel_accuracy": 0.9,
         "per_class_iou": {"background": 0.9, "can": s}}
        for m, t, v, s in [("a", "identity", 1, 0.41), ("a", "flip", 2, 0.43), ("ensemble", "flip", 2, 0.47)]
    ]  # fmt: skip
    html = evaluate_page({"comparison": rows, "data": "val.json"}, codes)
    assert html.index("0.4700") < html.index("0.4300") < html.index("0.4100")  # best first
    assert "ensemble" in html and "can" in html


def test_the_cli_writes_pages(trained_run, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["report", str(trained_run), "--out", str(tmp_path / "r.html")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "r.html").is_file()
    result = runner.invoke(app, ["runs", str(trained_run.parent.parent), "--html", str(tmp_path / "runs.html")])
    assert result.exit_code == 0, result.output
    assert "report.html" in (tmp_path / "runs.html").read_text()
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code != 0 and "not a finished run directory" in result.output
