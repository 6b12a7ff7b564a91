"""Resuming: a run killed (SIGKILL) or interrupted (SIGINT) mid-training continues from its last checkpoint and
ends exactly where an uninterrupted run ends; damaged checkpoints are refused."""

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from fastcore.foundation import L
from typer.testing import CliRunner

from app.cli import app
from app.errors import TrainingInterrupted, TrashError
from app.train.checkpoint import load_checkpoint, restore_position, restore_weights, save_checkpoint
from app.train.folds import resume
from app.train.plan import training_phases
from app.train.run import fit, prepare
from tests.conftest import REPO, fold_split, write_recipe

runner = CliRunner()
#: two progressive-resizing stages, so that resuming crosses a stage boundary; 12 training images, 3 batches
TINY = dict(data={"size": 32, "fraction": 0.5, "stages": ((32, 2), (64, 1))})
COLUMNS = ("epoch", "stage", "size", "train_loss", "valid_loss", "miou", "lr")


def history(run: Path) -> list[tuple]:
    with (run / "history.csv").open(newline="") as f:
        return [tuple(row[c] for c in COLUMNS) for row in csv.DictReader(f)]


def only_run(out: Path) -> Path:
    (run,) = [p for p in out.glob("*/*") if not p.is_symlink()]
    return run


def checkpoint_epochs(run: Path) -> int:
    index = run / "models" / "checkpoint.json"
    return json.loads(index.read_text())[0]["epochs_done"] if index.is_file() else 0


