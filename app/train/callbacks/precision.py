"""Mixed precision on CPU (fastai's own callbacks autocast on CUDA only)."""

import torch
from fastai.callback.fp16 import MixedPrecision
from fastcore.foundation import L
from torch.amp import GradScaler


class CPUMixedPrecision(MixedPrecision):
    """bf16 autocast on CPU.

    fastai's `to_bf16()` / MixedPrecision enter `autocast('cuda')` only, which changes nothing on CPU;
    this keeps its loop (fp32 loss, no-op scaler: bf16 has fp32's range) with a CPU autocast.
    """

    def __init__(self):
        super().__init__(amp_mode="bf16")

    def before_fit(self):
        self.autocast = torch.autocast("cpu", dtype=torch.bfloat16)
        self.learn.scaler, self.scales = GradScaler("cpu", enabled=False), L()
