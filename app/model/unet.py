"""`unet`: fastai's DynamicUnet around a timm encoder, with decoder widths chosen per resolution.

Modules here are pickled into exported learners: module level only. smp decoders are app/model/smp.py.
"""

import math

import torch
from fastai.callback.hook import dummy_eval, hook_outputs, model_sizes
from fastai.layers import BatchNorm, ConvLayer, MergeLayer, PixelShuffle_ICNR, ResBlock, ToTensorBase, in_channels
from fastai.torch_core import apply_init
from fastai.vision.all import DynamicUnet, SequentialEx, TensorBase
from fastai.vision.models.unet import ResizeToOrig, UnetBlock, _get_sz_change_idxs
from torch import nn

from app.errors import TrashError
from app.model.encoders import SEQUENTIAL_FEATURES, EncoderSpec, create_timm, encoder_stages, tapped_encoder
from app.recipe import Model


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

    def forward(self, x):
        # fastai's TensorImage input would route every op of the network through TensorBase.__torch_function__ (a
        # Python call per op: 8% of a CPU training step, profiled); the network runs on plain tensors and its last
        # layer (ToTensorBase) hands fastai a TensorBase again.
        return super().forward(x.as_subclass(torch.Tensor) if isinstance(x, TensorBase) else x)


def build_unet(cfg: Model, spec: EncoderSpec, n_classes: int, size) -> nn.Module:
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
        (size, size) if isinstance(size, int) else tuple(size),
        widths=tuple(getattr(cfg, "decoder_widths", ())),
        blur=cfg.blur,
        self_attention=cfg.self_attention,
        last_cross=cfg.last_cross,
        bottle=cfg.bottle,
    )
