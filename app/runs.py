"""Run directories: `<out>/<recipe>/<timestamp>/`, each standing alone, a `latest` link per recipe, the run log.

A run directory holds everything `predict` and a reader need (README, "A run directory"); the names of its
files are here. `latest` points at the last *finished* full run (or fold group) of a recipe: a dry run
(`--debug`), an lr-find or a run that stopped never moves it.
"""

import json
import os
import time
from pathlib import Path

from app.atomic import copy_file, make_dir
from app.errors import TrashError, WriteFailed

EXPORT = "export.pkl"
WEIGHTS = "weights.pth"
MANIFEST = "manifest.json"
METRICS = "metrics.json"
RESOLVED = "resolved.json"
HISTORY = "history.csv"
FOLDS = "folds.json"  # in a `--fold all` group: how to train (and resume) each fold
SUMMARY = "summary.json"  # in a finished fold group
PER_IMAGE = "per_image.npz"  # per validation image and class: pixels of truth, prediction and both (the report)
REPORT = "report.html"  # the run's (or group's) page: app/report
AUDIT_SUMMARY = "audit_summary.json"  # in a fold group `trash data audit` read: counts and top findings (the page)
AUDIT_GALLERY = "audit_gallery.png"  # beside it: a copy of the audit's gallery, so the group's page stands alone
LATEST = "latest"
RUN_COLUMNS = ("recipe", "fold", "miou", "epochs", "seconds", "data", "run")


def create_run_dir(out: str | Path, recipe_name: str, suffix: str = "") -> Path:
    """Makes a new, unique run folder `<out>/<recipe>/<timestamp><suffix>` (not yet `latest`: see point_latest)."""
    parent = make_dir(Path(out).resolve() / recipe_name)
    stamp = time.strftime("%Y%m%d-%H%M%S") + suffix
    run, n = parent / stamp, 1
    while True:
        try:
            run.mkdir()
            return run
        except FileExistsError:  # two runs in the same second
            n += 1
            run = parent / f"{stamp}-{n}"
        except OSError as e:
            raise WriteFailed(run, e) from e


def point_latest(run: Path) -> None:
    """Points `<out>/<recipe>/latest` at a finished run (or group), replacing the link in one rename."""
    parent = run.parent
    tmp = parent / f".latest.{os.getpid()}"
    try:
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(run.name)
        os.replace(tmp, parent / LATEST)
    except OSError as e:
        raise WriteFailed(parent / LATEST, e) from e


def copy_recipe(recipe_file: str | Path, run: Path) -> None:
    copy_file(recipe_file, run / "recipe.py")


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


def machine() -> dict[str, object]:
    """Where a run trained: host, OS, CPU cores, Python and the accelerator (for its report)."""
    import platform

    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {
        "host": platform.node(),
        "system": platform.platform(terse=True),
        "cpu_cores": os.cpu_count(),
        "python": platform.python_version(),
        "gpu": gpu,
    }


def list_runs(root: str | Path = "runs") -> list[dict]:
    """One row per finished run under `root` (a run is a folder with metrics.json): the experiment log."""
    rows = []
    for metrics_file in sorted(Path(root).rglob(METRICS)):
        if metrics_file.parent.name == LATEST or metrics_file.parent.is_symlink():
            continue
        try:
            m = json.loads(metrics_file.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # a run being written or damaged: not part of the log
        rows.append(_run_row(m, metrics_file.parent))
    return rows


def _run_row(m: dict, run: Path) -> dict:
    return {
        "recipe": m.get("recipe", "?"),
        "fold": m.get("fold", -1),
        "miou": m.get("miou"),
        "epochs": m.get("epochs"),
        "seconds": m.get("train_seconds"),
        "data": m.get("data_fingerprint", ""),
        "run": str(run),
    }


def sort_runs(rows: list[dict], key: str) -> list[dict]:
    """Sorted by `key`; scores and numbers descending (best first), text ascending."""
    if key not in RUN_COLUMNS:
        raise TrashError(f"cannot sort runs by {key!r}; columns: {', '.join(RUN_COLUMNS)}")
    numeric = key in ("miou", "epochs", "seconds", "fold")
    present = [r for r in rows if r[key] is not None]
    missing = [r for r in rows if r[key] is None]
    return sorted(present, key=lambda r: r[key], reverse=numeric) + missing
