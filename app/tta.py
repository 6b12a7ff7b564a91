"""Test-time augmentation for segmentation: each view's prediction is inverted before averaging.

fastai's `Learner.tta` averages predictions under random training transforms without un-flipping
masks, so it cannot be used for segmentation.
"""

import torch
import torch.nn.functional as F

# Views as the NCHW dims they flip; every flip is its own inverse.
VIEWS: dict[str, tuple[int, ...]] = {"identity": (), "h": (3,), "v": (2,), "hv": (2, 3)}
FLIPS = ("identity", "h", "v", "hv")


def _flip(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    return x.flip(dims) if dims else x


@torch.inference_mode()
def predict_probs(model: torch.nn.Module, x: torch.Tensor, views: tuple[str, ...] = ("identity",)) -> torch.Tensor:
    """Class probabilities (N, C, H, W), averaged over `views`, each un-flipped back to the input frame."""
    total = None
    for name in views:
        dims = VIEWS[name]
        probs = _flip(F.softmax(model(_flip(x, dims)).float(), dim=1), dims)
        total = probs if total is None else total + probs
    return total / len(views)
