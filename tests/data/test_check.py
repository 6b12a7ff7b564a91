"""app.data.check: a corpus of broken COCO files (one per defect kind), garbage input, clean and real data."""

import copy
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from app.data.check import CheckReport, Problem, check_coco
from app.data.shapes import _rle_string_counts
from app.errors import TrashError

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"

# Image 101: a.png, 30 x 40 (h x w). Image 102: sub/b.jpg, 24 x 32. Image 103: c.png, 20 x 20 (no annotation).
SIZES = {101: (30, 40), 102: (24, 32), 103: (20, 20)}
FILES = {101: "a.png", 102: "sub/b.jpg", 103: "c.png"}


def _rle(height: int, width: int, compressed: bool) -> dict:
    """An RLE of a small rectangle, compressed (str counts) or uncompressed (list counts)."""
    mask = np.zeros((height, width), np.uint8)
    mask[4:12, 5:15] = 1
    if not compressed:
        flat = mask.flatten(order="F")
        edges = np.flatnonzero(np.diff(flat)) + 1
        runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
        return {"size": [height, width], "counts": ([0] if flat[0] else []) + runs}
    rle = mask_utils.encode(np.asfortranarray(mask))
    return {"size": [height, width], "counts": rle["counts"].decode("ascii")}


def _base_coco() -> dict:
    """A valid COCO dict: 3 images, 2 categories (ids 5, 9), polygon + compressed + uncompressed RLE."""
    images = [{"id": i, "file_name": FILES[i], "height": h, "width": w} for i, (h, w) in SIZES.items()]
    annotations = [
        {"id": 7001, "image_id": 101, "category_id": 5, "segmentation": [[2, 2, 20, 2, 20, 15, 2, 15]]},
        {"id": 7002, "image_id": 102, "category_id": 9, "segmentation": _rle(24, 32, compressed=True)},
        {"id": 7003, "image_id": 101, "category_id": 9, "segmentation": _rle(30, 40, compressed=False)},
    ]
    for ann in annotations:
        ann.update(area=100, bbox=[2, 2, 10, 10], iscrowd=0)
    categories = [{"id": 9, "name": "nine"}, {"id": 5, "name": "five"}]
    return {"images": images, "categories": categories, "annotations": annotations}


def _write_images(root: Path) -> None:
    rng = np.random.default_rng(0)
    for image_id, (h, w) in SIZES.items():
        path = root / FILES[image_id]
        path.parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(path), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


@pytest.fixture
def dataset(tmp_path):
    """Writes the images; returns check(coco_dict, **kw) -> CheckReport for a json of that content."""
    root = tmp_path / "images"
    _write_images(root)

    def check(coco, **kwargs) -> CheckReport:
        path = tmp_path / "annotations.json"
        path.write_text(json.dumps(coco))
        return check_coco(path, kwargs.pop("images", root), **kwargs)

    check.root = root
    return check


def _only(report: CheckReport, kind: str) -> list[Problem]:
    """The problems of one kind, asserting the report is not ok and has at least one of them."""
    assert not report.ok, report.summary()
    found = [p for p in report.problems if p.kind == kind]
    assert found, f"no {kind} in:\n{report.summary()}"
    return found


def _assert_names_annotation(report: CheckReport, kind: str, ann_id: int, image_id: int | None = None) -> Problem:
    """One problem of `kind` names annotation ann_id in its message and fields; returns it."""
    found = [p for p in _only(report, kind) if p.annotation_id == ann_id]
    assert found, report.summary()
    assert f"annotation {ann_id}" in found[0].message
    if image_id is not None:
        assert found[0].image_id == image_id and f"image {image_id}" in found[0].message
    assert ann_id in report.bad_annotation_ids()
    return found[0]


def _mutated(change) -> dict:
    coco = _base_coco()
    change(coco)
    return coco


def _ann(coco: dict, ann_id: int) -> dict:
    return next(a for a in coco["annotations"] if a["id"] == ann_id)


# ---------------------------------------------------------------- clean input


def test_base_corpus_is_clean(dataset):
    report = dataset(_base_coco())
    assert report.ok, report.summary()
    assert (report.n_images, report.n_annotations) == (3, 3)
    assert [p.kind for p in report.problems] == ["no_annotations"]  # image 103, an info only
    info = report.problems[0]
    assert info.severity == "info" and info.image_id == 103 and "image 103 (c.png)" in info.message


