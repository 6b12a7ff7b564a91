"""Faults while writing and training: a failing write keeps the old file, divergence exits non-zero with the last
good checkpoint intact, and the same seed gives the same metrics."""

import csv
import json
import resource
import signal
import subprocess
import sys

from typer.testing import CliRunner

from app.atomic import append_csv_row, atomic_open
from app.cli import app
from app.errors import DIVERGED, WRITE_FAILED
from app.train.checkpoint import load_checkpoint
from tests.conftest import REPO, write_recipe

runner = CliRunner()
SMALL = {"size": 32, "fraction": 0.5}  # 12 training images: 3 batches an epoch

FILL = """
import sys, torch
from app.atomic import torch_save
from app.errors import TrashError
from app.atomic import write_json
folder = sys.argv[1]
for write in (lambda: write_json(folder + "/state.json", {"big": "x" * 200_000}),
              lambda: torch_save({"w": torch.zeros(100_000)}, folder + "/model.pth")):
    try:
        write()
    except TrashError as e:
        print(e.exit_code, e)
"""


def file_size_limit(limit: int):
    """For Popen's preexec_fn: writes beyond `limit` bytes fail (EFBIG) as on a full disk, mid-file."""

    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the process instead of failing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_write_that_fails_midway_leaves_the_previous_file_intact(tmp_path):
    import torch

    (tmp_path / "state.json").write_text('{"good": true}\n')
    torch.save({"w": torch.ones(3)}, tmp_path / "model.pth")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    result = subprocess.run(
        [sys.executable, "-c", FILL, str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        preexec_fn=file_size_limit(50_000),
    )

    lines = result.stdout.splitlines()
    assert len(lines) == 2, result.stdout + result.stderr
    assert all(line.startswith(f"{WRITE_FAILED} could not write") and "is intact" in line for line in lines)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # old files as they were, no temp files


def test_fit_on_a_full_disk_exits_with_a_message_and_no_partial_files(demo, tmp_path):
    recipe = write_recipe(tmp_path / "r.py", demo, data=SMALL, train={"epochs": 1})
    cmd = [sys.executable, "-m", "app", "fit", str(recipe), "--out", str(tmp_path / "runs")]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, preexec_fn=file_size_limit(2_000_000))
    assert result.returncode == WRITE_FAILED, result.stderr[-2000:]
    assert "error: could not write" in result.stderr and "Traceback" not in result.stderr
    run = next(p for p in (tmp_path / "runs" / "r").iterdir() if not p.is_symlink())
    assert not [p for p in run.rglob("*") if ".tmp" in p.name]
    assert not (run / "models" / "best.pth").exists()


def test_lr_1e6_exits_3_with_advice(demo, tmp_path):
    recipe = write_recipe(tmp_path / "r.py", demo, data=SMALL, train={"epochs": 1})
    result = runner.invoke(app, ["fit", str(recipe), "--out", str(tmp_path / "runs"), "--set", "train.lr=1e6"])
    assert result.exit_code == DIVERGED, result.output
    assert "training diverged" in result.output and "--set train.lr=1e+05" in result.output


def test_divergence_keeps_the_last_good_checkpoint(demo, tmp_path):
    # epoch 0 at lr 3e-3, then the step schedule multiplies the lr by 1e9: the loss becomes NaN in epoch 1
    train = {"epochs": 3, "schedule": "step", "step_epochs": (1,), "step_gamma": 1e9}
    recipe = write_recipe(tmp_path / "r.py", demo, data=SMALL, train=train)
    result = runner.invoke(app, ["fit", str(recipe), "--out", str(tmp_path / "runs")])

    assert result.exit_code == DIVERGED, result.output
    run = next(p for p in (tmp_path / "runs" / "r").iterdir() if not p.is_symlink())
    assert "loss is nan at epoch 1" in result.output or "loss is inf at epoch 1" in result.output
    assert "last good checkpoint (1 epoch done)" in result.output
    assert load_checkpoint(run)["epochs_done"] == 1  # intact: its sha256 matches the index
    with (run / "history.csv").open(newline="") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["0"]
    assert not (run / "export.pkl").exists() and not (run / "metrics.json").exists()


