"""Model speed: trash's default Unet (fastai DynamicUnet, `model.decoder_widths`) against smp's Unet with the same
encoder, size and precision: training and inference images/s, measured side by side.

CPU: 256 px, batch 8, the recipes' precision (bf16 autocast, channels-last); the ratio is of images per CPU
second at one thread (`bench.common.measure`: steady on a shared machine), the wall-clock img/s at all threads
are beside it. GPU: 512 px, batch 16, bf16, wall time.
Encoders: resnet18 (the schema's default) and efficientnet_b4 (recipes/unet_effb4.py). Random weights
(speed does not depend on them) and 11 classes, as the reference dataset.
"""

import torch

from app.model.build import build_model, forward_flops
from app.model.encoders import count_parameters
from app.recipe import Model
from bench.common import device, infer_step, measure, row, side_by_side, train_step

ENCODERS = ("resnet18", "efficientnet_b4")
CLASSES = 11
#: DynamicUnet options the default leaves off, timed against the default (accuracy: docs/benchmarks.md)
OPTIONS = {"last_cross": dict(last_cross=True), "blur": dict(blur=True), "self_attention": dict(self_attention=True)}


def setting() -> dict:
    """Size, batch, precision and layout of the comparison on this machine."""
    if device().type == "cuda":
        return dict(size=512, batch=16, precision="bf16", channels_last=True)
    return dict(size=256, batch=8, precision="bf16", channels_last=True)


def models(encoder: str, size: int) -> dict:
    """{"trash": the default Unet, "smp": smp.Unet}, both with `encoder`."""
    return {
        "trash": build_model(Model(encoder=encoder), CLASSES, size)[0],
        "smp": build_model(Model(arch="smp_unet", encoder=encoder), CLASSES, size)[0],
    }


def run() -> list[dict]:
    s = setting()
    rows = []
    for encoder in ENCODERS:
        built = models(encoder, s["size"])
        gflops = {name: round(forward_flops(m.to(device()), s["size"]) / 1e9, 1) for name, m in built.items()}
        fastai_cfg = Model(encoder=encoder, decoder_widths=(), last_cross=True)  # fastai's DynamicUnet defaults
        with torch.device("meta"):  # shapes only, for the FLOP figure
            fastai_default = build_model(fastai_cfg, CLASSES, s["size"])[0]
        gflops["fastai"] = round(forward_flops(fastai_default, s["size"]) / 1e9, 1)
        params = {name: round(count_parameters(m) / 1e6, 1) for name, m in built.items()}
        options = dict(precision=s["precision"], channels_last=s["channels_last"])
        for mode, make, repeat in (("train", train_step, 3), ("inference", infer_step, 8)):
            if mode == "train":
                steps = {n: make(m, s["batch"], s["size"], CLASSES, **options) for n, m in built.items()}
            else:
                steps = {n: make(m, s["batch"], s["size"], **options) for n, m in built.items()}
            ips = {name: s["batch"] / seconds for name, seconds in side_by_side(steps, repeat=repeat).items()}
            core = {name: s["batch"] / seconds for name, seconds in measure(steps, repeat=repeat).items()}
            rows.append(
                row(
                    f"model {encoder} {mode}: trash Unet / smp.Unet img/s",
                    core["trash"] / core["smp"],
                    ">= 1.0",
                    core["trash"] >= core["smp"],
                    trash_img_s=round(ips["trash"], 2),
                    smp_img_s=round(ips["smp"], 2),
                    trash_img_per_cpu_s=round(core["trash"], 2),
                    smp_img_per_cpu_s=round(core["smp"], 2),
                    trash_gflop=gflops["trash"],
                    smp_gflop=gflops["smp"],
                    fastai_dynamic_unet_gflop=gflops["fastai"],
                    trash_params_m=params["trash"],
                    smp_params_m=params["smp"],
                    setting=f"{s['size']} px, batch {s['batch']}, {s['precision']}, channels_last, {device().type}",
                )
            )
    return rows + option_rows(s)


def option_rows(s: dict, encoder: str = "resnet18") -> list[dict]:
    """Training img/s of the default Unet with one decoder option switched on, over the default's."""
    options = dict(precision=s["precision"], channels_last=s["channels_last"])
    variants = {"default": {}, **OPTIONS}
    steps = {
        name: train_step(
            build_model(Model(encoder=encoder, **change), CLASSES, s["size"])[0],
            s["batch"],
            s["size"],
            CLASSES,
            **options,
        )
        for name, change in variants.items()
    }
    best = measure(steps, repeat=2)
    return [
        row(
            f"decoder option {encoder} train: {name} / default img/s",
            best["default"] / best[name],
            "report",
            None,
            img_per_cpu_s=round(s["batch"] / best[name], 2),
            default_img_per_cpu_s=round(s["batch"] / best["default"], 2),
            change=", ".join(f"{k}={v}" for k, v in OPTIONS[name].items()),
        )
        for name in OPTIONS
    ]
