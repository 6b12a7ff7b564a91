"""The GPU measurements of bench/gpu/run.sh: one function per row, a row registry, a budget clock, gpu.json / gpu.md.

    python -m bench.gpu.measure --out OUT [--budget 480] [--cpu-dry-run] [--only NAME ...]

Rows (ROWS, in order): train img/s of the reference Unet + EfficientNet-B4 (512 px, batch 16) in fp32, bf16 and
fp16 + GradScaler, each with and without channels-last, with peak memory and the share of the step the GPU was
busy; trash's Unet against smp.Unet; the real DataLoader (16 workers) feeding that step on a synthetic set; predict
img/s with flip and d4 TTA batched against one view at a time, masks against the CPU path's; `trash fit` through
torchrun (1 process); fit + predict --tta end to end on CUDA, mIoU beside the CPU run's.

Every row has its own try/except (a failure records its error, the others still run); the budget clock is read
between rows, and a row whose estimate does not fit is recorded as skipped, so the command stops cleanly with what
it has. gpu.json is rewritten after every row: a run killed from outside still leaves the rows it finished.
`--cpu-dry-run` runs every row's code path at a tiny size on CPU (CUDA-only rows say why they are skipped), so the
script is exercised by the test suite (tests/test_bench.py) before a GPU is lent.
"""

import argparse
import contextlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

IMPORT_ERROR = ""
try:
    from bench.gpu import steps
except Exception as e:  # an incomplete offline install: every row records why, and gpu.json is still written
    steps, IMPORT_ERROR = None, f"{type(e).__name__}: {e}"

CLASSES = 11  # the reference dataset's 10 classes + background


@dataclass(frozen=True)
class Setting:
    """Sizes of one measurement run: the GPU's (512 px, batch 16) or the dry run's (tiny, on CPU)."""

    dry: bool
    work: Path
    size: int = 512
    batch: int = 16
    encoder: str = "efficientnet_b4"
    warmup: int = 3
    steps: int = 15
    workers: int = 16
    images: int = 224  # synthetic training images of the loader row: one epoch of 14 batches
    fit_size: int = 128  # the fit rows train recipes/demo.py (resnet18) at this size
    epochs: int = 3
    fit_encoder: str = ""  # "" = the recipe's
    demo: tuple[int, int, int] = (96, 24, 16)  # train, val, test images of the fit rows' demo dataset
    deadline: float = float("inf")  # time.monotonic() when the budget ends: the fit rows' subprocesses stop there

    def left(self) -> float:
        """Seconds to the deadline (at least 5, for a subprocess timeout)."""
        return max(5.0, self.deadline - time.monotonic())


def setting(dry: bool, work: Path) -> Setting:
    if not dry:
        return Setting(dry=False, work=work)
    # timm's tiny test ResNet: on a shared 2-core CPU a niced resnet18 step at 64 px took 30 s
    tiny = dict(encoder="test_resnet", fit_encoder="test_resnet", demo=(8, 2, 2))
    return Setting(True, work, size=64, batch=2, warmup=1, steps=2, workers=2, images=8, fit_size=64, epochs=1, **tiny)


@dataclass(frozen=True)
class Row:
    """One row: `fn(setting) -> figures`; `cuda_only` says why it cannot run on CPU; `estimate_s` on the GPU."""

    fn: Callable[[Setting], dict]
    estimate_s: float
    cuda_only: str = ""
    kwargs: dict = field(default_factory=dict)


def cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# ---- the rows -------------------------------------------------------------------------------------------------


def train_row(s: Setting, precision: str, channels_last: bool) -> dict:
    """Training img/s of the reference Unet at one precision and memory layout, peak memory, GPU busy share."""
    step = steps.reference_step(s.encoder, CLASSES, s.size, s.batch, precision, channels_last)
    seconds = steps.time_step(step, s.warmup, s.steps)
    return {
        "img_s": round(s.batch / seconds, 2),
        "step_ms": round(1000 * seconds, 1),
        **steps.peak_memory(),
        **steps.busy_share(step),
        "setting": f"{s.encoder} Unet, {s.size} px, batch {s.batch}, {precision}, channels_last={channels_last}",
    }


