"""TTA cost: app.infer.tta.predict_probs over k views against k plain forwards of the same batch (trash's default Unet,
eval mode); ratio <= 1 means TTA adds nothing beyond the forwards it needs.

predict_probs batches the views into one forward on CUDA and loops over them on CPU; either way each view's
softmax, inversion and running sum come on top of the forwards.
"""

import torch

from app.infer.tta import parse_views, predict_probs
from app.model.build import build_model
from app.recipe import Model
from bench.common import device, measure, row

SIZE, BATCH, CLASSES = 256, 4, 11
SPECS = ("flip", "d4")


def run() -> list[dict]:
    dev = device()
    model = build_model(Model(), CLASSES, SIZE)[0].to(dev).eval()
    x = torch.randn(BATCH, 3, SIZE, SIZE, device=dev)
    rows = []
    for spec in SPECS:
        views = parse_views(spec, multiple=getattr(model, "trash_size_multiple", 32))
        k = len(views)

        def plain(k=k):
            with torch.inference_mode():
                for _ in range(k):
                    model(x)

        best = measure({"tta": lambda views=views: predict_probs(model, x, views), "plain": plain}, repeat=3)
        rows.append(
            row(
                f"TTA {spec} ({k} views): predict_probs time / {k} plain forwards",
                best["tta"] / best["plain"],
                "<= 1.0",
                best["tta"] <= best["plain"],
                tta_cpu_s=round(best["tta"], 3),
                plain_cpu_s=round(best["plain"], 3),
                setting=f"resnet18 Unet, {SIZE} px, batch {BATCH}, fp32, {dev.type}",
            )
        )
    return rows
