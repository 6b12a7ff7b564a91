"""A fastai Learner from a recipe: model, loss, metric, optimizer, precision and accumulation."""

from pathlib import Path

import torch
from fastai.callback.training import GradientAccumulation
from fastai.learner import Learner
from fastai.optimizer import Adam

from app.callbacks import CPUMixedPrecision
from app.data import Items, make_dls
from app.errors import TrashError
from app.losses import SegmentationLoss
from app.metrics import MeanIoU
from app.models import build_model, unet_splitter
from app.recipe import Recipe


def build_loss(recipe: Recipe, items: Items) -> SegmentationLoss:
    """The recipe's loss; class weights given explicitly or computed by scheme from the training masks."""
    lo, n_classes = recipe.loss, len(items.codes)
    weights = lo.class_weights or None
    if lo.class_weight_scheme:
        from app.stats import weights_from_masks

        weights = weights_from_masks([s.mask for s in items.train], items.codes, lo.class_weight_scheme)
    if lo.class_weights and len(lo.class_weights) != n_classes:
        raise TrashError(
            f"'loss.class_weights' has {len(lo.class_weights)} values but the data has {n_classes} classes "
            "(background first)"
        )
    return SegmentationLoss(lo.ce, lo.focal, lo.focal_gamma, weights, lo.ignore_index)


def build_learner(recipe: Recipe, items: Items, run_dir: Path) -> Learner:
    """The Learner for the first stage; `learn.trash_norm` keeps the encoder's (mean, std) for later stages."""
    size = recipe.stages()[0][0]
    n_classes = len(items.codes)
    model, mean, std = build_model(recipe.model, n_classes, size)
    learn = Learner(
        make_dls(items, recipe, size, mean, std),
        model,
        loss_func=build_loss(recipe, items),
        opt_func=Adam,
        metrics=[MeanIoU(n_classes, recipe.loss.ignore_index)],
        splitter=unet_splitter,
        wd=recipe.train.wd,
        path=run_dir,
        model_dir="models",
    )
    learn.trash_norm = (mean, std)  # for the loaders of later progressive-resizing stages
    learn.trash_classes = list(items.codes)  # travels with the export: predict checks it against data
    _set_precision(learn, recipe.train.precision)
    if recipe.train.effective_batch > recipe.data.batch_size:
        # fastai's GradientAccumulation counts samples, not micro-batches: step every `effective_batch` images.
        learn.add_cb(GradientAccumulation(n_acc=recipe.train.effective_batch))
    return learn


def _set_precision(learn: Learner, precision: str) -> None:
    cuda = torch.cuda.is_available()
    if precision == "fp32":
        return
    if cuda:
        learn.to_fp16() if precision in ("fp16", "auto") else learn.to_bf16()
    elif precision == "fp16":
        raise TrashError("'train.precision' fp16 needs a CUDA GPU; on CPU use bf16 or auto")
    else:  # bf16 or auto on CPU
        learn.add_cb(CPUMixedPrecision())
