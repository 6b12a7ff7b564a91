"""Recipe schema and validation: every shipped recipe validates down to its arch and encoder; bad recipes fail
early, naming the key or file."""

from pathlib import Path

import pytest

from app.errors import TrashError
from app.recipe_file import load_recipe
from app.train.validate import load_checked

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "recipes").glob("*.py"))


def write(tmp_path: Path, body: str, name: str = "r.py") -> Path:
    path = tmp_path / name
    path.write_text(body)
    return path


def error_of(path: Path, overrides=(), check_files=False) -> str:
    with pytest.raises(TrashError) as e:
        load_checked(path, overrides, check_files=check_files)
    return str(e.value)


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_recipe_validates(path):
    """Names of every registry and the model itself (encoder, arch, every stage's size) on the meta device;
    data files are left out (the shipped recipes name datasets that a fresh clone has not made yet)."""
    recipe = load_checked(path, check_files=False)
    assert recipe.name == path.stem and recipe.description
    assert (recipe.data.annotations or recipe.data.split) and recipe.model.encoder


@pytest.mark.parametrize(
    "override,needle",
    [
        ("model.encoder=efficientnet_b44", "efficientnet_b44"),
        ("model.arch=unet++", "model.arch"),
        ("train.optimizer=adamm", "train.optimizer"),
        ("loss.dise=1", "loss.dise"),
        ("model.arch=deeplabv3plus model.encoder=pvt_v2_b0", "output_stride=16"),  # refused by the arch itself
    ],
)
def test_a_shipped_recipe_with_one_bad_value_is_refused(override, needle):
    recipe = next(p for p in SHIPPED if p.name == "unet_effb4.py")
    assert needle in error_of(recipe, override.split())


def test_required_dotted_keys_exist_and_override(tmp_path):
    path = write(tmp_path, 'data = {"annotations": "a.json"}\n')
    keys = [
        "data.annotations=b.json",
        "data.images=imgs",
        "data.size=96",
        "data.batch_size=2",
        "model.encoder=efficientnet_b0",
        "model.pretrained=true",
        "train.epochs=3",
        "train.lr=1e-4",
    ]
    r = load_recipe(path, keys, check_files=False)
    assert (r.data.annotations, r.data.images, r.data.size, r.data.batch_size) == ("b.json", "imgs", 96, 2)
    assert (r.model.encoder, r.model.pretrained, r.train.epochs, r.train.lr) == ("efficientnet_b0", True, 3, 1e-4)


def test_unknown_key_is_named_with_a_suggestion(tmp_path):
    msg = error_of(write(tmp_path, 'data = {"annotations": "a.json"}\nmodel = {"encodr": "resnet18"}\n'))
    assert "model.encodr" in msg and "encoder" in msg and len(msg.splitlines()) == 1


def test_wrong_type_is_named(tmp_path):
    msg = error_of(write(tmp_path, 'data = {"annotations": "a.json", "batch_size": "eight"}\n'))
    assert "data.batch_size" in msg and "integer" in msg


def test_override_with_wrong_type_and_unknown_key(tmp_path):
    path = write(tmp_path, 'data = {"annotations": "a.json"}\n')
    msg = error_of(path, ["train.epochs=many", "train.epoch=3"])
    lines = msg.splitlines()
    assert len(lines) == 2  # every problem at once
    assert "train.epochs" in lines[0] and "train.epoch'" in lines[1] and "train.epochs" in lines[1]


def test_missing_data_file_names_key_and_file(tmp_path):
    path = write(tmp_path, f'data = {{"annotations": "{tmp_path}/nope.json", "images": "{tmp_path}"}}\n')
    msg = error_of(path, check_files=True)
    assert "data.annotations" in msg and "nope.json" in msg


def test_unknown_section_and_bad_values(tmp_path):
    assert "trian" in error_of(write(tmp_path, 'trian = {"epochs": 1}\n'))
    msg = error_of(write(tmp_path, 'data = {"annotations": "a.json", "size": 100, "augment": "hevy"}\n'))
    assert "data.size" in msg and "data.augment" in msg


def test_stages_parse_from_override_and_drive_epochs(tmp_path):
    path = write(tmp_path, 'data = {"annotations": "a.json"}\n')
    r = load_recipe(path, ["data.stages=((64, 2), (128, 1))"], check_files=False)
    assert r.stages() == ((64, 2), (128, 1))
    assert load_recipe(path, ["data.size=96", "train.epochs=4"], check_files=False).stages() == ((96, 4),)


def test_base_recipe_is_extended(tmp_path):
    write(tmp_path, '"""Base."""\ndata = {"annotations": "a.json", "size": 96}\ntrain = {"epochs": 7}\n', "base.py")
    r = load_recipe(write(tmp_path, 'base = "base.py"\ndata = {"size": 128}\n'), check_files=False)
    assert (r.data.annotations, r.data.size, r.train.epochs, r.description) == ("a.json", 128, 7, "Base.")


def test_recipe_that_raises_is_one_line(tmp_path):
    msg = error_of(write(tmp_path, "data = {1/0: 2}\n"))
    assert "ZeroDivisionError" in msg and len(msg.splitlines()) == 1
