"""What a run exports and how it is loaded safely: export.pkl, weights.pth and manifest.json.

- `export.pkl`: fastai's `learn.export()`, a pickle. Loading it runs code: load only exports you trust.
- `weights.pth`: the same model as tensors and plain values only (state_dict, the resolved recipe, class
  names, sizes, normalisation), readable with `torch.load(weights_only=True)`; `learner_from_weights`
  rebuilds the model from the recipe and predicts exactly as export.pkl does, without unpickling code.
- `manifest.json`: the sha256 and size of both, written last. `load_export` checks a file against it before
  reading anything, so a damaged, truncated or altered export is refused before it is unpickled. (The
  manifest sits beside the files: it catches accidents and partial copies, not an attacker who can rewrite
  both; for files from elsewhere, use weights.pth.)

An export without a manifest (made before manifests existed, or by hand) is refused unless the environment
variable TRASH_TRUST_EXPORTS=1 says its source is trusted.

A pickle names classes and functions by dotted path. Exports written before `app/` was split into wings
(`app.models.Unet`, `app.losses.SegmentationLoss`, `app.data.item_image`, ...) load through `OLD_MODULES`,
which maps each old module to the modules its names live in now.
"""

import dataclasses
import json
import os
import pickle
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from app.atomic import TORCH_WRITE_ERRORS, atomic_path, sha256, torch_save, write_text
from app.data.items import Items, Sample
from app.data.loaders import make_dls
from app.errors import TrashError
from app.model.build import build_model
from app.model.loss import SegmentationLoss
from app.recipe import Recipe, recipe_from_dict
from app.runs import EXPORT, MANIFEST, WEIGHTS

WEIGHTS_FORMAT = "trash-weights/1"
TRUST_ENV = "TRASH_TRUST_EXPORTS"  # "1": load exports that have no manifest (their source is trusted)


def find_export(model: str | Path) -> Path:
    """Accepts an export file (export.pkl, or the weights-only weights.pth) or a run directory (or a recipe's
    `latest` link, meaning its export.pkl, else its weights.pth) and returns the export path."""
    path = Path(model)
    if path.is_dir():
        path = path / EXPORT if (path / EXPORT).is_file() or not (path / WEIGHTS).is_file() else path / WEIGHTS
    if not path.is_file():
        raise TrashError(
            f"no exported model at {model} (expected a run directory with {EXPORT} or {WEIGHTS}, or the file itself)"
        )
    return path


def export_run(learn, recipe: Recipe, run: Path) -> None:
    """Writes export.pkl, weights.pth and, last, manifest.json into the run directory (each atomically)."""
    with atomic_path(run / EXPORT, write_errors=TORCH_WRITE_ERRORS) as tmp:
        learn.export(tmp)  # fastai saves to learn.path / fname; an absolute fname stays as it is
    torch_save(weights_payload(learn, recipe), run / WEIGHTS)
    write_manifest(run, [EXPORT, WEIGHTS], learn.trash_classes)


def weights_payload(learn, recipe: Recipe) -> dict:
    """The weights-only export: everything `learner_from_weights` needs, as tensors and plain values."""
    from fastai.torch_core import get_model

    mean, std = learn.trash_norm
    return {
        "format": WEIGHTS_FORMAT,
        "state_dict": {k: v.detach().cpu() for k, v in get_model(learn.model).state_dict().items()},
        "recipe": recipe.to_dict(),
        "classes": list(learn.trash_classes),
        "build_size": list(recipe.shape(recipe.stages()[0][0])),  # built for the first stage's size (windows)
        "size": list(recipe.shape(recipe.stages()[-1][0])),  # images are squished to the last stage's (H, W)
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
    }


