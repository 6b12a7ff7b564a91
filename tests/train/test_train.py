"""Each training lever changes what is trained, observed while training a tiny model on the demo data."""

import json

import pytest
import torch
from fastai.callback.core import Callback
from typer.testing import CliRunner

from app.cli import app
from app.train.plan import DEBUG_FRACTION
from app.train.run import fit, prepare
from tests.conftest import ENCODER, REPO, write_recipe

runner = CliRunner()


class Watch(Callback):
    """Records what the loop really did: batch shapes, optimizer steps, prediction dtypes, memory format."""

    order = 5  # before CPUMixedPrecision (10) turns predictions back into float32

    def before_fit(self):
        self.shapes, self.steps, self.dtypes, self.nhwc = [], 0, set(), set()

    def before_batch(self):
        if self.training:
            self.shapes.append(tuple(self.xb[0].shape[-2:]))

    def after_pred(self):
        if self.training:
            self.dtypes.add(self.pred.dtype)

    def after_step(self):
        self.steps += 1
        conv = next(m for m in self.model.modules() if isinstance(m, torch.nn.Conv2d))
        self.nhwc.add(conv.weight.is_contiguous(memory_format=torch.channels_last))


def learner_for(demo, tmp_path, overrides=(), **sections):
    tmp_path.mkdir(parents=True, exist_ok=True)
    recipe = write_recipe(tmp_path / "r.py", demo, **sections)
    return prepare(recipe, overrides, out=tmp_path / "runs")


def train_one_epoch(learn, size=64):

    watch = Watch()
    learn.fit(1, 1e-3, cbs=[watch])
    return watch


def test_gradient_accumulation_steps_once_per_effective_batch(demo, tmp_path):
    _, items, learn = learner_for(demo, tmp_path, data={"batch_size": 4}, train={"effective_batch": 12})
    watch = train_one_epoch(learn)
    batches = len(items.train) // 4  # fastai drops the last partial training batch
    assert batches == 6 and watch.steps == batches * 4 // 12


def test_bf16_autocast_on_cpu(demo, tmp_path):
    _, _, learn = learner_for(demo, tmp_path, train={"precision": "bf16", "channels_last": True})
    watch = train_one_epoch(learn)
    assert watch.dtypes == {torch.bfloat16} and watch.nhwc == {True}
    _, _, plain = learner_for(demo, tmp_path / "b")
    assert train_one_epoch(plain).dtypes == {torch.float32}


def test_progressive_resizing_changes_batch_shapes_per_stage(demo, tmp_path):
    recipe = write_recipe(tmp_path / "r.py", demo, data={"stages": ((32, 1), (64, 1))})
    run = fit(recipe, out=tmp_path / "runs")
    rows = (run / "history.csv").read_text().splitlines()[1:]
    assert [r.split(",")[2] for r in rows] == ["32", "64"]  # the size column of each epoch


def test_debug_trains_one_epoch_on_a_tenth_of_the_images(demo, tmp_path):
    recipe = write_recipe(tmp_path / "r.py", demo, train={"epochs": 5})
    run = fit(recipe, out=tmp_path / "runs", debug=True)
    resolved = json.loads((run / "resolved.json").read_text())
    n = {role: len(json.loads(demo[key].read_text())["images"]) for role, key in (("train", "train"), ("valid", "val"))}
    share = {role: max(2, round(count * DEBUG_FRACTION)) for role, count in n.items()}  # >= 2: BatchNorm needs 2
    assert resolved["images"] == share and resolved["debug"] is True
    assert len((run / "history.csv").read_text().splitlines()) == 2  # header + one epoch
    assert run.name.endswith("-debug")


def test_class_weights_change_the_loss(demo, tmp_path):
    _, _, plain = learner_for(demo, tmp_path)
    _, _, weighted = learner_for(demo, tmp_path / "w", loss={"class_weight_scheme": "inverse"})
    x, y = plain.dls.one_batch()
    logits = torch.randn(x.shape[0], 11, *y.shape[-2:])
    assert weighted.loss_func.class_weights is not None
    assert not torch.isclose(plain.loss_func(logits, y), weighted.loss_func(logits, y))


def test_fit_writes_plots_and_out_of_fold_probabilities(trained_run):
    import numpy as np

    for name in ("curves.png", "confusion.png"):
        assert (trained_run / name).stat().st_size > 5000, name
    oof = np.load(trained_run / "oof.npz")
    assert oof["probs"].dtype == np.float16 and len(oof["image"]) == oof["probs"].shape[0] == 8
    assert np.allclose(oof["probs"].astype(np.float32).sum(1), 1, atol=0.01)


