"""The arch registry and the model factory: a timm encoder inside the decoder `model.arch` names.

Each arch is one `Arch` entry: its builder, the multiple image sides must be of, and the encoders it refuses
(with the reason). `unet` is fastai's DynamicUnet (app/model/unet.py); the others are
segmentation_models_pytorch decoders with its `tu-<timm name>` encoders (app/model/smp.py). Every model maps
(N, 3, H, W) images to (N, classes, H, W) logits. Checks run on the meta device (shapes, no arithmetic), so a
recipe's arch, encoder and sizes are checked in well under a second before any image is read.
"""

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import timm
import torch
from torch import nn

from app.errors import TrashError
from app.model.encoders import (
    KNOWN_ENCODERS,
    SEQUENTIAL_FEATURES,
    SMP_REDUCTIONS,
    EncoderSpec,
    count_parameters,
    encoder_spec,
)
from app.model.norms import NORMS, apply_norm
from app.model.pretrained import encoder_state_dict
from app.model.smp import build_smp
from app.model.unet import build_unet
from app.recipe import Model
from app.registry import Registry


@dataclass(frozen=True)
class Arch:
    """One architecture: how to build it, which sides it takes, which encoders it refuses."""

    build: Callable[[Model, EncoderSpec, int, int], nn.Module]  # (cfg, spec, n_classes, size) -> model
    multiple: Callable[[EncoderSpec], int]  # image sides must be multiples of this (1 = any)
    problem: Callable[[str, EncoderSpec], str | None]  # (arch name, spec) -> why it cannot take the encoder


def _unet_multiple(spec: EncoderSpec) -> int:
    """Plain CNN stages: DynamicUnet resizes back, any side works; tapped extractors and windows need 32."""
    sequential_cnn = spec.feature_cls in SEQUENTIAL_FEATURES and not spec.nhwc and not spec.timm_kwargs
    return 1 if sequential_cnn else 32


def _unet_problem(arch: str, spec: EncoderSpec) -> str | None:
    if len(spec.reductions) < 2 or spec.reductions != sorted(set(spec.reductions)):
        return f"unet needs an encoder whose feature maps shrink level by level; strides {spec.reductions}"
    return None


def _smp_problem(arch: str, spec: EncoderSpec) -> str | None:
    if spec.reductions not in SMP_REDUCTIONS:
        return (
            f"{arch} needs encoder feature strides {SMP_REDUCTIONS[0]} (CNNs) or {SMP_REDUCTIONS[1]} "
            f"(hierarchical transformers); {spec.name} has {spec.reductions}: use arch=unet"
        )
    return None


def _dilated_problem(arch: str, spec: EncoderSpec) -> str | None:
    if _smp_problem(arch, spec) or spec.output_stride_ok:
        return _smp_problem(arch, spec)
    return (
        f"{arch} needs an encoder that supports output_stride=16 (dilated convolutions, CNN families "
        f"such as resnet, efficientnet, convnext, regnet); {spec.name} does not: use fpn, upernet or segformer"
    )


def _stride(multiple: int) -> Callable[[EncoderSpec], int]:
    return functools.partial(_fixed, multiple)


def _fixed(multiple: int, spec: EncoderSpec) -> int:
    return multiple


def _smp(smp_class: str, **kwargs) -> Callable:
    return functools.partial(build_smp, smp_class, kwargs)


ARCHS: Registry[Arch] = Registry(
    "arch",
    {
        "unet": Arch(build_unet, _unet_multiple, _unet_problem),
        "smp_unet": Arch(_smp("Unet"), _stride(32), _smp_problem),  # the speed and accuracy reference of bench/
        "deeplabv3plus": Arch(_smp("DeepLabV3Plus", encoder_output_stride=16), _stride(16), _dilated_problem),
        "fpn": Arch(_smp("FPN"), _stride(32), _smp_problem),
        "unetplusplus": Arch(_smp("UnetPlusPlus"), _stride(32), _smp_problem),
        "upernet": Arch(_smp("UPerNet"), _stride(32), _smp_problem),
        "segformer": Arch(_smp("Segformer"), _stride(32), _smp_problem),
    },
    key="model.arch",
)


def arch_problem(arch: str, spec: EncoderSpec) -> str | None:
    """Why `arch` cannot take this encoder, or None."""
    return ARCHS[arch].problem(arch, spec)


