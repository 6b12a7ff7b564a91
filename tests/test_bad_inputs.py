"""Bad inputs as a new user makes them, against every command that takes them (docs/errors.md lists each case).

Each case breaks one input in a fresh folder and runs a command on it. It must end with the documented exit code,
an `error:` line naming the bad thing, no traceback, and no temporary or partial file left beside the outputs; a
folder's old outputs stay as they were. Inputs that are odd but valid (EXIF-rotated photos, 16-bit PNGs, hundreds
of classes) must give a correct result instead.
"""

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from app.cli import app
from app.errors import BAD_INPUT, DATA_ERRORS, WRITE_FAILED
from tests.conftest import ENCODER, REPO, write_recipe

runner = CliRunner()


# -- making bad inputs -------------------------------------------------------------------------------


def coco(demo: dict, split: str = "train") -> dict:
    return json.loads(Path(demo[split]).read_text())


def write_json(folder: Path, name: str, payload) -> Path:
    path = folder / name
    path.write_text(json.dumps(payload))
    return path


def duplicate_category_names(demo, folder):
    data = coco(demo)
    data["categories"][1]["name"] = data["categories"][0]["name"]
    return write_json(folder, "train.json", data)


def duplicate_file_name(demo, folder):
    data = coco(demo)
    data["images"][1]["file_name"] = data["images"][0]["file_name"]
    return write_json(folder, "train.json", data)


def misspelled_annotations(demo, folder):
    data = coco(demo)
    data["annotation"] = data.pop("annotations")
    return write_json(folder, "train.json", data)


def no_annotations(demo, folder):
    return write_json(folder, "train.json", {**coco(demo), "annotations": []})


def no_images(demo, folder):
    return write_json(folder, "test.json", {**coco(demo, "test"), "images": []})


def not_json(demo, folder):
    path = folder / "train.json"
    path.write_text('{"images": [')
    return path


def a_list(demo, folder):
    return write_json(folder, "train.json", [1, 2, 3])


def recipe_with(body: str):
    def make(demo, folder):
        path = write_recipe(folder / "r.py", demo)
        path.write_text(path.read_text() + body)
        return path

    return make


def same_stems(demo, folder):
    images = folder / "same"
    images.mkdir()
    source = Path(demo["images"]) / coco(demo, "test")["images"][0]["file_name"]
    shutil.copy(source, images / "a.jpg")
    cv2.imwrite(str(images / "a.png"), cv2.imread(str(source)))
    return images


def dangling_link(demo, folder):
    images = folder / "links"
    images.mkdir()
    (images / "gone.jpg").symlink_to(folder / "nowhere.jpg")
    return images


def nested_only(demo, folder):
    images = folder / "nested"
    (images / "inner").mkdir(parents=True)
    source = Path(demo["images"]) / coco(demo, "test")["images"][0]["file_name"]
    shutil.copy(source, images / "inner" / "a.jpg")
    return images


def zero_byte_image(demo, folder):
    images = folder / "zero"
    images.mkdir()
    (images / "empty.jpg").write_bytes(b"")
    return images


@dataclass
class Case:
    name: str
    make: Callable  # (demo, folder) -> the bad input's path
    args: Callable  # (bad input, demo, folder, trained run) -> command line
    exit_code: int
    needle: str  # on an error: line (or, for data check, in the report)


def fit_with_train(bad, demo, folder, run):
    recipe = write_recipe(folder / "fit.py", demo, data=dict(annotations=str(bad)))
    return ["fit", str(recipe), "--out", str(folder / "runs")]


def check(bad, demo, folder, run):
    return ["data", "check", str(bad), "--images", str(demo["images"])]


def masks(bad, demo, folder, run):
    return ["data", "masks", str(bad), "--images", str(demo["images"]), "--out", str(folder / "masks")]


def predict_json(bad, demo, folder, run):
    return ["predict", str(run), "--images", str(demo["images"]), "--data", str(bad), "--out", str(folder / "p")]


def evaluate_json(bad, demo, folder, run):
    return ["evaluate", str(run), "--images", str(demo["images"]), "--data", str(bad)]


def predict_folder(bad, demo, folder, run):
    return ["predict", str(run), "--images", str(bad), "--out", str(folder / "p")]


def fit_recipe(bad, demo, folder, run):
    return ["fit", str(bad), "--out", str(folder / "runs")]


