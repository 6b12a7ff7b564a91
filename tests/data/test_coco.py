"""COCO → class masks: pycocotools agreement, class-index convention, overlap rule, mask cache."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from app.data import masks as coco_mod
from app.data.coco import load_coco
from app.data.masks import cached_masks, mask_cache_dir, rasterize
from app.errors import TrashError
from tests.conftest import shared_dataset


def independent_masks(ann_file: Path) -> dict[int, np.ndarray]:
    """Reference rasterization through pycocotools' own COCO API, same overlap rule."""
    api = COCO(str(ann_file))
    index = {cid: i + 1 for i, cid in enumerate(sorted(api.getCatIds()))}
    out = {}
    for img_id, info in api.imgs.items():
        mask = np.zeros((info["height"], info["width"]), np.uint8)
        layers = [(api.annToMask(a), a) for a in api.loadAnns(api.getAnnIds(imgIds=img_id))]
        for layer, ann in sorted(layers, key=lambda t: (-int(t[0].sum()), t[1]["id"])):
            mask[layer > 0] = index[ann["category_id"]]
        out[img_id] = mask
    return out


def assert_matches_pycocotools(ann_file: Path):
    data = load_coco(ann_file)
    reference = independent_masks(ann_file)
    assert len(reference) == len(data.images)
    for image in data.images:
        np.testing.assert_array_equal(rasterize(data, image), reference[image.id], err_msg=image.file_name)


def test_demo_masks_match_pycocotools(demo):
    assert_matches_pycocotools(demo["train"])


def test_fruits_nuts_masks_match_pycocotools():
    assert_matches_pycocotools(shared_dataset("fruits_nuts") / "annotations.json")


def tiny_coco(tmp_path: Path, anns: list[dict], categories=None) -> Path:
    categories = categories or [{"id": 7, "name": "seven"}, {"id": 3, "name": "three"}]
    data = {
        "images": [{"id": 1, "file_name": "a.png", "height": 20, "width": 20}],
        "categories": categories,
        "annotations": anns,
    }
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return path


def square(ann_id, cat, x0, size):
    x1 = x0 + size
    return {
        "id": ann_id,
        "image_id": 1,
        "category_id": cat,
        "iscrowd": 0,
        "segmentation": [[x0, x0, x1, x0, x1, x1, x0, x1]],
    }


def test_class_index_is_position_of_ascending_category_id(tmp_path):
    data = load_coco(tiny_coco(tmp_path, [square(1, 7, 2, 4)]))
    assert data.codes == ["Background", "three", "seven"]
    assert set(np.unique(rasterize(data, data.images[0]))) == {0, 2}


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_smaller_annotation_stays_on_top_whatever_the_json_order(tmp_path, order):
    anns = [square(1, 3, 0, 16), square(2, 7, 6, 4)]  # big "three" under a small "seven"
    data = load_coco(tiny_coco(tmp_path, [anns[i] for i in order]))
    mask = rasterize(data, data.images[0])
    assert mask[8, 8] == 2 and mask[2, 2] == 1


def test_rle_of_another_size_is_refused_by_id(tmp_path):
    ann = {"id": 42, "image_id": 1, "category_id": 3, "segmentation": {"size": [10, 10], "counts": [0, 100]}}
    data = load_coco(tiny_coco(tmp_path, [ann]))
    with pytest.raises(TrashError, match="annotation 42"):
        rasterize(data, data.images[0])


def test_cache_is_reused_and_invalidated_by_editing_the_json(tmp_path, monkeypatch):
    ann_file = tiny_coco(tmp_path, [square(1, 3, 2, 6)])
    data = load_coco(ann_file)
    first = cached_masks(data, tmp_path / "cache")
    np.testing.assert_array_equal(cv2.imread(str(first[0]), cv2.IMREAD_UNCHANGED), rasterize(data, data.images[0]))

    def fail(*_):
        raise AssertionError("rasterized again although cached")

    monkeypatch.setattr(coco_mod, "rasterize", fail)
    assert cached_masks(load_coco(ann_file), tmp_path / "cache") == first
    ann_file.write_text(ann_file.read_text().replace('"category_id": 3', '"category_id": 7'))
    edited = load_coco(ann_file)
    assert mask_cache_dir(edited, tmp_path / "cache") != mask_cache_dir(data, tmp_path / "cache")
    with pytest.raises(AssertionError, match="rasterized again"):
        cached_masks(edited, tmp_path / "cache")


def test_unreadable_json_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(TrashError, match="bad.json"):
        load_coco(bad)


def test_trashcan_masks_match_pycocotools():
    """Every pixel of every real TrashCan image (RLE, overlaps, two sizes) against pycocotools' COCO API."""
    assert_matches_pycocotools(shared_dataset("trashcan") / "annotations.json")
