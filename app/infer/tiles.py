"""Sliding-window inference: overlapping tiles of the training size, blended with a Gaussian window.

For images larger than the training size, predicted at their own resolution instead of squished to the training
size. nnU-Net's scheme: tiles at a fixed stride (default half a tile), each tile's probabilities weighted by a
Gaussian centred on the tile (sigma = 1/8 of the side), so tile borders, where the network sees least context,
count least; the weighted sum is divided by the summed weights. Images smaller than a tile are padded
(reflection) and cropped back. Written here: neither fastai nor timm nor smp has tiled inference, and MONAI's
`sliding_window_inference` would be a large dependency for 40 lines.
"""

import functools
import math

import torch
import torch.nn.functional as F

from app.infer.tta import predict_probs


@functools.lru_cache(maxsize=8)
def gaussian_window(h: int, w: int, sigma_scale: float = 1 / 8) -> torch.Tensor:
    """(h, w) weights, 1 at the centre, falling off with sigma = side * sigma_scale; never exactly 0."""

    def axis(n: int) -> torch.Tensor:
        x = torch.arange(n, dtype=torch.float32) - (n - 1) / 2
        return torch.exp(-0.5 * (x / (n * sigma_scale)) ** 2)

    g = axis(h)[:, None] * axis(w)[None, :]
    return (g / g.max()).clamp_min(1e-3)


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Tile start positions covering [0, length): evenly spread, first at 0, last at length - tile."""
    if length <= tile:
        return [0]
    stride = max(1, int(tile * (1 - overlap)))
    n = math.ceil((length - tile) / stride) + 1
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


@torch.inference_mode()
def sliding_window_probs(
    model: torch.nn.Module,
    x: torch.Tensor,
    tile: tuple[int, int],
    views="identity",
    overlap: float = 0.5,
    batch_size: int = 8,
) -> torch.Tensor:
    """Class probabilities (C, H, W) for one normalised (3, H, W) image, predicted tile by tile.

    Args:
        model: NCHW images to NCHW logits of the same size.
        x: One image, normalised as in training.
        tile: (h, w) of a tile: the training size.
        views: TTA views per tile (see app.infer.tta.predict_probs).
        overlap: Share of a tile shared with its neighbour, in [0, 1).
        batch_size: Tiles per forward pass.
    """
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    th, tw = tile
    h, w = x.shape[-2:]
    pad_h, pad_w = max(0, th - h), max(0, tw - w)
    if pad_h or pad_w:  # reflection needs pad < side; repeat for very small images
        mode = "reflect" if pad_h < h and pad_w < w else "replicate"
        x = F.pad(x[None], (0, pad_w, 0, pad_h), mode=mode)[0]
    H, W = x.shape[-2:]
    starts = [(y, x0) for y in tile_starts(H, th, overlap) for x0 in tile_starts(W, tw, overlap)]
    g = gaussian_window(th, tw).to(x.device)
    total = weight = None
    for i in range(0, len(starts), batch_size):
        chunk = starts[i : i + batch_size]
        batch = torch.stack([x[:, y : y + th, x0 : x0 + tw] for y, x0 in chunk])
        probs = predict_probs(model, batch, views)
        if total is None:
            total = torch.zeros(probs.shape[1], H, W, device=probs.device)
            weight = torch.zeros(H, W, device=probs.device)
        for (y, x0), p in zip(chunk, probs):
            total[:, y : y + th, x0 : x0 + tw] += p * g
            weight[y : y + th, x0 : x0 + tw] += g
    return (total / weight)[:, :h, :w]
