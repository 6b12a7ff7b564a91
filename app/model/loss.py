"""Segmentation loss: a weighted sum of named terms (the `LOSS_TERMS` registry), class weights, an ignore index.

CE and focal are written here because fastai's FocalLoss has no ignore_index (pseudo-labels mark
unconfident pixels 255) and its losses cannot be summed into one picklable object; dice too, as smp's values
at a fraction of its CPU cost (see `_dice`). The other region terms (tversky, lovasz, iou) come from
segmentation_models_pytorch, imported on first use: importing it
costs ~2 s (all of smp's models and encoders load) and this module is imported whenever an exported
learner is unpickled. A new term is one function and one `LOSS_TERMS` entry here; recipes name it at once
(`loss = dict(ce=1, newterm=0.5)`, see app/recipe.py).
"""

import contextlib
import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from app.errors import TrashError
from app.registry import Registry


class Batch:
    """One call's logits (float32) and integer target, with what the pixel terms share computed once."""

    def __init__(self, logits: torch.Tensor, target: torch.Tensor, ignore_index: int, weights: torch.Tensor | None):
        self.logits, self.target, self.ignore_index = logits, target, ignore_index
        self.weights = None if weights is None else weights.to(logits.device)

    @functools.cached_property
    def valid(self) -> torch.Tensor:
        return self.target != self.ignore_index

    @functools.cached_property
    def logp(self) -> torch.Tensor:
        return F.log_softmax(self.logits, dim=1)

    @functools.cached_property
    def safe(self) -> torch.Tensor:
        """The target with ignored pixels set to class 0 (for indexing; `valid` says which count)."""
        return torch.where(self.valid, self.target, torch.zeros_like(self.target))

    @functools.cached_property
    def nll(self) -> torch.Tensor:
        """Per-pixel negative log-likelihood of the true class; 0 at ignored pixels (torch.where: even an inf
        there cannot leak in)."""
        return torch.where(self.valid, -self.logp.gather(1, self.safe.unsqueeze(1)).squeeze(1), 0.0)

    @functools.cached_property
    def pixel_weights(self) -> torch.Tensor:
        """Each labelled pixel's class weight (1 without class weights), 0 where ignored."""
        if self.weights is None:
            return self.valid.float()
        return torch.where(self.valid, self.weights[self.safe], 0.0)

    @functools.cached_property
    def norm(self) -> torch.Tensor:
        """The summed pixel weight (torch's CE normaliser); all ignored gives a tiny number, not torch's NaN."""
        return self.pixel_weights.sum().clamp_min(1e-6)


def _ce(loss: "SegmentationLoss", b: Batch) -> torch.Tensor:
    """Weighted cross-entropy over the labelled pixels, with label smoothing as torch's F.cross_entropy."""
    ce = b.pixel_weights * b.nll
    if loss.label_smoothing:
        # torch: (1 - eps) * weighted NLL + eps / C * sum_c w_c * -log p_c, same normaliser.
        wlogp = b.logp if b.weights is None else b.logp * b.weights.view(1, -1, *([1] * (b.logp.dim() - 2)))
        smooth = torch.where(b.valid, -wlogp.sum(1), 0.0)
        ce = (1 - loss.label_smoothing) * ce + loss.label_smoothing / b.logits.shape[1] * smooth
    return ce.sum() / b.norm


def _focal(loss: "SegmentationLoss", b: Batch) -> torch.Tensor:
    return (b.pixel_weights * (1 - torch.exp(-b.nll)) ** loss.focal_gamma * b.nll).sum() / b.norm


