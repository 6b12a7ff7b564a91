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
# step (fastai gives each rank a contiguous half of the shuffled order). Measured on the demo data, 3 epochs,
# regnetx_002: 1 process 0.1089 / 0.1099 (seeds 42 / 43), 2 processes 0.1041 (resnet18, twice the cost here:
# 0.109 / 0.074 and 0.092; the tests' tiny encoder learns too little in 3 epochs to tell anything apart).
ENCODER = "regnetx_002"
TOLERANCE = 0.03


def test_gpus_must_be_at_least_one(demo, tmp_path):
    from typer.testing import CliRunner

    recipe = write_recipe(tmp_path / "one.py", demo, train=dict(epochs=1))
    result = CliRunner().invoke(app, ["fit", str(recipe), "--gpus", "0", "--out", str(tmp_path / "runs")])
    assert result.exit_code == 2 and "--gpus" in result.output


@pytest.mark.parametrize("n", [2, 3])
def test_the_launch_command_is_torchrun_running_the_app(n):
    from app.train.distributed import launch_command

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


def _runs(out):
    return sorted(p.parent for p in out.rglob("metrics.json") if not p.parent.is_symlink())


def _launch(*args):
    """`trash fit ARGS --gpus 2` run to its end, one CPU thread per process."""
    done = subprocess.run(
        [sys.executable, "-m", "app", "fit", *map(str, args), "--gpus", "2"],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def test_two_gloo_processes_killed_resume_and_train_like_one_with_the_same_effective_batch(demo, tmp_path):
    """One 2-process run, SIGKILLed after its first epoch and resumed with 2 processes, against 1 process with
    the same effective batch (one test: the distributed run is the costliest thing the suite trains)."""
    import signal

    from app.train.run import fit
    from tests.train.test_resume import checkpoint_epochs, wait_for_checkpoint

    recipe = write_recipe(
        tmp_path / "ddp.py",
        demo,
        data=dict(batch_size=4, size=64, augment="none"),
        model=dict(norm="group", encoder=ENCODER),
        train=dict(epochs=3, lr=3e-3),
    )
    single = fit(recipe, ["data.batch_size=8"], out=tmp_path / "one")
    out, log = tmp_path / "two", (tmp_path / "fit.log").open("w")
    cmd = [sys.executable, "-m", "app", "fit", str(recipe), "--out", str(out), "--gpus", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        run = wait_for_checkpoint(out, 1, alive=lambda: proc.poll() is None)
    finally:
        for pid in [*_descendants(proc.pid), proc.pid]:  # both ranks (torchrun starts them in their own sessions)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()
    assert checkpoint_epochs(run) >= 1 and not (run / "metrics.json").exists()

    resumed = _launch("--resume", run)

    assert "effective batch 8" in resumed.stdout
    assert _runs(out) == [run]  # exactly one run directory, resumed in place
    assert len(list((out / "ddp").iterdir())) == 2  # the run and its `latest` link, nothing else
    epochs = [line.split(",")[0] for line in (run / "history.csv").read_text().splitlines()[1:]]
    assert epochs == ["0", "1", "2"]  # each epoch once, written by rank 0 only
    resolved = json.loads((run / "resolved.json").read_text())
    assert resolved["distributed"]["processes"] == 2 and resolved["distributed"]["effective_batch"] == 8
    m1, m2 = (json.loads((r / "metrics.json").read_text()) for r in (single, run))
    assert m2["pixels"] == m1["pixels"]  # every validation pixel counted once
    assert abs(m1["miou"] - m2["miou"]) <= TOLERANCE, (m1["miou"], m2["miou"])
