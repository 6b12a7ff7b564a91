"""Loop overhead: one epoch of fastai's `Learner.fit` against a plain PyTorch loop doing the same work: the same
model, the same in-memory images, the same optimizer (torch AdamW; fastai's through OptimWrapper), batch 8,
a training pass and a validation pass computing the loss; fp32, and bf16 autocast + channels-last the way
trash's learner sets them (app.train.callbacks.precision.CPUMixedPrecision and fastai's ChannelsLast callback on CPU).
"""

from functools import partial

import torch
import torch.nn.functional as F

from app.model.build import build_model
from app.recipe import Model
from bench.common import autocast, device, measure, plain, row

ENCODER = "efficientnet_b0"
CLASSES = 11
SIZE, BATCH, TRAIN, VALID = 128, 8, 64, 16


def loss_func(pred, target):
    return F.cross_entropy(plain(pred), plain(target))


def tensors(n: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, SIZE, SIZE, generator=g)
    y = torch.randint(0, CLASSES, (n, SIZE, SIZE), generator=g)
    return list(zip(x, y))


def same_model():
    torch.manual_seed(0)
    return build_model(Model(encoder=ENCODER), CLASSES, SIZE)[0]


def fastai_epoch(model, train, valid, precision: str, channels_last: bool):
    """A callable running `learn.fit(1)` (no progress bar, no logging) on the given items."""
    from fastai.callback.channelslast import ChannelsLast
    from fastai.data.core import DataLoaders
    from fastai.learner import Learner
    from fastai.optimizer import OptimWrapper

    from app.train.callbacks.precision import CPUMixedPrecision

    dls = DataLoaders.from_dsets(train, valid, bs=BATCH, device=device(), num_workers=0)  # as the plain loop
    learn = Learner(dls, model, loss_func=loss_func, opt_func=partial(OptimWrapper, opt=torch.optim.AdamW))
    if precision == "bf16":  # as app/train/learner.py: fastai's own on CUDA, trash's CPU autocast otherwise
        learn.to_bf16() if device().type == "cuda" else learn.add_cb(CPUMixedPrecision())
    if channels_last:
        learn.add_cb(ChannelsLast())

    def epoch():
        with learn.no_bar(), learn.no_logging():
            learn.fit(1, lr=1e-4)

    return epoch


def plain_epoch(model, train, valid, precision: str, channels_last: bool):
    """A callable running the same epoch as a plain PyTorch loop."""
    dev = device()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(dev, memory_format=fmt)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    train_dl = torch.utils.data.DataLoader(train, batch_size=BATCH, shuffle=True, drop_last=True)
    valid_dl = torch.utils.data.DataLoader(valid, batch_size=BATCH)

    def epoch():
        model.train()
        for x, y in train_dl:
            x, y = x.to(dev).contiguous(memory_format=fmt), y.to(dev)
            with autocast(precision):
                loss = loss_func(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
        model.eval()
        with torch.no_grad():
            for x, y in valid_dl:
                with autocast(precision):
                    loss_func(model(x.to(dev).contiguous(memory_format=fmt)), y.to(dev))

    return epoch


def run() -> list[dict]:
    train, valid = tensors(TRAIN, 0), tensors(VALID, 1)
    rows = []
    for precision, channels_last in (("fp32", False), ("bf16", True)):
        sides = {
            "fastai": fastai_epoch(same_model(), train, valid, precision, channels_last),
            "plain": plain_epoch(same_model(), train, valid, precision, channels_last),
        }
        best = measure(sides, repeat=3)  # CPU: one thread, CPU time (see bench.common.measure)
        label = "fp32" if precision == "fp32" else f"{precision} + channels_last"
        rows.append(
            row(
                f"loop overhead {label}: fastai fit / plain PyTorch loop time",
                best["fastai"] / best["plain"],
                "<= 1.05",
                best["fastai"] / best["plain"] <= 1.05,
                fastai_cpu_s=round(best["fastai"], 3),
                plain_cpu_s=round(best["plain"], 3),
                work=f"{ENCODER} Unet, {TRAIN} train + {VALID} valid images, {SIZE} px, batch {BATCH}",
            )
        )
    return rows