CASES = [
    Case("not json", not_json, check, BAD_INPUT, "not valid json"),
    Case("a json list", a_list, check, DATA_ERRORS, "not_coco"),
    Case("duplicate category names: check", duplicate_category_names, check, DATA_ERRORS, "duplicate_category_name"),
    Case("duplicate category names: fit", duplicate_category_names, fit_with_train, BAD_INPUT, "name of category"),
    Case("duplicate file_name: check", duplicate_file_name, check, DATA_ERRORS, "duplicate_file_name"),
    Case("duplicate file_name: masks", duplicate_file_name, masks, BAD_INPUT, "is image"),
    Case("'annotation' for 'annotations': check", misspelled_annotations, check, DATA_ERRORS, "'annotations'"),
    Case("'annotation' for 'annotations': fit", misspelled_annotations, fit_with_train, BAD_INPUT, "annotations"),
    Case("no annotation at all: fit", no_annotations, fit_with_train, BAD_INPUT, "not one annotation"),
    Case("no images: predict", no_images, predict_json, BAD_INPUT, "lists no images"),
    Case("no images: evaluate", no_images, evaluate_json, BAD_INPUT, "no images"),
    Case("a.jpg and a.png: predict", same_stems, predict_folder, BAD_INPUT, "a.png"),
    Case("a link to no file: predict", dangling_link, predict_folder, BAD_INPUT, "gone.jpg"),
    Case("images only in a subfolder: predict", nested_only, predict_folder, BAD_INPUT, "inner/a.jpg"),
    Case("a zero-byte image: predict", zero_byte_image, predict_folder, BAD_INPUT, "empty.jpg"),
    Case("recipe calls sys.exit(0)", recipe_with("import sys\nsys.exit(0)\n"), fit_recipe, BAD_INPUT, "sys.exit(0)"),
    Case("recipe syntax error", recipe_with("data = dict(\n"), fit_recipe, BAD_INPUT, "cannot be executed"),
    Case("recipe names an unknown arch", recipe_with("model['arch'] = 'unett'\n"), fit_recipe, BAD_INPUT, "unet"),
]


def outputs_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def assert_clean_failure(result, case: Case):
    assert result.exit_code == case.exit_code, f"{case.name}: exit {result.exit_code}\n{result.output[-2000:]}"
    assert "Traceback" not in result.output, case.name
    if case.exit_code != DATA_ERRORS:
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert errors and any(case.needle in line for line in errors), f"{case.name}: {result.output[-1500:]}"
    else:
        assert case.needle in result.output, f"{case.name}: {result.output[-1500:]}"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_a_bad_input_is_named_without_a_traceback(case, demo, trained_run, tmp_path):
    bad = case.make(demo, tmp_path)
    before = outputs_of(tmp_path)
    result = runner.invoke(app, [str(a) for a in case.args(bad, demo, tmp_path, trained_run)])
    assert_clean_failure(result, case)
    left = {k: v for k, v in outputs_of(tmp_path).items() if k not in before}
    assert not [k for k in left if ".tmp" in k], f"{case.name}: temporary files left: {list(left)}"
    assert {k: v for k, v in outputs_of(tmp_path).items() if k in before} == before  # old files intact


# -- outputs that cannot be written ------------------------------------------------------------------


def unwritable(folder: Path) -> Path:
    """An output folder no one can make: its parent is a file (root ignores read-only permissions)."""
    blocker = folder / "blocker"
    blocker.write_text("a file, not a folder")
    return blocker / "out"


OUTPUT_COMMANDS = {
    "fit": lambda out, demo, run, recipe: ["fit", str(recipe), "--out", str(out)],
    "predict": lambda out, demo, run, recipe: [
        "predict",
        str(run),
        "--images",
        str(demo["images"]),
        "--data",
        str(demo["test"]),
        "--out",
        str(out),
    ],
    "data masks": lambda out, demo, run, recipe: [
        "data",
        "masks",
        str(demo["val"]),
        "--images",
        str(demo["images"]),
        "--out",
        str(out),
    ],
    "data stats": lambda out, demo, run, recipe: [
        "data",
        "stats",
        str(demo["val"]),
        "--images",
        str(demo["images"]),
        "--plot",
        str(out / "stats.png"),
    ],
    "data split": lambda out, demo, run, recipe: [
        "data",
        "split",
        str(demo["train"]),
        "--folds",
        "2",
        "--out",
        str(out),
    ],
    "demo-data": lambda out, demo, run, recipe: ["demo-data", str(out)],
    "evaluate --out": lambda out, demo, run, recipe: [
        "evaluate",
        str(run),
        "--images",
        str(demo["images"]),
        "--data",
        str(demo["val"]),
        "--out",
        str(out),
    ],
}


