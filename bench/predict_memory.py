"""Predict memory: peak resident memory of `app.infer.predict.predict` (one model, and a two-model ensemble) on 10
and on 1,000 images, each in a fresh process; flat means predictions stream (nothing is held per image).

The models are tiny exports (resnet18 Unet, 64 px, one epoch) trained by app.train.run.fit on the demo dataset in
a temporary folder; the images are 64x64 copies of the demo photos. The ensemble is two loaded copies of one
export (memory does not depend on the weights).
"""

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2

from bench.common import REPO, row

# VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over exec, so a child of a big process reports the
# parent's peak; VmHWM belongs to the new program's address space.
CHILD = """
import json, re, sys, time
from pathlib import Path
start = time.time()
from app.infer.predict import predict
predict(sys.argv[3:], sys.argv[1], sys.argv[2], batch_size=32)
hwm_kb = int(re.search(r"VmHWM:\\s+(\\d+)", Path("/proc/self/status").read_text()).group(1))
print(json.dumps({"peak_mb": hwm_kb / 1024, "seconds": time.time() - start}))
"""
COUNTS = (10, 1000)


def tiny_export(work: Path) -> Path:
    from app.data.synthetic import make_demo_dataset
    from app.train.run import fit

    paths = make_demo_dataset(work / "demo", seed=0, n_train=32, n_val=8, n_test=4)
    overrides = [
        f"data.annotations={paths['train']}",
        f"data.valid_annotations={paths['val']}",
        f"data.images={paths['images']}",
        f"data.mask_cache={work / 'cache'}",
        "data.size=64",
        "train.epochs=1",
        "train.precision=fp32",
        "model.encoder=resnet18",
    ]
    return fit(REPO / "recipes" / "demo.py", overrides, out=work / "runs")


def small_images(source: Path, folder: Path, n: int) -> Path:
    """`n` 64x64 JPEGs cycling through the demo photos."""
    photos = sorted(source.glob("images/*.jpg"))
    folder.mkdir(parents=True)
    for i in range(n):
        image = cv2.resize(cv2.imread(str(photos[i % len(photos)])), (64, 64), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(folder / f"{i:05d}.jpg"), image)
    return folder


def predict_in_child(models: list[Path], images: Path, out: Path) -> dict:
    args = [sys.executable, "-c", CHILD, str(images), str(out), *map(str, models)]
    result = subprocess.run(args, check=True, capture_output=True, text=True, cwd=REPO)
    return json.loads(result.stdout.strip().splitlines()[-1])


def run() -> list[dict]:
    work = Path(tempfile.mkdtemp(prefix="trash-bench-predict-"))
    try:
        run_dir = tiny_export(work)
        folders = {n: small_images(work / "demo", work / f"images{n}", n) for n in COUNTS}
        rows = []
        for label, models in (("predict", [run_dir]), ("ensemble of 2", [run_dir, run_dir])):
            child = {n: predict_in_child(models, folders[n], work / f"out-{label}-{n}") for n in COUNTS}
            peaks = {n: child[n]["peak_mb"] for n in COUNTS}
            rows.append(
                row(
                    f"{label}: peak RSS {COUNTS[1]} / {COUNTS[0]} images",
                    peaks[COUNTS[1]] / peaks[COUNTS[0]],
                    "<= 1.1 (flat)",
                    peaks[COUNTS[1]] <= 1.1 * peaks[COUNTS[0]],
                    **{f"peak_mb_{n}": round(peaks[n], 1) for n in COUNTS},
                    **{f"seconds_{n}": round(child[n]["seconds"], 1) for n in COUNTS},
                    images="64x64 JPEG, resnet18 Unet export, batch 32, no TTA",
                )
            )
        return rows
    finally:
        shutil.rmtree(work, ignore_errors=True)
