"""Shared pieces of the benchmarks: result rows, timing, and where the real data lives."""

import contextlib
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def row(name: str, value: float, target: str, holds: bool | None, **figures) -> dict:
    """One results.json row: a ratio measured side by side in one run, with the absolute figures beside it."""
    return {"name": name, "value": round(float(value), 4), "target": target, "holds": holds, "figures": figures}


def best_time(fn, repeat: int = 3) -> float:
    """Best wall time of `repeat` calls (seconds): the least disturbed by the other process on 2 cores."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def side_by_side(fns: dict, repeat: int = 3, warmup: int = 1, cpu_time: bool = False) -> dict[str, float]:
    """Best time (seconds) of each callable, the sides interleaved (A B C, B C A, ...) so that a burst of load
    from another process hits every side alike; `warmup` untimed calls each first. Wall time, or with
    `cpu_time` this process's CPU time (meaningful at one thread: see `measure`)."""
    clock = time.process_time if cpu_time else time.perf_counter
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    best = {name: float("inf") for name in names}
    for r in range(repeat):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = clock()
            fns[name]()
            sync()
            best[name] = min(best[name], clock() - start)
    return best


def measure(fns: dict, repeat: int = 3, warmup: int = 1) -> dict[str, float]:
    """Seconds per call of each side for a ratio row. On CPU: CPU time at one thread, which other processes on
    a shared machine barely move (a time slice taken away is not counted; at two threads their load stalls
    OpenMP barriers, and the wall-clock ratio of two models swung 0.87-1.07 between runs). On GPU: wall time."""
    if device().type == "cuda":
        return side_by_side(fns, repeat, warmup)
    with threads(1):
        return side_by_side(fns, repeat, warmup, cpu_time=True)


@contextlib.contextmanager
def threads(n: int):
    """torch and OpenCV at `n` threads inside the block."""
    import cv2
    import torch

    torch_before, cv2_before = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(n)
    cv2.setNumThreads(n)
    try:
        yield
    finally:
        torch.set_num_threads(torch_before)
        cv2.setNumThreads(cv2_before)


def device():
    """CUDA when there is a GPU (the bench's GPU rows), else CPU."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def autocast(precision: str):
    """fp32: nothing; bf16 / fp16: torch autocast on the bench device (fp16 only on CUDA)."""
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device().type, dtype=dtype)


def batch_step(model, fmt, precision: str = "bf16"):
    """A callable doing one AdamW step of `model` on a given loader batch (x, y), cross-entropy, in `fmt`."""
    import torch
    import torch.nn.functional as F

    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(x, y):
        with autocast(precision):
            loss = F.cross_entropy(plain(model(plain(x).contiguous(memory_format=fmt))).float(), plain(y).long())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def train_step(model, batch: int, size: int, n_classes: int, precision: str = "fp32", channels_last: bool = False):
    """A callable doing one AdamW step of `model` on a fixed random batch (cross-entropy), as `fit` would."""
    import torch
    import torch.nn.functional as F

    dev = device()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(dev, memory_format=fmt).train()
    x = torch.randn(batch, 3, size, size, device=dev).contiguous(memory_format=fmt)
    y = torch.randint(0, n_classes, (batch, size, size), device=dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(dev.type, enabled=precision == "fp16")

    def step():
        with autocast(precision):
            loss = F.cross_entropy(plain(model(x)).float(), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)

    return step


def infer_step(model, batch: int, size: int, precision: str = "fp32", channels_last: bool = False):
    """A callable doing one inference forward (eval mode, inference_mode) of a fixed random batch."""
    import torch

    dev = device()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(dev, memory_format=fmt).eval()
    x = torch.randn(batch, 3, size, size, device=dev).contiguous(memory_format=fmt)

    def forward():
        with torch.inference_mode(), autocast(precision):
            model(x)

    return forward


def plain(t):
    """fastai's TensorBase as a plain tensor (its __torch_function__ costs a little on every op)."""
    import torch

    return t.as_subclass(torch.Tensor) if type(t) is not torch.Tensor else t
