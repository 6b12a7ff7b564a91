"""What the rows of bench/gpu/measure.py time: the reference training step, the fed loader, TTA, and the `trash`
commands run as subprocesses (fit through torchrun, fit + predict --tta + evaluate on this device and on CPU).

Timing is wall clock with a CUDA sync at each end (bench.common.sync); on CPU (the dry run) the same code runs at a
tiny size, so the figures only show that the path works.
"""

import contextlib
import copy
import dataclasses
import gc
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from app.model.build import build_model
from app.recipe import Data, Model, Recipe
from bench.common import REPO, batch_step, device, side_by_side, sync, train_step

DEMO_RECIPE = REPO / "recipes" / "demo.py"


def reset_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def reference_step(encoder: str, classes: int, size: int, batch: int, precision: str, channels_last: bool):
    """One AdamW step of trash's default Unet on a held random batch (bench.common.train_step: fp16 scales)."""
    reset_memory()
    model = build_model(Model(encoder=encoder), classes, size)[0]
    return train_step(model, batch, size, classes, precision, channels_last)


def time_step(step, warmup: int, n: int) -> float:
    """Mean seconds per call over `n` calls after `warmup` untimed ones (cudnn autotuning, allocator warm-up)."""
    for _ in range(warmup):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(n):
        step()
    sync()
    return (time.perf_counter() - start) / n


