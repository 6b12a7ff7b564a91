"""Known label errors planted into a COCO json with a seed: the ground truth that measures `trash data audit`.

Three kinds, as the audit looks for them (docs/audit.md): a share of the annotations relabelled to another
category (wrong class), a share deleted (missing), and spurious boxes of background added to a share of the
images (a rectangle polygon of a random category where no annotation's box is). Each annotation is planted at
most once; the record of what was planted is returned with the noisy json.
"""

import copy

import numpy as np

from app.errors import TrashError


def _overlaps(box: tuple[float, float, float, float], boxes: list) -> bool:
    x, y, w, h = box
    return any(x < bx + bw and bx < x + w and y < by + bh and by < y + h for bx, by, bw, bh in boxes)


def _spurious_box(rng: np.random.Generator, image: dict, boxes: list, size: tuple[float, float]):
    """A box of `size` inside the image that overlaps none of `boxes`, or None after 50 tries."""
    w, h = min(size[0], image["width"] / 2), min(size[1], image["height"] / 2)
    for _ in range(50):
        box = (float(rng.uniform(0, image["width"] - w)), float(rng.uniform(0, image["height"] - h)), w, h)
        if not _overlaps(box, boxes):
            return box
    return None


def _box_annotation(ann_id: int, image_id: int, category_id: int, box: tuple) -> dict:
    x, y, w, h = box
    polygon = [x, y, x + w, y, x + w, y + h, x, y + h]
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "segmentation": [polygon],
            "area": w * h, "bbox": list(box), "iscrowd": 0}  # fmt: skip


def plant_errors(
    data: dict, seed: int, relabel: float = 0.10, delete: float = 0.05, spurious: float = 0.03
) -> tuple[dict, dict]:
    """A copy of the COCO dict with planted errors, and the record of them.

    Args:
        data: The COCO json as a dict (left as it is).
        seed: Which annotations and images are chosen (the same seed, the same errors).
        relabel: Share of the annotations given another category.
        delete: Share of the annotations deleted (chosen among those not relabelled).
        spurious: Spurious background boxes to add, as a share of the annotation count (box sizes drawn from
            the annotations' own boxes).

    Returns:
        (noisy json, record): record["relabel"] maps annotation id -> [true category, planted category],
        record["delete"] lists the deleted annotations, record["spurious"] the added annotation ids.
    """
    if len(data.get("categories", [])) < 2:
        raise TrashError("planting wrong classes needs at least 2 categories")
    rng = np.random.default_rng(seed)
    noisy = copy.deepcopy(data)
    anns = noisy.get("annotations", [])
    order = rng.permutation(len(anns))
    n_relabel, n_delete = round(relabel * len(anns)), round(delete * len(anns))
    cats = [c["id"] for c in noisy["categories"]]
    record = {"seed": seed, "relabel": {}, "delete": [], "spurious": []}
    for i in order[:n_relabel]:
        true = anns[i]["category_id"]
        anns[i]["category_id"] = int(rng.choice([c for c in cats if c != true]))
        record["relabel"][anns[i]["id"]] = [true, anns[i]["category_id"]]
    gone = set(order[n_relabel : n_relabel + n_delete].tolist())
    record["delete"] = [anns[i] for i in sorted(gone)]
    noisy["annotations"] = [a for i, a in enumerate(anns) if i not in gone]
    _add_spurious(rng, noisy, round(spurious * len(anns)), record, cats)
    return noisy, record


def _add_spurious(rng: np.random.Generator, noisy: dict, count: int, record: dict, cats: list[int]) -> None:
    """Adds `count` spurious boxes (fewer where images have no free background), recording their ids."""
    boxes: dict[int, list] = {im["id"]: [] for im in noisy["images"]}
    for ann in noisy["annotations"] + record["delete"]:  # a deleted object is not background either
        boxes[ann["image_id"]].append(ann["bbox"])
    sizes = [a["bbox"][2:] for a in noisy["annotations"]] or [[16.0, 16.0]]
    next_id = max([a["id"] for a in noisy["annotations"] + record["delete"]], default=0) + 1
    for _ in range(count):
        image = noisy["images"][int(rng.integers(len(noisy["images"])))]
        box = _spurious_box(rng, image, boxes[image["id"]], sizes[int(rng.integers(len(sizes)))])
        if box is None:
            continue
        noisy["annotations"].append(_box_annotation(next_id, image["id"], int(rng.choice(cats)), box))
        boxes[image["id"]].append(list(box))
        record["spurious"].append(next_id)
        next_id += 1
