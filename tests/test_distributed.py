"""Data-parallel training on CPU: 2 gloo processes (torchrun, as `trash fit --gpus 2` launches them) vs 1 process."""

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.cli import app
from tests.conftest import REPO, write_recipe

# GroupNorm and no augmentation: the 2-process run differs from the 1-process one only in which images share a
# step (fastai gives each rank a contiguous half of the shuffled order). Measured on the demo data, 3 epochs:
# 1 process 0.3958 / 0.3913 (seeds 42 / 43), 2 processes 0.3853 (docs/distributed.md).
TOLERANCE = 0.03


def _fit(recipe, out, *extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "app", "fit", str(recipe), "--out", str(out), *extra],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _runs(out):
    return sorted(p.parent for p in out.rglob("metrics.json") if not p.parent.is_symlink())


def test_two_gloo_processes_train_like_one_with_the_same_effective_batch(demo, tmp_path):
    recipe = write_recipe(
        tmp_path / "ddp.py",
        demo,
        data=dict(batch_size=4, size=64, augment="none"),
        model=dict(norm="group"),
        train=dict(epochs=3, lr=3e-3),
    )
    _fit(recipe, tmp_path / "one", "--set", "data.batch_size=8")
    two = _fit(recipe, tmp_path / "two", "--gpus", "2")
    (single,), (parallel,) = _runs(tmp_path / "one"), _runs(tmp_path / "two")  # exactly one run directory each
    assert len(list((tmp_path / "two" / "ddp").iterdir())) == 2  # the run and its `latest` link, nothing else
    m1, m2 = (json.loads((r / "metrics.json").read_text()) for r in (single, parallel))
    resolved = json.loads((parallel / "resolved.json").read_text())
    assert resolved["distributed"]["processes"] == 2 and resolved["distributed"]["effective_batch"] == 8
    assert "effective batch 8" in two.stdout
    assert m2["pixels"] == m1["pixels"]  # every validation pixel counted once
    assert abs(m1["miou"] - m2["miou"]) <= TOLERANCE, (m1["miou"], m2["miou"])
    history = (parallel / "history.csv").read_text().splitlines()
    assert len(history) == 1 + 3  # one writer: the header and one row per epoch


def test_gpus_must_be_at_least_one(demo, tmp_path):
    from typer.testing import CliRunner

    recipe = write_recipe(tmp_path / "one.py", demo, train=dict(epochs=1))
    result = CliRunner().invoke(app, ["fit", str(recipe), "--gpus", "0", "--out", str(tmp_path / "runs")])
    assert result.exit_code == 2 and "--gpus" in result.output


@pytest.mark.parametrize("n", [2, 3])
def test_the_launch_command_is_torchrun_running_the_app(n):
    from app.distributed import launch_command

    cmd = launch_command(n, ["fit", "r.py"])
    assert cmd[1:4] == ["-m", "torch.distributed.run", "--standalone"] and f"--nproc_per_node={n}" in cmd
    assert cmd[-4:] == ["-m", "app", "fit", "r.py"]


def test_parallel_folds_train_side_by_side_like_one_after_the_other(fold_group, tmp_path):
    from typer.testing import CliRunner

    runner = CliRunner()
    recipe, _, group = fold_group  # the same folds trained one after the other, in this process
    out = tmp_path / "runs"
    result = runner.invoke(app, ["fit", str(recipe), "--fold", "all", "--out", str(out), "--parallel", "2"])
    assert result.exit_code == 0, result.output
    sequential = json.loads((group / "summary.json").read_text())
    parallel = json.loads((next((out / recipe.stem).glob("*-folds")) / "summary.json").read_text())
    assert set(parallel["folds"]) == {"fold0", "fold1"}
    for fold, miou in sequential["folds"].items():  # same seeds; only the CPU threads per process differ
        assert parallel["folds"][fold] == pytest.approx(miou, abs=0.01)
    bad = runner.invoke(app, ["fit", str(recipe), "--parallel", "2", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "--fold all" in bad.output


def _descendants(pid: int) -> list[int]:
    """Every process below `pid`, from /proc (Linux)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def test_a_killed_distributed_run_resumes_distributed(demo, tmp_path):
    import signal

    from tests.test_resume import checkpoint_epochs, wait_for_checkpoint

    recipe = write_recipe(
        tmp_path / "k.py", demo, data=dict(batch_size=4, size=64), model=dict(norm="group"), train=dict(epochs=3)
    )
    out, log = tmp_path / "runs", (tmp_path / "fit.log").open("w")
    cmd = [sys.executable, "-m", "app", "fit", str(recipe), "--out", str(out), "--gpus", "2"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        run = wait_for_checkpoint(out, 1, alive=lambda: proc.poll() is None)
    finally:
        for pid in [*_descendants(proc.pid), proc.pid]:  # both ranks (torchrun starts them in their own sessions)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()
    assert checkpoint_epochs(run) >= 1 and not (run / "metrics.json").exists()
    _fit_resume = subprocess.run(
        [sys.executable, "-m", "app", "fit", "--resume", str(run), "--gpus", "2"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert _fit_resume.returncode == 0, _fit_resume.stdout[-3000:] + _fit_resume.stderr[-3000:]
    epochs = [line.split(",")[0] for line in (run / "history.csv").read_text().splitlines()[1:]]
    assert epochs == ["0", "1", "2"]  # each epoch once, written by rank 0 only
    assert (run / "metrics.json").is_file() and json.loads((run / "resolved.json").read_text())["distributed"]
