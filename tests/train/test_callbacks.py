"""Training levers in app/train/callbacks/, each checked by its effect on a tiny Learner trained on random data."""

import csv
import json
import math
import pickle

import fastai.callback.schedule  # noqa: F401  (adds Learner.fit_one_cycle)
import numpy as np
import pytest
import torch
from fastai.callback.core import Callback, CancelStepException
from fastai.callback.training import GradientAccumulation
from fastai.data.core import DataLoaders
from fastai.learner import Learner, Metric, load_learner
from fastai.torch_core import set_seed
from torch import nn
from torch.utils.data import TensorDataset

from app.model.loss import SegmentationLoss
from app.model.metrics import MeanIoU, iou_per_class
from app.train.callbacks.averaging import SWA, ModelEMA, average_checkpoints
from app.train.callbacks.history import HistoryCSV
from app.train.callbacks.levers import AdaptiveClassWeights, SegCutMix, target_class_weights
from app.train.callbacks.precision import CPUMixedPrecision
from app.train.callbacks.tracking import TopKCheckpoints

N_TRAIN, BS = 32, 8


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models train ~10x faster on one thread than on two contended ones; restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Tensors(TensorDataset):
    """torch's TensorDataset with the `new_empty` that fastai's `Learner.export` asks datasets for."""

    def new_empty(self):
        return Tensors(*(t[:0] for t in self.tensors))


def tiny_learner(tmp_path, metrics=None, seed=0, valid_classes=3):
    """A BatchNorm conv net on 32x32 random images; masks mostly follow channel 0, with noise.

    The first layer is a BatchNorm on the raw inputs, so its running mean is the data's channel mean.
    """
    set_seed(seed)
    g = torch.Generator().manual_seed(seed)

    def data(n, n_classes):
        x = torch.rand(n, 3, 32, 32, generator=g) + torch.tensor([0.0, 1.0, 2.0]).view(1, 3, 1, 1)
        y = (x[:, 0] * n_classes).long().clamp(max=n_classes - 1)
        noise = torch.rand(n, 32, 32, generator=g) < 0.2
        return x, torch.where(noise, torch.randint(0, n_classes, y.shape, generator=g), y)

    dls = DataLoaders.from_dsets(
        Tensors(*data(N_TRAIN, 3)), Tensors(*data(16, valid_classes)), bs=BS, device="cpu", num_workers=0
    )
    model = nn.Sequential(
        nn.BatchNorm2d(3), nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 3, 1)
    )
    return Learner(dls, model, loss_func=SegmentationLoss(), metrics=metrics or [MeanIoU(3)], path=tmp_path)


def fit(learn, epochs, lr=1e-2, cbs=(), one_cycle=False):
    with learn.no_bar(), learn.no_logging():
        (learn.fit_one_cycle if one_cycle else learn.fit)(epochs, lr, cbs=list(cbs))


def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class Snapshots(Callback):
    """Test probe: the model's state_dict at the given events, and the epoch it was taken in."""

    order = 100

    def __init__(self, *events):
        self.taken = {e: [] for e in events}

    def _take(self, event):
        if event in self.taken:
            self.taken[event].append((self.epoch, state(self.learn.model)))

    def before_train(self):
        self._take("before_train")

    def after_step(self):
        self._take("after_step")

    def after_train(self):
        self._take("after_train")

    def after_validate(self):
        self._take("after_validate")

    def after_epoch(self):
        self._take("after_epoch")


def assert_states_close(actual, expected, atol=1e-6):
    assert actual.keys() == expected.keys()
    for k in expected:
        assert torch.allclose(actual[k].double(), expected[k].double(), atol=atol), k


# -- ModelEMA ------------------------------------------------------------------------------------------


def timm_decay(step, decay, warmup):
    """timm ModelEmaV3.get_decay, written out: step 1 copies; with warmup 1 - (1 + s)^(-2/3), s = step - 1."""
    s = step - 1
    if s <= 0:
        return 0.0
    return min(1 - (1 + s) ** (-2 / 3), decay) if warmup else decay


