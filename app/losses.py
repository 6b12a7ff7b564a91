"""Segmentation losses: a weighted sum of cross-entropy and focal loss with class weights and an ignore index.

Written here rather than taken from fastai because fastai's FocalLoss has no ignore_index (pseudo-labels
mark unconfident pixels 255) and its CE/focal losses cannot be summed into one picklable object.
"""

import torch
import torch.nn.functional as F


class SegmentationLoss:
    """`ce * CE + focal * Focal`, per-pixel, averaged over labelled pixels (weighted like torch's CE).

    Args:
        ce: Weight of the cross-entropy term.
        focal: Weight of the focal term.
        gamma: Focal focusing parameter.
        class_weights: One weight per class (background first), or None.
        ignore_index: Target value that contributes nothing.
    """

    def __init__(
        self, ce: float = 1.0, focal: float = 0.0, gamma: float = 2.0, class_weights=None, ignore_index: int = 255
    ):
        self.ce, self.focal, self.gamma, self.ignore_index = ce, focal, gamma, ignore_index
        self.class_weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None

    def __call__(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = target.long()
        valid = target != self.ignore_index
        safe = torch.where(valid, target, torch.zeros_like(target))
        nll = F.cross_entropy(logits.float(), safe, reduction="none")
        pixel_w = valid.float()
        if self.class_weights is not None:
            pixel_w = pixel_w * self.class_weights.to(logits.device)[safe]
        norm = pixel_w.sum().clamp_min(1e-6)
        loss = logits.new_zeros((), dtype=torch.float32)
        if self.ce:
            loss = loss + self.ce * (pixel_w * nll).sum() / norm
        if self.focal:
            loss = loss + self.focal * (pixel_w * (1 - torch.exp(-nll)) ** self.gamma * nll).sum() / norm
        return loss

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        """Turns logits into class probabilities (fastai calls this in get_preds)."""
        return F.softmax(x, dim=1)

    def decodes(self, x: torch.Tensor) -> torch.Tensor:
        """Turns probabilities into a class mask."""
        return x.argmax(dim=1)
