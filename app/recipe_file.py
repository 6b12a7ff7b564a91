"""Reading recipe files: run the file, merge it over its `base`, apply `--set` overrides, build and check it.

A recipe is a plain Python file in `recipes/` that assigns dicts to the section names `data`, `model`, `loss` and
`train` (and optionally `base = "other.py"` to start from another recipe): `runpy.run_path`, never `exec` into
our globals. Its docstring's first line is its description. Reading one takes milliseconds (nothing heavy).
"""

import ast
import dataclasses
import runpy
import typing
from pathlib import Path

from app.errors import TrashError
from app.recipe import SECTIONS, Recipe, build_recipe, check_recipe
from app.registry import did_you_mean


def load_recipe(
    path: str | Path,
    overrides: typing.Sequence[str] = (),
    check_files: bool = True,
    checks: typing.Callable[[Recipe], list[str]] | None = None,
) -> Recipe:
    """Reads a recipe file, applies `key=value` overrides and checks every key, type and range.

    Args:
        path: The recipe file (plain Python assigning dicts to data/model/loss/train).
        overrides: `section.key=value` strings; values are Python literals or bare strings.
        check_files: Also check that the data files named in the recipe exist.
        checks: More checks of the built recipe whose problems are reported with these (app/train/validate.py
            passes the names of every registry and the model).

    Raises:
        TrashError: Listing every problem found, one per line.
    """
    path = Path(path)
    sections, description = _read_sections(path)
    errors: list[str] = []
    for item in overrides:
        _apply_override(sections, item, errors)
    recipe = build_recipe(sections, errors)
    if recipe is not None:
        recipe = dataclasses.replace(recipe, name=path.stem, description=description)
        errors += check_recipe(recipe, check_files)
        errors += checks(recipe) if checks else []
    if errors:
        raise TrashError("\n".join(f"recipe {path}: {e}" for e in errors))
    return recipe


def _run_file(path: Path) -> dict:
    """The names a recipe file defines. It is user code: any error it raises, or an exit it asks for, is one line."""
    try:
        return runpy.run_path(str(path))
    except SystemExit as e:  # sys.exit() in a recipe must not end `trash` quietly with its status
        raise TrashError(
            f"recipe {path}: calls sys.exit({e.code!r}) while it is read; a recipe only assigns dicts"
        ) from None
    except Exception as e:
        raise TrashError(f"recipe {path}: cannot be executed: {type(e).__name__}: {e}") from None


def _read_sections(path: Path, _seen: tuple[Path, ...] = ()) -> tuple[dict[str, dict], str]:
    """Runs the recipe file and returns its sections (merged over its `base`, if any) and docstring."""
    if not path.is_file():
        raise TrashError(f"recipe file not found: {path}")
    if path.resolve() in _seen:
        raise TrashError(f"recipe {path}: `base` chain loops back to itself")
    ns = _run_file(path)
    description = (ns.get("__doc__") or "").strip().splitlines()[0] if (ns.get("__doc__") or "").strip() else ""
    sections: dict[str, dict] = {name: {} for name in SECTIONS}
    base = ns.get("base")
    if base is not None:
        if not isinstance(base, str):
            raise TrashError(f"recipe {path}: `base` must be a file name string, got {type(base).__name__}")
        sections, base_description = _read_sections(path.parent / base, (*_seen, path.resolve()))
        description = description or base_description
    errors = []
    for name, value in ns.items():
        if name.startswith("_") or name == "base" or isinstance(value, type(typing)):
            continue
        if name not in SECTIONS:
            errors.append(f"unknown section {name!r}{did_you_mean(name, SECTIONS)}; sections: {', '.join(SECTIONS)}")
        elif not isinstance(value, dict):
            errors.append(f"section {name!r} must be a dict, got {type(value).__name__}")
        else:
            sections[name] = {**sections[name], **value}
    if errors:
        raise TrashError("\n".join(f"recipe {path}: {e}" for e in errors))
    return sections, description


def _apply_override(sections: dict[str, dict], item: str, errors: list[str]) -> None:
    """Applies one `section.key=value` override in place, recording malformed ones in `errors`."""
    key, sep, raw = item.partition("=")
    section, dot, name = key.strip().partition(".")
    if not sep or not dot:
        errors.append(f"override {item!r} must look like section.key=value, e.g. train.epochs=3")
        return
    if section not in SECTIONS:
        errors.append(f"unknown key {key.strip()!r}{did_you_mean(section, SECTIONS)}")
        return
    sections[section][name] = _parse_literal(raw.strip())


def _parse_literal(raw: str) -> object:
    """`3` → 3, `1e-3` → 0.001, `(1, 2)` → (1, 2), `true` → True; anything else stays a string."""
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return raw


def describe_recipes(folder: str | Path = "recipes") -> list[tuple[str, str]]:
    """(file name, one-line description) of every recipe file in `folder`; unloadable ones say why."""
    found = []
    for path in sorted(Path(folder).glob("*.py")):
        try:
            found.append((path.name, load_recipe(path, check_files=False).description))
        except TrashError as e:
            found.append((path.name, f"(invalid: {str(e).splitlines()[0]})"))
    return found
