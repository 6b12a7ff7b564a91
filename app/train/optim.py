"""Optimizers by name: fastai `opt_func`s (`opt_func(params, lr, **kw)`) for `Learner(opt_func=...)`.

Every entry is a module-level function or a `functools.partial` of module-level callables, because
`Learner.opt_func` is pickled into exported learners (`learn.export`): no lambdas, no closures.

Hyper-parameters use fastai's names everywhere (`lr`, `mom`, `sqr_mom`, `eps`, `wd`), so fastai's
schedulers (`fit_one_cycle` schedules `lr` and `mom`; `Learner.fit` sets `wd`) drive every optimizer,
including the wrapped timm one.

| name             | backed by                                                             |
|------------------|-----------------------------------------------------------------------|
| `adam`           | fastai `Adam(decouple_wd=False)`: Adam with L2 regularisation           |
| `adamw`          | fastai `Adam(decouple_wd=True)`: decoupled weight decay (AdamW)        |
| `sgd`            | fastai `SGD(mom=0.9)` (decoupled weight decay, fastai's default)       |
| `radam`          | fastai `RAdam`                                                        |
| `ranger`         | fastai `ranger` = `Lookahead(RAdam)` (mom 0.95, eps 1e-6, wd 0.01)     |
| `lookahead_adam` | fastai `Lookahead(Adam)` (fastai's Adam defaults: decoupled wd)         |
| `adamp`          | `timm.optim.AdamP` inside fastai's `OptimWrapper`                       |

Defaults are the libraries' own (fastai's for the fastai optimizers, timm's for AdamP); note that
`Learner(wd=...)` overrides every optimizer's `wd` at each `fit`.
"""

from collections.abc import Callable
from functools import partial

from fastai.optimizer import SGD, Adam, Lookahead, OptimWrapper, RAdam, ranger
from timm.optim import AdamP

from app.registry import Registry


def lookahead_adam(params, lr: float, k: int = 6, alpha: float = 0.5, **kwargs) -> Lookahead:
    """fastai `Lookahead` (k fast steps, then slow weights move `alpha` of the way) over fastai `Adam(**kwargs)`."""
    return Lookahead(Adam(params, lr=lr, **kwargs), k=k, alpha=alpha)


def adamp(
    params,
    lr: float = 1e-3,
    mom: float = 0.9,
    sqr_mom: float = 0.999,
    eps: float = 1e-8,
    wd: float = 0.0,
    **kwargs,
) -> OptimWrapper:
    """timm's `AdamP` in fastai's `OptimWrapper`, taking fastai's hyper-parameter names.

    `OptimWrapper` maps AdamP's param-group keys back to fastai's through `fastai.optimizer.pytorch_hp_map`:
    `betas[0]` <-> `mom`, `betas[1]` <-> `sqr_mom`, `weight_decay` <-> `wd`; `lr` and `eps` keep their names.
    So `fit_one_cycle`'s `lr`/`mom` schedules and `Learner.fit(wd=...)` reach the torch optimizer.
    Defaults are timm's. Extra keywords (`delta`, `wd_ratio`, `nesterov`, `caution`) go to AdamP unchanged.
    """
    return OptimWrapper(params, opt=AdamP, lr=lr, betas=(mom, sqr_mom), eps=eps, weight_decay=wd, **kwargs)


OPTIMIZERS: Registry[Callable] = Registry(
    "optimizer",
    {
        "adam": partial(Adam, decouple_wd=False),
        "adamw": partial(Adam, decouple_wd=True),
        "sgd": partial(SGD, mom=0.9),
        "radam": RAdam,
        "ranger": ranger,
        "lookahead_adam": lookahead_adam,
        "adamp": adamp,
    },
    key="train.optimizer",
)


def opt_func(name: str, **kwargs) -> Callable:
    """The fastai `opt_func` registered as `name`, with `kwargs` (fastai names: mom, sqr_mom, eps, wd...) bound.

    Returns a `functools.partial` (picklable; fastai's `Learner.create_opt` reads an `lr` bound this way).

    Raises:
        TrashError: `name` is not in `OPTIMIZERS`; the message suggests close names and lists them all.
    """
    return partial(OPTIMIZERS[name], **kwargs)
