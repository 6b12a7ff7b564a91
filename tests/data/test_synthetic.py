"""Tests for app.data.synthetic: the deterministic synthetic COCO demo dataset."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from app.data.synthetic import CLASS_NAMES, make_demo_dataset

RARE_IDS = (CLASS_NAMES.index("Battery") + 1, CLASS_NAMES.index("Clothing") + 1)
COMMON_IDS = tuple(i for i in range(1, 11) if i not in RARE_IDS)
SMALL = {"n_train": 10, "n_val": 3, "n_test": 2}


def _load(path: Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _to_rle(segmentation: list | dict, height: int, width: int) -> dict:
    """Same dispatch as pycocotools COCO.annToRLE."""
    if isinstance(segmentation, list):
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation["counts"], list):
        return mask_utils.frPyObjects(segmentation, height, width)
    return segmentation


def _decode(segmentation: list | dict, height: int, width: int) -> np.ndarray:
    return mask_utils.decode(_to_rle(segmentation, height, width))


def _rgb(root: Path, file_name: str) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(root / file_name)), cv2.COLOR_BGR2RGB)


def _painted(image: dict, annotations: list[dict], values: list[int], largest_first: bool = True) -> np.ndarray:
    """Paints ``values[i]`` for annotation i, largest area first (or smallest first)."""
    out = np.zeros((image["height"], image["width"]), dtype=np.int32)
    order = sorted(range(len(annotations)), key=lambda i: annotations[i]["area"], reverse=largest_first)
    for i in order:
        out[_decode(annotations[i]["segmentation"], image["height"], image["width"]) > 0] = values[i]
    return out


def _class_mask(image: dict, annotations: list[dict]) -> np.ndarray:
    """Semantic mask painted largest area first (smaller objects stay on top)."""
    return _painted(image, annotations, [ann["category_id"] for ann in annotations])


def _explained_variance(rgb: np.ndarray, labels: np.ndarray) -> float:
    """R^2 of a piecewise-constant colour model over the label regions."""
    total = ((rgb - rgb.mean(axis=(0, 1))) ** 2).sum()
    within = sum(((rgb[labels == k] - rgb[labels == k].mean(axis=0)) ** 2).sum() for k in np.unique(labels))
    return float(1.0 - within / total)


def _images_per_class(coco: dict) -> dict[int, set[int]]:
    found: dict[int, set[int]] = defaultdict(set)
    for ann in coco["annotations"]:
        found[ann["category_id"]].add(ann["image_id"])
    return found


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_demo_dataset(tmp_path_factory.mktemp("demo"), seed=0)


@pytest.fixture(scope="module")
def splits(dataset: dict[str, Path]) -> dict[str, dict]:
    return {name: _load(dataset[name]) for name in ("train", "val", "test")}


def test_returns_paths_in_competition_layout(dataset: dict[str, Path], tmp_path: Path) -> None:
    root = dataset["images"]
    assert set(dataset) == {"train", "val", "test", "images"}
    for name in ("train", "val", "test"):
        assert dataset[name] == root / f"{name}.json"
        assert dataset[name].is_file()
    assert make_demo_dataset(str(tmp_path / "as_str"), **SMALL)["images"] == tmp_path / "as_str"


def test_default_sizes_and_file_names_resolve(dataset: dict[str, Path], splits: dict[str, dict]) -> None:
    assert [len(splits[s]["images"]) for s in ("train", "val", "test")] == [96, 24, 16]
    for name, coco in splits.items():
        json_dir = dataset[name].parent
        for image in coco["images"]:
            assert image["file_name"].startswith("images/")
            assert (json_dir / image["file_name"]).is_file()
            assert _rgb(json_dir, image["file_name"]).shape == (image["height"], image["width"], 3)


def test_same_seed_gives_identical_bytes(tmp_path: Path) -> None:
    a = make_demo_dataset(tmp_path / "a", seed=3, **SMALL)
    b = make_demo_dataset(tmp_path / "b", seed=3, **SMALL)
    for name in ("train", "val", "test"):
        assert a[name].read_bytes() == b[name].read_bytes()
    files_a = sorted(p.name for p in (a["images"] / "images").iterdir())
    assert files_a == sorted(p.name for p in (b["images"] / "images").iterdir())
    assert len(files_a) == sum(SMALL.values())
    for name in files_a:
        assert (a["images"] / "images" / name).read_bytes() == (b["images"] / "images" / name).read_bytes()


def test_different_seed_gives_different_data(tmp_path: Path) -> None:
    a = make_demo_dataset(tmp_path / "a", seed=1, **SMALL)
    b = make_demo_dataset(tmp_path / "b", seed=2, **SMALL)
    assert a["train"].read_bytes() != b["train"].read_bytes()
    first = "images/train_0000.jpg"
    assert not np.array_equal(_rgb(a["images"], first), _rgb(b["images"], first))


def test_coco_keys_and_categories(splits: dict[str, dict]) -> None:
    for coco in splits.values():
        assert {"info", "licenses", "images", "annotations", "categories"} <= set(coco)
        assert [c["id"] for c in coco["categories"]] == list(range(1, 11))
        assert tuple(c["name"] for c in coco["categories"]) == CLASS_NAMES
    assert splits["test"]["annotations"] == []


def test_ids_unique_across_splits(splits: dict[str, dict]) -> None:
    image_ids = [img["id"] for coco in splits.values() for img in coco["images"]]
    ann_ids = [ann["id"] for coco in splits.values() for ann in coco["annotations"]]
    assert len(image_ids) == len(set(image_ids)) == 136
    assert len(ann_ids) == len(set(ann_ids)) > 0
    for coco in splits.values():
        own = {img["id"] for img in coco["images"]}
        assert all(ann["image_id"] in own for ann in coco["annotations"])


def test_every_annotation_rasterizes_consistently(splits: dict[str, dict]) -> None:
    for name in ("train", "val"):
        images = {img["id"]: img for img in splits[name]["images"]}
        for ann in splits[name]["annotations"]:
            img = images[ann["image_id"]]
            h, w = img["height"], img["width"]
            seg = ann["segmentation"]
            if isinstance(seg, list):
                coords = np.asarray(seg[0], dtype=float)
                assert coords.size >= 6 and coords.size % 2 == 0
                assert coords[0::2].min() >= 0 and coords[0::2].max() <= w
                assert coords[1::2].min() >= 0 and coords[1::2].max() <= h
            else:
                assert seg["size"] == [h, w]
            mask = _decode(seg, h, w)
            assert mask.shape == (h, w)
            assert mask.sum() > 0
            assert ann["area"] == int(mask.sum())
            assert ann["bbox"] == pytest.approx(list(mask_utils.toBbox(_to_rle(seg, h, w))), abs=0.01)
            assert 1 <= ann["category_id"] <= 10 and ann["iscrowd"] == 0


def test_images_mix_two_sizes_in_every_split(splits: dict[str, dict]) -> None:
    for coco in splits.values():
        sizes = {(img["width"], img["height"]) for img in coco["images"]}
        assert len(sizes) == 2


def test_all_categories_in_train_and_rare_classes_rarer(splits: dict[str, dict]) -> None:
    found = _images_per_class(splits["train"])
    assert set(found) == set(range(1, 11))
    assert max(len(found[c]) for c in RARE_IDS) < min(len(found[c]) for c in COMMON_IDS)
    assert all(len(found[c]) <= 0.15 * len(splits["train"]["images"]) for c in RARE_IDS)


@pytest.mark.parametrize("seed", range(6))
def test_rare_class_minimums_hold_for_any_seed(tmp_path: Path, seed: int) -> None:
    paths = make_demo_dataset(tmp_path, seed=seed, n_train=6, n_val=2, n_test=1)
    for name, minimum in (("train", 2), ("val", 1)):
        cats = [ann["category_id"] for ann in _load(paths[name])["annotations"]]
        for class_id in RARE_IDS:
            assert cats.count(class_id) >= minimum


def test_rle_annotations_present(splits: dict[str, dict]) -> None:
    segs = [ann["segmentation"] for ann in splits["train"]["annotations"]]
    compressed = [s for s in segs if isinstance(s, dict) and isinstance(s["counts"], str)]
    uncompressed = [s for s in segs if isinstance(s, dict) and isinstance(s["counts"], list)]
    assert compressed and uncompressed
    assert 0.03 * len(segs) < len(compressed) + len(uncompressed) < 0.3 * len(segs)


def test_images_have_several_overlapping_objects(splits: dict[str, dict]) -> None:
    per_image = defaultdict(int)
    for ann in splits["train"]["annotations"]:
        per_image[ann["image_id"]] += 1
    assert min(per_image.values()) >= 2 and max(per_image.values()) <= 6
    assert len(per_image) == len(splits["train"]["images"])


def test_drawn_pixels_match_class_colours(dataset: dict[str, Path], splits: dict[str, dict]) -> None:
    """Visible pixels of each class (mask painted largest-first) have the class's colour."""
    pixels: dict[int, list[np.ndarray]] = defaultdict(list)
    anns = _annotations_by_image(splits["train"])
    for img in splits["train"]["images"][:40]:
        rgb = _rgb(dataset["images"], img["file_name"]).astype(float)
        mask = _class_mask(img, anns[img["id"]])
        for class_id in np.unique(mask):
            pixels[int(class_id)].append(rgb[mask == class_id])
    mean = {c: np.concatenate(p).mean(axis=0) for c, p in pixels.items()}
    assert np.ptp(mean[0]) < 30, "background is muted"
    ids = {name: CLASS_NAMES.index(name) + 1 for name in CLASS_NAMES}
    red = mean[ids["Plastic"]]
    assert red[0] > red[1] + 80 and red[0] > red[2] + 40
    green = mean[ids["Glass"]]
    assert green[1] > green[0] + 30 and green[1] > green[2] + 30
    assert mean[ids["General trash"]].mean() < mean[0].mean()
    assert min(mean[ids["Paper"]].min(), mean[ids["Styrofoam"]].min()) > 180
    assert set(mean) == set(range(11))


