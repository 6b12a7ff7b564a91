"""Compute efficiency: GFLOP/s a training step of trash's default Unet achieves, over the machine's measured
ceiling for dense 3x3 convolutions (forward + backward) in the same precision and layout.

FLOPs of a step = 3 x the forward's (backward = grad input + grad weight), the forward counted by torch's
FlopCounterMode (2 FLOPs per multiply-add; convolutions and matmuls only, so element-wise work is not credited).
Counting the backward directly is wrong for grouped convolutions: FlopCounterMode's convolution_backward
formula ignores groups (a 64-channel depthwise 3x3 backward is credited 65x its forward instead of 2x), which
made EfficientNet-B4 "exceed" the ceiling.
"""

import torch

from app.model.build import build_model, forward_flops
from app.recipe import Model
from bench.common import autocast, device, row, side_by_side, train_step

ENCODERS = ("resnet18", "efficientnet_b4")
CLASSES = 11
PRECISION = "bf16"


def conv_ceiling(precision: str, channels: int = 128, side: int = 64, batch: int = 8, groups: int = 1) -> float:
    """GFLOP/s of a 3x3 convolution, forward and backward, channels-last: dense (groups=1) is the best this
    machine does; groups=channels is the depthwise kind EfficientNets are made of."""
    dev = device()
    conv = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False, groups=groups)
    conv = conv.to(dev, memory_format=torch.channels_last)
    x = torch.randn(batch, channels, side, side, device=dev).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)

    def step():
        with autocast(precision):
            out = conv(x)
        out.float().sum().backward()

    flops = 3 * 2 * batch * channels * channels // groups * 9 * side * side  # forward, grad input, grad weight
    return flops / 1e9 / side_by_side({"conv": step}, repeat=3)["conv"]


def step_flops(model, batch: int, size: int) -> int:
    """FLOPs of one training step: 3 x the forward of `batch` images (autocast does not change the count)."""
    return 3 * batch * forward_flops(model.to(device()), size)


def run() -> list[dict]:
    size, batch = (512, 16) if device().type == "cuda" else (256, 8)
    ceiling = max(conv_ceiling(PRECISION), conv_ceiling(PRECISION, channels=256, side=32))
    depthwise = conv_ceiling(PRECISION, channels=256, side=64, groups=256)
    rows = []
    for encoder in ENCODERS:
        model = build_model(Model(encoder=encoder), CLASSES, size)[0]
        flops = step_flops(model, batch, size)
        seconds = side_by_side({"step": train_step(model, batch, size, CLASSES, PRECISION, True)}, repeat=3)["step"]
        achieved = flops / 1e9 / seconds
        rows.append(
            row(
                f"compute {encoder} train step: achieved / dense-conv ceiling GFLOP/s",
                achieved / ceiling,
                ">= 0.4",
                achieved / ceiling >= 0.4,
                achieved_gflop_s=round(achieved, 1),
                ceiling_gflop_s=round(ceiling, 1),
                depthwise_conv_gflop_s=round(depthwise, 1),
                step_gflop=round(flops / 1e9, 1),
                img_s=round(batch / seconds, 2),
                setting=f"{size} px, batch {batch}, {PRECISION}, channels_last, {device().type}",
            )
        )
    return rows