def _dice(loss: "SegmentationLoss", b: Batch) -> torch.Tensor:
    """Soft Dice per class (2|P∩Y| / (|P| + |Y|)), 0 for classes absent from the batch's truth, averaged over
    classes (class-weighted when weights are set): smp's multiclass DiceLoss, value and gradient.

    Written here because smp builds one-hot (N, C, H*W) truth and products over it: with 23 classes at 256 px that
    cost 5x the cross-entropy on CPU (0.45 s of a 2.7 s step at batch 4). A gather and a per-class sum of the true
    class's probability give the same intersection at a fraction of the cost.
    """
    everything = bool(b.valid.all())  # the usual case: no pixel ignored, no masking passes over (N, C, H, W)
    probs = b.logp.exp() if everything else b.logp.exp() * b.valid.unsqueeze(1)  # ignored pixels: in no class
    n_classes = probs.shape[1]
    labels = b.safe.flatten() if everything else b.safe[b.valid]
    true_prob = probs.gather(1, b.safe.unsqueeze(1)).squeeze(1)
    true_prob = true_prob.flatten() if everything else true_prob[b.valid]
    truth = torch.bincount(labels, minlength=n_classes).to(probs.dtype)  # |Y| per class
    intersection = torch.zeros(n_classes, dtype=probs.dtype, device=probs.device).index_add(0, labels, true_prob)
    cardinality = probs.sum((0, 2, 3)) + truth
    per_class = (1.0 - intersection / (0.5 * cardinality).clamp_min(1e-7)) * (truth > 0)
    if b.weights is None:
        return per_class.mean()
    return (per_class * b.weights).sum() / b.weights.sum()


def _region(name: str, loss: "SegmentationLoss", b: Batch) -> torch.Tensor:
    """An smp region loss, built on first use (import cost) and rebuilt when the class weights change."""
    if name not in loss._smp:
        loss._smp[name] = LOSS_TERMS[name].smp(loss)
    return loss._smp[name](b.logits, b.target)


def _smp_kwargs(loss: "SegmentationLoss") -> dict:
    # smp's Dice/Tversky/Jaccard take class_weights and average the per-class losses with them.
    weights = None if loss.class_weights is None else loss.class_weights.tolist()
    return dict(mode="multiclass", from_logits=True, ignore_index=loss.ignore_index, class_weights=weights)


def _smp_tversky(loss: "SegmentationLoss"):
    from segmentation_models_pytorch.losses import TverskyLoss

    return TverskyLoss(**_smp_kwargs(loss), alpha=loss.tversky_alpha, beta=loss.tversky_beta)


def _smp_iou(loss: "SegmentationLoss"):
    from segmentation_models_pytorch.losses import JaccardLoss

    return JaccardLoss(**_smp_kwargs(loss))


def _smp_lovasz(loss: "SegmentationLoss"):
    from segmentation_models_pytorch.losses import LovaszLoss

    return LovaszLoss(mode="multiclass", from_logits=True, ignore_index=loss.ignore_index)  # no class weights


@dataclass(frozen=True)
class Term:
    """One loss term: its value on a batch, whether class weights act on it, and (region terms) its smp loss."""

    value: Callable[["SegmentationLoss", Batch], torch.Tensor]
    class_weighted: bool = True
    smp: Callable | None = None  # builds the smp loss module of a region term


def _smp_term(name: str, build: Callable, class_weighted: bool = True) -> Term:
    return Term(functools.partial(_region, name), class_weighted, build)


LOSS_TERMS: Registry[Term] = Registry(
    "loss term",
    {
        "ce": Term(_ce),
        "focal": Term(_focal),
        "dice": Term(_dice),
        "tversky": _smp_term("tversky", _smp_tversky),
        "lovasz": _smp_term("lovasz", _smp_lovasz, class_weighted=False),
        "iou": _smp_term("iou", _smp_iou),
    },
)
#: Terms that class weights act on (smp's LovaszLoss has no class weights).
WEIGHTED_TERMS: tuple[str, ...] = tuple(name for name, term in LOSS_TERMS.items() if term.class_weighted)