def _annotations_by_image(coco: dict) -> dict[int, list[dict]]:
    found: dict[int, list[dict]] = defaultdict(list)
    for ann in coco["annotations"]:
        found[ann["image_id"]].append(ann)
    return found


def test_drawn_objects_align_with_annotations(dataset: dict[str, Path], splits: dict[str, dict]) -> None:
    """Object regions explain the image colours better than the same regions shifted by 2 px."""
    anns = _annotations_by_image(splits["train"])
    for img in splits["train"]["images"][:30]:
        rgb = _rgb(dataset["images"], img["file_name"]).astype(float)
        labels = _painted(img, anns[img["id"]], list(range(1, len(anns[img["id"]]) + 1)))
        aligned = _explained_variance(rgb, labels)
        for shift, axis in ((-2, 0), (2, 0), (-2, 1), (2, 1)):
            assert aligned > _explained_variance(rgb, np.roll(labels, shift, axis=axis))


def test_smaller_objects_are_drawn_on_top(dataset: dict[str, Path], splits: dict[str, dict]) -> None:
    """Where objects overlap, the image agrees with the largest-first painting rule."""
    anns = _annotations_by_image(splits["train"])
    images = splits["train"]["images"][:40]
    better = worse = 0
    for img in images:
        rgb = _rgb(dataset["images"], img["file_name"]).astype(float)
        ids = list(range(1, len(anns[img["id"]]) + 1))
        largest_first = _explained_variance(rgb, _painted(img, anns[img["id"]], ids))
        smallest_first = _explained_variance(rgb, _painted(img, anns[img["id"]], ids, largest_first=False))
        better += largest_first > smallest_first + 1e-9
        worse += smallest_first > largest_first + 1e-9
    assert better >= 0.5 * len(images)
    assert worse <= 0.1 * len(images)


def test_generation_is_fast(tmp_path: Path) -> None:
    start = time.perf_counter()
    make_demo_dataset(tmp_path, seed=5)
    assert time.perf_counter() - start < 10.0
