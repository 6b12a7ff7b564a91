"""Model registry and factory: a timm encoder, cut at its own `feature_info`, inside fastai's DynamicUnet."""

import difflib

import timm
from fastai.vision.all import DynamicUnet, params
from timm.models import FeatureDictNet
from torch import nn

from app.errors import TrashError
from app.recipe import Model


def check_encoder(name: str) -> None:
    """Raises TrashError with the closest timm names when `name` is not a timm model."""
    if name in timm.list_models():
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.5)
    hint = f"; closest: {', '.join(close)}" if close else ""
    raise TrashError(f"unknown encoder {name!r} in 'model.encoder'{hint}")


def create_timm(cfg: Model) -> nn.Module:
    """The full timm model, with pretrained weights from timm's cache/hub or a local file when asked."""
    check_encoder(cfg.encoder)
    if not (cfg.pretrained or cfg.weights):
        return timm.create_model(cfg.encoder, pretrained=False)
    # timm's own loader handles both: a local file through pretrained_cfg_overlay, else its cache/hub.
    overlay = dict(file=cfg.weights) if cfg.weights else None
    try:
        return timm.create_model(cfg.encoder, pretrained=True, pretrained_cfg_overlay=overlay)
    except Exception as e:  # offline hub, missing or mismatched file: many exception types
        source = cfg.weights or "timm's cache or the model hub"
        raise TrashError(
            f"pretrained weights for {cfg.encoder!r} could not be loaded from {source} ({type(e).__name__}: "
            f"{str(e)[:200]}); set model.weights=FILE or model.pretrained=false"
        ) from None


def encoder_stages(model: nn.Module) -> nn.Sequential:
    """Cuts a timm classifier into one module per feature level, using timm's feature metadata.

    DynamicUnet hooks the children of its encoder where the spatial size changes, so the encoder must
    be a Sequential whose children end exactly at timm's feature taps. timm's FeatureDictNet already
    rebuilds a model as an ordered list of modules ending at those taps; grouping them per tap gives
    that Sequential for every family whose features are plain module outputs.
    """
    out_indices = tuple(range(len(model.feature_info)))
    for flatten in (False, True):  # resnets tap top-level children, efficientnets tap inside `blocks`
        try:
            features = FeatureDictNet(model, out_indices=out_indices, flatten_sequential=flatten)
            break
        except AssertionError:
            continue
    else:
        raise TrashError(f"encoder {type(model).__name__}: its feature taps are not plain module outputs")
    stages, current = [], []
    for name, module in features.items():
        current.append(module)
        if name in features.return_layers:
            stages.append(nn.Sequential(*current))
            current = []
    return nn.Sequential(*stages)


def build_model(cfg: Model, n_classes: int, size: int) -> tuple[nn.Module, tuple, tuple]:
    """The segmentation model and the input mean/std its encoder expects.

    Returns:
        (model, mean, std): mean/std are the encoder's pretrained normalisation (ImageNet for most).
    """
    timm_model = create_timm(cfg)
    mean, std = timm_model.pretrained_cfg.get("mean"), timm_model.pretrained_cfg.get("std")
    encoder = encoder_stages(timm_model)
    model = DynamicUnet(
        encoder,
        n_classes,
        (size, size),
        blur=cfg.blur,
        self_attention=cfg.self_attention,
        last_cross=cfg.last_cross,
        bottle=cfg.bottle,
    )
    return model, tuple(mean), tuple(std)


def unet_splitter(model: nn.Module) -> list:
    """Parameter groups for discriminative learning rates / freezing: encoder, then decoder."""
    return [params(model[0]), params(model[1:])]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
