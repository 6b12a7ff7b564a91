"""What this machine computes fast (ground floor: training's precision `auto` and inference's engines ask it)."""

import torch


def native_bf16() -> bool:
    """True where the CPU computes bf16 in hardware (AVX512-BF16 or AMX). Elsewhere PyTorch emulates it: bf16
    autocast then trained a Unet 10x slower than fp32 (resnet18 at 128 px on an AVX2-only EPYC, measured)."""
    cpu = torch.cpu
    return bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()) or bool(
        getattr(cpu, "_is_amx_tile_supported", lambda: False)()
    )