def test_fold_all_trains_every_fold_into_one_group(fold_group):
    _, out, group = fold_group  # `fit --fold all` on a 2-fold `data split` grouped by video
    assert [p.name for p in out.glob("f/*") if not p.is_symlink()] == [group.name]
    summary = json.loads((group / "summary.json").read_text())
    assert set(summary["folds"]) == {"fold0", "fold1"} and 0 <= summary["oof"]["miou"] <= 1
    table = runner.invoke(app, ["runs", str(out), "--sort", "fold"]).output
    assert table.count(str(group)) == 2


def test_recipes_command_lists_and_shows(tmp_path):
    listing = runner.invoke(app, ["recipes", "--folder", str(REPO / "recipes")]).output
    assert "demo.py" in listing and "unet_effb4.py" in listing
    shown = runner.invoke(app, ["recipes", "show", str(REPO / "recipes" / "unet_effb4.py"), "--set", "train.lr=0.01"])
    assert json.loads(shown.output)["train"]["lr"] == 0.01


def test_recipe_switches_on_averaging_topk_cutmix_and_adaptive_weights(demo, tmp_path):
    recipe = write_recipe(
        tmp_path / "r.py",
        demo,
        train={
            "averaging": "swa",
            "swa_start": 0.5,
            "top_k": 2,
            "cutmix": 0.5,
            "optimizer": "ranger",
            "schedule": "flat_cos",
        },
        loss={"adaptive_class_weights": True, "dice": 0.5},
    )
    run = fit(recipe, out=tmp_path / "runs")
    topk = json.loads((run / "models" / "topk.json").read_text())
    assert len(topk) == 2 and all((run / "models" / t["file"]).is_file() for t in topk)
    assert len((run / "class_weights.csv").read_text().splitlines()) == 3  # header + 2 epochs
    from app.infer.members import load_learners

    learn = load_learners([run])[0]  # the export carries none of the training-only callbacks
    names = {type(cb).__name__ for cb in learn.cbs}
    assert not names & {"SWA", "ModelEMA", "TopKCheckpoints", "SegCutMix", "AdaptiveClassWeights"}


def test_freeze_epochs_train_the_decoder_only_then_everything(demo, tmp_path):
    import timm

    from app.train.phases import run_phase
    from app.train.plan import training_phases

    weights = tmp_path / f"{ENCODER}.pth"
    torch.save(timm.create_model(ENCODER).state_dict(), weights)
    path = write_recipe(tmp_path / "r.py", demo, model={"weights": str(weights), "freeze_epochs": 1})
    recipe, items, learn = prepare(path, out=tmp_path / "runs")
    convs = [p for p in learn.model[0].parameters() if p.ndim == 4]
    decoder = [p for p in learn.model[1:].parameters() if p.ndim == 4]
    before = [p.detach().clone() for p in convs + decoder]
    phase = training_phases(recipe)[0]
    assert phase.frozen and phase.epochs == 1
    run_phase(learn, recipe, items, phase)
    moved = [not torch.equal(a, b) for a, b in zip(before, convs + decoder)]
    assert not any(moved[: len(convs)])  # encoder convolutions frozen (fastai keeps BatchNorm trainable)
    assert all(moved[len(convs) :])  # the decoder trained
    assert all(p.requires_grad for p in learn.model.parameters())  # and everything is unfrozen afterwards


@pytest.mark.parametrize("arch", ["unet", "smp_unet", "deeplabv3plus", "fpn", "unetplusplus", "upernet", "segformer"])
def test_the_dry_run_works_for_every_arch(demo, tmp_path, arch):
    """--debug trains on a share of the images: with data.fraction 0.04 that is 1 of the 24 (as 10% of fruits_nuts'
    14): the dry run still takes 2, and every arch of `trash models` trains a batch that small, DeepLab's
    image-pooling BatchNorm included (a batch of 1 raised `Expected more than 1 value per channel`)."""
    from app.model.build import ARCHS

    assert arch in ARCHS
    recipe = write_recipe(tmp_path / "d.py", demo, model=dict(arch=arch, encoder=ENCODER))
    args = ["fit", str(recipe), "--debug", "--set", "data.fraction=0.04", "--out", str(tmp_path / "runs")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "runs" / "d" / "latest").exists()  # a dry run never becomes `latest`


def test_every_arch_is_in_the_dry_run_test():
    from app.model.build import ARCHS

    marks = test_the_dry_run_works_for_every_arch.pytestmark
    assert set(ARCHS) == set(next(m for m in marks if m.name == "parametrize").args[1])
