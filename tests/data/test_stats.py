"""Dataset statistics: counts equal the rasterized masks, shares, class-weight schemes, the bar chart."""

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from app.data.coco import load_coco
from app.data.masks import cached_masks, rasterize
from app.data.stats import WEIGHT_SCHEMES, class_weights, dataset_stats, plot_stats
from app.errors import TrashError
from tests.conftest import shared_dataset


@pytest.fixture(scope="module")
def demo_json(tmp_path_factory) -> Path:
    from app.data.synthetic import make_demo_dataset

    root = tmp_path_factory.mktemp("demo")
    make_demo_dataset(root, seed=0, n_train=12, n_val=4, n_test=2)
    return root / "train.json"


@pytest.fixture(scope="module")
def demo_stats(demo_json, tmp_path_factory) -> dict:
    return dataset_stats(load_coco(demo_json), cache_root=tmp_path_factory.mktemp("cache"))


def with_unused_category(src: Path, dst: Path) -> Path:
    """A copy of a COCO json with one extra category that no annotation uses."""
    data = json.loads(src.read_text())
    data["categories"].append({"id": 99, "name": "Unused", "supercategory": "Unused"})
    dst.write_text(json.dumps(data))
    return dst


def test_counts_equal_rasterized_masks(demo_json, demo_stats):
    coco = load_coco(demo_json)
    n = len(coco.codes)
    masks = [rasterize(coco, image) for image in coco.images]
    pixels = sum(np.bincount(m.ravel(), minlength=n) for m in masks)
    images = sum((np.bincount(m.ravel(), minlength=n) > 0).astype(int) for m in masks)
    raw = json.loads(demo_json.read_text())
    instances = [0] * n
    for ann in raw["annotations"]:
        instances[ann["category_id"]] += 1  # demo category ids are 1..10 = class indices
    assert list(demo_stats["classes"]) == coco.codes
    assert [c["pixels"] for c in demo_stats["classes"].values()] == pixels.tolist()
    assert [c["images"] for c in demo_stats["classes"].values()] == images.tolist()
    assert [c["instances"] for c in demo_stats["classes"].values()] == instances
    assert demo_stats["totals"] == {
        "images": len(masks),
        "annotations": len(raw["annotations"]),
        "pixels": sum(m.size for m in masks),
    }


def test_shares_sum_to_one(demo_stats):
    shares = [c["share"] for c in demo_stats["classes"].values()]
    assert math.isclose(sum(shares), 1.0, rel_tol=1e-12)
    total = demo_stats["totals"]["pixels"]
    assert all(math.isclose(c["share"], c["pixels"] / total) for c in demo_stats["classes"].values())


@pytest.mark.parametrize("scheme", WEIGHT_SCHEMES)
def test_rarer_classes_get_larger_weights(demo_stats, scheme):
    weights = class_weights(demo_stats, scheme)
    assert weights == demo_stats["weights"][scheme]
    shares = [c["share"] for c in demo_stats["classes"].values()]
    assert all(s > 0 for s in shares)  # the demo data has every class
    order = np.argsort(shares)  # rarest first
    ranked = [weights[i] for i in order]
    assert all(a > b for a, b in zip(ranked, ranked[1:])), (scheme, ranked)
    assert math.isclose(np.mean(weights), 1.0)


def test_zero_pixel_class_gets_zero_weight(demo_json, tmp_path):
    path = with_unused_category(demo_json, tmp_path / "unused.json")
    stats = dataset_stats(load_coco(path), cache_root=tmp_path / "cache")
    unused = stats["classes"]["Unused"]
    assert (unused["pixels"], unused["images"], unused["instances"], unused["share"]) == (0, 0, 0, 0.0)
    for scheme in WEIGHT_SCHEMES:
        weights = stats["weights"][scheme]
        assert weights[-1] == 0.0
        assert all(math.isfinite(w) and w > 0 for w in weights[:-1])
        assert math.isclose(np.mean(weights[:-1]), 1.0)  # the mean is over the classes present


def test_unknown_scheme_names_the_valid_ones(demo_stats):
    with pytest.raises(TrashError, match="inverse, log, sqrt") as info:
        class_weights(demo_stats, "median_freq")
    assert "median_freq" in str(info.value)


def test_plot_is_written_and_not_blank(demo_stats, tmp_path):
    path = plot_stats(demo_stats, tmp_path / "stats.png")
    assert path == tmp_path / "stats.png"
    image = cv2.imread(str(path))
    assert image is not None and image.shape[0] >= 400 and image.shape[1] >= 600
    assert path.stat().st_size > 10_000
    colours = np.unique(image.reshape(-1, 3), axis=0)
    assert len(colours) > 50  # text, bars and axes, not an empty canvas
    assert (image.reshape(-1, 3) == [255, 255, 255]).all(axis=1).mean() < 0.9


def test_trashcan_counts_equal_cached_masks(tmp_path):
    root = shared_dataset("trashcan")
    coco = load_coco(root / "annotations.json")
    stats = dataset_stats(coco, cache_root=tmp_path / "cache")
    n = len(coco.codes)
    paths = cached_masks(coco, cache_root=tmp_path / "cache")
    pixels = np.zeros(n, np.int64)
    for path in paths:
        values, counts = np.unique(cv2.imread(str(path), cv2.IMREAD_UNCHANGED), return_counts=True)
        pixels[values] += counts
    assert [c["pixels"] for c in stats["classes"].values()] == pixels.tolist()
    for image, path in list(zip(coco.images, paths))[::50]:  # the cache holds what rasterize paints
        np.testing.assert_array_equal(cv2.imread(str(path), cv2.IMREAD_UNCHANGED), rasterize(coco, image))
    assert stats["totals"]["images"] == 753 and stats["totals"]["annotations"] == 1719
    bottle = stats["classes"]["trash_bottle"]  # no instance in this folder (see its SOURCE.md)
    assert bottle["pixels"] == 0
    assert all(stats["weights"][s][bottle["index"]] == 0.0 for s in WEIGHT_SCHEMES)