@pytest.mark.parametrize("decay,warmup", [(0.9, False), (0.999, True)])
def test_ema_weights_replace_the_model_and_follow_timms_formula(tmp_path, decay, warmup):
    learn = tiny_learner(tmp_path)
    steps = Snapshots("after_step")
    fit(learn, 2, cbs=[ModelEMA(decay=decay, warmup=warmup), steps])
    raw = [s for _, s in steps.taken["after_step"]]
    assert len(raw) == 2 * N_TRAIN // BS
    expected = dict(raw[0])
    for t, snap in enumerate(raw[1:], start=2):
        d = timm_decay(t, decay, warmup)
        expected = {k: d * v + (1 - d) * snap[k] if v.is_floating_point() else snap[k] for k, v in expected.items()}
    final = state(learn.model)
    assert_states_close(final, expected, atol=1e-5)  # weights and BatchNorm running stats alike
    assert not torch.allclose(final["1.weight"], raw[-1]["1.weight"], atol=1e-4)


def test_ema_validates_with_ema_weights_and_trains_on_the_raw_ones(tmp_path):
    learn = tiny_learner(tmp_path)
    ema = ModelEMA(decay=0.9, warmup=False, validate_with_ema=True, apply_after_fit=False)
    probe = Snapshots("after_train", "after_validate", "before_train", "after_epoch")
    learn.add_cbs([ema, probe])
    fit(learn, 2)
    (_, trained0), (_, trained1) = probe.taken["after_train"]
    (_, validated0), (_, validated1) = probe.taken["after_validate"]
    assert not torch.allclose(validated0["1.weight"], trained0["1.weight"], atol=1e-4)
    assert_states_close(validated1, state(ema.ema.module))  # the last validation saw the EMA
    assert_states_close(probe.taken["before_train"][1][1], trained0)  # epoch 1 trains on from the raw weights
    assert_states_close(state(learn.model), trained1)  # apply_after_fit=False: raw weights stay
    # exports keep the settings, not the EMA copy of the model
    clone = pickle.loads(pickle.dumps(ema))
    assert clone.ema is None and clone.decay == 0.9 and clone.validate_with_ema


class SkipEveryOtherStep(Callback):
    """Test probe: cancels every other optimizer step (as an fp16 overflow does); fastai still fires after_step."""

    order = 50

    def __init__(self):
        self.calls = 0

    def before_step(self):
        self.calls += 1
        if self.calls % 2 == 0:
            raise CancelStepException()


def test_ema_counts_optimizer_steps_not_micro_batches_or_cancelled_steps(tmp_path):
    learn = tiny_learner(tmp_path)
    ema, steps = ModelEMA(decay=0.9, warmup=False), Snapshots("after_step")
    fit(learn, 2, cbs=[GradientAccumulation(n_acc=2 * BS), CPUMixedPrecision(), SkipEveryOtherStep(), ema, steps])
    assert len(steps.taken["after_step"]) == 2 * N_TRAIN // (2 * BS)  # accumulation: one step per 2 batches
    assert ema.ema_steps == len(steps.taken["after_step"]) // 2  # half of them cancelled


# -- SWA -----------------------------------------------------------------------------------------------


