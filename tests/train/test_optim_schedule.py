"""Optimizer registry (app/train/optim.py) and lr schedules (app/train/schedule.py) on a tiny fastai Learner."""

import pickle

import numpy as np
import pytest
import timm.optim
import torch
from fastai.data.core import DataLoaders
from fastai.learner import Learner
from fastai.optimizer import Lookahead, Optimizer, OptimWrapper, adam_step, l2_reg, radam_step, weight_decay
from torch import nn

from app.errors import TrashError
from app.train import schedule as sch
from app.train.optim import OPTIMIZERS, opt_func

N_ITER = 6  # training batches per epoch: 48 samples, batch size 8 (fastai drops the last partial batch anyway)
LR = 1e-2


class Constant(nn.Module):
    """Output independent of its parameter: the validation loss never improves, whatever the optimizer does."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return x[:, :1] * 0 + self.w * 0 + 1.0


def make_learner(model=None, optimizer="adamw", **opt_kwargs) -> Learner:
    torch.manual_seed(0)
    x = torch.randn(64, 4)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.1 * torch.randn(64, 1)
    items = list(zip(x, y))
    dls = DataLoaders.from_dsets(items[:48], items[48:], bs=8, device="cpu", num_workers=0)
    return Learner(dls, model or nn.Linear(4, 1), loss_func=nn.MSELoss(), opt_func=opt_func(optimizer, **opt_kwargs))


def fit(learn: Learner, schedule: str, epochs: int, lr, start_epoch: int = 0, cbs=None, **settings) -> None:
    """`sch.fit` with the schedule's settings (ScheduleOptions fields) as keywords."""
    sch.fit(learn, sch.ScheduleOptions(schedule, **settings), epochs, lr, cbs=cbs, start_epoch=start_epoch)


def run(learn: Learner, schedule: str, epochs: int, lr: float = LR, **kwargs) -> np.ndarray:
    """The lr of every training batch (fastai's Recorder reads the last parameter group's lr after each batch)."""
    with learn.no_bar(), learn.no_logging():
        fit(learn, schedule, epochs, lr, **kwargs)
    return np.array([float(v) for v in learn.recorder.lrs])


# ---------------------------------------------------------------- schedules


def test_one_cycle_rises_to_lr_then_falls_to_zero():
    lrs = run(make_learner(), "one_cycle", 4)
    assert len(lrs) == 4 * N_ITER
    top = int(np.argmax(lrs))
    assert top == round(0.25 * len(lrs))  # fastai's pct_start
    assert lrs[top] == pytest.approx(LR)
    assert lrs[0] == pytest.approx(LR / 25)
    assert np.all(np.diff(lrs[: top + 1]) > 0) and np.all(np.diff(lrs[top:]) < 0)
    assert lrs[-1] < LR * 1e-2  # last batch at 23/24 of training: close to lr/1e5 at the very end


def test_flat_cos_is_flat_then_cosine_down():
    lrs = run(make_learner(), "flat_cos", 4)
    flat = round(0.75 * len(lrs))
    assert np.allclose(lrs[:flat], LR)
    assert np.all(np.diff(lrs[flat:]) < 0)
    assert lrs[-1] < 0.1 * LR


def test_warmup_cosine_warms_up_linearly_then_decreases():
    lrs = run(make_learner(), "warmup_cosine", 5, warmup_pct=0.2)
    warm = round(0.2 * len(lrs))  # 6 warm-up batches; batch 6 is the peak
    assert lrs[0] == pytest.approx(LR / sch.WARMUP_DIV)
    assert lrs[warm] == pytest.approx(LR) and lrs.max() == pytest.approx(LR)
    steps = np.diff(lrs[: warm + 1])
    assert np.all(steps > 0) and np.allclose(steps, steps[0])  # linear
    assert np.all(np.diff(lrs[warm:]) < 0)
    assert lrs[-1] < 0.01 * LR


