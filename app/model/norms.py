"""Norm layers by name (`model.norm`): batch (as built), group (every BatchNorm2d -> GroupNorm), frozen_bn.

GroupNorm does not depend on the batch, for micro-batches under gradient accumulation; frozen_bn keeps a
pretrained encoder's statistics and affine parameters fixed (timm/torchvision FrozenBatchNorm2d).
"""

import math

import torch
from torch import nn

from app.model.encoders import model_encoder
from app.registry import Registry


def _batch(model: nn.Module) -> None:
    """BatchNorm as the model was built."""


def _group(model: nn.Module) -> None:
    _replace_batchnorm(model)


def _frozen_bn(model: nn.Module) -> None:
    from timm.layers import freeze_batch_norm_2d

    freeze_batch_norm_2d(model_encoder(model))  # in place below the encoder's root


NORMS: Registry = Registry("norm", {"batch": _batch, "group": _group, "frozen_bn": _frozen_bn}, key="model.norm")


def apply_norm(model: nn.Module, norm: str) -> nn.Module:
    """Applies `norm` (a NORMS name) to `model` in place and returns it."""
    NORMS[norm](model)
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