def test_swa_averages_epoch_weights_sets_lr_and_recomputes_batchnorm(tmp_path):
    learn = tiny_learner(tmp_path)
    epochs = Snapshots("after_epoch")
    fit(learn, 3, cbs=[SWA(start_epoch=1, lr=1e-3), epochs], one_cycle=True)
    snaps = [s for e, s in epochs.taken["after_epoch"] if e >= 1]
    final = dict(learn.model.named_parameters())
    for name, p in final.items():
        assert torch.allclose(p, (snaps[0][name] + snaps[1][name]) / 2, atol=1e-6), name
    per_epoch = N_TRAIN // BS
    lrs = np.array(learn.recorder.lrs)
    assert np.allclose(lrs[per_epoch:], 1e-3) and not np.isclose(lrs[:per_epoch], 1e-3).any()
    # update_bn: cumulative average over all training batches = the exact mean of the training inputs
    bn = learn.model[0]
    x_train = learn.dls.train.dataset.tensors[0]
    assert torch.allclose(bn.running_mean, x_train.mean((0, 2, 3)), atol=1e-5)
    assert int(bn.num_batches_tracked) == per_epoch
    assert not torch.allclose(snaps[-1]["0.running_mean"], bn.running_mean, atol=1e-4)


def test_swa_before_start_epoch_changes_nothing(tmp_path):
    learn = tiny_learner(tmp_path)
    epochs = Snapshots("after_epoch")
    fit(learn, 2, cbs=[SWA(start_epoch=5), epochs])
    assert_states_close(state(learn.model), epochs.taken["after_epoch"][-1][1], atol=0)


# -- TopKCheckpoints -----------------------------------------------------------------------------------


class Scripted(Metric):
    """A metric whose value at epoch e is scores[e]."""

    def __init__(self, scores):
        self.scores, self.at = list(scores), 0

    def reset(self):
        pass

    def accumulate(self, learn):
        self.at = learn.epoch

    @property
    def value(self):
        return self.scores[self.at]

    @property
    def name(self):
        return "score"


def test_topk_keeps_the_k_best_epochs_and_averages_them(tmp_path):
    scores = [0.3, math.nan, 0.9, 0.5, 0.7]
    learn = tiny_learner(tmp_path, metrics=[MeanIoU(3), Scripted(scores)])
    epochs = Snapshots("after_epoch")
    fit(learn, len(scores), cbs=[TopKCheckpoints(k=2, monitor="score"), epochs])
    folder = tmp_path / "models"
    index = json.loads((folder / "topk.json").read_text())
    recorded = [v[learn.recorder.metric_names[1:].index("score")] for v in learn.recorder.values]
    assert [e["score"] for e in index] == sorted([s for s in recorded if not math.isnan(s)], reverse=True)[:2]
    assert [(e["epoch"], e["file"]) for e in index] == [(2, "epoch_2.pth"), (4, "epoch_4.pth")]
    assert sorted(p.name for p in folder.iterdir()) == ["epoch_2.pth", "epoch_4.pth", "topk.json"]  # no temp files
    snaps = dict(epochs.taken["after_epoch"])
    for e in (2, 4):
        assert_states_close(torch.load(folder / f"epoch_{e}.pth", weights_only=True), snaps[e], atol=0)
    averaged = average_checkpoints([folder / "epoch_2.pth", folder / "epoch_4.pth"])
    for k, v in averaged.items():
        expected = (snaps[2][k] + snaps[4][k]) / 2 if v.is_floating_point() else snaps[2][k]
        assert torch.allclose(v.double(), expected.double(), atol=1e-6) and v.dtype == snaps[2][k].dtype, k

    # A later stage's instance carries the index on: 0.8 pushes out epoch 4 (0.7).
    learn.metrics = [MeanIoU(3), Scripted([0.8, 0.1])]
    fit(learn, 2, cbs=[TopKCheckpoints(k=2, monitor="score", epoch_offset=5)])
    index = json.loads((folder / "topk.json").read_text())
    assert [(e["epoch"], e["score"]) for e in index] == [(2, 0.9), (5, 0.8)]
    assert sorted(p.name for p in folder.glob("*.pth")) == ["epoch_2.pth", "epoch_5.pth"]


