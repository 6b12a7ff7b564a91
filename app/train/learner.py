"""A fastai Learner from a recipe: model, loss, metric, optimizer, precision, layout and training callbacks.

Two registries live here: `PRECISIONS` (train.precision) and `AVERAGING` (train.averaging), each name mapped to
what it adds to the learner.
"""

from pathlib import Path

import torch
from fastai.callback.channelslast import ChannelsLast
from fastai.callback.progress import ProgressCallback
from fastai.callback.training import GradientAccumulation
from fastai.learner import Learner

from app.data.coco import ignore_value
from app.data.items import Items
from app.data.loaders import make_dls
from app.data.stats import weights_from_masks
from app.errors import TrashError
from app.hardware import native_bf16
from app.model.build import build_model
from app.model.encoders import freeze_stages, model_splitter
from app.model.loss import SegmentationLoss
from app.model.metrics import MeanIoU
from app.progress import bars_on
from app.recipe import Recipe
from app.registry import Registry
from app.train.callbacks.averaging import SWA, ModelEMA
from app.train.callbacks.history import EpochLines
from app.train.callbacks.levers import AdaptiveClassWeights, SegCutMix
from app.train.callbacks.precision import CPUMixedPrecision
from app.train.callbacks.tracking import TopKCheckpoints
from app.train.optim import opt_func


def build_loss(recipe: Recipe, items: Items) -> SegmentationLoss:
    """The recipe's weighted sum of loss terms; class weights explicit or computed by scheme from training masks."""
    lo, n_classes = recipe.loss, len(items.codes)
    if lo.class_weights and len(lo.class_weights) != n_classes:
        raise TrashError(
            f"'loss.class_weights' has {len(lo.class_weights)} values but the data has {n_classes} classes "
            "(background first)"
        )
    weights = list(lo.class_weights) or None
    if lo.class_weight_scheme:
        weights = weights_from_masks([s.mask for s in items.train], items.codes, lo.class_weight_scheme)
    return SegmentationLoss(
        terms=lo.weights(),
        class_weights=weights,
        ignore_index=ignore_value(n_classes, lo.ignore_index),
        focal_gamma=lo.focal_gamma,
        label_smoothing=lo.label_smoothing,
        tversky_alpha=lo.tversky_alpha,
        tversky_beta=lo.tversky_beta,
    )


def build_learner(recipe: Recipe, items: Items, run_dir: Path) -> Learner:
    """The Learner for the first stage; `learn.trash_norm` keeps the encoder's (mean, std) for later stages."""
    size = recipe.stages()[0][0]
    n_classes = len(items.codes)
    model, mean, std = build_model(recipe.model, n_classes, recipe.shape(size))
    learn = Learner(
        make_dls(items, recipe, size, mean, std),
        model,
        loss_func=build_loss(recipe, items),
        opt_func=opt_func(recipe.train.optimizer),
        metrics=[MeanIoU(n_classes, ignore_value(n_classes, recipe.loss.ignore_index))],
        splitter=model_splitter,  # [encoder, decoder]: freezing and discriminative lrs for every arch
        wd=recipe.train.wd,
        path=run_dir,
        model_dir="models",
    )
    freeze_stages(model, recipe.model.freeze_stages)
    learn.trash_norm = (mean, std)  # for the loaders of later progressive-resizing stages
    learn.trash_classes = list(items.codes)  # travels with the export: predict checks it against data
    PRECISIONS[recipe.train.precision](learn)
    if recipe.train.channels_last:
        learn.add_cb(ChannelsLast())
    if recipe.train.effective_batch > recipe.data.batch_size:
        # fastai's GradientAccumulation counts samples, not micro-batches: step every `effective_batch` images.
        learn.add_cb(GradientAccumulation(n_acc=recipe.train.effective_batch))
    learn.add_cbs(training_callbacks(recipe, run_dir))
    if not bars_on():  # stdout is no terminal (app/progress.py): one line per epoch instead of bars
        learn.remove_cbs([cb for cb in learn.cbs if isinstance(cb, ProgressCallback)])
        learn.add_cb(EpochLines())
    return learn


# -- precision -------------------------------------------------------------------------------------


def _fp32(learn: Learner) -> None:
    """Full precision: nothing to add."""


def _bf16(learn: Learner) -> None:
    # fastai's to_bf16() autocasts on CUDA only; on CPU its loop runs with trash's CPU autocast.
    learn.to_bf16() if torch.cuda.is_available() else learn.add_cb(CPUMixedPrecision())


def _fp16(learn: Learner) -> None:
    if not torch.cuda.is_available():
        raise TrashError("'train.precision' fp16 needs a CUDA GPU; on CPU use bf16 or auto")
    learn.to_fp16()


def _auto(learn: Learner) -> None:
    """The fastest precision that trains well here: fp16 + GradScaler on CUDA, bf16 on CPUs with bf16 in
    hardware, fp32 on other CPUs."""
    if torch.cuda.is_available():
        _fp16(learn)
    elif native_bf16():
        _bf16(learn)


PRECISIONS: Registry = Registry(
    "precision", {"fp32": _fp32, "bf16": _bf16, "fp16": _fp16, "auto": _auto}, key="train.precision"
)


# -- callbacks that live through training ----------------------------------------------------------


def _no_averaging(recipe: Recipe) -> list:
    return []


def _ema(recipe: Recipe) -> list:
    return [ModelEMA(decay=recipe.train.ema_decay)]


def _swa(recipe: Recipe) -> list:
    total_epochs = sum(epochs for _, epochs in recipe.stages())
    return [SWA(start_epoch=int(recipe.train.swa_start * total_epochs))]


AVERAGING: Registry = Registry(
    "weight averaging", {"none": _no_averaging, "ema": _ema, "swa": _swa}, key="train.averaging"
)


def training_callbacks(recipe: Recipe, run_dir: Path) -> list:
    """Callbacks that live through every stage of training and are removed before export."""
    t = recipe.train
    found = AVERAGING[t.averaging](recipe)
    if t.top_k:
        found.append(TopKCheckpoints(k=t.top_k))
    if t.cutmix:
        found.append(SegCutMix(p=t.cutmix))
    if recipe.loss.adaptive_class_weights:
        found.append(AdaptiveClassWeights())
    if t.tensorboard:
        found.append(_tensorboard(run_dir))
    return found


def _tensorboard(run_dir: Path):
    try:
        from fastai.callback.tensorboard import TensorBoardCallback
    except ImportError:
        raise TrashError("'train.tensorboard' needs the tensorboard package: pip install tensorboard") from None
    return TensorBoardCallback(log_dir=str(run_dir / "tensorboard"), trace_model=False, log_preds=False)


TRAINING_ONLY = (ModelEMA, SWA, TopKCheckpoints, SegCutMix, AdaptiveClassWeights)


def strip_training_callbacks(learn: Learner) -> None:
    """Removes the training-only callbacks (EMA copies, checkpoint lists...) so the export stays lean."""
    kinds = TRAINING_ONLY
    learn.remove_cbs([c for c in learn.cbs if isinstance(c, kinds) or type(c).__name__ == "TensorBoardCallback"])
