"""Data-parallel training on CPU: 2 gloo processes (torchrun, as `trash fit --gpus 2` launches them) vs 1 process."""

import json
import os
import subprocess
import sys

import pytest

from app.cli import app
from tests.conftest import REPO, write_recipe

# Two processes see other augmentation draws and BatchNorm statistics over half the batch, so the two runs are
# not bit-identical; on the demo data they agree to within this mIoU (measured: see docs/distributed.md).
TOLERANCE = 0.05


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
    recipe = write_recipe(tmp_path / "ddp.py", demo, data=dict(batch_size=4, size=64), train=dict(epochs=3, lr=3e-3))
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
