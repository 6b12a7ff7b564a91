"""Data path: images/s of trash's training DataLoader (app.data.loaders.make_dls: JPEG + cached mask PNG, squish to
512 px, the `medium` albumentations preset, batch 8) for one epoch, against the training step it feeds.

Rows: one CPU core (workers=0, torch and OpenCV at 1 thread); workers (one per core) against none; and the
loader's images/s over the training step's for the reference model (EfficientNet-B4 Unet, bf16,
channels-last, 512 px). Images: ../shared/data/trashcan (480x270 and 480x360 photos, RLE masks); the demo
dataset when that folder is absent.
"""

import dataclasses
import os
import shutil
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from app.model.build import build_model
from app.recipe import Data, Model, Recipe
from bench.common import SHARED_DATA, batch_step, device, row, side_by_side, threads, train_step

SIZE, BATCH = 512, 8


def dataset(folder: Path) -> tuple[str, str, str]:
    """(annotations, images folder, label) of the real photos, else of a demo dataset written to `folder`."""
    trashcan = SHARED_DATA / "trashcan"
    if (trashcan / "annotations.json").is_file():
        return str(trashcan / "annotations.json"), str(trashcan / "images"), "trashcan"
    from app.data.synthetic import make_demo_dataset

    paths = make_demo_dataset(folder, seed=0)
    return str(paths["train"]), str(folder), "demo"


def epoch(items, data: Data, n_threads: int | None = None):
    """A callable iterating one training epoch of the DataLoader (workers, threads as given)."""
    from app.data.loaders import make_dls

    dls = make_dls(items, Recipe(data=data), SIZE, (0.5,) * 3, (0.5,) * 3)

    def run():
        with threads(n_threads) if n_threads else nullcontext():
            for _ in dls.train:
                pass

    return run, len(dls.train) * BATCH


def run() -> list[dict]:
    from app.data.items import load_items

    work = Path(tempfile.mkdtemp(prefix="trash-bench-data-"))
    try:
        annotations, images, label = dataset(work / "demo")
        workers = os.cpu_count() or 1
        cache = str(work / "cache")
        data = Data(
            annotations=annotations, images=images, size=SIZE, batch_size=BATCH, augment="medium", mask_cache=cache
        )
        items = load_items(Recipe(data=data))
        for sample in items.train:  # the page cache holds every file before anything is timed
            sample.image.read_bytes(), sample.mask.read_bytes()
        one_core, n = epoch(items, data, n_threads=1)
        main, _ = epoch(items, data)
        # The main process of the workers side runs at one thread: it only collates and normalises (fastai's
        # after_batch); at two it competes with the workers for the 2 cores (best of 3: 98 vs 116 img/s).
        pooled, _ = epoch(items, dataclasses.replace(data, workers=workers), n_threads=1)
        best = side_by_side({"one core": one_core, "main": main, "workers": pooled}, repeat=2, warmup=0)
        ips = {name: n / seconds for name, seconds in best.items()}
        with threads(1):
            stages = stage_costs(items.train[:64])
        train_ips = train_images_per_second()
        loader = max(ips["main"], ips["workers"])
        where = f"{label}, {SIZE} px, medium, batch {BATCH}, {n} images/epoch"
        gpu = [fed_training(items, data, workers)] if device().type == "cuda" else []
        return gpu + [
            row(
                "data path: DataLoader img/s on one CPU core (workers=0, 1 thread)",
                ips["one core"],
                ">= 150",
                ips["one core"] >= 150,
                data=where,
                **stages,
            ),
            row(
                f"data path: {workers} workers (main process 1 thread) / none (main process, all threads), img/s",
                ips["workers"] / ips["main"],
                ">= 1.0",
                ips["workers"] >= ips["main"],
                workers_img_s=round(ips["workers"], 1),
                none_img_s=round(ips["main"], 1),
                data=where,
            ),
            row(
                "data path: loader img/s / training step img/s",
                loader / train_ips,
                ">= 2",
                loader / train_ips >= 2,
                loader_img_s=round(loader, 1),
                train_img_s=round(train_ips, 2),
                model=f"efficientnet_b4 Unet, {SIZE} px, bf16, channels_last, {device().type}",
            ),
        ]
    finally:
        shutil.rmtree(work, ignore_errors=True)