def test_step_multiplies_by_gamma_at_the_given_epochs():
    lrs = run(make_learner(), "step", 5, step_epochs=(2, 4), step_gamma=0.1).reshape(5, N_ITER)
    expected = LR * np.array([1, 1, 0.1, 0.1, 0.01])
    assert np.allclose(lrs, expected[:, None], rtol=1e-9)


@pytest.mark.parametrize("optimizer", ["adamw", "adamp"])
def test_plateau_multiplies_lr_by_factor_after_patience_epochs_without_improvement(optimizer):
    # Valid loss is constant: epoch 0 is the best, epochs 1-2 do not improve -> drop; epochs 3-4 -> drop again.
    learn = make_learner(Constant(), optimizer)
    lrs = run(learn, "plateau", 6, plateau_patience=2, plateau_factor=0.2).reshape(6, N_ITER)
    expected = LR * np.array([1, 1, 1, 0.2, 0.2, 0.04])
    assert np.allclose(lrs, expected[:, None])
    if optimizer == "adamp":  # the lr reached the torch optimizer, not just fastai's view of it
        assert learn.opt.opt.param_groups[0]["lr"] == pytest.approx(LR * 0.2**2)


def test_plateau_keeps_lr_while_the_model_improves():
    lrs = run(make_learner(), "plateau", 4, lr=0.05, plateau_patience=1)
    assert np.allclose(lrs, 0.05)


@pytest.mark.parametrize(
    "schedule, kwargs",
    [
        ("one_cycle", {}),
        ("flat_cos", {}),
        ("warmup_cosine", {"warmup_pct": 0.3}),
        ("step", {"step_epochs": (1, 3), "step_gamma": 0.5}),
    ],
)
def test_resume_continues_the_schedule(schedule, kwargs):
    full = run(make_learner(), schedule, 5, **kwargs)
    resumed = run(make_learner(), schedule, 5, start_epoch=2, **kwargs)
    assert len(resumed) == 3 * N_ITER  # only the remaining epochs are trained
    assert np.allclose(resumed, full[2 * N_ITER :], rtol=1e-9)
    assert not np.allclose(resumed, full[: 3 * N_ITER])  # not simply restarted


def test_resume_plateau_restarts_tracking_from_lr():
    # fastai's ReduceLROnPlateau fails on the epochs skipped by start_epoch; ours ignores them and restarts
    # tracking at epoch 2 (best) -> epochs 3-4 without improvement -> lower lr for epoch 5.
    lrs = run(make_learner(Constant()), "plateau", 6, start_epoch=2, plateau_patience=2).reshape(4, N_ITER)
    assert np.allclose(lrs, LR * np.array([1, 1, 1, 0.2])[:, None])


def test_unknown_schedule_and_bad_settings_raise():
    learn = make_learner()
    with pytest.raises(TrashError, match="one_cycle") as info:
        fit(learn, "one_cycel", 2, LR)
    assert all(name in str(info.value) for name in sch.SCHEDULES)
    assert "did you mean 'one_cycle'" in str(info.value)
    with pytest.raises(TrashError, match="step_epochs"):
        fit(learn, "step", 3, LR, step_epochs=(3,))
    with pytest.raises(TrashError, match="start_epoch"):
        fit(learn, "one_cycle", 3, LR, start_epoch=3)
    with pytest.raises(TrashError, match="plateau_factor"):
        fit(learn, "plateau", 3, LR, plateau_factor=5)


def test_schedule_functions_pickle():
    from functools import partial

    f = partial(sch.step_lr, lr=np.array([LR]), epochs=4, step_epochs=(2,), gamma=0.1)
    assert pickle.loads(pickle.dumps(f))(0.75) == pytest.approx(f(0.75))
    g = partial(sch.warmup_cosine_lr, lr=LR, warmup_pct=0.1)
    assert pickle.loads(pickle.dumps(g))(0.05) == pytest.approx(g(0.05))


# ---------------------------------------------------------------- optimizers


