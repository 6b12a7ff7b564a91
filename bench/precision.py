"""Precision and memory layout: one training step of trash's default Unet (EfficientNet-B4, as recipes/unet_effb4.py)
in fp32, bf16 autocast and channels-last, side by side; each setting's img/s over fp32's.

CPU: 256 px, batch 8, images per CPU second at one thread (bench.common.measure); fp16 is CUDA-only.
GPU: 512 px, batch 16, wall time, with fp16 (GradScaler) as well.
"""

from app.model.build import build_model
from app.recipe import Model
from bench.common import device, measure, row, train_step

ENCODER = "efficientnet_b4"
CLASSES = 11


def settings() -> dict[str, tuple[str, bool]]:
    """name -> (precision, channels_last)."""
    found = {"fp32": ("fp32", False), "fp32+channels_last": ("fp32", True), "bf16": ("bf16", False)}
    found["bf16+channels_last"] = ("bf16", True)
    if device().type == "cuda":
        found["fp16+channels_last"] = ("fp16", True)
    return found


def run() -> list[dict]:
    size, batch = (512, 16) if device().type == "cuda" else (256, 8)
    steps = {}
    for name, (precision, channels_last) in settings().items():
        model = build_model(Model(encoder=ENCODER), CLASSES, size)[0]
        steps[name] = train_step(model, batch, size, CLASSES, precision, channels_last)
    best = measure(steps, repeat=2)  # CPU: one thread, CPU time (see bench.common.measure)
    ips = {name: batch / seconds for name, seconds in best.items()}
    fastest = max(ips, key=ips.get)
    return [
        row(
            f"precision {ENCODER} train: {name} / fp32 img/s",
            ips[name] / ips["fp32"],
            "report (recipes use the fastest)",
            None,
            img_per_cpu_s=round(ips[name], 2),
            fp32_img_per_cpu_s=round(ips["fp32"], 2),
            fastest=fastest,
            setting=f"{size} px, batch {batch}, {device().type}",
        )
        for name in ips
        if name != "fp32"
    ]