def peak_memory() -> dict:
    """Peak CUDA memory since the last reset_memory(); on CPU the process's peak RSS (not per row)."""
    if torch.cuda.is_available():
        return {"peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}
    return {"peak_rss_gib_process": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


def busy_share(step, n: int = 3) -> dict:
    """Share of the wall time of `n` steps that CUDA kernels ran (torch.profiler; the profiler's own overhead
    lowers it a little), and NVML's utilization when pynvml is there. CPU: nothing to measure."""
    if not torch.cuda.is_available():
        return {"gpu_busy_share": None}
    from torch.profiler import ProfilerActivity, profile

    sync()
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            step()
        sync()
    wall = time.perf_counter() - start
    kernel_us = sum(getattr(e, "self_device_time_total", 0) for e in prof.key_averages())
    try:
        nvml = torch.cuda.utilization()  # needs pynvml, which the GPU machine may lack
    except Exception:
        nvml = None
    return {"gpu_busy_share": round(min(1.0, kernel_us / 1e6 / wall), 3), "nvml_utilization_pct": nvml}


def unet_against_smp(encoder: str, classes: int, size: int, batch: int, warmup: int, n: int) -> dict[str, float]:
    """Training img/s of trash's Unet and smp.Unet, bf16 + channels-last, the sides interleaved (best of n)."""
    reset_memory()
    models = {"trash": Model(encoder=encoder), "smp": Model(arch="smp_unet", encoder=encoder)}
    built = {name: build_model(m, classes, size)[0] for name, m in models.items()}
    fns = {name: train_step(m, batch, size, classes, "bf16", True) for name, m in built.items()}
    best = side_by_side(fns, repeat=n, warmup=warmup)
    return {name: batch / seconds for name, seconds in best.items()}


def synthetic_items(folder: Path, images: int, size: int, batch: int):
    """A synthetic demo dataset of `images` training images, loaded as trash's Items, and its Data section."""
    from app.data.items import load_items
    from app.data.synthetic import make_demo_dataset

    paths = make_demo_dataset(folder, seed=0, n_train=images, n_val=2, n_test=0)
    data = Data(
        annotations=str(paths["train"]),
        valid_annotations=str(paths["val"]),
        images=str(folder),
        size=size,
        batch_size=batch,
        augment="medium",
        mask_cache=str(folder / "mask_cache"),
    )
    return load_items(Recipe(data=data)), data


def fed_against_held(items, data: Data, encoder: str, workers: int, warmup: int, n: int) -> dict:
    """Seconds per step fed by make_dls's loader (`workers` processes), per step on a held batch, and the loader's
    own img/s; bf16 + channels-last. The first `warmup` batches (worker start-up) are not timed."""
    from app.data.loaders import make_dls

    dev, fmt = device(), torch.channels_last
    dls = make_dls(items, Recipe(data=dataclasses.replace(data, workers=workers)), data.size, (0.5,) * 3, (0.5,) * 3)
    dls.to(dev)
    model = build_model(Model(encoder=encoder), len(items.codes), data.size)[0].to(dev, memory_format=fmt)
    step = batch_step(model, fmt)

    held_batch = dls.train.one_batch()
    held = time_step(lambda: step(*held_batch), warmup, n)
    fed = _timed_batches(dls.train, warmup, n, step)
    alone = _timed_batches(dls.train, warmup, n, None)
    return {"held_s": held, "fed_s": fed, "loader_img_s": data.batch_size / alone}


def _timed_batches(dl, warmup: int, n: int, step) -> float:
    """Seconds per batch of the loader (with `step` on each batch when given), batches after `warmup`."""
    seen, start = 0, None
    for x, y in dl:
        if step is not None:
            step(x, y)
        seen += 1
        if seen == warmup:
            sync()
            start = time.perf_counter()
        if seen == warmup + n:
            break
    sync()
    if start is None or seen <= warmup:
        raise RuntimeError(f"the loader gave {seen} batches, fewer than warm-up {warmup} + 1")
    return (time.perf_counter() - start) / (seen - warmup)


def tta_speed(encoder: str, classes: int, size: int, batch: int, spec: str, warmup: int, n: int) -> dict:
    """predict_probs with the views batched into one forward against one forward per view; masks (argmax) of
    the first two images on this device against the CPU path's (its default: one view at a time, fp32)."""
    from app.infer.tta import parse_views, predict_probs

    reset_memory()
    dev = device()
    model = build_model(Model(encoder=encoder), classes, size)[0].to(dev).eval()
    x = torch.randn(batch, 3, size, size, device=dev, generator=None)
    views = parse_views(spec, multiple=getattr(model, "trash_size_multiple", 32))
    batched = time_step(lambda: predict_probs(model, x, views, batch_views=True), warmup, n)
    one_view = time_step(lambda: predict_probs(model, x, views, batch_views=False), warmup, n)
    with strict_fp32():
        here = predict_probs(model, x[:2], views).cpu()
    on_cpu = predict_probs(copy.deepcopy(model).cpu(), x[:2].cpu(), views)
    equal = (here.argmax(1) == on_cpu.argmax(1)).float().mean().item()
    return {
        "batched_s": batched,
        "one_view_s": one_view,
        "views": len(views),
        "mask_equal_to_cpu": round(equal, 5),  # share of pixels (random weights: near-ties can flip a few)
        "max_prob_diff_to_cpu": round((here - on_cpu).abs().max().item(), 6),
    }


@contextlib.contextmanager
def strict_fp32():
    """CUDA convolutions and matmuls in full fp32 (no TF32), to compare masks with the CPU path's."""
    conv, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = conv, matmul


def trash(args: list, env: dict | None = None, timeout: float = 300, launcher: list | None = None) -> float:
    """Runs `python -m app ARGS` (or `LAUNCHER -m app ARGS`) in the repository; seconds taken. Raises on failure."""
    command = [*(launcher or [sys.executable]), "-m", "app", *map(str, args)]
    start = time.perf_counter()
    env = {**os.environ, **(env or {})}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        tail = (done.stdout + done.stderr)[-1500:]
        raise RuntimeError(f"{' '.join(command[:6])} ... exited {done.returncode}: {tail}")
    return time.perf_counter() - start


def fit_sets(size: int, epochs: int, encoder: str = "") -> dict:
    """--set overrides of recipes/demo.py for the fit rows."""
    return {"data.size": size, "train.epochs": epochs, **({"model.encoder": encoder} if encoder else {})}


def demo_fit_args(demo: dict, sets: dict, out: Path) -> list:
    """`fit recipes/demo.py` on the demo dataset `demo` (make_demo_dataset's paths) with `sets` overrides."""
    sets = {
        "data.annotations": demo["train"],
        "data.valid_annotations": demo["val"],
        "data.images": demo["images"],
        "data.mask_cache": Path(demo["images"]) / "mask_cache",
        **sets,
    }
    return ["fit", DEMO_RECIPE, *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")], "--out", out]


def demo_data(folder: Path, counts: tuple[int, int, int]) -> dict:
    """The demo dataset in `folder` (made once per measurement run, shared by the fit rows)."""
    from app.data.synthetic import make_demo_dataset

    if (folder / "test.json").is_file():
        return {**{split: folder / f"{split}.json" for split in ("train", "val", "test")}, "images": folder}
    return make_demo_dataset(folder, seed=0, n_train=counts[0], n_val=counts[1], n_test=counts[2])


def run_dir(out: Path) -> Path:
    """The one finished run (with metrics.json) under `out`."""
    found = sorted(p.parent for p in out.rglob("metrics.json") if p.parent.name != "latest")
    if not found:
        raise RuntimeError(f"no finished run (metrics.json) under {out}")
    return found[-1]


def fit_through_torchrun(work: Path, counts: tuple[int, int, int], sets: dict, timeout: float = 600) -> dict:
    """`trash fit` launched as `--gpus N` launches it (app.train.distributed.launch_command), with one process."""
    from app.train.distributed import launch_command

    demo = demo_data(work.parent / "demo", counts)
    launcher = launch_command(1, [])[:-2]  # torchrun ... (without "-m app")
    seconds = trash(demo_fit_args(demo, sets, work), launcher=launcher, timeout=timeout)
    metrics = json.loads((run_dir(work) / "metrics.json").read_text())
    return {
        "finished": True,
        "seconds": round(seconds, 1),
        "valid_miou": round(metrics["miou"], 4),
        "device": device().type,
        "note": "torchrun --nproc_per_node=1: world size 1, so app.train.distributed.init() runs no process group",
    }


def end_to_end(work: Path, counts, sets: dict, cpu_too: bool = True, deadline: float = float("inf")) -> dict:
    """fit, predict --tta and evaluate --tta of recipes/demo.py on this device, and the same on CPU; each command
    stops at `deadline` (time.monotonic())."""
    demo = demo_data(work.parent / "demo", counts)
    found = {"device": device().type}
    sides = {"here": {}, "cpu": {"CUDA_VISIBLE_DEVICES": ""}} if cpu_too else {"here": {}}
    for side, env in sides.items():
        out = work / side
        left = lambda: min(600.0, max(5.0, deadline - time.monotonic()))  # noqa: E731
        fit_s = trash(demo_fit_args(demo, sets, out), env=env, timeout=left())
        run = run_dir(out)
        predict = ["predict", run, "--images", demo["images"], "--data", demo["test"], "--tta", "--out", out / "pred"]
        predict_s = trash(predict, env=env, timeout=left())
        evaluate = ["evaluate", run, "--data", demo["val"], "--images", demo["images"], "--tta", "--out", out / "eval"]
        trash(evaluate, env=env, timeout=left())
        report = json.loads((out / "eval" / "evaluate.json").read_text())
        masks = len(list((out / "pred" / "masks").rglob("*.png")))
        found.update({f"{side}_fit_s": round(fit_s, 1), f"{side}_predict_tta_s": round(predict_s, 1)})
        found.update({f"{side}_miou_tta": round(report["miou"], 4), f"{side}_masks": masks})
    return found
