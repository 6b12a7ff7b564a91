"""An export written before `app/` was split into wings (commit 58ac6a2) loads and predicts the same masks now.

The old code is taken from git (`git archive`), trains a tiny run and predicts in its own process; a fresh
process of today's code loads that export.pkl (whose pickle names `app.models.Unet`, `app.losses...`,
`app.data.item_image`, `app.callbacks.CPUMixedPrecision`, ...) and its weights.pth, and predicts again.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO

OLD = "58ac6a2"  # the last commit of the flat layout

OLD_SCRIPT = """
import sys, numpy as np
from pathlib import Path
from app.train import fit
from app.predict import list_images, load_learners, stream_predictions
root = Path(sys.argv[1])
run = fit(root / "tiny.py", out=root / "runs")
(root / "run.txt").write_text(str(run))
preds = stream_predictions(load_learners([run]), list_images(root / "demo", root / "demo" / "test.json"))
np.savez(root / "old.npz", *[p.probs.numpy() for p in preds])
"""

NEW_SCRIPT = """
import sys, numpy as np
from pathlib import Path
from app.data.images import list_images
from app.infer.members import load_learners
from app.infer.stream import stream_predictions
root, export = Path(sys.argv[1]), sys.argv[2]
preds = stream_predictions(load_learners([export]), list_images(root / "demo", root / "demo" / "test.json"))
np.savez(root / sys.argv[3], *[p.probs.numpy() for p in preds])
"""

RECIPE = '''"""Old tiny run: DynamicUnet (decoder widths), the loss's three terms, copy-paste, bf16, channels-last."""
data = dict(annotations="{d}/train.json", valid_annotations="{d}/val.json", images="{d}", size=64, batch_size=4,
            copy_paste=0.3)
model = dict(encoder="test_efficientnet", last_cross=False, decoder_widths=(8, 8, 8, 8, 8))
loss = dict(ce=0.9, focal=0.1, dice=0.5)
train = dict(epochs=1, lr=3e-3, precision="bf16", channels_last=True)
'''


def _git(*args, **kwargs):
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, **kwargs)


@pytest.fixture(scope="module")
def old_run(tmp_path_factory) -> tuple[Path, Path]:
    """(folder, run directory) of a run trained by the code of OLD, with its own predictions in old.npz."""
    if _git("cat-file", "-e", f"{OLD}^{{commit}}").returncode:
        pytest.skip(f"commit {OLD} is not in this checkout's git history (a shallow clone?): no old code to run")
    root = tmp_path_factory.mktemp("old")
    (root / "code").mkdir()
    archive = _git("archive", OLD, "app", check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(root / "code")], input=archive, check=True)
    _demo_data(root / "demo")
    (root / "tiny.py").write_text(RECIPE.format(d=root / "demo"))
    env = {**os.environ, "PYTHONPATH": str(root / "code"), "TRASH_CACHE": str(root / "cache")}
    done = subprocess.run(
        [sys.executable, "-c", OLD_SCRIPT, str(root)], capture_output=True, text=True, env=env, cwd=root
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return root, Path((root / "run.txt").read_text())


def _demo_data(folder: Path) -> None:
    """Tiny demo data with PNG images (lossless: both versions decode exactly the same pixels)."""
    import cv2

    from app.data.synthetic import make_demo_dataset

    paths = make_demo_dataset(folder, seed=1, n_train=12, n_val=4, n_test=4)
    for split in ("train", "val", "test"):
        coco = json.loads(paths[split].read_text())
        for image in coco["images"]:
            jpeg = folder / image["file_name"]
            image["file_name"] = str(Path(image["file_name"]).with_suffix(".png"))
            cv2.imwrite(str(folder / image["file_name"]), cv2.imread(str(jpeg)))
        paths[split].write_text(json.dumps(coco))


def _predict_now(root: Path, export: Path, name: str) -> list[np.ndarray]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # today's code, whichever checkout the venv was installed from
    done = subprocess.run(
        [sys.executable, "-c", NEW_SCRIPT, str(root), str(export), name],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return list(np.load(root / name).values())


@pytest.mark.parametrize("export", ["export.pkl", "weights.pth"])
def test_an_export_of_the_flat_layout_predicts_the_same_masks(old_run, export):
    root, run = old_run
    pickle_names = (run / "export.pkl").read_bytes()
    assert b"app.models" in pickle_names and b"app.losses" in pickle_names  # really the old dotted paths
    old = list(np.load(root / "old.npz").values())
    new = _predict_now(root, run / export, f"new_{export}.npz")
    assert len(new) == len(old) == 4
    for before, now in zip(old, new):
        assert now.shape == before.shape
        assert np.array_equal(now.argmax(0), before.argmax(0))
        assert np.abs(now - before).max() < 1e-5