def size_multiple(arch: str, spec: EncoderSpec) -> int:
    """Image sides must be multiples of this (1 = any size) for `arch` with this encoder."""
    return math.lcm(ARCHS[arch].multiple(spec), spec.window_multiple)


def sides(size: int | tuple[int, int]) -> tuple[int, int]:
    """(height, width) of a size given as one side (a square) or as (height, width)."""
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def check_size(model_or_multiple, size: int | tuple[int, int]) -> None:
    """TrashError when a side of `size` (one side or (height, width)) is not one the model can take."""
    multiple = getattr(model_or_multiple, "trash_size_multiple", model_or_multiple)
    multiple = multiple if isinstance(multiple, int) else 1
    for side in sorted(set(sides(size))):
        _check_side(model_or_multiple, side, multiple)


def _check_side(model_or_multiple, size: int, multiple: int) -> None:
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


def build_model(cfg: Model, n_classes: int, size: int | tuple[int, int]) -> tuple[nn.Module, tuple, tuple]:
    """The segmentation model of `cfg.arch` with `cfg.encoder`, `cfg.norm` applied, and its input mean/std.

    The model carries `trash_size_multiple` (see `check_size`) and `trash_weights` (where the encoder's
    weights came from, "" when randomly initialised).

    Returns:
        (model, mean, std): mean/std are the encoder's pretrained normalisation (ImageNet for most,
        0.5/0.5 for tf_efficientnet_lite0).
    """
    spec, multiple = _checked_spec(cfg, [size])
    spec.weights = encoder_state_dict(cfg.encoder, cfg.pretrained, cfg.weights)
    model = apply_norm(ARCHS[cfg.arch].build(cfg, spec, n_classes, size), cfg.norm)
    model.trash_size_multiple = multiple
    model.trash_description = _describe(cfg)
    model.trash_weights = spec.weights.source if spec.weights else ""
    pretrained_cfg = timm.models.get_pretrained_cfg(cfg.encoder)
    mean = getattr(pretrained_cfg, "mean", None) or timm.data.IMAGENET_DEFAULT_MEAN
    std = getattr(pretrained_cfg, "std", None) or timm.data.IMAGENET_DEFAULT_STD
    return model, tuple(mean), tuple(std)


def _checked_spec(cfg: Model, sizes: list) -> tuple[EncoderSpec, int]:
    arch = ARCHS[cfg.arch]
    NORMS[cfg.norm]  # an unknown norm fails here, before the encoder is looked at
    spec = encoder_spec(cfg, sizes[0], load_weights=False)  # window transformers are built for the first size
    problem = arch.problem(cfg.arch, spec)
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


# -- the table of `trash models` ---------------------------------------------------------------------


def model_table(
    encoders: list[str] | None = None, sizes=(256, 512), quick: bool = False, arch: str = "unet", progress=None
) -> list[dict]:
    """Encoders (default KNOWN_ENCODERS) with the archs they fit, parameters and forward GFLOPs.

    Each row: encoder, family, archs (those registered archs that take it), encoder_params_m, and unless
    `quick`: params_m of `arch` (default unet; 3 classes) and gflops_<size> of one 1x3xSxS forward
    (torch FlopCounterMode: 2 FLOPs per multiply-add) per size in `sizes`. Models are built and run on
    the meta device (shapes only, no arithmetic); nothing is cached.

    Args:
        progress: Optional wrapper for the loop over encoders (e.g. fastprogress.progress_bar).
    """
    ARCHS[arch]
    names = encoders or list(KNOWN_ENCODERS)
    return [_table_row(name, sizes, quick, arch) for name in (progress(names) if progress else names)]


def _table_row(name: str, sizes, quick: bool, arch: str) -> dict:
    cfg = Model(arch=arch, encoder=name)
    spec = encoder_spec(cfg, sizes[0] if sizes else 256, load_weights=False)
    row = dict(
        encoder=name,
        family=KNOWN_ENCODERS.get(name, ""),
        archs=[a for a in ARCHS if arch_problem(a, spec) is None],
        encoder_params_m=round(spec.parameters / 1e6, 2),
    )
    if quick or arch not in row["archs"]:
        return row
    model = None
    for size in sizes:
        if model is None or spec.timm_kwargs:  # window transformers are built for their size
            model = _build_for_counting(cfg, size)
            row.setdefault("params_m", round(count_parameters(model) / 1e6, 2))
        row[f"gflops_{size}"] = round(forward_flops(model, size) / 1e9, 2)
    return row


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
