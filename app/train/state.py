"""What a checkpoint holds besides the weights, as tensors and plain values: random states and optimizer state.

`torch.load(weights_only=True)` reads only tensors and plain Python values, so fastai's `L` lists, numpy
scalars and `TensorBase` tensors are turned into those (`plain`) and back (`as_fastai_opt_state`).
"""

import random

import numpy as np
import torch
from fastai.optimizer import Lookahead, OptimWrapper
from fastai.torch_core import get_model
from fastcore.foundation import L


def global_rng() -> dict:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_global_rng(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _unwrapped(dl):
    """The fastai loader itself, also while data-parallel training wraps it (app.train.distributed.ShardedDL)."""
    from fastai.distributed import DistributedDL

    return dl.dl if isinstance(dl, DistributedDL) else dl


def _augmentations(dls) -> list:
    """The albumentations pipelines of the training loader (seeded Compose objects with their own RNGs)."""
    train = _unwrapped(dls.train)
    return [tfm.aug for tfm in train.after_item.fs if hasattr(getattr(tfm, "aug", None), "py_random")]


def loader_rng(dls) -> dict:
    augment = [(aug.random_generator.bit_generator.state, aug.py_random.getstate()) for aug in _augmentations(dls)]
    return {"loaders": [_unwrapped(dl).rng.getstate() for dl in dls.loaders], "augment": augment}


def set_loader_rng(dls, state: dict) -> None:
    for dl, saved in zip(dls.loaders, state["loaders"]):
        _unwrapped(dl).rng.setstate(saved)
    for aug, (numpy_state, python_state) in zip(_augmentations(dls), state["augment"]):
        generator, py_random = np.random.default_rng(), random.Random()
        generator.bit_generator.state = numpy_state
        py_random.setstate(python_state)
        aug.set_random_state(generator, py_random)  # albumentations hands both to every child transform


# -- optimizer state --------------------------------------------------------------------------------


def plain(value):
    """State as tensors and plain Python values, so that `torch.load(weights_only=True)` reads it.

    fastai's state holds its `L` lists, numpy scalars (lrs computed with numpy) and `TensorBase` tensors
    (the smoothed loss), which the weights-only unpickler refuses.
    """
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, L)):
        items = [plain(v) for v in value]
        return tuple(items) if isinstance(value, tuple) else items
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, torch.Tensor) and type(value) not in (torch.Tensor, torch.nn.Parameter):
        return value.as_subclass(torch.Tensor)
    return value


def _to(value, device: torch.device):
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to(v, device) for v in value)
    return value


def as_fastai_opt_state(learn, state: dict) -> dict:
    """Puts back the `L` lists fastai's optimizers index into (`hypers`, Lookahead's slow weights) and moves
    the state to the model's device (checkpoints are read onto the CPU; a torch optimizer in fastai's
    OptimWrapper does both itself)."""
    opt = learn.opt
    if isinstance(opt, OptimWrapper):
        return state
    state = _to(dict(state), next(get_model(learn.model).parameters()).device)
    state["hypers"] = L(state["hypers"])
    if isinstance(opt, Lookahead) and state.get("slow_weights") is not None:
        state["slow_weights"] = L(L(group) for group in state["slow_weights"])
    return state