def train_images_per_second() -> float:
    """The reference model's training images/s at 512 px (batch 4 on CPU, where a step takes seconds; 16 on GPU)."""
    batch = 16 if device().type == "cuda" else 4
    model = build_model(Model(encoder="efficientnet_b4"), 11, SIZE)[0]
    seconds = side_by_side({"step": train_step(model, batch, SIZE, 11, "bf16", True)}, repeat=1)["step"]
    return batch / seconds


def stage_costs(samples) -> dict[str, float]:
    """Milliseconds per image of each stage of the training item pipeline, one thread, best of 2 passes."""
    import numpy as np
    from fastai.vision.all import IntToFloatTensor, Normalize, PILImage, PILMask, Resize, ResizeMethod, TensorImage

    from app.data.augment import _elastic, build_preset

    resize, medium = Resize(SIZE, method=ResizeMethod.Squish), build_preset("medium", 0)
    decoded = [(PILImage.create(s.image), PILMask.create(s.mask)) for s in samples]
    resized = [(np.array(resize(i, split_idx=0)), np.array(resize(m, split_idx=0))) for i, m in decoded]
    batch = TensorImage(torch.randint(0, 255, (BATCH, 3, SIZE, SIZE), dtype=torch.uint8))
    to_float, normalize, elastic = IntToFloatTensor(), Normalize.from_stats((0.5,) * 3, (0.5,) * 3), _elastic(120, 6)
    steps = {
        "decode_ms": lambda: [(PILImage.create(s.image).load(), PILMask.create(s.mask).load()) for s in samples],
        "fastai_resize_ms": lambda: [(resize(i, split_idx=0), resize(m, split_idx=0)) for i, m in decoded],
        "medium_preset_ms": lambda: [medium(image=i, mask=m) for i, m in resized],
        "elastic_call_ms": lambda: [elastic(image=i, mask=m) for i, m in resized],
        "to_float_normalize_ms": lambda: [normalize(to_float(batch)) for _ in range(len(samples) // BATCH)],
    }
    best = side_by_side(steps, repeat=2, warmup=0)
    return {name: round(1000 * seconds / len(samples), 2) for name, seconds in best.items()}


def fed_training(items, data: Data, workers: int, steps: int = 30) -> dict:
    """CUDA only: training img/s when the real DataLoader (one worker per core) feeds the steps, over img/s on
    one batch held on the GPU; 1.0 = the loader keeps up. Reference model at 512 px, batch 16, bf16."""

    from app.data.loaders import make_dls
    from bench.common import sync

    batch, dev, fmt = 16, device(), torch.channels_last
    recipe = Recipe(data=dataclasses.replace(data, workers=workers, batch_size=batch))
    dls = make_dls(items, recipe, SIZE, (0.5,) * 3, (0.5,) * 3, device=dev)
    model = build_model(Model(encoder="efficientnet_b4"), len(items.codes), SIZE)[0].to(dev, memory_format=fmt)
    step = batch_step(model, fmt)

    fixed = dls.train.one_batch()
    held = side_by_side({"step": lambda: step(*fixed)}, repeat=5, warmup=2)["step"]
    start, done = time.perf_counter(), 0
    for x, y in dls.train:
        step(x, y)
        done += 1
        if done == steps:
            break
    sync()
    fed = (time.perf_counter() - start) / done
    try:
        utilization = torch.cuda.utilization()  # needs pynvml; the ratio below does not
    except Exception:
        utilization = None
    return row(
        f"data path (GPU): training fed by {workers} workers / on a held batch, img/s",
        held / fed,
        ">= 0.9",
        held / fed >= 0.9,
        fed_img_s=round(batch / fed, 1),
        held_img_s=round(batch / held, 1),
        gpu_utilization_pct=utilization,
        model=f"efficientnet_b4 Unet, {SIZE} px, batch {batch}, bf16, channels_last",
    )