class SegmentationLoss:
    """`sum(weight * term)` over named terms, on (N, C, H, W) logits and an (N, H, W) integer mask.

    Args:
        terms: Term name -> weight, names from LOSS_TERMS; default {"ce": 1.0}. Zero weights are
            allowed (not computed in the loss, still reported by `term_values`).
        class_weights: One weight per class (background first), or None for uniform. Used by the
            WEIGHTED_TERMS, not by lovasz.
        ignore_index: Target value that contributes nothing to any term.
        focal_gamma: Focal focusing parameter.
        label_smoothing: Label smoothing of the ce term only, as torch's F.cross_entropy.
        tversky_alpha: Tversky weight of false positives.
        tversky_beta: Tversky weight of false negatives (alpha = beta = 0.5 is dice).
    """

    def __init__(
        self,
        terms: dict[str, float] | None = None,
        class_weights=None,
        ignore_index: int = 255,
        focal_gamma: float = 2.0,
        label_smoothing: float = 0.0,
        tversky_alpha: float = 0.5,
        tversky_beta: float = 0.5,
    ):
        terms = {"ce": 1.0} if terms is None else dict(terms)
        for name in terms:
            LOSS_TERMS[name]  # an unknown name fails with the closest ones
        if any(w < 0 for w in terms.values()) or not any(w > 0 for w in terms.values()):
            raise TrashError(f"loss term weights must be >= 0 and not all 0, got {terms}")
        if not 0.0 <= label_smoothing <= 1.0:
            raise TrashError(f"loss label_smoothing must be in [0, 1], got {label_smoothing}")
        self.terms = {name: float(w) for name, w in terms.items()}
        self.ignore_index, self.focal_gamma, self.label_smoothing = ignore_index, focal_gamma, label_smoothing
        self.tversky_alpha, self.tversky_beta = tversky_alpha, tversky_beta
        self._weights = _as_weights(class_weights)
        self._smp: dict = {}  # region-term name -> smp loss module, built on first use

    @property
    def class_weights(self) -> torch.Tensor | None:
        """One float32 weight per class, or None (uniform)."""
        return self._weights

    def set_class_weights(self, weights) -> None:
        """Replaces the class weights from the next call on; None (or empty) means uniform."""
        self._weights = _as_weights(weights)
        self._smp.clear()  # smp losses take class weights at construction: rebuild them

    def __call__(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        active = [name for name, w in self.terms.items() if w > 0]
        values = self._compute(logits, target, active)
        return sum(self.terms[name] * values[name] for name in active)

    def term_values(self, logits: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        """Each configured term's unweighted value (zero-weight terms included), for logging and tests."""
        with torch.no_grad():
            return {name: float(v) for name, v in self._compute(logits, target, list(self.terms)).items()}

    def _compute(self, logits: torch.Tensor, target: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
        device = logits.device.type
        no_autocast = (
            torch.autocast(device, enabled=False)
            if torch.amp.is_autocast_available(device)
            else contextlib.nullcontext()
        )
        with no_autocast:
            n_classes = logits.shape[1]
            if self._weights is not None and len(self._weights) != n_classes:
                raise TrashError(
                    f"loss has {len(self._weights)} class weights but the model outputs {n_classes} classes"
                )
            batch = Batch(logits.float(), target.long(), self.ignore_index, self._weights)
            return {name: LOSS_TERMS[name].value(self, batch) for name in names}

    # -- pickling (exported learners) ------------------------------------------------------------

    def __getstate__(self) -> dict:
        # Keep smp's modules out of exported learners: they are rebuilt on first use after loading.
        return {**self.__dict__, "_smp": {}}

    def __setstate__(self, state: dict) -> None:
        if "terms" not in state:  # exported before named terms: ce, focal, gamma, class_weights, ignore_index
            terms = {name: state.get(name, 0.0) for name in ("ce", "focal") if state.get(name, 0.0)}
            state = {
                "terms": terms or {"ce": 1.0},
                "ignore_index": state.get("ignore_index", 255),
                "focal_gamma": state.get("gamma", 2.0),
                "label_smoothing": 0.0,
                "tversky_alpha": 0.5,
                "tversky_beta": 0.5,
                "_weights": state.get("class_weights"),
                "_smp": {},
            }
        self.__dict__.update(state)

    # -- fastai hooks ----------------------------------------------------------------------------

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        """Turns logits into class probabilities (fastai calls this in get_preds)."""
        return F.softmax(x, dim=1)

    def decodes(self, x: torch.Tensor) -> torch.Tensor:
        """Turns probabilities into a class mask."""
        return x.argmax(dim=1)


def _as_weights(weights) -> torch.Tensor | None:
    """Class weights as a 1-D float32 CPU tensor, or None for uniform (None or empty)."""
    if weights is None:
        return None
    t = torch.as_tensor(weights, dtype=torch.float32).detach().cpu().flatten().clone()
    if t.numel() == 0:
        return None
    if not torch.isfinite(t).all() or (t < 0).any() or t.sum() <= 0:
        raise TrashError(f"class weights must be finite, >= 0 and not all 0, got {t.tolist()}")
    return t
