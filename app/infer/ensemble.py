"""`trash ensemble`: choose models, TTA set, weights and post-processing greedily on out-of-fold predictions.

nnU-Net's find_best_configuration idea (rank configurations and their ensembles on out-of-fold data, never on the
test set), with Caruana et al.'s greedy ensemble selection for the weights:

1. Each candidate is a run directory or a `trash fit --fold all` group. Its out-of-fold probabilities are the
   `oof.npz` that training wrote (validation images, no TTA); other TTA sets are predicted once with the
   run's export on the same images and cached next to it as `oof_<set>.npz`.
2. For each TTA set: start from the best single candidate, then repeatedly add (with replacement) the
   candidate that raises the ensemble's OOF mIoU most; stop when nothing helps or at `max_members`. A candidate
   added n times gets weight n.
3. The best TTA set wins; then per-class weights (each member's OOF IoU per class, "models weighted toward the
   classes they predict best"), dense CRF (when pydensecrf2 is installed) and small-component removal are each
   kept only if they raise the OOF mIoU.

Scores are dataset confusion-matrix mIoU at a reduced resolution (`eval_size`, probabilities area-averaged,
truth nearest-resized), fast enough to try hundreds of combinations; the printed command reproduces the choice.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from app.atomic import savez, write_json
from app.data.coco import load_coco
from app.data.images import read_rgb
from app.data.items import coco_items
from app.errors import TrashError
from app.infer.members import fold_exports, load_members
from app.infer.options import InferenceOptions, view_spec
from app.infer.postprocess import dense_crf, remove_small_components
from app.infer.stream import stream_predictions
from app.infer.tta import parse_views
from app.model.metrics import confusion_matrix, iou_per_class, mean_iou
from app.runs import EXPORT, RESOLVED

MIN_AREAS = (0.0005, 0.001, 0.002, 0.005)  # small-component thresholds tried (share of the image)
#: a post-processing step or per-class weights are kept only if they raise the OOF mIoU by at least this much:
#: smaller gains are noise on a few hundred images (0.1 mIoU points)
MIN_GAIN = 1e-3


@dataclass
class Candidate:
    name: str  # what the user passed
    runs: list[Path]  # the run directories (one, or one per fold)


def candidates(models: list[str | Path]) -> list[Candidate]:
    """Runs or fold groups with the oof.npz and export.pkl that training writes."""
    found = []
    for model in models:
        path = Path(model)
        folds = fold_exports(path)
        runs = [e.parent for e in folds] if folds else [path]
        for run in runs:
            if not (run / "oof.npz").is_file() or not (run / EXPORT).is_file():
                raise TrashError(
                    f"{run}: no oof.npz and export.pkl; pass run directories or fold groups of `trash fit`"
                )
        found.append(Candidate(str(model), runs))
    names = [c.name for c in found]
    if len(set(names)) != len(names):
        raise TrashError("the same model is named twice")
    return found


def _truth_masks(run: Path) -> dict[str, Path]:
    """Image path -> mask path for every json the run trained or validated on (from its resolved.json)."""
    resolved = json.loads((run / RESOLVED).read_text())
    d = resolved["data"]
    found = {}
    for key, source in resolved.get("data_sources", {}).items():
        if key == "pseudo":  # pseudo-labels train, they are never out-of-fold
            continue
        folder = (d.get("valid_images") or d["images"]) if key == "valid" else d["images"]
        coco = load_coco(source)
        found.update({str(img): mask for img, mask in coco_items(coco, folder, d.get("mask_cache", ""))})
    return found


def _oof_file(run: Path, spec: str) -> Path:
    return run / ("oof.npz" if spec == "identity" else f"oof_{spec.replace('+', '_')}.npz")


def run_oof(run: Path, spec: str, progress=None) -> dict[str, np.ndarray]:
    """image id -> (C, s, s) fp16 out-of-fold probabilities of one run with TTA set `spec` (cached on disk)."""
    path = _oof_file(run, spec)
    if not path.is_file():
        base = np.load(run / "oof.npz")
        ids, size = [str(i) for i in base["image"]], tuple(base["probs"].shape[-2:])
        kept = {}
        stream = stream_predictions(load_members([run]), [(i, Path(i)) for i in ids], InferenceOptions(tta=spec))
        for pred in progress(stream, total=len(ids)) if progress else stream:
            kept[pred.image_id] = F.interpolate(pred.probs[None], size=size, mode="area")[0].half().numpy()
        savez(path, image=np.array(list(kept)), probs=np.stack(list(kept.values())))
    data = np.load(path)
    return {str(i): p for i, p in zip(data["image"], data["probs"])}


class OOFSet:
    """Out-of-fold probabilities of every candidate for one TTA set, and the truth, at `eval_size`."""

    def __init__(self, cands: list[Candidate], spec: str, eval_size: int, progress=None):
        per_candidate = []
        truth_paths: dict[str, Path] = {}
        for cand in cands:
            merged: dict[str, np.ndarray] = {}
            for run in cand.runs:
                merged.update(run_oof(run, spec, progress))
                if not truth_paths:
                    truth_paths = _truth_masks(run)
            per_candidate.append(merged)
        common = sorted(set.intersection(*(set(m) for m in per_candidate)))
        if not common:
            raise TrashError("the models share no out-of-fold images; ensemble runs validated on the same images")
        missing = [i for i in common if i not in truth_paths]
        if missing:
            raise TrashError(f"no ground truth for {len(missing)} out-of-fold image(s), e.g. {missing[0]}")
        self.ids = common
        self.skipped = max(len(m) for m in per_candidate) - len(common)
        self.n_classes = per_candidate[0][common[0]].shape[0]

        def small(p):
            t = torch.from_numpy(p.astype(np.float32))[None]
            return F.interpolate(t, size=(eval_size, eval_size), mode="area")[0]

        self.probs = [torch.stack([small(m[i]) for i in common]) for m in per_candidate]  # (N, C, s, s) each
        masks = [cv2.imread(str(truth_paths[i]), cv2.IMREAD_UNCHANGED) for i in common]
        self.images = [  # RGB at eval_size, for the dense CRF's colour term
            cv2.resize(read_rgb(i), (eval_size, eval_size), interpolation=cv2.INTER_AREA) for i in common
        ]
        self.truth = torch.from_numpy(
            np.stack([cv2.resize(m, (eval_size, eval_size), interpolation=cv2.INTER_NEAREST) for m in masks])
        )

    def cm(self, probs: torch.Tensor) -> np.ndarray:
        return confusion_matrix(probs.argmax(1), self.truth, self.n_classes).numpy()

    def score(self, probs: torch.Tensor) -> float:
        return mean_iou(self.cm(probs))


def _weighted(oof: OOFSet, weights: np.ndarray, class_weights: np.ndarray | None = None) -> torch.Tensor:
    """Per-class weighted mean of the candidates' probabilities (as app.infer.members.combine)."""
    w = torch.as_tensor(weights, dtype=torch.float32)[:, None].repeat(1, oof.n_classes)
    if class_weights is not None:
        w = w * torch.as_tensor(class_weights, dtype=torch.float32)
    w = w / w.sum(0).clamp_min(1e-12)
    total = None
    for i, p in enumerate(oof.probs):
        if w[i].any():
            part = p * w[i][None, :, None, None]
            total = part if total is None else total + part
    return total