def test_the_same_seed_gives_the_same_metrics(demo, tmp_path):
    recipe = write_recipe(tmp_path / "r.py", demo, data=SMALL, train={"epochs": 1})
    runs = []
    for name in ("a", "b"):
        result = runner.invoke(app, ["fit", str(recipe), "--out", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
        runs.append(next(p for p in (tmp_path / name / "r").iterdir() if not p.is_symlink()))
    histories = [(r / "history.csv").read_text().splitlines() for r in runs]
    strip_time = [[",".join(c for i, c in enumerate(line.split(",")) if i != 6) for line in h] for h in histories]
    assert strip_time[0] == strip_time[1]
    metrics = [json.loads((r / "metrics.json").read_text()) for r in runs]
    assert metrics[0]["miou"] == metrics[1]["miou"] and metrics[0]["per_class_iou"] == metrics[1]["per_class_iou"]


def test_csv_rows_are_appended_by_atomic_rewrites(tmp_path):
    path = tmp_path / "log.csv"
    append_csv_row(path, ["epoch", "loss"], {"epoch": 0, "loss": 1.5})
    append_csv_row(path, ["epoch", "loss"], {"epoch": 1, "loss": 1.25})
    with path.open(newline="") as f:
        assert list(csv.reader(f)) == [["epoch", "loss"], ["0", "1.5"], ["1", "1.25"]]
    try:
        with atomic_open(path, "w") as f:
            f.write("half a file")
            raise KeyboardInterrupt  # the writer is stopped midway
    except KeyboardInterrupt:
        pass
    assert path.read_text().count("\n") == 3 and [p.name for p in tmp_path.iterdir()] == ["log.csv"]


# -- bad inputs (docs/errors.md) -------------------------------------------------------------------------


def test_fewer_training_images_than_a_batch_is_refused_before_training(demo, tmp_path):
    recipe = write_recipe(tmp_path / "r.py", demo, data={**SMALL, "fraction": 0.1})  # 2 images, batches of 4
    result = runner.invoke(app, ["fit", str(recipe), "--out", str(tmp_path / "runs")])
    assert result.exit_code == 2 and "2 training image(s) but data.batch_size=4" in result.output


def test_dropping_every_unreadable_training_image_leaves_an_empty_set_and_an_error(demo, tmp_path):
    data = json.loads(demo["train"].read_text())
    data["images"] = data["images"][:2]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in {im["id"] for im in data["images"]}]
    for im in data["images"]:
        im["file_name"] = f"broken_{im['id']}.jpg"
        (tmp_path / im["file_name"]).write_bytes(b"not an image")
    (tmp_path / "train.json").write_text(json.dumps(data))
    data_keys = {"annotations": str(tmp_path / "train.json"), "images": str(tmp_path), "drop_bad_annotations": True}
    recipe = write_recipe(tmp_path / "r.py", demo, data={**data_keys, "valid_images": str(demo["images"])})
    result = runner.invoke(app, ["fit", str(recipe), "--out", str(tmp_path / "runs")])
    assert result.exit_code == 2 and "empty training or validation set (0 / 8 images)" in result.output


def test_corrupt_and_truncated_images_to_predict_are_all_named_before_any_model_loads(trained_run, demo, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    good = next(p for p in demo["images"].rglob("*.jpg"))
    (folder / "good.jpg").write_bytes(good.read_bytes())
    (folder / "truncated.jpg").write_bytes(good.read_bytes()[:3000])
    (folder / "garbage.jpg").write_bytes(b"not an image")
    for command in ("predict", "evaluate"):
        args = [command, str(trained_run), "--images", str(folder), "--out", str(tmp_path / "out")]
        if command == "evaluate":  # a json naming the three files
            coco = {"images": [], "annotations": [], "categories": json.loads(demo["test"].read_text())["categories"]}
            for i, name in enumerate(["good.jpg", "truncated.jpg", "garbage.jpg"]):
                coco["images"].append({"id": i, "file_name": name, "height": 1, "width": 1})
            (tmp_path / "three.json").write_text(json.dumps(coco))
            args += ["--data", str(tmp_path / "three.json")]
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert "2 of 3 image(s) cannot be decoded" in result.output
        assert "truncated.jpg: cannot be decoded (image file is truncated" in result.output
        assert "garbage.jpg: cannot be decoded (cannot identify image file" in result.output


def test_screen_images_can_leave_unreadable_images_out(demo, tmp_path):
    from app.data.images import screen_images

    good = next(p for p in demo["images"].rglob("*.jpg"))
    (tmp_path / "bad.jpg").write_bytes(good.read_bytes()[:2000])
    kept, skipped = screen_images([("good.jpg", good), ("bad.jpg", tmp_path / "bad.jpg")], skip=True)
    assert kept == [("good.jpg", good)] and len(skipped) == 1 and skipped[0].startswith("bad.jpg")
