"""Run directories: `<out>/<recipe>/<timestamp>/`, each standing alone, plus a `latest` link per recipe."""

import json
import os
import shutil
import time
from pathlib import Path

from app.atomic import atomic_open, atomic_path

EXPORT = "export.pkl"


def create_run_dir(out: str | Path, recipe_name: str, suffix: str = "") -> Path:
    """Makes a new, unique run folder and points `<out>/<recipe>/latest` at it."""
    parent = Path(out).resolve() / recipe_name
    parent.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S") + suffix
    run = parent / stamp
    n = 1
    while True:
        try:
            run.mkdir()
            break
        except FileExistsError:  # two runs in the same second
            n += 1
            run = parent / f"{stamp}-{n}"
    link = parent / "latest"
    tmp = parent / f".latest.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(run.name)
    os.replace(tmp, link)
    return run


def write_json(path: str | Path, payload: dict) -> Path:
    """Writes json atomically (temporary file in the same folder, fsync, rename; see app.atomic)."""
    with atomic_open(path, "w") as f:
        json.dump(payload, f, indent=2, default=str)
        f.write("\n")
    return Path(path)


def copy_recipe(recipe_file: str | Path, run: Path) -> None:
    with atomic_path(run / "recipe.py") as tmp:
        shutil.copy2(recipe_file, tmp)


def find_export(model: str | Path) -> Path:
    """Accepts an export file (export.pkl, or the weights-only weights.pth) or a run directory (or a recipe's
    `latest` link, meaning its export.pkl) and returns the export path."""
    from app.errors import TrashError

    path = Path(model)
    if path.is_dir():
        path = path / EXPORT
    if not path.is_file():
        raise TrashError(f"no exported model at {model} (expected a run directory with {EXPORT} or the file itself)")
    return path


def package_versions() -> dict[str, str]:
    """Versions of the packages a run depends on, recorded so a run can be reproduced."""
    from importlib.metadata import PackageNotFoundError, version

    names = [
        "torch",
        "torchvision",
        "fastai",
        "timm",
        "albumentations",
        "pycocotools",
        "numpy",
        "opencv-python-headless",
    ]
    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "missing"
    return found


RUN_COLUMNS = ("recipe", "fold", "miou", "epochs", "seconds", "data", "run")


def list_runs(root: str | Path = "runs") -> list[dict]:
    """One row per finished run under `root` (a run is a folder with metrics.json): the experiment log."""
    rows = []
    for metrics_file in sorted(Path(root).rglob("metrics.json")):
        if metrics_file.parent.name == "latest" or metrics_file.parent.is_symlink():
            continue
        try:
            m = json.loads(metrics_file.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # a run being written or damaged: not part of the log
        rows.append(
            {
                "recipe": m.get("recipe", "?"),
                "fold": m.get("fold", -1),
                "miou": m.get("miou"),
                "epochs": m.get("epochs"),
                "seconds": m.get("train_seconds"),
                "data": m.get("data_fingerprint", ""),
                "run": str(metrics_file.parent),
            }
        )
    return rows


def sort_runs(rows: list[dict], key: str) -> list[dict]:
    """Sorted by `key`; scores and numbers descending (best first), text ascending."""
    from app.errors import TrashError

    if key not in RUN_COLUMNS:
        raise TrashError(f"cannot sort runs by {key!r}; columns: {', '.join(RUN_COLUMNS)}")
    numeric = key in ("miou", "epochs", "seconds", "fold")
    present = [r for r in rows if r[key] is not None]
    missing = [r for r in rows if r[key] is None]
    return sorted(present, key=lambda r: r[key], reverse=numeric) + missing