def greedy(oof: OOFSet, max_members: int) -> tuple[np.ndarray, list[dict]]:
    """Caruana greedy selection with replacement: (counts per candidate, path of (added, miou) steps)."""
    counts = np.zeros(len(oof.probs))
    singles = [oof.score(p) for p in oof.probs]
    best = int(np.argmax(singles))
    counts[best] = 1
    score, steps = singles[best], [{"added": best, "miou": singles[best]}]
    while counts.sum() < max_members:
        trials = []
        for i in range(len(oof.probs)):
            trial = counts.copy()
            trial[i] += 1
            trials.append(oof.score(_weighted(oof, trial)))
        i = int(np.argmax(trials))
        if trials[i] <= score + 1e-6:
            break
        counts[i] += 1
        score = trials[i]
        steps.append({"added": i, "miou": score})
    return counts, steps


@dataclass(frozen=True)
class Search:
    """What `select` tries.

    Attributes:
        tta_sets: TTA view-set specs to compare (each predicted once per run and cached beside oof.npz).
        max_members: Most members (with repetition) the greedy selection adds.
        per_class: Try per-class weights (each member's OOF IoU per class).
        min_areas: Small-component thresholds to try.
        eval_size: Side the OOF probabilities and truth are scored at.
        min_gain: Least OOF mIoU gain for which a step is kept (`MIN_GAIN`).
    """

    tta_sets: tuple[str, ...] = ("identity",)
    max_members: int = 10
    per_class: bool = True
    min_areas: tuple[float, ...] = MIN_AREAS
    eval_size: int = 96
    min_gain: float = MIN_GAIN