def trash_vs_smp_row(s: Setting) -> dict:
    """trash's Unet against smp.Unet, same encoder, size, batch, bf16 + channels-last, interleaved."""
    ips = steps.unet_against_smp(s.encoder, CLASSES, s.size, s.batch, s.warmup, s.steps)
    return {
        "trash_over_smp": round(ips["trash"] / ips["smp"], 3),
        "trash_img_s": round(ips["trash"], 2),
        "smp_img_s": round(ips["smp"], 2),
        "setting": f"{s.encoder}, {s.size} px, batch {s.batch}, bf16, channels_last",
    }


def loader_row(s: Setting) -> dict:
    """The real DataLoader (`s.workers` workers, medium preset) feeding the step, against the step on a held batch."""
    items, data = steps.synthetic_items(s.work / "synthetic", s.images, s.size, s.batch)
    warmup = min(2, s.warmup)  # batches before the timed ones: the workers start up
    found = steps.fed_against_held(items, data, s.encoder, s.workers, warmup, s.images // s.batch - warmup - 1)
    return {
        "fed_over_held": round(found["held_s"] / found["fed_s"], 3),
        "fed_img_s": round(s.batch / found["fed_s"], 1),
        "held_img_s": round(s.batch / found["held_s"], 1),
        "loader_alone_img_s": round(found["loader_img_s"], 1),
        "setting": f"{s.workers} workers, {s.images} synthetic images squished to {s.size} px, medium, bf16",
    }


def tta_row(s: Setting, spec: str) -> dict:
    """Predict img/s with the views batched into one forward against one view at a time; masks against CPU's."""
    found = steps.tta_speed(s.encoder, CLASSES, s.size, s.batch, spec, s.warmup, s.steps)
    return {
        "batched_over_one_view": round(found["one_view_s"] / found["batched_s"], 3),
        "batched_img_s": round(s.batch / found["batched_s"], 1),
        "one_view_img_s": round(s.batch / found["one_view_s"], 1),
        "views": found["views"],
        "mask_equal_to_cpu": found["mask_equal_to_cpu"],
        "max_prob_diff_to_cpu": found["max_prob_diff_to_cpu"],
        "setting": f"{s.encoder} Unet, {s.size} px, batch {s.batch}, fp32, eval",
    }


def fit_launcher_row(s: Setting) -> dict:
    """`trash fit --gpus 1` as a launcher runs it: torchrun with one process, a tiny run of recipes/demo.py."""
    sets = steps.fit_sets(s.fit_size, s.epochs, s.fit_encoder)
    return steps.fit_through_torchrun(s.work / "launch", s.demo, sets, timeout=s.left())


def end_to_end_row(s: Setting) -> dict:
    """fit + predict --tta on this device and on CPU (same recipe, seed, data): both mIoUs and times."""
    sets = steps.fit_sets(s.fit_size, s.epochs, s.fit_encoder)
    return steps.end_to_end(s.work / "e2e", s.demo, sets, cpu_too=not s.dry, deadline=s.deadline)  # dry: here = CPU


PRECISIONS = {"fp32": "fp32", "bf16": "bf16", "fp16+GradScaler": "fp16"}
FP16_CPU = "fp16 autocast with a GradScaler is CUDA-only"


def _train(precision: str, channels_last: bool) -> Row:
    options = dict(precision=precision, channels_last=bool(channels_last))
    return Row(train_row, 15, FP16_CPU if precision == "fp16" else "", options)


ROWS: dict[str, Row] = {
    **{f"train {n}{'+channels_last' if cl else ''}": _train(p, cl) for n, p in PRECISIONS.items() for cl in (0, 1)},
    "train trash Unet / smp.Unet": Row(trash_vs_smp_row, 20),
    "loader 16 workers feeding the step": Row(loader_row, 45),
    "predict TTA flip: batched / one view": Row(tta_row, 15, kwargs=dict(spec="flip")),
    "predict TTA d4: batched / one view": Row(tta_row, 20, kwargs=dict(spec="d4")),
    "fit --gpus 1 (torchrun, 1 process)": Row(fit_launcher_row, 45),
    "fit + predict --tta end to end: device vs CPU": Row(end_to_end_row, 120),
}


# ---- running and reporting ------------------------------------------------------------------------------------


def run_row(name: str, row: Row, s: Setting) -> dict:
    """One row's record: status ok / error / skipped, seconds, figures or the error."""
    if row.cuda_only and not cuda():
        return {"name": name, "status": "skipped-on-cpu", "reason": row.cuda_only, "seconds": 0.0, "figures": {}}
    if steps is None:
        return {"name": name, "status": "error", "seconds": 0.0, "figures": {}, "error": IMPORT_ERROR}
    begun = time.perf_counter()
    try:
        figures, status, error = row.fn(s, **row.kwargs), "ok", None
    except Exception as e:  # one failing row is recorded; the others still run
        figures, status, error = {}, "error", f"{type(e).__name__}: {e}"
        traceback.print_exc()
    record = {"name": name, "status": status, "seconds": round(time.perf_counter() - begun, 1), "figures": figures}
    return record if error is None else {**record, "error": error}


def measure(s: Setting, budget_s: float, out: Path, names: list[str] | None = None) -> dict:
    """Runs the rows in order while the budget allows; writes OUT/gpu.json and gpu.md after every row."""
    started = time.perf_counter()
    s = replace(s, deadline=time.monotonic() + budget_s)
    result = {"machine": machine(), "dry_run": s.dry, "budget_s": budget_s, "setting": _plain(asdict(s)), "rows": []}
    for name, row in ROWS.items():
        if names and name not in names:
            continue
        left = budget_s - (time.perf_counter() - started)
        estimate = row.estimate_s if not s.dry else 1
        if estimate > left:  # stop cleanly with what we have: the row is listed, not run
            reason = f"budget: {left:.0f} s left, row needs about {estimate:.0f} s"
            result["rows"].append({"name": name, "status": "skipped-budget", "reason": reason, "figures": {}})
        else:
            print(f"[measure] {name} ...", file=sys.stderr, flush=True)
            result["rows"].append(run_row(name, row, s))
        result["total_s"] = round(time.perf_counter() - started, 1)
        write(result, out)
    return result


def machine() -> dict:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return {
        "gpu": gpu,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }


def markdown(result: dict) -> str:
    m = result["machine"]
    head = f"{m['gpu']}, {m['cpus']} CPUs, Python {m['python']}, torch {m['torch']} (CUDA {m['cuda']})"
    lines = [f"{head}; {result.get('total_s', 0)} s of {result['budget_s']} s budget", ""]
    lines += ["| row | status | figures |", "|---|---|---|"]
    for r in result["rows"]:
        figures = ", ".join(f"{k}={v}" for k, v in r["figures"].items()) or r.get("error") or r.get("reason", "")
        lines.append(f"| {r['name']} | {r['status']} | {figures} |")
    return "\n".join(lines) + "\n"


def write(result: dict, out: Path) -> None:
    from app.atomic import write_text

    write_text(out / "gpu.json", json.dumps(result, indent=2) + "\n")
    write_text(out / "gpu.md", markdown(result))


@contextlib.contextmanager
def one_thread():
    """The dry run at one thread, its subprocesses too: on a shared, niced CPU two OpenMP threads stall at every
    barrier (a 64 px step of a tiny Unet took 30 s at two threads, well under one at one)."""
    import torch

    before, env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        yield
    finally:
        torch.set_num_threads(before)
        os.environ.pop("OMP_NUM_THREADS") if env is None else os.environ.update(OMP_NUM_THREADS=env)


def _plain(d: dict) -> dict:
    return {k: str(v) if isinstance(v, Path) else v for k, v in d.items() if k != "deadline"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "bench/gpu/out")))
    p.add_argument("--budget", type=float, help="seconds for all rows (GPU: 480 = 8 minutes at most; dry run 1800)")
    p.add_argument("--cpu-dry-run", action="store_true", help="every row at a tiny size on CPU")
    p.add_argument("--only", nargs="*", help="row names to run (default: all)")
    args = p.parse_args(argv)
    budget = min(args.budget or 480.0, 480.0) if not args.cpu_dry_run else args.budget or 1800.0
    work = Path(tempfile.mkdtemp(prefix="trash-gpu-"))  # datasets and runs: not in OUT, which travels back
    try:
        with one_thread() if args.cpu_dry_run else contextlib.nullcontext():
            result = measure(setting(args.cpu_dry_run, work), budget, args.out, args.only)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(markdown(result))
    bad = ("error", "skipped-budget") if args.cpu_dry_run else ("error",)  # the dry run must reach every row
    failed = [r["name"] for r in result["rows"] if r["status"] in bad]
    print(f"{len(result['rows'])} rows, {len(failed)} failed: {failed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