def write_manifest(run: Path, names: list[str], classes: list[str]) -> Path:
    files = {name: {"sha256": sha256(run / name), "bytes": (run / name).stat().st_size} for name in names}
    manifest = {"files": files, "classes": list(classes), "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    return write_text(run / MANIFEST, json.dumps(manifest, indent=2) + "\n")


def verify(path: str | Path) -> None:
    """Checks `path` against the manifest.json beside it.

    Raises:
        TrashError: An export.pkl without a manifest (unless TRASH_TRUST_EXPORTS=1; a weights.pth, which runs no
            code, may come alone), the file is not listed, or its size or sha256 differ from the recorded ones.
    """
    path = Path(path)
    manifest_path = path.parent / MANIFEST
    if not manifest_path.is_file():
        if os.environ.get(TRUST_ENV) == "1" or path.suffix == ".pth":
            return  # weights.pth holds tensors and plain values only: loading it runs no code, a copy alone is fine
        raise TrashError(
            f"{path} has no {MANIFEST} beside it, so it cannot be checked before loading (an export.pkl runs "
            f"code when loaded). Export it again with `trash fit`, or set {TRUST_ENV}=1 if you trust its source"
        )
    try:
        entry = json.loads(manifest_path.read_text())["files"][path.name]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise TrashError(f"{manifest_path} does not list {path.name} (damaged manifest or a foreign file)") from None
    size = path.stat().st_size
    if size != entry["bytes"] or sha256(path) != entry["sha256"]:
        raise TrashError(
            f"{path} does not match its {MANIFEST} (sha256 or size differ): it was changed or damaged after "
            "`trash fit` wrote it; refusing to load it"
        )


def load_export(path: str | Path, cpu: bool = True):
    """A fastai Learner from a verified export.pkl (pickle) or weights.pth (weights only, no code run)."""
    path = Path(path)
    verify(path)
    if path.suffix == ".pth":
        return learner_from_weights(path, cpu=cpu)
    import warnings

    from fastai.learner import load_learner

    with warnings.catch_warnings():  # fastai warns on every load that pickles run code: verify() checked it
        warnings.filterwarnings("ignore", message=".*insecure pickle module", category=UserWarning)
        return load_learner(path, cpu=cpu, pickle_module=OLD_PATHS_PICKLE)


# -- exports written before the wings ---------------------------------------------------------------

#: old flat module -> the modules its pickled names live in now (searched in this order)
OLD_MODULES: dict[str, tuple[str, ...]] = {
    "app.models": ("app.model.unet", "app.model.encoders", "app.model.smp", "app.model.build", "app.model.norms"),
    "app.losses": ("app.model.loss",),
    "app.metrics": ("app.model.metrics",),
    "app.data": ("app.data.loaders", "app.data.items"),
    "app.callbacks": (
        "app.train.callbacks.precision",
        "app.train.callbacks.history",
        "app.train.callbacks.tracking",
        "app.train.callbacks.averaging",
        "app.train.callbacks.levers",
    ),
    "app.optim": ("app.train.optim",),
    "app.schedule": ("app.train.schedule",),
    "app.checkpoint": ("app.train.checkpoint", "app.train.signals", "app.train.plan"),
    "app.coco": ("app.data.coco", "app.data.masks"),
    "app.augment": ("app.data.augment",),
    "app.tta": ("app.infer.tta",),
}
#: old (module, name) pairs whose name changed
OLD_NAMES: dict[tuple[str, str], str] = {("app.models", "unet_splitter"): "model_splitter"}


class OldPathsUnpickler(pickle.Unpickler):
    """pickle.Unpickler that also finds names by their pre-wings dotted paths (`OLD_MODULES`, `OLD_NAMES`)."""

    def find_class(self, module: str, name: str):
        if module not in OLD_MODULES:
            return super().find_class(module, name)
        name = OLD_NAMES.get((module, name), name)
        for candidate in OLD_MODULES[module]:
            try:
                return super().find_class(candidate, name)
            except AttributeError:
                continue
        raise TrashError(f"an old export names {module}.{name}, which this version of trash no longer has")


def _load_old_paths(file, **kwargs):
    return OldPathsUnpickler(file, **kwargs).load()


#: what fastai's load_learner hands to torch.load as `pickle_module` (torch subclasses its Unpickler)
OLD_PATHS_PICKLE = SimpleNamespace(Unpickler=OldPathsUnpickler, load=_load_old_paths, __name__="trash_pickle")


# -- weights-only exports ---------------------------------------------------------------------------


def learner_from_weights(path: str | Path, cpu: bool = True):
    """Rebuilds a prediction Learner from weights.pth: the recipe's model (no pretrained weights are read:
    the state_dict has them all), the state_dict, and loaders with the export's resize and normalisation."""
    from fastai.learner import Learner

    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != WEIGHTS_FORMAT:
        raise TrashError(f"{path} is not a trash weights export ({WEIGHTS_FORMAT})")
    recipe = recipe_from_dict(payload["recipe"])
    cfg = dataclasses.replace(recipe.model, pretrained=False, weights="")
    classes = list(payload["classes"])
    model, _, _ = build_model(cfg, len(classes), _shape(payload["build_size"]))
    model.load_state_dict(payload["state_dict"])
    mean, std = tuple(payload["mean"]), tuple(payload["std"])
    device = "cpu" if cpu or not torch.cuda.is_available() else "cuda"
    dls = _prediction_loaders(recipe, classes, _shape(payload["size"]), mean, std, device)
    learn = Learner(dls, model.to(device), loss_func=_loss(recipe))
    learn.trash_norm, learn.trash_classes = (mean, std), classes
    model.eval()
    return learn


def _shape(size) -> tuple[int, int]:
    """(H, W) from weights.pth: one side in exports before `data.aspect`, [H, W] since."""
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _loss(recipe: Recipe) -> SegmentationLoss:
    """The recipe's loss terms (a Learner needs a loss; prediction never calls it); no class weights."""
    lo = recipe.loss
    return SegmentationLoss(lo.weights(), None, lo.ignore_index, lo.focal_gamma, lo.label_smoothing)


def _prediction_loaders(recipe: Recipe, classes: list[str], size: tuple, mean: tuple, std: tuple, device: str):
    """Empty DataLoaders with the training pipeline (Resize squish, Normalize): what `test_dl` needs.

    fastai sets a pipeline up on one real item, so a 1-pixel image and mask are written to a temporary folder
    and forgotten with `new_empty()`, as `learn.export()` does with the training items.
    """
    import cv2
    import numpy as np

    # The loaders squish to `size` (H, W) whatever the recipe's aspect: as a single-stage recipe of that shape.
    aspect = size[1] / size[0]
    data = dataclasses.replace(recipe.data, copy_paste=0.0, mosaic=0.0, sampler="uniform", crop=0, aspect=aspect)
    with tempfile.TemporaryDirectory() as folder:
        image, mask = Path(folder) / "image.png", Path(folder) / "mask.png"
        cv2.imwrite(str(image), np.zeros((1, 1, 3), np.uint8))
        cv2.imwrite(str(mask), np.zeros((1, 1), np.uint8))
        sample = Sample(image, mask)
        items = Items([sample], [sample], classes, {}, {}, [])
        return make_dls(items, dataclasses.replace(recipe, data=data), size[0], mean, std, device=device).new_empty()
