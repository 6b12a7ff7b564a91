"""Planted label errors (app/data/noise.py): seeded, at the asked rates, and still a valid COCO json."""

import json
from pathlib import Path

from app.data.check import check_coco
from app.data.noise import plant_errors


def test_planted_errors_follow_the_seed_and_rates_and_keep_the_json_valid(demo, tmp_path):
    data = json.loads(Path(demo["train"]).read_text())
    n = len(data["annotations"])
    noisy, record = plant_errors(data, seed=3, relabel=0.2, delete=0.1, spurious=0.1)
    again, _ = plant_errors(data, seed=3, relabel=0.2, delete=0.1, spurious=0.1)
    other, _ = plant_errors(data, seed=4, relabel=0.2, delete=0.1, spurious=0.1)
    assert noisy == again and noisy != other and len(json.loads(Path(demo["train"]).read_text())["annotations"]) == n
    assert len(record["relabel"]) == round(0.2 * n) and len(record["delete"]) == round(0.1 * n)
    assert 0 < len(record["spurious"]) <= round(0.1 * n)
    by_id = {a["id"]: a for a in noisy["annotations"]}
    assert all(by_id[i]["category_id"] == new != old for i, (old, new) in record["relabel"].items())
    assert not {a["id"] for a in record["delete"]} & set(by_id) and not set(record["relabel"]) & {
        a["id"] for a in record["delete"]
    }
    (tmp_path / "noisy.json").write_text(json.dumps(noisy))
    assert check_coco(tmp_path / "noisy.json", demo["images"], read_images=False).ok
    for i in record["spurious"]:  # background boxes: they overlap no box of the (original) json's image
        x, y, w, h = by_id[i]["bbox"]
        for a in data["annotations"]:
            bx, by, bw, bh = a["bbox"]
            assert a["image_id"] != by_id[i]["image_id"] or not (
                x < bx + bw and bx < x + w and y < by + bh and by < y + h
            )