def wait_for_checkpoint(out: Path, epochs: int, alive=lambda: True, timeout: float = 900) -> Path:
    """The run directory under `out`, once its checkpoint index says `epochs` epochs are done."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive():
        runs = [p for p in out.glob("*/*") if not p.is_symlink()]
        if runs and checkpoint_epochs(runs[0]) >= epochs:
            return runs[0]
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint of {epochs} epochs under {out}")


@pytest.fixture(scope="module")
def reference(demo, tmp_path_factory) -> Path:
    """The uninterrupted run every resumed one must reproduce."""
    root = tmp_path_factory.mktemp("reference")
    return fit(write_recipe(root / "r.py", demo, **TINY), out=root / "runs")


def test_the_reference_run_cleans_up_its_checkpoints(reference):
    assert [r[0] for r in history(reference)] == ["0", "1", "2"]
    assert not list((reference / "models").glob("checkpoint*"))
    assert (reference / "metrics.json").is_file()


def test_sigkill_during_epoch_2_then_resume_finishes_like_an_uninterrupted_run(demo, tmp_path, reference):
    recipe = write_recipe(tmp_path / "r.py", demo, **TINY)
    out, log = tmp_path / "runs", (tmp_path / "fit.log").open("w")
    cmd = [sys.executable, "-m", "app", "fit", str(recipe), "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        run = wait_for_checkpoint(out, 1, alive=lambda: proc.poll() is None)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert checkpoint_epochs(run) == 1 and not (run / "export.pkl").exists()

    result = runner.invoke(app, ["fit", "--resume", str(run)])

    assert result.exit_code == 0, result.output
    assert history(run) == history(reference)  # every epoch once, with the same losses, scores and lrs
    assert (
        json.loads((run / "metrics.json").read_text())["miou"]
        == json.loads((reference / "metrics.json").read_text())["miou"]
    )
    assert not list((run / "models").glob("checkpoint*"))


def test_sigint_at_a_stage_boundary_stops_cleanly_and_resumes(demo, tmp_path, reference):
    recipe = write_recipe(tmp_path / "r.py", demo, **TINY)
    out = tmp_path / "runs"

    def interrupt():  # Ctrl-C once stage 0 (2 epochs) is checkpointed, during stage 1
        wait_for_checkpoint(out, 2)
        os.kill(os.getpid(), signal.SIGINT)

    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN under nohup / a background job
    threading.Thread(target=interrupt, daemon=True).start()
    with pytest.raises(TrainingInterrupted) as stopped:
        fit(recipe, out=out)
    run = only_run(out)
    assert stopped.value.exit_code == 130
    assert f"trash fit --resume {run}" in str(stopped.value) and "(2 epochs done)" in str(stopped.value)
    assert signal.getsignal(signal.SIGINT) is before  # handlers are restored

    resume(run)

    assert history(run) == history(reference)


def test_a_truncated_checkpoint_is_detected_and_not_loaded(demo, tmp_path):
    recipe, _, learn = prepare(write_recipe(tmp_path / "r.py", demo, **TINY), out=tmp_path / "runs")
    phase = training_phases(recipe)[0]
    older = save_checkpoint(learn, 1, phase)
    newer = save_checkpoint(learn, 2, phase)
    newer.write_bytes(newer.read_bytes()[: newer.stat().st_size // 2])  # a torn write the index does not know of

    with pytest.warns(UserWarning, match="damaged checkpoint.*truncated"):
        state = load_checkpoint(learn.path)
    assert state["epochs_done"] == 1

    older.write_bytes(older.read_bytes()[:-1] + bytes([older.read_bytes()[-1] ^ 1]))  # same size, one bit off
    with pytest.raises(TrashError, match="no intact checkpoint.*sha256"):
        load_checkpoint(learn.path)


def test_resume_refuses_a_finished_run_and_a_folder_that_is_not_a_run(reference, tmp_path):
    finished = runner.invoke(app, ["fit", "--resume", str(reference)])
    assert finished.exit_code == 2 and "already finished" in finished.output
    assert runner.invoke(app, ["fit", "--resume", str(tmp_path)]).exit_code == 2
    both = runner.invoke(app, ["fit", str(tmp_path / "r.py"), "--resume", str(reference)])
    assert both.exit_code == 2 and "only the run directory" in both.output


def test_an_interrupted_fold_group_resumes_the_unfinished_folds(demo, tmp_path):
    split = fold_split(tmp_path, demo)
    recipe = write_recipe(
        tmp_path / "f.py",
        demo,
        data={"split": str(split), "annotations": "", "size": 32, "fraction": 0.5},
        train={"epochs": 2},
    )
    out = tmp_path / "runs"

    def interrupt():  # SIGTERM during fold 1's second epoch
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            folds = list(out.glob("*/*-folds/fold1"))
            if folds and checkpoint_epochs(folds[0]) >= 1:
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.05)

    threading.Thread(target=interrupt, daemon=True).start()
    result = runner.invoke(app, ["fit", str(recipe), "--fold", "all", "--out", str(out)])
    assert result.exit_code == 143, result.output
    group = next(out.glob("*/*-folds"))
    fold0_metrics = (group / "fold0" / "metrics.json").read_text()

    resumed = runner.invoke(app, ["fit", "--resume", str(group)])

    assert resumed.exit_code == 0, resumed.output
    assert (group / "fold0" / "metrics.json").read_text() == fold0_metrics  # a finished fold is not retrained
    assert [r[0] for r in history(group / "fold1")] == ["0", "1"]
    assert set(json.loads((group / "summary.json").read_text())["folds"]) == {"fold0", "fold1"}


def assert_same(a, b, where="state"):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a.cpu(), b.cpu()), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple, L)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.mark.parametrize("optimizer", ["ranger", "adamp"])  # fastai's Lookahead, a torch optimizer in OptimWrapper
def test_a_checkpoint_restores_optimizer_and_callback_state(demo, tmp_path, optimizer):
    sections = dict(
        data={"size": 32, "fraction": 0.5},
        train={"epochs": 1, "optimizer": optimizer, "averaging": "ema"},
        loss={"adaptive_class_weights": True},
    )
    recipe_file = write_recipe(tmp_path / "r.py", demo, **sections)
    recipe, _, learn = prepare(recipe_file, out=tmp_path / "a")
    learn.fit(1, 1e-3)
    phase = training_phases(recipe)[0]
    save_checkpoint(learn, 1, phase)
    _, _, fresh = prepare(recipe_file, out=tmp_path / "b")

    state = load_checkpoint(learn.path)
    restore_weights(fresh, state)
    restore_position(fresh, state, phase)

    assert_same(learn.model.state_dict(), fresh.model.state_dict(), "model")
    assert_same(learn.opt.state_dict(), fresh.opt.state_dict(), "opt")
    for kind in ("ModelEMA", "AdaptiveClassWeights"):
        (old,) = [cb for cb in learn.cbs if type(cb).__name__ == kind]
        (new,) = [cb for cb in fresh.cbs if type(cb).__name__ == kind]
        assert_same(old.checkpoint_state(), new.checkpoint_state(), kind)
    assert [dl.rng.getstate() for dl in learn.dls.loaders] == [dl.rng.getstate() for dl in fresh.dls.loaders]


def test_resume_refuses_data_that_changed_since_the_run_started(demo, tmp_path):
    train = json.loads(Path(demo["train"]).read_text())
    (tmp_path / "train.json").write_text(json.dumps(train))
    data = {**TINY["data"], "annotations": str(tmp_path / "train.json")}
    recipe_file = write_recipe(tmp_path / "r.py", demo, data=data)
    _, _, learn = prepare(recipe_file, out=tmp_path / "runs")  # the run directory, before any epoch
    train["annotations"] = train["annotations"][1:]
    (tmp_path / "train.json").write_text(json.dumps(train))
    with pytest.raises(TrashError, match="changed since it started \\(train differ"):
        resume(learn.path)
