"""segmentation_models_pytorch decoders (DeepLabV3+, FPN, Unet++, UPerNet, Segformer, smp's Unet) on timm
encoders through smp's `tu-<timm name>` universal encoder; smp is imported when one is built (~2 s)."""

import torch
from fastai.vision.all import TensorBase
from torch import nn

from app.model.encoders import EncoderSpec, quiet_unexpected_keys
from app.recipe import Model


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


def build_smp(smp_class: str, smp_kwargs: dict, cfg: Model, spec: EncoderSpec, n_classes: int, size: int):
    """An smp architecture with the `tu-<encoder>` timm-universal encoder (weights via timm's overlay)."""
    import segmentation_models_pytorch as smp

    overlay = {"pretrained_cfg_overlay": spec.pretrained_kwargs["pretrained_cfg_overlay"]} if spec.weights else {}
    with quiet_unexpected_keys():
        net = getattr(smp, smp_class)(
            encoder_name=f"tu-{spec.name}",
            encoder_weights=True if spec.weights else None,
            classes=n_classes,
            **smp_kwargs,
            **spec.timm_kwargs,
            **overlay,
        )
    return SmpModel(net)
