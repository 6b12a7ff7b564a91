"""Training to a CPU-time budget, one thread, and non-square training sizes (data.aspect)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from app.errors import TrashError
from app.train.budget import BudgetScheduler, process_cpu_seconds
from app.train.validate import load_checked
from tests.conftest import ENCODER, REPO, write_recipe


def test_process_cpu_seconds_counts_this_process():
    before = process_cpu_seconds()
    sum(i * i for i in range(2_000_000))
    assert process_cpu_seconds() - before > 0.01


def test_a_budget_run_stays_within_its_budget_and_anneals(demo, tmp_path):
    """`trash fit` to 45 CPU-seconds, measured from outside as /usr/bin/time would: within budget, the lr annealed,
    fewer epochs than the cap, and the whole CPU time in metrics.json."""
    budget = 45
    recipe = write_recipe(
        tmp_path / "b.py", demo, train=dict(epochs=100, lr=3e-3, precision="fp32", cpu_budget=budget, threads=1)
    )
    cmd = [sys.executable, "-m", "app", "fit", str(recipe), "--out", str(tmp_path / "runs")]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(["/usr/bin/time", "-f", "%U %S", *cmd], capture_output=True, text=True, env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    user, system = map(float, done.stderr.strip().splitlines()[-1].split())
    assert user + system <= budget * 1.1
    run = (tmp_path / "runs" / "b" / "latest").resolve()
    rows = (run / "history.csv").read_text().splitlines()[1:]
    lr_last = float(rows[-1].split(",")[7])
    assert 1 <= len(rows) < 100 and lr_last < 3e-3 / 100  # stopped by the budget, at the end of the schedule
    assert json.loads((run / "metrics.json").read_text())["cpu_seconds"] <= user + system + 1


def test_a_budget_needs_a_schedule_that_is_a_function_of_the_position(demo, tmp_path):
    recipe = write_recipe(tmp_path / "s.py", demo, train=dict(cpu_budget=100, schedule="step", step_epochs=(1,)))
    with pytest.raises(TrashError, match="train.schedule"):
        load_checked(recipe)
    recipe = write_recipe(tmp_path / "t.py", demo, data=dict(stages=((64, 1), (96, 1))), train=dict(cpu_budget=100))
    with pytest.raises(TrashError, match="cpu_budget"):
        load_checked(recipe)


def test_position_follows_the_budget_used():
    sched = BudgetScheduler({"lr": lambda pos: pos}, budget=1000.0)
    sched.start, sched.stop_at = process_cpu_seconds(), process_cpu_seconds() + 1000.0
    sched.learn = type("L", (), {"pct_train": 0.0})()
    assert 0 <= sched.position() < 0.01
    sched.stop_at = sched.start + 1e-3  # the budget is spent: the position is the end of the schedule
    sum(i * i for i in range(200_000))
    assert sched.position() == 1.0


def test_aspect_trains_and_predicts_non_square_and_masks_come_back_at_original_size(demo, tmp_path):
    from app.data.images import image_size, list_images
    from app.infer.members import load_members
    from app.infer.stream import stream_predictions
    from app.train.run import fit

    recipe = write_recipe(
        tmp_path / "wide.py",
        demo,
        data=dict(aspect=1.5, augment="light"),  # light turns by quarters: not for 64 x 96 images
        model=dict(encoder=ENCODER),
        train=dict(epochs=1, threads=1),
    )
    run = fit(recipe, out=tmp_path / "runs")
    assert torch.get_num_threads() == 1
    for export in (run, run / "weights.pth"):
        (member,) = load_members([export])
        assert member.train_size == (64, 96)  # height 64, width 1.5 x 64 rounded to 32
        for pred in stream_predictions([member], list_images(demo["images"], demo["test"])):
            assert tuple(pred.probs.shape[-2:]) == image_size(pred.path)
    assert np.load(run / "oof.npz")["probs"].shape[-2:] == (64, 96)  # validation probabilities at training size


def test_quarter_turns_are_left_out_for_non_square_images():
    from app.data.augment import build_preset

    image = np.zeros((32, 64, 3), np.uint8)
    mask = np.zeros((32, 64), np.uint8)
    for seed in range(8):
        out = build_preset("heavy", seed, square=False)(image=image, mask=mask)
        assert out["image"].shape == (32, 64, 3) and out["mask"].shape == (32, 64)


def test_frozen_stages_keep_their_weights_and_the_rest_trains(demo, tmp_path):
    from app.model.encoders import model_encoder
    from app.train.run import prepare

    recipe = write_recipe(tmp_path / "f.py", demo, model=dict(encoder=ENCODER, freeze_stages=2), train=dict(epochs=1))
    _, _, learn = prepare(recipe, out=tmp_path / "runs")
    stages = list(model_encoder(learn.model).children())
    before = [p.detach().clone() for p in stages[0].parameters()] + [p.detach().clone() for p in stages[1].parameters()]
    later = [p.detach().clone() for p in stages[2].parameters()]
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, 3e-3)
    after = list(stages[0].parameters()) + list(stages[1].parameters())
    assert all(torch.equal(a, b) for a, b in zip(after, before))
    assert any(not torch.equal(a, b) for a, b in zip(stages[2].parameters(), later))
