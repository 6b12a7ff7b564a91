"""Segmentation loss: a weighted sum of named terms with class weights and an ignore index.

CE and focal are written here because fastai's FocalLoss has no ignore_index (pseudo-labels mark
unconfident pixels 255) and its losses cannot be summed into one picklable object. The region terms
(dice, tversky, lovasz, iou) come from segmentation_models_pytorch, imported on first use: importing it
costs ~2 s (all of smp's models and encoders load) and this module is imported whenever an exported
learner is unpickled.
"""

import contextlib

import torch
import torch.nn.functional as F

from app.errors import TrashError

LOSS_TERMS: tuple[str, ...] = ("ce", "focal", "dice", "tversky", "lovasz", "iou")
#: Terms that class weights act on. smp's LovaszLoss has no class weights, so lovasz ignores them.
WEIGHTED_TERMS: tuple[str, ...] = ("ce", "focal", "dice", "tversky", "iou")
_REGION_TERMS = ("dice", "tversky", "lovasz", "iou")


class SegmentationLoss:
    """`sum(weight * term)` over named terms, on (N, C, H, W) logits and an (N, H, W) integer mask.

    Args:
        terms: Term name -> weight, names from LOSS_TERMS; default {"ce": 1.0}. Zero weights are
            allowed (not computed in the loss, still reported by `term_values`).
        class_weights: One weight per class (background first), or None for uniform. Used by ce,
            focal, dice, tversky and iou (see WEIGHTED_TERMS), not by lovasz.
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
        unknown = [name for name in terms if name not in LOSS_TERMS]
        if unknown:
            raise TrashError(f"unknown loss term(s) {', '.join(map(repr, unknown))}: use {', '.join(LOSS_TERMS)}")
        if any(w < 0 for w in terms.values()) or not any(w > 0 for w in terms.values()):
            raise TrashError(f"loss term weights must be >= 0 and not all 0, got {terms}")
        if not 0.0 <= label_smoothing <= 1.0:
            raise TrashError(f"loss label_smoothing must be in [0, 1], got {label_smoothing}")
        self.terms = {name: float(w) for name, w in terms.items()}
        self.ignore_index, self.focal_gamma, self.label_smoothing = ignore_index, focal_gamma, label_smoothing
        self.tversky_alpha, self.tversky_beta = tversky_alpha, tversky_beta
        self._weights = _as_weights(class_weights)
        self._smp: dict = {}  # region-term name -> smp loss module, built on first use

    # -- class weights ---------------------------------------------------------------------------

    @property
    def class_weights(self) -> torch.Tensor | None:
        """One float32 weight per class, or None (uniform)."""
        return self._weights

    def set_class_weights(self, weights) -> None:
        """Replaces the class weights from the next call on; None (or empty) means uniform."""
        self._weights = _as_weights(weights)
        self._smp.clear()  # smp losses take class weights at construction: rebuild them

    # -- evaluation ------------------------------------------------------------------------------

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
            logits, target = logits.float(), target.long()
            n_classes = logits.shape[1]
            if self._weights is not None and len(self._weights) != n_classes:
                raise TrashError(
                    f"loss has {len(self._weights)} class weights but the model outputs {n_classes} classes"
                )
            out = {}
            if "ce" in names or "focal" in names:
                out.update(self._pixel_terms(logits, target, names))
            for name in names:
                if name in _REGION_TERMS:
                    out[name] = self._region(name)(logits, target)
            return {name: out[name] for name in names}

    def _pixel_terms(self, logits: torch.Tensor, target: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
        """ce and focal: per-pixel, summed over labelled pixels, divided by their summed class weight (torch's CE)."""
        valid = target != self.ignore_index
        safe = torch.where(valid, target, torch.zeros_like(target))
        logp = F.log_softmax(logits, dim=1)
        # torch.where, not a product, so that anything (even inf) at ignored pixels cannot leak in.
        nll = torch.where(valid, -logp.gather(1, safe.unsqueeze(1)).squeeze(1), 0.0)
        weights = None if self._weights is None else self._weights.to(logits.device)
        pixel_w = valid.float() if weights is None else torch.where(valid, weights[safe], 0.0)
        norm = pixel_w.sum().clamp_min(1e-6)  # all ignored: 0, where torch's CE gives NaN
        out = {}
        if "ce" in names:
            ce = pixel_w * nll
            if self.label_smoothing:
                # torch: (1 - eps) * weighted NLL + eps / C * sum_c w_c * -log p_c, same normaliser.
                wlogp = logp if weights is None else logp * weights.view(1, -1, *([1] * (logp.dim() - 2)))
                smooth = torch.where(valid, -wlogp.sum(1), 0.0)
                ce = (1 - self.label_smoothing) * ce + self.label_smoothing / logits.shape[1] * smooth
            out["ce"] = ce.sum() / norm
        if "focal" in names:
            out["focal"] = (pixel_w * (1 - torch.exp(-nll)) ** self.focal_gamma * nll).sum() / norm
        return out

    def _region(self, name: str):
        """The smp loss for a region term, built lazily (import cost) and rebuilt when class weights change."""
        if name not in self._smp:
            from segmentation_models_pytorch import losses as smp_losses

            common = dict(mode="multiclass", from_logits=True, ignore_index=self.ignore_index)
            # smp's Dice/Tversky/Jaccard take class_weights and average the per-class losses with them
            # ((loss * w).sum() / w.sum()); LovaszLoss has no such option, so lovasz is unweighted.
            weights = None if self._weights is None else self._weights.tolist()
            if name == "dice":
                loss = smp_losses.DiceLoss(**common, class_weights=weights)
            elif name == "tversky":
                loss = smp_losses.TverskyLoss(
                    **common, alpha=self.tversky_alpha, beta=self.tversky_beta, class_weights=weights
                )
            elif name == "iou":
                loss = smp_losses.JaccardLoss(**common, class_weights=weights)
            else:
                loss = smp_losses.LovaszLoss(**common)
            self._smp[name] = loss
        return self._smp[name]

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