@pytest.mark.parametrize("command", list(OUTPUT_COMMANDS))
def test_an_output_that_cannot_be_written_exits_4(command, demo, trained_run, tmp_path):
    recipe = write_recipe(tmp_path / "r.py", demo, model=dict(encoder=ENCODER), train=dict(epochs=1))
    out = unwritable(tmp_path)
    result = runner.invoke(app, OUTPUT_COMMANDS[command](out, demo, trained_run, recipe))
    assert result.exit_code == WRITE_FAILED, f"{command}: {result.output[-2000:]}"
    assert "Traceback" not in result.output and "error: could not write" in result.output, result.output[-1500:]


def file_size_limit(limit: int):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the process instead of failing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.parametrize("extra", [[], ["--save-probs"]], ids=["predict", "predict --save-probs"])
def test_a_full_disk_while_predicting_exits_4_and_leaves_no_temporary_file(extra, demo, trained_run, tmp_path):
    out = tmp_path / "p"
    out.mkdir()
    (out / "submission.csv").write_text("image_id,PredictionString\nold,0\n")  # an earlier prediction: kept
    cmd = [sys.executable, "-m", "app", "predict", str(trained_run), "--images", str(demo["images"])]
    cmd += ["--data", str(demo["test"]), "--out", str(out), *extra]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, preexec_fn=file_size_limit(20_000))
    assert done.returncode == WRITE_FAILED, done.stderr[-2000:]
    assert "error: could not write" in done.stderr and "Traceback" not in done.stderr
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
    assert (out / "submission.csv").read_text() == "image_id,PredictionString\nold,0\n"


def test_a_full_disk_while_writing_masks_exits_4(demo, tmp_path):
    cmd = [sys.executable, "-m", "app", "data", "masks", str(demo["train"]), "--images", str(demo["images"])]
    env = {**os.environ, "PYTHONPATH": str(REPO), "TRASH_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(
        [*cmd, "--out", str(tmp_path / "m")], capture_output=True, text=True, env=env, preexec_fn=file_size_limit(600)
    )
    assert done.returncode == WRITE_FAILED, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]


# -- odd but valid inputs: a correct result ----------------------------------------------------------


def exif_rotated(path_in: Path, path_out: Path) -> None:
    """The JPEG stored as the camera saw it (turned a quarter) with EXIF orientation 6 saying how to show it."""
    from PIL import Image

    image = Image.open(path_in).convert("RGB").transpose(Image.Transpose.ROTATE_90)  # stored pixels, turned
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display: the stored turn undone
    image.save(path_out, exif=exif.tobytes(), quality=95)


def test_an_exif_rotated_photo_is_predicted_and_scored_as_displayed(demo, trained_run, tmp_path):
    from app.data.images import image_size, read_rgb

    data = coco(demo, "val")
    images = tmp_path / "images"
    (images / "images").mkdir(parents=True)
    for image in data["images"]:
        source = Path(demo["images"]) / image["file_name"]
        shutil.copy(source, images / image["file_name"])
    first = data["images"][0]
    exif_rotated(Path(demo["images"]) / first["file_name"], images / first["file_name"])
    shown = read_rgb(images / first["file_name"])
    assert shown.shape[:2] == (first["height"], first["width"]) == image_size(images / first["file_name"])
    val = write_json(tmp_path, "val.json", data)
    for command in (["predict", "--out", str(tmp_path / "p")], ["evaluate"]):
        result = runner.invoke(
            app, [command[0], str(trained_run), "--images", str(images), "--data", str(val), *command[1:]]
        )
        assert result.exit_code == 0, result.output[-2000:]
    mask = cv2.imread(
        str(tmp_path / "p" / "masks" / Path(first["file_name"]).with_suffix(".png")), cv2.IMREAD_UNCHANGED
    )
    assert mask.shape == (first["height"], first["width"])  # the displayed orientation, as the json says