def test_topk_and_class_weights_ignore_validate_outside_fit(tmp_path):
    scripted = Scripted([0.2, 0.5])
    learn = tiny_learner(tmp_path, metrics=[scripted, MeanIoU(3)])
    learn.add_cbs([TopKCheckpoints(k=3, monitor="score"), AdaptiveClassWeights()])
    fit(learn, 2)
    index, weights = (tmp_path / "models" / "topk.json").read_text(), learn.loss_func.class_weights.clone()
    scripted.scores[1] = 0.9  # a better score now...
    learn.validate()  # ...from a validation outside fit (fires after_epoch): no checkpoint, no new weights
    assert (tmp_path / "models" / "topk.json").read_text() == index
    assert [(e["epoch"], e["score"]) for e in json.loads(index)] == [(1, 0.5), (0, 0.2)]
    assert torch.equal(learn.loss_func.class_weights, weights)
    assert len((tmp_path / "class_weights.csv").read_text().splitlines()) == 3


# -- SegCutMix -----------------------------------------------------------------------------------------


class BatchProbe(Callback):
    """Test probe: xb[0] / yb[0] at before_batch, with the training flag."""

    def __init__(self, order):
        self.order, self.seen = order, []

    def before_batch(self):
        self.seen.append((self.training, self.learn.xb[0].clone(), self.learn.yb[0].clone()))


def test_segcutmix_pastes_aligned_boxes_in_training_only(tmp_path):
    learn = tiny_learner(tmp_path)
    g = torch.Generator().manual_seed(1)
    learn.dls.train.dataset.tensors[1].copy_(torch.randint(0, 3, (N_TRAIN, 32, 32), generator=g))
    before, after = BatchProbe(order=-5), BatchProbe(order=5)
    fit(learn, 2, cbs=[before, SegCutMix(alpha=1.0, p=1.0), after])
    mixed = 0
    for (training, x0, y0), (_, x1, y1) in zip(before.seen, after.seen):
        if not training:
            assert torch.equal(x0, x1) and torch.equal(y0, y1)
            continue
        changed = (x0 != x1).any(1).any(0)  # pixels changed in any sample
        if not changed.any():
            continue
        mixed += 1
        rows, cols = changed.any(1).nonzero(), changed.any(0).nonzero()
        box = (slice(int(rows.min()), int(rows.max()) + 1), slice(int(cols.min()), int(cols.max()) + 1))
        assert changed[box].all()  # one rectangle
        outside = torch.ones_like(changed)
        outside[box] = False
        assert torch.equal(x0[..., outside], x1[..., outside]) and torch.equal(y0[:, outside], y1[:, outside])
        for i in range(len(x0)):
            donors = [j for j in range(len(x0)) if torch.equal(x1[i][:, box[0], box[1]], x0[j][:, box[0], box[1]])]
            assert len(donors) == 1
            assert torch.equal(y1[i][box], y0[donors[0]][box])  # the mask box comes from the same sample
    assert mixed >= 4  # 8 training batches, p=1: all but degenerate boxes


def test_segcutmix_p0_changes_nothing(tmp_path):
    learn = tiny_learner(tmp_path)
    before, after = BatchProbe(order=-5), BatchProbe(order=5)
    fit(learn, 1, cbs=[before, SegCutMix(p=0.0), after])
    assert all(torch.equal(a[1], b[1]) and torch.equal(a[2], b[2]) for a, b in zip(before.seen, after.seen))


# -- AdaptiveClassWeights ------------------------------------------------------------------------------


def test_target_class_weights_favours_hard_classes_and_keeps_absent_ones():
    cm = np.array([[90, 10, 0, 0], [10, 40, 0, 0], [0, 0, 0, 0], [0, 50, 0, 50]])  # class 2 absent
    iou = iou_per_class(cm)
    hard = 1 - iou[[0, 1, 3]]
    weights = target_class_weights(cm, previous=[1.0, 1.0, 3.0, 1.0], min_weight=0.2, max_weight=5.0)
    assert np.allclose(weights[[0, 1, 3]], hard / hard.mean()) and weights[2] == 3.0
    assert weights[1] > weights[3] > weights[0]  # IoU 0.36 < 0.5 < 0.82
    squared = target_class_weights(cm, [1.0] * 4, power=2.0, min_weight=0.5, max_weight=1.2)
    assert squared.max() == 1.2 and squared.min() == 0.5  # clipped


