"""Mask cache: reading a cached PNG vs rasterizing with pycocotools; no pycocotools call after the cache is warm."""

import json
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import cv2
from pycocotools import mask as mask_utils

from app.data.coco import load_coco
from app.data.masks import cached_masks, rasterize
from bench.common import SHARED_DATA, best_time, row

CALLS = {"n": 0}


@contextmanager
def counting_pycocotools():
    """Counts every pycocotools.mask decode/frPyObjects/merge call (app.data.masks looks them up at call time)."""
    originals = {name: getattr(mask_utils, name) for name in ("decode", "frPyObjects", "merge")}

    def wrap(fn):
        def counted(*args, **kwargs):
            CALLS["n"] += 1
            return fn(*args, **kwargs)

        return counted

    CALLS["n"] = 0
    for name, fn in originals.items():
        setattr(mask_utils, name, wrap(fn))
    try:
        yield CALLS
    finally:
        for name, fn in originals.items():
            setattr(mask_utils, name, fn)


def polygon_dataset(folder: Path, n_images: int = 100, size: int = 512, objects: int = 10, seed: int = 0) -> Path:
    """The reference dataset's shape: 512x512 images with 10 polygon annotations each (no image files needed)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    anns, images = [], []
    for i in range(n_images):
        images.append({"id": i, "file_name": f"{i}.jpg", "height": size, "width": size})
        for _ in range(objects):
            centre, radius = rng.uniform(60, size - 60, 2), rng.uniform(15, 60)
            angles = np.sort(rng.uniform(0, 2 * np.pi, 24))
            r = radius * rng.uniform(0.6, 1.0, 24)
            poly = np.stack([centre[0] + r * np.cos(angles), centre[1] + r * np.sin(angles)], 1).ravel()
            anns.append(
                {
                    "id": len(anns),
                    "image_id": i,
                    "category_id": int(rng.integers(1, 11)),
                    "iscrowd": 0,
                    "segmentation": [poly.round(2).tolist()],
                }
            )
    path = folder / "polygons.json"
    categories = [{"id": c, "name": f"class{c}"} for c in range(1, 11)]
    path.write_text(json.dumps({"images": images, "categories": categories, "annotations": anns}))
    return path


def run() -> list[dict]:
    work = Path(tempfile.mkdtemp(prefix="trash-bench-masks-"))
    try:
        rows = speed_rows(polygon_dataset(work), "512 px, 10 polygons/image", work / "cache", 3.0)
        trashcan = SHARED_DATA / "trashcan" / "annotations.json"
        if trashcan.is_file():  # RLE of small images decodes about as fast as a PNG reads: reported, no target
            rows += speed_rows(trashcan, "trashcan, RLE", work / "cache", None)
        return rows
    finally:
        shutil.rmtree(work, ignore_errors=True)


def speed_rows(annotations: Path, label: str, cache: Path, target: float | None) -> list[dict]:
    coco = load_coco(annotations)
    with counting_pycocotools() as calls:
        paths = cached_masks(coco, cache)  # cold: rasterizes every image once
        cold = calls["n"]
        raster_s = best_time(lambda: [rasterize(coco, im) for im in coco.images], 2)
        read_s = best_time(lambda: [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in paths], 2)
        before = calls["n"]
        for _ in range(2):  # epochs 1 and 2 only read the cache
            cached_masks(load_coco(annotations), cache)
            [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in paths]
        warm = calls["n"] - before
        edited = cache / "edited.json"
        data = json.loads(annotations.read_text())
        data["annotations"] = data["annotations"][1:]
        edited.write_text(json.dumps(data))
        before = calls["n"]
        cached_masks(load_coco(edited), cache)
        after_edit = calls["n"] - before
    n = len(coco.images)
    return [
        row(
            f"mask cache ({label}): rasterize time / cached read time",
            raster_s / read_s,
            f">= {target}" if target else "report",
            raster_s / read_s >= target if target else None,
            images=n,
            rasterize_ms=round(1000 * raster_s / n, 3),
            cached_read_ms=round(1000 * read_s / n, 3),
        ),
        row(
            f"mask cache ({label}): pycocotools calls in epochs 1-2 after warm-up",
            warm,
            "== 0",
            warm == 0,
            cold_calls=cold,
            calls_after_editing_json=after_edit,
            json_edit_invalidates=after_edit > 0,
        ),
    ]