def select(models: list[str | Path], search: Search = Search(), out: str | Path | None = None, progress=None) -> dict:
    """Chooses the ensemble (see the module docstring) and writes it as json to `out` when given."""
    cands = candidates(models)
    specs = [view_spec(s) for s in search.tta_sets]
    for s in specs:
        parse_views(s)
    table, best = _best_tta(cands, specs, search, progress)
    oof, counts = best["oof"], best["counts"]
    chosen = [i for i, c in enumerate(counts) if c > 0]
    result = {
        "members": [cands[i].name for i in chosen],
        "weights": [float(counts[i]) for i in chosen],
        "tta": best["tta"],
        "class_weights": None,
        "min_area": 0.0,
        "oof_images": len(oof.ids),
        "eval_size": search.eval_size,
        "oof_miou": best["miou"],
        "steps": [{"added": cands[s["added"]].name, "miou": s["miou"]} for s in best["steps"]],
        "table": table,
    }
    probs = _try_class_weights(oof, counts, chosen, search, result)
    probs = _try_crf(oof, probs, search, result)
    result["per_class_iou"] = [None if np.isnan(v) else float(v) for v in iou_per_class(oof.cm(probs))]
    _try_min_area(oof, probs, search, result)
    if out:
        write_json(out, result)
    return result


def _best_tta(cands: list[Candidate], specs: list[str], search: Search, progress) -> tuple[list[dict], dict]:
    """The table of every candidate and greedy ensemble per TTA set, and the best set's selection."""
    table, best = [], None
    for spec in specs:
        oof = OOFSet(cands, spec, search.eval_size, progress)
        counts, steps = greedy(oof, search.max_members)
        score = steps[-1]["miou"]
        table += [{"model": c.name, "tta": spec, "miou": oof.score(p)} for c, p in zip(cands, oof.probs)]
        table.append({"model": "greedy ensemble", "tta": spec, "miou": score})
        if best is None or score > best["miou"] + 1e-6:
            best = {"tta": spec, "miou": score, "counts": counts, "steps": steps, "oof": oof}
    return table, best


def _try_class_weights(oof: OOFSet, counts: np.ndarray, chosen: list[int], search: Search, result: dict):
    """Per-class weights (each member's OOF IoU per class), kept when they raise the OOF mIoU enough."""
    probs = _weighted(oof, counts)
    if not search.per_class or len(chosen) <= 1:
        return probs
    ious = np.nan_to_num(np.stack([iou_per_class(oof.cm(p)) for p in oof.probs]))
    cw = np.where(counts[:, None] > 0, ious + 1e-3, 0.0)  # a class no member predicts keeps plain weights
    trial = _weighted(oof, counts, cw)
    result["per_class_miou"] = oof.score(trial)
    if result["per_class_miou"] < result["oof_miou"] + search.min_gain:
        return probs
    result["class_weights"] = [[round(float(v), 4) for v in cw[i]] for i in chosen]
    result["oof_miou"] = result["per_class_miou"]
    return trial


def _try_crf(oof: OOFSet, probs: torch.Tensor, search: Search, result: dict) -> torch.Tensor:
    """The dense CRF (when pydensecrf2 is installed), kept when it raises the OOF mIoU enough."""
    result["crf"] = False
    if not crf_available():
        return probs
    trial = torch.stack([dense_crf(im, p) for im, p in zip(oof.images, probs)])
    result["crf_miou"] = oof.score(trial)
    if result["crf_miou"] < result["oof_miou"] + search.min_gain:
        return probs
    result["crf"], result["oof_miou"] = True, result["crf_miou"]
    return trial


def _try_min_area(oof: OOFSet, probs: torch.Tensor, search: Search, result: dict) -> None:
    """Small-component removal at each threshold, the best kept when it raises the OOF mIoU enough."""
    scores = {a: oof.score(torch.stack([remove_small_components(p, a) for p in probs])) for a in search.min_areas}
    result["min_area_scores"] = {str(k): v for k, v in scores.items()}
    if scores:
        area, score = max(scores.items(), key=lambda kv: kv[1])
        if score >= result["oof_miou"] + search.min_gain:
            result["min_area"], result["oof_miou"] = area, score


def crf_available() -> bool:
    try:
        import pydensecrf.densecrf  # noqa: F401
    except ImportError:
        return False
    return True


def predict_command(result: dict, ensemble_json: str | Path | None) -> str:
    """The `trash predict` command that reproduces a selection."""
    parts = ["trash predict", *result["members"]]
    if len(result["members"]) > 1:
        parts.append("--weights " + ",".join(f"{w:g}" for w in result["weights"]))
    if result["tta"] != "identity":
        parts.append(f"--tta-views {result['tta']}")
    if result["class_weights"]:
        parts.append(f"--class-weights {ensemble_json or 'ensemble.json'}")
    if result.get("crf"):
        parts.append("--crf")
    if result["min_area"]:
        parts.append(f"--min-area {result['min_area']:g}")
    parts.append("--images IMAGES --data TEST.json --out preds")
    return " ".join(parts)