class CMProbe(Callback):
    order = 100

    def __init__(self):
        self.cms = []

    def after_epoch(self):
        self.cms.append(self.learn.metrics[0].cm.numpy().copy())


def test_adaptive_class_weights_update_the_loss_and_log_each_epoch(tmp_path):
    learn = tiny_learner(tmp_path)
    learn.trash_classes = ["bg", "paper", "glass"]
    probe, adaptive = CMProbe(), AdaptiveClassWeights(smoothing=0.5, min_weight=0.2, max_weight=5.0)
    fit(learn, 2, cbs=[adaptive, probe])
    rows = list(csv.DictReader((tmp_path / "class_weights.csv").open()))
    assert [r["epoch"] for r in rows] == ["0", "1"] and list(rows[0]) == ["epoch", "bg", "paper", "glass"]
    first = np.array([float(rows[0][c]) for c in ("bg", "paper", "glass")])
    last = np.array([float(rows[1][c]) for c in ("bg", "paper", "glass")])
    assert not np.allclose(first, 1.0)
    assert np.isclose(first[np.argmin(iou_per_class(probe.cms[0]))], first.max())  # hardest class weighs most
    assert np.allclose(first, 0.5 + 0.5 * target_class_weights(probe.cms[0], np.ones(3)), atol=1e-5)
    assert np.allclose(learn.loss_func.class_weights.numpy(), last, atol=1e-5)
    assert ((last >= 0.2) & (last <= 5.0)).all()


# -- HistoryCSV ----------------------------------------------------------------------------------------


def test_history_has_per_class_iou_columns_across_stages(tmp_path):
    learn = tiny_learner(tmp_path, valid_classes=2)  # class 2 never in the validation masks...
    with torch.no_grad():
        learn.model[-1].bias[2] = -1e4  # ...nor predicted: its IoU is undefined
    learn.trash_classes = ["bg", "paper", "glass"]
    probe, history = CMProbe(), tmp_path / "history.csv"
    fit(learn, 2, cbs=[HistoryCSV(history, 0, 32, 0), probe])
    fit(learn, 1, cbs=[HistoryCSV(history, 1, 32, 2), probe])
    lines = history.read_text().splitlines()
    assert sum(line.startswith("epoch,") for line in lines) == 1
    rows = list(csv.DictReader(lines))
    assert list(rows[0])[:8] == ["epoch", "stage", "size", "train_loss", "valid_loss", "miou", "time", "lr"]
    assert list(rows[0])[8:] == ["iou_bg", "iou_paper", "iou_glass"]
    assert [r["epoch"] for r in rows] == ["0", "1", "2"]
    for row, cm in zip(rows, probe.cms):
        iou = iou_per_class(cm)
        assert float(row["iou_bg"]) == pytest.approx(iou[0], abs=1e-5) and row["iou_glass"] == ""


# -- export --------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:load_learner")
def test_learner_with_all_callbacks_exports_and_loads(tmp_path):
    learn = tiny_learner(tmp_path)
    learn.add_cbs(
        [
            ModelEMA(validate_with_ema=True),
            SWA(start_epoch=1),
            TopKCheckpoints(k=1),
            SegCutMix(),
            AdaptiveClassWeights(),
        ]
    )
    fit(learn, 2)
    learn.export("export.pkl")
    loaded = load_learner(tmp_path / "export.pkl")
    ema = next(cb for cb in loaded.cbs if isinstance(cb, ModelEMA))
    assert ema.ema is None and ema.validate_with_ema
    assert {type(cb).__name__ for cb in loaded.cbs} >= {"SWA", "TopKCheckpoints", "SegCutMix", "AdaptiveClassWeights"}
