"""Stratified group k-fold: partition, groups never split, determinism, written fold jsons, errors."""

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest

from app.data.coco import CocoImage, load_coco
from app.data.split import group_of, make_folds, rarest_class_labels, write_folds
from app.errors import TrashError
from tests.conftest import shared_dataset


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """The demo train json with a "video" field: 12 images in 6 videos of 2 frames each."""
    from app.data.synthetic import make_demo_dataset

    root = tmp_path_factory.mktemp("demo")
    paths = make_demo_dataset(root, seed=0, n_train=12, n_val=4, n_test=2)
    data = json.loads(paths["train"].read_text())
    for i, image in enumerate(data["images"]):
        image["video"] = f"v{i // 2}"
    path = root / "videos.json"
    path.write_text(json.dumps(data))
    return path


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def video_of(path: Path) -> dict[int, str]:
    return {im["id"]: im["video"] for im in json.loads(path.read_text())["images"]}


def assert_partition(folds: list[dict], ids: set[int]):
    vals = [set(f["val_ids"]) for f in folds]
    assert sum(len(v) for v in vals) == len(ids) and set().union(*vals) == ids
    for fold, val in zip(folds, vals):
        train = set(fold["train_ids"])
        assert val and not train & val and train | val == ids


def assert_groups_not_split(folds: list[dict], group: dict[int, str]):
    seen: set[str] = set()
    for fold in folds:
        val = {group[i] for i in fold["val_ids"]}
        assert not val & {group[i] for i in fold["train_ids"]}, fold["fold"]
        assert not val & seen, fold["fold"]
        seen |= val


def test_folds_partition_images_and_keep_groups_whole(videos, cache):
    folds = make_folds(videos, k=3, group="video", seed=0, cache_root=cache)
    assert [f["fold"] for f in folds] == [0, 1, 2]
    assert_partition(folds, set(video_of(videos)))
    assert_groups_not_split(folds, video_of(videos))
    assert sum(len(f["val_groups"]) for f in folds) == 6


def test_same_seed_same_folds(videos, cache):
    first = make_folds(videos, k=3, group="video", seed=7, cache_root=cache)
    again = make_folds(videos, k=3, group="video", seed=7, cache_root=cache)
    assert first == again


def test_regex_group_uses_the_whole_match(videos, cache):
    # images/train_0000.jpg .. train_0009.jpg -> "train_000"; train_0010, train_0011 -> "train_001"
    folds = make_folds(videos, k=2, group=r"train_00\d", seed=0, cache_root=cache)
    assert sorted(len(f["val_ids"]) for f in folds) == [2, 10]
    assert sorted(g for f in folds for g in f["val_groups"]) == ["train_000", "train_001"]


def test_group_of_field_regex_and_none():
    image = CocoImage(5, "clips/vid_000042_frame0000007.jpg", 10, 10)
    raw = {"id": 5, "file_name": image.file_name, "video_id": 42}
    assert group_of(image, raw, "video_id") == "42"
    assert group_of(image, raw, r"vid_\d+") == "vid_000042"
    assert group_of(image, raw, None) != group_of(CocoImage(6, image.file_name, 10, 10), raw, None)
    with pytest.raises(TrashError, match="nor a valid regex"):
        group_of(image, raw, "vid_(")


def test_non_matching_regex_names_the_file(videos, cache):
    with pytest.raises(TrashError, match=r"images/train_0000\.jpg"):
        make_folds(videos, k=2, group=r"vid_\d+", cache_root=cache)


def test_missing_group_field_names_the_image(videos, tmp_path, cache):
    data = json.loads(videos.read_text())
    del data["images"][3]["video"]
    path = tmp_path / "holes.json"
    path.write_text(json.dumps(data))
    with pytest.raises(TrashError, match=r"train_0003\.jpg.*'video'"):
        make_folds(path, k=2, group="video", cache_root=cache)


@pytest.mark.parametrize("k", [1, 7])
def test_k_must_fit_the_groups(videos, cache, k):
    with pytest.raises(TrashError, match=f"k = {k}"):
        make_folds(videos, k=k, group="video", cache_root=cache)


def test_rarest_present_class_labels_each_image():
    counts = np.array(
        [
            [90, 10, 0, 0],  # class 1 only
            [80, 10, 10, 0],  # classes 1 and 2: 2 is rarer dataset-wide
            [100, 0, 0, 0],  # background only
            [50, 40, 0, 10],  # classes 1 and 3: 3 is rarer
        ]
    )  # dataset pixels: 1 -> 60, 2 -> 10, 3 -> 10 (tie: lowest index wins)
    assert rarest_class_labels(counts).tolist() == [1, 2, 0, 3]


def test_written_folds_hold_exactly_their_images(videos, cache, tmp_path):
    folds = make_folds(videos, k=3, group="video", seed=1, cache_root=cache)
    summary = write_folds(videos, folds, tmp_path / "folds")
    source = json.loads(videos.read_text())
    anns = {a["id"]: a for a in source["annotations"]}
    for fold in folds:
        for part in ("train", "val"):
            path = tmp_path / "folds" / f"fold{fold['fold']}" / f"{part}.json"
            coco = load_coco(path)
            ids = fold[f"{part}_ids"]
            assert [im.id for im in coco.images] == ids
            written = json.loads(path.read_text())
            assert written["categories"] == source["categories"]
            assert written["info"] == source["info"] and written["licenses"] == source["licenses"]
            expected = sorted(a["id"] for a in anns.values() if a["image_id"] in set(ids))
            assert sorted(a["id"] for a in written["annotations"]) == expected
            assert all(a == anns[a["id"]] for a in written["annotations"])
            by_id = {im["id"]: im for im in source["images"]}
            assert all(im == by_id[im["id"]] for im in written["images"])  # file_name unchanged
    assert summary == json.loads((tmp_path / "folds" / "summary.json").read_text())
    assert (summary["k"], summary["seed"], summary["group"]) == (3, 1, "video")
    assert summary["sha256"] == hashlib.sha256(videos.read_bytes()).hexdigest()
    assert summary["source"] == str(videos.resolve())
    for entry, fold in zip(summary["folds"], folds):
        assert entry["val"]["images"] == len(fold["val_ids"])
        assert entry["train"]["images"] == len(fold["train_ids"])
        assert entry["val"]["groups"] + entry["train"]["groups"] == 6
        assert sum(entry["val"]["share"].values()) == pytest.approx(1.0)
        assert list(entry["val"]["share"]) == load_coco(videos).codes


def test_trashcan_folds_never_share_a_video(tmp_path):
    root = shared_dataset("trashcan")
    ann = root / "annotations.json"
    folds = make_folds(ann, k=5, group=r"vid_\d+", seed=0, cache_root=tmp_path / "cache")
    images = json.loads(ann.read_text())["images"]
    video = {im["id"]: re.match(r"vid_\d+", im["file_name"]).group(0) for im in images}
    assert len(folds) == 5
    assert_partition(folds, set(video))
    assert_groups_not_split(folds, video)
    assert sum(len(f["val_groups"]) for f in folds) == len(set(video.values())) == 69