def test_registry_names():
    assert set(OPTIMIZERS) == {"adam", "adamw", "sgd", "radam", "ranger", "lookahead_adam", "adamp"}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_optimizer_builds_steps_and_pickles(name):
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    before = [p.detach().clone() for p in model.parameters()]
    opt = opt_func(name)(list(model.parameters()), lr=1e-2)
    model(torch.randn(8, 4)).pow(2).mean().backward()
    opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    for f in (opt_func(name), opt_func(name, wd=0.02), OPTIMIZERS[name]):
        again = pickle.loads(pickle.dumps(f))
        assert type(again(list(nn.Linear(2, 1).parameters()), lr=1e-3)) is type(opt)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_optimizer_follows_fastai_one_cycle_in_a_learner(name):
    learn = make_learner(optimizer=name)
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(1, 1e-3)
    pickle.dumps(learn.opt_func)  # what learn.export pickles
    hypers = learn.opt.hypers[-1]
    assert hypers["lr"] == pytest.approx(learn.recorder.lrs[-1])
    assert hypers["mom"] == pytest.approx(learn.recorder.hps["mom"][-1])
    assert learn.recorder.lrs[0] != pytest.approx(learn.recorder.lrs[-1])


def test_adam_is_l2_and_adamw_decoupled():
    def step_with_zero_grad(name):
        p = nn.Parameter(torch.ones(3))
        opt = opt_func(name, wd=0.1)([p], lr=0.1)
        p.grad = torch.zeros(3)
        opt.step()
        return p.detach(), opt

    decoupled, opt_w = step_with_zero_grad("adamw")
    l2, opt_l2 = step_with_zero_grad("adam")
    assert weight_decay in opt_w.cbs and l2_reg in opt_l2.cbs
    # AdamW shrinks weights directly: p * (1 - lr * wd). Adam adds wd * p to the gradient, which Adam's
    # normalisation turns into a step of about lr.
    assert torch.allclose(decoupled, torch.full((3,), 0.99))
    assert torch.allclose(l2, torch.full((3,), 0.9), atol=1e-3)


def test_optimizers_are_the_fastai_ones():
    params = list(nn.Linear(2, 1).parameters())
    sgd = opt_func("sgd")(params, lr=0.1)
    assert isinstance(sgd, Optimizer) and sgd.hypers[0]["mom"] == 0.9
    assert opt_func("sgd", mom=0.5)(params, lr=0.1).hypers[0]["mom"] == 0.5
    assert radam_step in opt_func("radam")(params, lr=0.1).cbs
    ranger = opt_func("ranger")(params, lr=0.1)
    assert isinstance(ranger, Lookahead) and radam_step in ranger.opt.cbs
    lookahead = opt_func("lookahead_adam")(params, lr=0.1)
    assert isinstance(lookahead, Lookahead) and adam_step in lookahead.opt.cbs


def test_adamp_is_timm_adamp_with_fastai_hyper_names():
    params = list(nn.Linear(2, 1).parameters())
    opt = opt_func("adamp", wd=0.02)(params, lr=0.1)
    assert isinstance(opt, OptimWrapper) and isinstance(opt.opt, timm.optim.AdamP)
    assert opt.opt.param_groups[0]["weight_decay"] == 0.02
    assert {"lr", "mom", "sqr_mom", "wd", "eps"} <= set(opt.hypers[0])
    opt.set_hypers(lr=0.5, mom=0.8, sqr_mom=0.95, wd=0.03)
    group = opt.opt.param_groups[0]
    assert (group["lr"], group["betas"], group["weight_decay"]) == (0.5, (0.8, 0.95), 0.03)


def test_unknown_optimizer_raises_with_suggestions():
    with pytest.raises(TrashError) as info:
        opt_func("adamm")
    message = str(info.value)
    assert "did you mean" in message and "'adam'" in message
    assert all(name in message for name in OPTIMIZERS)
    assert info.value.exit_code == 2
