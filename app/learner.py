"""A fastai Learner from a recipe: model, loss, metric, optimizer, precision, layout and training callbacks."""

from pathlib import Path

import torch
from fastai.callback.channelslast import ChannelsLast
from fastai.callback.training import GradientAccumulation
from fastai.learner import Learner

from app.callbacks import CPUMixedPrecision
from app.data import Items, make_dls
from app.errors import TrashError
from app.losses import SegmentationLoss
from app.metrics import MeanIoU
from app.models import build_model, model_splitter
from app.optim import opt_func
from app.recipe import Recipe


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
        from app.stats import weights_from_masks

        weights = weights_from_masks([s.mask for s in items.train], items.codes, lo.class_weight_scheme)
    return SegmentationLoss(
        terms=lo.terms(),
        class_weights=weights,
        ignore_index=lo.ignore_index,
        focal_gamma=lo.focal_gamma,
        label_smoothing=lo.label_smoothing,
        tversky_alpha=lo.tversky_alpha,
        tversky_beta=lo.tversky_beta,
    )


def build_learner(recipe: Recipe, items: Items, run_dir: Path) -> Learner:
    """The Learner for the first stage; `learn.trash_norm` keeps the encoder's (mean, std) for later stages."""
    size = recipe.stages()[0][0]
    n_classes = len(items.codes)
    model, mean, std = build_model(recipe.model, n_classes, size)
    learn = Learner(
        make_dls(items, recipe, size, mean, std),
        model,
        loss_func=build_loss(recipe, items),
        opt_func=opt_func(recipe.train.optimizer),
        metrics=[MeanIoU(n_classes, recipe.loss.ignore_index)],
        splitter=model_splitter,  # [encoder, decoder]: freezing and discriminative lrs for every arch
        wd=recipe.train.wd,
        path=run_dir,
        model_dir="models",
    )
    learn.trash_norm = (mean, std)  # for the loaders of later progressive-resizing stages
    learn.trash_classes = list(items.codes)  # travels with the export: predict checks it against data
    _set_precision(learn, recipe.train.precision)
    if recipe.train.channels_last:
        learn.add_cb(ChannelsLast())
    if recipe.train.effective_batch > recipe.data.batch_size:
        # fastai's GradientAccumulation counts samples, not micro-batches: step every `effective_batch` images.
        learn.add_cb(GradientAccumulation(n_acc=recipe.train.effective_batch))
    learn.add_cbs(training_callbacks(recipe, run_dir))
    return learn


def training_callbacks(recipe: Recipe, run_dir: Path) -> list:
    """Callbacks that live through every stage of training and are removed before export."""
    from app import callbacks as cb

    t = recipe.train
    total_epochs = sum(epochs for _, epochs in recipe.stages())
    found = []
    if t.averaging == "ema":
        found.append(cb.ModelEMA(decay=t.ema_decay))
    elif t.averaging == "swa":
        found.append(cb.SWA(start_epoch=int(t.swa_start * total_epochs)))
    if t.top_k:
        found.append(cb.TopKCheckpoints(k=t.top_k))
    if t.cutmix:
        found.append(cb.SegCutMix(p=t.cutmix))
    if recipe.loss.adaptive_class_weights:
        found.append(cb.AdaptiveClassWeights())
    if t.tensorboard:
        try:
            from fastai.callback.tensorboard import TensorBoardCallback
        except ImportError:
            raise TrashError("'train.tensorboard' needs the tensorboard package: pip install tensorboard") from None
        found.append(TensorBoardCallback(log_dir=str(run_dir / "tensorboard"), trace_model=False, log_preds=False))
    return found


def strip_training_callbacks(learn: Learner) -> None:
    """Removes the training-only callbacks (EMA copies, checkpoint lists...) so the export stays lean."""
    from app import callbacks as cb

    kinds = (cb.ModelEMA, cb.SWA, cb.TopKCheckpoints, cb.SegCutMix, cb.AdaptiveClassWeights)
    learn.remove_cbs([c for c in learn.cbs if isinstance(c, kinds) or type(c).__name__ == "TensorBoardCallback"])


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
