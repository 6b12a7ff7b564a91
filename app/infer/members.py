"""Ensemble members: what `predict`, `evaluate` and `pseudo` average, one probability map per image each.

A model argument on the command line becomes one or more members:

* a run directory, its `latest` link or an `export.pkl`: one exported learner;
* a fold group written by `trash fit --fold all` (a folder of `fold<k>/export.pkl`): one member per fold, the
  model's weight shared between them;
* with `topk=True`, a run trained with `train.top_k=K`: one member per kept epoch (`models/topk.json`), all in
  the exported architecture, so an epoch ensemble costs no extra exports;
* a predictions folder written by `trash predict --save-probs` (`probs/*.npy` + `predictions.json`): saved fp16
  probabilities, so an ensemble can reuse predictions made earlier, elsewhere or with other TTA;
* a `model.onnx` written by `trash export`: run by ONNX Runtime (app/infer/onnx_runtime.py), with the same TTA
  views, tiles and post-processing, and mixed freely with the others.

Members are combined in probability space. Each has a weight and optional per-class weights ("models weighted
toward the classes they predict best"): class c's probability is the weighted average over members with weights
`weight_m * class_weight_m[c]` (normalised per class, so each class's probabilities stay a weighted mean).
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from app.errors import TrashError
from app.export import find_export, load_export
from app.infer.onnx_runtime import OnnxModel, is_onnx
from app.runs import EXPORT

PREDICTIONS_INDEX = "predictions.json"  # written next to probs/ by `trash predict --save-probs`


@dataclass
class Member:
    """One ensemble member.

    Args:
        name: What the user named (run dir, export, fold, epoch), for reports.
        learn: A fastai Learner (exported), or None for saved probabilities.
        weight: Weight in the ensemble.
        class_weights: Optional weight per class (multiplied with `weight`).
        states: Optional state_dicts averaged in probability space with this learner's architecture (top-k).
        probs_dir: For saved probabilities: the `probs/` folder.
        classes: Class names the member predicts.
        onnx: For a `trash export` ONNX file: its OnnxModel (then `learn` is None).
        runner: The engine that runs `learn`'s network instead of its module (app/infer/backend.py), or None.
        backend: Which engine runs the member and why (set by `backend.choose_engines`).
    """

    name: str
    learn: object = None
    weight: float = 1.0
    class_weights: np.ndarray | None = None
    states: list[dict] = field(default_factory=list)
    probs_dir: Path | None = None
    classes: list[str] = field(default_factory=list)
    onnx: OnnxModel | None = None
    runner: object = None
    backend: dict = field(default_factory=dict)

    @property
    def train_size(self) -> tuple[int, int] | None:
        """(H, W) the member's images are resized to (its last training stage, or an ONNX file's size), None for
        saved probabilities."""
        if self.onnx is not None:
            return self.onnx.size
        if self.learn is None:
            return None
        for tfm in self.learn.dls.valid.after_item.fs:
            if type(tfm).__name__ == "Resize":
                size = tfm.size  # fastai keeps (width, height)
                return (size, size) if isinstance(size, int) else (int(size[1]), int(size[0]))
        raise TrashError(f"{self.name}: the export has no Resize transform; was it made by `trash fit`?")

    def weights_per_class(self, n_classes: int) -> torch.Tensor:
        w = torch.full((n_classes,), float(self.weight))
        if self.class_weights is not None:
            w = w * torch.as_tensor(self.class_weights, dtype=torch.float32)
        return w


def is_predictions_dir(path: Path) -> bool:
    return (path / PREDICTIONS_INDEX).is_file() and (path / "probs").is_dir()


def fold_exports(path: Path) -> list[Path]:
    """The fold exports of a `--fold all` run group, or [] when `path` is not one."""
    if not path.is_dir() or (path / EXPORT).exists():
        return []
    return sorted(path.glob(f"fold*/{EXPORT}"), key=lambda p: int(p.parent.name[4:] or 0))


def topk_states(export: Path) -> list[tuple[str, dict]]:
    """(label, state_dict) of every epoch a run kept with `train.top_k`, best first."""
    folder = export.parent / "models"
    index = folder / "topk.json"
    if not index.is_file():
        raise TrashError(f"{export.parent}: no models/topk.json; train with --set train.top_k=3 for an epoch ensemble")
    states = []
    for entry in json.loads(index.read_text()):
        path = folder / entry["file"]
        try:
            states.append((f"epoch {entry['epoch']}", torch.load(path, map_location="cpu", weights_only=True)))
        except (OSError, RuntimeError, EOFError) as e:
            raise TrashError(f"top-k checkpoint {path} cannot be loaded ({e}); retrain or drop --topk") from None
    return states


def load_members(
    models: list[str | Path],
    weights: list[float] | None = None,
    class_weights: list[list[float] | None] | None = None,
    topk: bool = False,
) -> list[Member]:
    """Members for the model arguments (see the module docstring); all must predict the same classes.

    Args:
        models: Run directories, `latest` links, export files, fold groups or predictions folders.
        weights: One weight per model argument (a fold group's weight is shared by its folds).
        class_weights: One list of per-class weights (or None) per model argument.
        topk: Replace each run's exported weights by its top-k epochs.
    """
    if not models:
        raise TrashError("no models given")
    weights = list(weights) if weights else [1.0] * len(models)
    class_weights = list(class_weights) if class_weights else [None] * len(models)
    _check_weights(models, weights, class_weights)
    members: list[Member] = []
    for model, weight, cw in zip(models, weights, class_weights):
        members += _members_of(Path(model), weight, None if cw is None else np.asarray(cw, dtype=np.float64), topk)
    _check_classes(members)
    return members


def _check_weights(models: list, weights: list[float], class_weights: list) -> None:
    if len(weights) != len(models):
        raise TrashError(f"{len(weights)} weights for {len(models)} models")
    if len(class_weights) != len(models):
        raise TrashError(f"{len(class_weights)} per-class weight lists for {len(models)} models")
    if any(not np.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
        raise TrashError(f"model weights must be >= 0 and not all 0, got {weights}")


def _members_of(path: Path, weight: float, cw: np.ndarray | None, topk: bool) -> list[Member]:
    """The members one model argument stands for: saved probabilities, one export, a group's folds, top-k epochs."""
    if is_predictions_dir(path):
        classes = json.loads((path / PREDICTIONS_INDEX).read_text())["classes"]
        return [Member(str(path), None, weight, cw, probs_dir=path / "probs", classes=classes)]
    if is_onnx(path):
        if topk:
            raise TrashError(f"{path}: --topk needs run directories (their models/topk.json), not an ONNX file")
        model = OnnxModel(path)
        return [Member(str(path), None, weight, cw, classes=model.classes, onnx=model)]
    exports = fold_exports(path) or [path]
    found = []
    for export, learn in zip(exports, load_learners(exports)):
        share = weight / len(exports)
        if not topk:
            found.append(Member(str(export), learn, share, cw, classes=learn.trash_classes))
            continue
        states = topk_states(find_export(export))
        for label, state in states:
            name, each = f"{export} {label}", share / len(states)
            found.append(Member(name, learn, each, cw, [state], classes=learn.trash_classes))
    return found


def _check_classes(members: list[Member]) -> None:
    first = members[0]
    for m in members[1:]:
        if m.classes != first.classes:
            raise TrashError(f"{m.name} predicts classes {m.classes}, but {first.name} {first.classes}")
    for m in members:
        if m.class_weights is not None and len(m.class_weights) != len(first.classes):
            raise TrashError(f"{m.name}: {len(m.class_weights)} per-class weights for {len(first.classes)} classes")


def load_learners(models: list[str | Path]) -> list:
    """Loads exported learners on the available device; all must predict the same classes.

    Each file is checked against its run's manifest.json before it is read (app/export.py); a `weights.pth`
    is rebuilt from tensors and the recipe without unpickling any code.
    """
    learners = [load_export(find_export(m), cpu=not torch.cuda.is_available()) for m in models]
    for model, learn in zip(models, learners):
        if not hasattr(learn, "trash_classes"):
            raise TrashError(f"{model} was not exported by `trash fit` (it has no class names)")
        if learn.trash_classes != learners[0].trash_classes:
            raise TrashError(
                f"{model} predicts classes {learn.trash_classes}, but {models[0]} {learners[0].trash_classes}"
            )
    return learners


def combine(probs: list[torch.Tensor], members: list[Member]) -> torch.Tensor:
    """Per-class weighted mean of the members' (C, H, W) probabilities (see the module docstring)."""
    n = probs[0].shape[0]
    w = torch.stack([m.weights_per_class(n) for m in members])  # (M, C)
    total = w.sum(0)
    if (total <= 0).any():
        raise TrashError(f"per-class weights sum to 0 for class(es) {torch.nonzero(total <= 0).flatten().tolist()}")
    stacked = torch.stack(probs)  # (M, C, H, W)
    return (stacked * (w / total)[:, :, None, None]).sum(0)


def saved_probs(member: Member, image_id: str, size: tuple[int, int]) -> torch.Tensor:
    """A predictions folder's probabilities for one image, resized to (H, W) when saved at another size."""
    path = member.probs_dir / Path(image_id).with_suffix(".npy")
    if not path.is_file():
        raise TrashError(f"{member.name}: no saved probabilities for {image_id} ({path})")
    probs = torch.from_numpy(np.load(path).astype(np.float32))
    if tuple(probs.shape[-2:]) != tuple(size):
        probs = F.interpolate(probs[None], size=size, mode="bilinear", align_corners=False)[0]
    return probs
