"""The CLI as a user meets it: fast help listing every command, one-line errors without tracebacks."""

import subprocess
import sys

from typer.testing import CliRunner

from app.cli import app
from tests.conftest import write_recipe

runner = CliRunner()


def every_command(typer_app, prefix=()) -> list[tuple[str, ...]]:
    """The words of every command the Typer app registers, groups walked (e.g. ("data", "check"))."""
    import typer.main

    group = typer.main.get_command(typer_app)
    found = []

    def walk(command, words):
        subcommands = getattr(command, "commands", None)
        if subcommands is None:
            found.append(words)
            return
        if words and command.callback is not None:  # a group that is a command itself (`trash recipes`)
            found.append(words)
        for name, sub in subcommands.items():
            walk(sub, (*words, name))

    walk(group, tuple(prefix))
    return found


def test_every_command_is_found():
    words = {" ".join(w) for w in every_command(app)}
    assert {"fit", "predict", "data check", "recipes show", "recipes"} <= words and len(words) >= 16


def test_help_lists_every_command_with_an_example():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for words in every_command(app):
        assert words[0] in result.output
        sub = runner.invoke(app, [*words, "--help"])
        assert sub.exit_code == 0 and "Example" in sub.output, " ".join(words)


def test_help_does_not_import_torch():
    code = "import sys, app.cli; sys.exit('torch' in sys.modules or 'fastai' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def assert_one_line_error(result, *needles):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    for needle in needles:
        assert needle in errors[0]


def test_bad_recipe_unknown_key(demo, tmp_path):
    recipe = write_recipe(tmp_path / "r.py", demo, model={"encodr": "resnet18"})
    assert_one_line_error(runner.invoke(app, ["fit", str(recipe)]), "model.encodr")


def test_bad_recipe_wrong_type_from_set(demo, tmp_path):
    recipe = write_recipe(tmp_path / "r.py", demo)
    assert_one_line_error(runner.invoke(app, ["fit", str(recipe), "--set", "train.lr=fast"]), "train.lr")


def test_bad_recipe_missing_data_file(demo, tmp_path):
    recipe = write_recipe(tmp_path / "r.py", demo, data={"annotations": str(tmp_path / "missing.json")})
    assert_one_line_error(runner.invoke(app, ["fit", str(recipe)]), "data.annotations", "missing.json")


def test_unknown_encoder_fails_before_any_work(demo, tmp_path):
    recipe = write_recipe(tmp_path / "r.py", demo, model={"encoder": "efficientnet_b9000"})
    result = runner.invoke(app, ["fit", str(recipe), "--out", str(tmp_path / "runs")])
    assert_one_line_error(result, "efficientnet_b9000")
    assert not (tmp_path / "runs").exists()


def test_missing_recipe_and_model(tmp_path):
    assert_one_line_error(runner.invoke(app, ["fit", str(tmp_path / "nope.py")]), "nope.py")
    result = runner.invoke(app, ["predict", str(tmp_path), "--images", str(tmp_path), "--out", str(tmp_path / "o")])
    assert_one_line_error(result, "export.pkl")


def test_demo_data_is_written(tmp_path):
    result = runner.invoke(app, ["demo-data", str(tmp_path / "d"), "--seed", "3"])
    assert result.exit_code == 0
    for split in ("train", "val", "test"):
        assert (tmp_path / "d" / f"{split}.json").is_file()
