"""Shared fixtures: a small demo dataset and one tiny trained run, made once per test session."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def pytest_configure(config):
    # Keep the mask cache inside the test session, never in the user's home.
    os.environ.setdefault("TRASH_CACHE", str(Path(config.rootpath) / ".pytest_cache" / "trash"))


def shared_dataset(name: str) -> Path:
    """A real dataset from ../shared/data, or a skip with the reason when it is absent."""
    path = SHARED_DATA / name
    if not (path / "annotations.json").is_file():
        pytest.skip(f"real dataset {name!r} not found at {path} (../shared beside the checkout)")
    return path


@pytest.fixture(scope="session")
def demo(tmp_path_factory) -> dict[str, Path]:
    """A small synthetic dataset in the competition layout (train/val/test json, file_names relative)."""
    from app.data.synthetic import make_demo_dataset

    return make_demo_dataset(tmp_path_factory.mktemp("demo"), seed=1, n_train=24, n_val=8, n_test=4)


#: timm's tiny ResNet made for tests (about 1/20 of resnet18's parameters with its Unet): the tests check the
#: pipeline, not the encoder (tests/test_models.py covers the encoder families), and every fit, checkpoint,
#: export and fsync of a tiny model costs a fraction of resnet18's.
ENCODER = "test_resnet"


def write_recipe(path: Path, demo: dict[str, Path], **sections) -> Path:
    """A recipe file for the demo fixture: 64 px, the tiny ENCODER, 2 epochs unless overridden."""
    values = {
        "data": dict(
            annotations=str(demo["train"]),
            valid_annotations=str(demo["val"]),
            images=str(demo["images"]),
            size=64,
            batch_size=4,
        ),
        "model": dict(encoder=ENCODER, last_cross=False),
        "train": dict(epochs=2, lr=3e-3, precision="fp32"),
    }
    for name, extra in sections.items():
        values[name] = {**values.get(name, {}), **extra}
    body = "".join(f"{name} = {value!r}\n" for name, value in values.items())
    path.write_text(f'"""Test recipe."""\n{body}')
    return path


@pytest.fixture(scope="session")
def trained_run(demo, tmp_path_factory) -> Path:
    """One tiny `trash fit` run directory, reused by the export / predict / evaluate tests.

    resnet18, not the tiny ENCODER: after 2 epochs it predicts a few classes besides the background (about 7% of
    the test pixels), so the TTA and mask tests compare real masks; the tiny encoder still predicts background only.
    """
    from app.train.run import fit

    root = tmp_path_factory.mktemp("runs")
    recipe = write_recipe(root / "tiny.py", demo, model=dict(encoder="resnet18"))
    return fit(recipe, out=root / "runs")


def fold_split(tmp_path: Path, demo: dict[str, Path], folds: int = 2) -> Path:
    """A `trash data split` folder of the demo training json: `folds` folds grouped by a made-up video field."""
    import json

    from typer.testing import CliRunner

    from app.cli import app

    data = json.loads(Path(demo["train"]).read_text())
    for i, image in enumerate(data["images"]):
        image["video"] = f"v{i % 4}"
    (tmp_path / "all.json").write_text(json.dumps(data))
    split = ["data", "split", str(tmp_path / "all.json"), "--folds", str(folds), "--group", "video"]
    result = CliRunner().invoke(app, [*split, "--out", str(tmp_path / "split")])
    assert result.exit_code == 0, result.output
    return tmp_path / "split"


@pytest.fixture(scope="session")
def fold_group(demo, tmp_path_factory) -> tuple[Path, Path, Path]:
    """One `trash fit --fold all` of 2 one-epoch folds (`fold_split`): (recipe file, --out folder, group folder)."""
    from typer.testing import CliRunner

    from app.cli import app

    root = tmp_path_factory.mktemp("folds")
    split = fold_split(root, demo)
    recipe = write_recipe(root / "f.py", demo, data={"split": str(split), "annotations": ""}, train={"epochs": 1})
    out = root / "runs"
    result = CliRunner().invoke(app, ["fit", str(recipe), "--fold", "all", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return recipe, out, next((out / "f").glob("*-folds"))