def test_demo_dataset_is_clean(tmp_path):
    from app.data.synthetic import make_demo_dataset

    paths = make_demo_dataset(tmp_path, seed=0, n_train=6, n_val=2, n_test=2)
    report = check_coco(paths["train"], paths["images"])
    assert report.ok and report.errors == [], report.summary()
    assert report.n_images == 6 and report.n_annotations > 6
    test_report = check_coco(paths["test"], paths["images"])
    assert test_report.ok
    assert {p.kind for p in test_report.problems} == {"no_annotations"} and len(test_report.problems) == 2


# ---------------------------------------------------------------- not COCO / unreadable file


@pytest.mark.parametrize(
    "content",
    [
        [1, 2, 3],
        "just a string",
        42,
        None,
        {"images": [], "annotations": []},
        {"images": {"1": {}}, "categories": []},
        {"images": [], "categories": "cats"},
        {"images": [], "categories": [], "annotations": {"id": 1}},
    ],
)
def test_not_coco(dataset, content):
    report = dataset(content)
    assert not report.ok
    assert [p.kind for p in report.problems] == ["not_coco"], report.summary()
    assert "annotations.json" in report.problems[0].message


def test_unreadable_json_raises_trash_error(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(TrashError, match="not valid json"):
        check_coco(bad, None)
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(TrashError, match="not valid json"):
        check_coco(binary, None)
    with pytest.raises(TrashError, match="cannot read"):
        check_coco(tmp_path / "absent.json", None)


# ---------------------------------------------------------------- entries


def test_bad_image_entry(dataset):
    def change(coco):
        coco["images"][0]["height"] = "30"  # a string where a number belongs
        coco["images"][1]["file_name"] = None
        coco["images"].append("not an object")
        coco["images"].append({"file_name": "x.png", "height": 1, "width": 1})  # no id
        coco["images"].append({"id": 105, "file_name": "x.png", "height": True, "width": 0})

    report = dataset(_mutated(change))
    found = _only(report, "bad_image_entry")
    assert len(found) == 5, report.summary()
    assert found[0].image_id == 101 and "image 101" in found[0].message and "height" in found[0].message
    assert found[1].image_id == 102 and "image 102" in found[1].message and "file_name" in found[1].message
    assert "#3" in found[2].message and "#4" in found[3].message
    assert "image 105" in found[4].message and "height True" in found[4].message and "width 0" in found[4].message
    # annotations of an image whose entry is bad are not "unknown_image": the entry itself is the error
    assert "unknown_image" not in {p.kind for p in report.problems}


def test_duplicate_image_id(dataset):
    report = dataset(_mutated(lambda c: c["images"].append({**c["images"][0], "file_name": "c.png"})))
    (problem,) = _only(report, "duplicate_image_id")
    assert problem.image_id == 101 and "image 101" in problem.message


def test_duplicate_annotation_id(dataset):
    report = dataset(_mutated(lambda c: c["annotations"].append(copy.deepcopy(c["annotations"][0]))))
    _assert_names_annotation(report, "duplicate_annotation_id", 7001, 101)


def test_duplicate_category_id(dataset):
    report = dataset(_mutated(lambda c: c["categories"].append({"id": 5, "name": "again"})))
    (problem,) = _only(report, "duplicate_category_id")
    assert "category 5" in problem.message


@pytest.mark.parametrize("entry", [{"id": "5x", "name": "s"}, {"id": 77}, {"id": None, "name": 3}, ["id", 1], 12])
def test_bad_category_entry(dataset, entry):
    report = dataset(_mutated(lambda c: c["categories"].append(entry)))
    (problem,) = _only(report, "bad_category_entry")
    assert "category entry #2" in problem.message


@pytest.mark.parametrize("entry", ["ann", {"image_id": 101, "category_id": 5, "segmentation": [[0, 0, 5, 0, 5, 5]]}])
def test_bad_annotation_entry(dataset, entry):
    report = dataset(_mutated(lambda c: c["annotations"].append(entry)))
    (problem,) = _only(report, "bad_annotation_entry")
    assert "annotation entry #3" in problem.message


# ---------------------------------------------------------------- image files


def test_missing_image(dataset):
    (dataset.root / "sub" / "b.jpg").unlink()
    report = dataset(_base_coco())
    (problem,) = _only(report, "missing_image")
    assert problem.image_id == 102 and "image 102 (sub/b.jpg)" in problem.message and "not found" in problem.message
    assert dataset(_base_coco(), read_images=False).ok
    assert dataset(_base_coco(), images=None).ok


def test_missing_images_root(dataset, tmp_path):
    report = dataset(_base_coco(), images=tmp_path / "nowhere")
    (problem,) = _only(report, "missing_image")
    assert "nowhere" in problem.message


@pytest.mark.parametrize("damage", ["garbage", "empty", "truncated"])
def test_unreadable_image(dataset, damage):
    path = dataset.root / "sub" / "b.jpg"
    data = path.read_bytes()
    path.write_bytes({"garbage": b"this is not an image", "empty": b"", "truncated": data[: len(data) // 2]}[damage])
    report = dataset(_base_coco())
    (problem,) = _only(report, "unreadable_image")
    assert problem.image_id == 102 and "image 102 (sub/b.jpg)" in problem.message


def test_image_only_pil_reads_is_unreadable(dataset):
    path = dataset.root / "sub" / "b.jpg"
    Image.new("RGB", (32, 24), (10, 200, 30)).save(path, format="PCX")  # PIL decodes PCX, OpenCV does not
    (problem,) = _only(dataset(_base_coco()), "unreadable_image")
    assert "OpenCV" in problem.message and problem.image_id == 102


def test_truncated_image_is_read_by_opencv_but_caught_by_pil(dataset):
    path = dataset.root / "sub" / "b.jpg"
    path.write_bytes(path.read_bytes()[:-200])
    assert cv2.imread(str(path)) is not None  # OpenCV alone would accept it
    (problem,) = _only(dataset(_base_coco()), "unreadable_image")
    assert "PIL" in problem.message


def test_size_mismatch(dataset):
    report = dataset(_mutated(lambda c: c["images"][0].update(height=31)))
    problems = _only(report, "size_mismatch")
    assert problems[0].image_id == 101 and "image 101 (a.png)" in problems[0].message
    assert "40x31" in problems[0].message and "40x30" in problems[0].message
    assert "EXIF" not in problems[0].message


def _exif_rotated_jpeg(path: Path, width: int, height: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    Image.new("RGB", (width, height), (200, 30, 30)).save(path, exif=exif)


def test_exif_rotated_jpeg_size_mismatch(dataset):
    _exif_rotated_jpeg(dataset.root / "rot.jpg", 40, 20)
    assert cv2.imread(str(dataset.root / "rot.jpg")).shape[:2] == (40, 20)  # OpenCV applies the rotation
    raw = {"id": 104, "file_name": "rot.jpg", "height": 20, "width": 40}  # the raw pixels' size
    report = dataset(_mutated(lambda c: c["images"].append(raw)))
    (problem,) = _only(report, "size_mismatch")
    assert problem.image_id == 104 and "image 104 (rot.jpg)" in problem.message and "EXIF" in problem.message
    rotated = {**raw, "height": 40, "width": 20}  # the size as loaded: fine
    assert dataset(_mutated(lambda c: c["images"].append(rotated))).ok


# ---------------------------------------------------------------- annotation references


@pytest.mark.parametrize("image_id", [999, "101", None, 1.5, [101]])
def test_unknown_image(dataset, image_id):
    report = dataset(_mutated(lambda c: _ann(c, 7001).update(image_id=image_id)))
    problem = _assert_names_annotation(report, "unknown_image", 7001)
    assert repr(image_id) in problem.message


@pytest.mark.parametrize("category_id", [6, "5", None, True])
def test_unknown_category(dataset, category_id):
    report = dataset(_mutated(lambda c: _ann(c, 7002).update(category_id=category_id)))
    _assert_names_annotation(report, "unknown_category", 7002, 102)


# ---------------------------------------------------------------- segmentations


@pytest.mark.parametrize("segmentation", ["missing", None, [], [[]], [[], []], {}, ""])
def test_empty_segmentation(dataset, segmentation):
    def change(coco):
        ann = _ann(coco, 7001)
        del ann["bbox"]
        del ann["segmentation"]
        if segmentation != "missing":
            ann["segmentation"] = segmentation

    _assert_names_annotation(dataset(_mutated(change)), "empty_segmentation", 7001, 101)


def test_bbox_only(dataset):
    report = dataset(_mutated(lambda c: _ann(c, 7001).update(segmentation=[])))
    problem = _assert_names_annotation(report, "bbox_only", 7001, 101)
    assert "empty_segmentation" not in {p.kind for p in report.problems}
    assert "bbox" in problem.message


@pytest.mark.parametrize("segmentation", [42, "polygon", [1, 2, 3, 4, 5, 6], [{"size": [30, 40], "counts": "0"}]])
def test_bad_segmentation(dataset, segmentation):
    report = dataset(_mutated(lambda c: _ann(c, 7001).update(segmentation=segmentation)))
    problem = _assert_names_annotation(report, "bad_segmentation", 7001, 101)
    if segmentation == [1, 2, 3, 4, 5, 6]:
        assert "flat list" in problem.message


@pytest.mark.parametrize("polygon", [[2, 2, 20, 20], [2, 2, 20, 20, 9, 9, 4, 4][:2], [[2, 2, 20, 2, 20, 9], []]])
def test_polygon_too_short(dataset, polygon):
    segmentation = polygon if isinstance(polygon[0], list) else [polygon]
    report = dataset(_mutated(lambda c: _ann(c, 7001).update(segmentation=segmentation)))
    problem = _assert_names_annotation(report, "polygon_too_short", 7001, 101)
    if len(polygon) == 4:
        assert "box" in problem.message


def test_polygon_odd(dataset):
    report = dataset(_mutated(lambda c: _ann(c, 7001).update(segmentation=[[2, 2, 20, 2, 20, 15, 2]])))
    problem = _assert_names_annotation(report, "polygon_odd", 7001, 101)
    assert "7" in problem.message


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 10**400, "3", None, [1], True, {"x": 1}])
def test_polygon_nonfinite(dataset, bad):
    report = dataset(_mutated(lambda c: _ann(c, 7001).update(segmentation=[[2, 2, 20, bad, 20, 15, 2, 15]])))
    _assert_names_annotation(report, "polygon_nonfinite", 7001, 101)


def test_polygon_out_of_image(dataset):
    slightly = [[-3, -2, 43, -2, 43, 32, -3, 32]]  # within 10% of the 40 x 30 image: fine
    assert dataset(_mutated(lambda c: _ann(c, 7001).update(segmentation=slightly))).ok
    far = [[2, 2, 20, 2, 20, 15, 2, 45]]  # y = 45 on a 30 px tall image
    report = dataset(_mutated(lambda c: _ann(c, 7001).update(segmentation=far)))
    problem = _assert_names_annotation(report, "polygon_out_of_image", 7001, 101)
    assert "45" in problem.message


@pytest.mark.parametrize("size", [[30, 40], [24], None, ["24", "32"], [32, 24], [24.0, 32.0]])
def test_rle_size(dataset, size):
    def change(coco):
        seg = _ann(coco, 7002)["segmentation"]
        if size is None:
            del seg["size"]
        else:
            seg["size"] = size

    _assert_names_annotation(dataset(_mutated(change)), "rle_size", 7002, 102)


@pytest.mark.parametrize(
    "ann_id, counts",
    [
        (7002, None),
        (7002, {"a": 1}),
        (7002, "!!not rle"),
        (7002, "0"),  # decodes, but to 0 pixels instead of 24 * 32
        (7002, "ooo"),  # ends inside a number
        (7002, "VALID+o"),  # a valid string, then a dangling continuation character
        (7003, [1, 2, 3]),  # sum != 30 * 40
        (7003, [1200.5]),
        (7003, [-10, 1210]),
        (7003, ["600", 600]),
    ],
)
def test_bad_rle(dataset, ann_id, counts):
    def change(coco):
        seg = _ann(coco, ann_id)["segmentation"]
        seg["counts"] = seg["counts"] + "o" if counts == "VALID+o" else counts

    report = dataset(_mutated(change))
    _assert_names_annotation(report, "bad_rle", ann_id, 101 if ann_id == 7003 else 102)


def test_rle_without_counts(dataset):
    report = dataset(_mutated(lambda c: _ann(c, 7002)["segmentation"].pop("counts")))
    _assert_names_annotation(report, "bad_rle", 7002, 102)


def test_rle_string_decoder_matches_pycocotools():
    rng = np.random.default_rng(3)
    for _ in range(50):
        h, w = rng.integers(1, 40, 2)
        mask = (rng.random((h, w)) < rng.random()).astype(np.uint8)
        counts = mask_utils.encode(np.asfortranarray(mask))["counts"].decode("ascii")
        flat = mask.flatten(order="F")
        edges = np.flatnonzero(np.diff(flat)) + 1
        runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
        assert _rle_string_counts(counts) == ([0] if flat[0] else []) + runs


def test_no_annotations_is_info(dataset):
    report = dataset(_mutated(lambda c: c["annotations"].pop(1)))  # image 102 loses its only annotation
    assert report.ok
    infos = [p for p in report.problems if p.kind == "no_annotations"]
    assert {p.image_id for p in infos} == {102, 103} and all(p.severity == "info" for p in infos)
    assert any("image 102 (sub/b.jpg)" in p.message for p in infos)


# ---------------------------------------------------------------- report API and robustness


def test_report_api(dataset):
    def change(coco):
        _ann(coco, 7001)["segmentation"] = [[math.nan, 1, 2, 3, 4, 5]]
        _ann(coco, 7003)["category_id"] = 1234

    report = dataset(_mutated(change))
    assert report.bad_annotation_ids() == {7001, 7003}
    assert len(report.errors) == 2 and len(report.problems) == 3  # + the no_annotations info
    text = report.summary()
    assert len(text.splitlines()) == 1 + 3 + 3  # header, one line per problem, one count per kind
    assert "polygon_nonfinite (error): 1" in text and "no_annotations (info): 1" in text
    assert all("\n" not in p.message for p in report.problems)


def test_dropping_bad_annotations_makes_pycocotools_safe(dataset, tmp_path):
    """Annotations with every defect, NaN included: after dropping the named ones, rasterize runs."""
    coco = _base_coco()
    broken = [
        [[math.nan, 2, 20, 2, 20, 15]],
        [[2, 2, 20, 20]],
        [[2, 2, 20, 2, 20, 15, 2]],
        [[2, 2, 20, 2, 20, 15, 2, 90]],
        {"size": [10, 10], "counts": "0"},
        {"size": [30, 40], "counts": [5, 5]},
        {"size": [30, 40], "counts": "0"},
        [],
    ]
    coco["annotations"] += [
        {"id": 8000 + i, "image_id": 101, "category_id": 5, "segmentation": s} for i, s in enumerate(broken)
    ]
    report = dataset(coco)
    assert report.bad_annotation_ids() == {8000 + i for i in range(len(broken))}, report.summary()
    coco["annotations"] = [a for a in coco["annotations"] if a["id"] not in report.bad_annotation_ids()]
    clean = tmp_path / "clean.json"
    clean.write_text(json.dumps(coco))
    assert check_coco(clean, dataset.root).ok
    script = (
        "import sys; from app.data.coco import load_coco; from app.data.masks import rasterize; "
        "c = load_coco(sys.argv[1]); "
        "print(sum(int(rasterize(c, im).any()) for im in c.images))"
    )
    run = subprocess.run([sys.executable, "-c", script, str(clean)], capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0 and run.stdout.strip() == "2", run.stderr  # a crash here means a missed defect


GARBAGE = [None, True, -1, 0, 1.5, math.nan, 10**400, -(10**400), "", "x", [], [None], [[None]], {}, [[[1, 2]]], [{}]]


def test_garbage_never_crashes(dataset):
    """Every field of every entry replaced by every garbage value: a report each time, never an exception."""
    base = _base_coco()
    n = 0
    for section in ("images", "categories", "annotations"):
        for index, entry in enumerate(base[section]):
            for key in list(entry) + ["segmentation", "counts", "size"]:
                for value in GARBAGE:
                    coco = copy.deepcopy(base)
                    target = coco[section][index]
                    if key in ("counts", "size") and isinstance(target.get("segmentation"), dict):
                        target = target["segmentation"]
                    target[key] = value
                    assert isinstance(dataset(coco, read_images=False), CheckReport)
                    n += 1
            for value in GARBAGE:
                coco = copy.deepcopy(base)
                coco[section][index] = value
                assert not dataset(coco, read_images=False).ok
    for value in GARBAGE:
        for section in ("images", "categories", "annotations"):
            assert isinstance(dataset({**base, section: value}), CheckReport)
        assert isinstance(dataset(value), CheckReport)
    huge = _mutated(lambda c: c["images"][0].update(height=10**400, width=10**400))
    (problem,) = [p for p in dataset(huge, read_images=False).problems if p.kind == "bad_image_entry"]
    assert "image 101" in problem.message
    assert n > 300


def test_progress_wraps_the_image_loop(dataset):
    seen = []

    def progress(items):
        seen.append(len(items))
        return items

    dataset(_base_coco(), progress=progress)
    assert seen == [3]


# ---------------------------------------------------------------- real data


def _real(name: str) -> tuple[Path, Path]:
    folder = SHARED_DATA / name
    if not (folder / "annotations.json").is_file() or not (folder / "images").is_dir():
        pytest.skip(f"real dataset {name!r} not found at {folder} (../shared/data beside the checkout)")
    return folder / "annotations.json", folder / "images"


def test_trashcan_is_clean_and_fast():
    annotations, images = _real("trashcan")
    start = time.perf_counter()
    report = check_coco(annotations, images)
    elapsed = time.perf_counter() - start
    assert report.errors == [], report.summary()
    assert (report.n_images, report.n_annotations) == (753, 1719)
    assert elapsed < 20, f"checking trashcan took {elapsed:.1f} s"


def test_fruits_nuts_is_clean():
    annotations, images = _real("fruits_nuts")
    report = check_coco(annotations, images)
    assert report.errors == [], report.summary()
    assert (report.n_images, report.n_annotations) == (18, 165)