def test_a_16_bit_png_predicts_as_its_8_bit_picture(demo, trained_run, tmp_path):
    from app.data.images import list_images
    from app.infer.members import load_learners
    from app.infer.stream import stream_predictions

    source = cv2.imread(str(Path(demo["images"]) / coco(demo, "test")["images"][0]["file_name"]))
    grey = cv2.cvtColor(source, cv2.COLOR_BGR2GRAY)
    folder = tmp_path / "grey"
    folder.mkdir()
    cv2.imwrite(str(folder / "eight.png"), grey)
    cv2.imwrite(str(folder / "sixteen.png"), grey.astype(np.uint16) * 257)  # the same picture, 16 bits per pixel
    probs = {p.image_id: p.probs for p in stream_predictions(load_learners([trained_run]), list_images(folder))}
    assert (probs["eight.png"] - probs["sixteen.png"]).abs().max() < 0.02


def many_classes(demo: dict, folder: Path, n: int = 300) -> dict[str, Path]:
    """The demo data with `n` categories: its annotations spread over all of them (ids 1..n)."""
    paths = {}
    for split in ("train", "val"):
        data = coco(demo, split)
        data["categories"] = [{"id": i, "name": f"class {i:03d}", "supercategory": ""} for i in range(1, n + 1)]
        for k, ann in enumerate(data["annotations"]):
            ann["category_id"] = 1 + (k * 37) % n
        paths[split] = write_json(folder, f"{split}.json", data)
    return paths


def test_300_classes_train_and_every_plot_stays_readable(demo, tmp_path):
    from PIL import Image

    paths = many_classes(demo, tmp_path)
    stats = runner.invoke(
        app,
        ["data", "stats", str(paths["val"]), "--images", str(demo["images"]), "--plot", str(tmp_path / "stats.png")],
    )
    assert stats.exit_code == 0, stats.output[-2000:]
    recipe = write_recipe(
        tmp_path / "many.py",
        demo,
        data=dict(annotations=str(paths["train"]), valid_annotations=str(paths["val"])),
        model=dict(encoder=ENCODER),
        train=dict(epochs=1),
    )
    fit = runner.invoke(app, ["fit", str(recipe), "--out", str(tmp_path / "runs")])
    assert fit.exit_code == 0, fit.output[-2000:]
    run = (tmp_path / "runs" / "many" / "latest").resolve()
    pred = runner.invoke(
        app,
        [
            "predict",
            str(run),
            "--images",
            str(demo["images"]),
            "--data",
            str(paths["val"]),
            "--out",
            str(tmp_path / "p"),
        ],
    )
    assert pred.exit_code == 0, pred.output[-2000:]
    for png in (tmp_path / "stats.png", run / "confusion.png", tmp_path / "p" / "preview.png"):
        width, height = Image.open(png).size
        assert width <= 3000 and height <= 3000, (png, width, height)
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(metrics["per_class_iou"]) == 301  # every class scored: none lost to an 8-bit mask


# -- what a newcomer trips on ------------------------------------------------------------------------


def test_recipes_outside_the_repository_says_where_it_looked(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "app", "recipes"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == BAD_INPUT and str(tmp_path / "recipes") in result.stderr


def test_a_missing_split_folder_names_the_command_that_makes_it(tmp_path):
    result = runner.invoke(
        app, ["fit", str(REPO / "recipes" / "trashcan_large.py"), "--set", f"data.split={tmp_path / 'nope'}"]
    )
    assert result.exit_code == BAD_INPUT and "make it with: trash data split" in result.output


def test_messages_start_on_their_own_line_after_a_progress_bar(demo, tmp_path):
    """In a terminal the bar is drawn and ends its line; redirected, there is no bar at all."""
    import pty

    cmd = [sys.executable, "-m", "app", "data", "check", str(demo["train"]), "--images", str(demo["images"])]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    piped = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert piped.stdout.startswith(str(demo["train"])) and "█" not in piped.stdout + piped.stderr
    output = []
    pid, fd = pty.fork()
    if pid == 0:  # the child runs the command in a terminal
        os.execvpe(cmd[0], cmd, env)
    try:
        while chunk := os.read(fd, 65536):
            output.append(chunk)
    except OSError:  # the terminal closes when the child exits
        pass
    os.waitpid(pid, 0)
    lines = b"".join(output).decode(errors="replace").replace("\r\n", "\n").split("\n")
    summary = next(line for line in lines if "images," in line and "annotations" in line)
    assert summary.split("\r")[-1].startswith(str(demo["train"]))
