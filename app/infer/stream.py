"""Predictions streamed image by image: members (an ensemble) x TTA views (x tiles), post-processed.

`stream_predictions` yields one `Prediction` per image, batch by batch, with probabilities at the image's
own size: memory does not grow with the number of images or of members (a running weighted sum).
"""

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from app.data.images import image_size, read_rgb
from app.errors import TrashError
from app.infer.backend import check_backend, choose_engines
from app.infer.members import Member, saved_probs
from app.infer.onnx_runtime import onnx_member_probs
from app.infer.options import InferenceOptions, view_spec
from app.infer.postprocess import dense_crf, remove_small_components
from app.infer.tiles import sliding_window_probs
from app.infer.tta import parse_views, predict_probs


@dataclass
class Prediction:
    image_id: str  # file name relative to the images folder (the submission's image_id)
    path: Path
    probs: torch.Tensor  # (C, H, W) float32 at the image's original size


def as_members(models: list, weights=()) -> list[Member]:
    """`Member`s as they are, or plain Learners wrapped as members with `weights` (equal by default)."""
    if not models or isinstance(models[0], Member):
        return list(models)
    weights = list(weights) or [1.0] * len(models)
    if len(weights) != len(models):
        raise TrashError(f"{len(weights)} weights for {len(models)} models")
    return [
        Member(f"model {i}", m, w, classes=getattr(m, "trash_classes", []))
        for i, (m, w) in enumerate(zip(models, weights))
    ]


def stream_predictions(
    models: list, images: list[tuple[str, Path]], options: InferenceOptions = InferenceOptions()
) -> Iterator[Prediction]:
    """Yields one Prediction per image, batch by batch, so memory does not grow with the image count.

    Args:
        models: `Member`s (app.infer.members.load_members) or plain Learners (then `options.weights` apply).
        images: (image_id, path) pairs, e.g. from `app.data.images.list_images`.
        options: TTA views, tiles, post-processing and batch size (see InferenceOptions).
    """
    members = as_members(models, options.weights)
    spec = view_spec(options.tta)
    parse_views(spec)  # a bad spec fails before any image is read
    check_backend(options.backend)
    choose_engines(members, images[: options.batch_size], options, len(images))
    for start in range(0, len(images), options.batch_size):
        chunk = images[start : start + options.batch_size]
        for (image_id, path), probs in zip(chunk, _ensemble_probs(members, chunk, options)):
            yield Prediction(image_id, path, _postprocess(path, probs, options))


def _ensemble_probs(members: list[Member], chunk: list[tuple[str, Path]], options: InferenceOptions) -> list:
    """The members' per-class weighted mean of (C, H, W) probabilities for each image of `chunk`."""
    sizes = [image_size(p) for _, p in chunk]
    total, norm = [None] * len(chunk), None
    for member in members:  # a running weighted sum: memory does not grow with the number of members
        probs = member_probs(member, chunk, sizes, options)
        w = member.weights_per_class(probs[0].shape[0])[:, None, None]
        norm = w if norm is None else norm + w
        total = [p * w if t is None else t + p * w for t, p in zip(total, probs)]
    if (norm <= 0).any():
        raise TrashError("per-class ensemble weights sum to 0 for some class")
    return [(t / norm).cpu() for t in total]


def _postprocess(path: Path, probs: torch.Tensor, options: InferenceOptions) -> torch.Tensor:
    if options.crf:
        probs = dense_crf(read_rgb(path), probs)
    return remove_small_components(probs, options.min_area) if options.min_area else probs


def member_probs(member: Member, chunk, sizes, options: InferenceOptions) -> list:
    """One member's (C, H, W) float32 probabilities for each image of `chunk`, at each image's own size."""
    if member.onnx is not None:
        return onnx_member_probs(member.onnx, chunk, sizes, options)
    if member.learn is None:
        return [saved_probs(member, image_id, size) for (image_id, _), size in zip(chunk, sizes)]
    learn = member.learn
    model = learn.model.eval()
    for state in member.states:  # a top-k epoch: same architecture, other weights
        model.load_state_dict(state)
    views = parse_views(view_spec(options.tta), multiple=getattr(model, "trash_size_multiple", 32))
    if member.runner is not None:  # bf16 or ONNX Runtime, chosen by app/infer/backend.py
        model = member.runner
    if options.tile:
        return [
            sliding_window_probs(
                model, full_resolution_input(learn, path), member.train_size, views, options.overlap, options.batch_size
            )
            for _, path in chunk
        ]
    x = learn.dls.test_dl([p for _, p in chunk], bs=len(chunk)).one_batch()[0]
    probs = predict_probs(model, x, views)
    # back to each image's own size before ensembling
    return [
        F.interpolate(probs[i : i + 1], size=s, mode="bilinear", align_corners=False)[0] for i, s in enumerate(sizes)
    ]


def full_resolution_input(learn, path: Path) -> torch.Tensor:
    """One image as the model sees it in training (RGB, float, normalised), but at its own resolution: (3, H, W)."""
    from fastai.torch_core import TensorImage

    device = next(learn.model.parameters()).device
    pixels = torch.from_numpy(np.ascontiguousarray(read_rgb(path))).permute(2, 0, 1)[None]  # uint8, as fastai's
    return learn.dls.after_batch(TensorImage(pixels.to(device)))[0]  # IntToFloatTensor, Normalize
