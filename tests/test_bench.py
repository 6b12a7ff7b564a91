"""Benchmark helpers (bench/): side-by-side timing, rows, the table, the timed steps; every bench is registered."""

import importlib

import pytest
import torch

from bench.common import infer_step, measure, row, side_by_side, train_step
from bench.run import BENCHES, markdown


def test_side_by_side_interleaves_the_sides_and_keeps_each_best():
    calls = []
    best = side_by_side({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeat=3, warmup=1)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up, then the order rotates each round
    assert set(best) == {"a", "b"} and all(0 <= s < 1 for s in best.values())


def test_measure_times_each_side_at_one_thread_and_restores_the_threads():
    before = torch.get_num_threads()
    seen = []
    best = measure({"a": lambda: seen.append(torch.get_num_threads()), "b": lambda: sum(range(10_000))}, repeat=2)
    assert set(seen) == {1} and set(best) == {"a", "b"} and torch.get_num_threads() == before


def test_rows_and_table():
    r = row("x / y", 1.23456, ">= 1", True, x_s=2.0)
    assert r == {"name": "x / y", "value": 1.2346, "target": ">= 1", "holds": True, "figures": {"x_s": 2.0}}
    table = markdown([r, row("z", 0.5, "report", None), row("w", 0.5, ">= 1", False)])
    assert "| x / y | 1.2346 | >= 1 | yes | x_s=2.0 |" in table
    assert "| z | 0.5 | report | - |" in table and "| **no** |" in table


@pytest.mark.parametrize("precision,channels_last", [("fp32", False), ("bf16", True)])
def test_timed_steps_train_and_infer_a_model(precision, channels_last):
    model = torch.nn.Conv2d(3, 4, 3, padding=1)
    before = model.weight.detach().clone()
    train_step(model, batch=2, size=16, n_classes=4, precision=precision, channels_last=channels_last)()
    assert not torch.equal(model.weight, before)
    infer_step(model, batch=2, size=16, precision=precision, channels_last=channels_last)()


def test_every_bench_has_a_run_function():
    """Every module in bench/ but the helpers and the accuracy scripts is a benchmark `make bench` runs."""
    from pathlib import Path

    from bench.run import NOT_BENCHES

    files = {f"bench.{p.stem}" for p in Path(importlib.import_module("bench").__file__).parent.glob("*.py")}
    assert files - {f"bench.{n}" for n in NOT_BENCHES} == set(BENCHES)
    for name in BENCHES:
        assert callable(importlib.import_module(name).run), name


def test_the_plain_baseline_trains_and_is_scored_by_trash_evaluate(tmp_path):
    """bench/baseline.py on real photos: a predictions folder that `trash evaluate` reads, and its scores."""
    import json
    from pathlib import Path

    import numpy as np

    from bench import baseline
    from tests.conftest import shared_dataset

    data = shared_dataset("fruits_nuts")
    ann, images = str(data / "annotations.json"), str(data / "images")
    args = ["--train", ann, "--test", ann, "--images", images, "--size", "64", "--epochs", "2", "--out", tmp_path]
    assert baseline.main([str(a) for a in args]) == 0
    result = json.loads((tmp_path / "result.json").read_text())
    score = result["scores"][ann]
    assert 0 <= score["miou"] <= 1 and set(score["per_class_iou"]) == {"Background", "date", "fig", "hazelnut"}
    assert len((tmp_path / "history.csv").read_text().splitlines()) == 3  # header + 2 epochs
    folder = tmp_path / "predictions" / baseline.prediction_name(ann)
    coco = json.loads((data / "annotations.json").read_text())
    assert len(list((folder / "probs").glob("*.npy"))) == len(coco["images"])
    im = coco["images"][0]
    probs = np.load(folder / "probs" / Path(im["file_name"]).with_suffix(".npy")).astype(np.float32)
    assert probs.shape == (4, im["height"], im["width"]) and np.allclose(probs.sum(0), 1, atol=1e-2)


def test_onnx_speed_rows_on_a_tiny_model():
    """bench/onnx_speed.py's row, on timm's tiny test encoder at 64 px (the real sizes run in `make bench`)."""
    from bench import onnx_speed

    (r,) = onnx_speed.run(encoders=("test_resnet",), sizes=(64,), batch=1, repeat=1)
    figures = r["figures"]
    assert r["name"].startswith("onnx test_resnet 64px") and r["value"] > 0
    assert all(figures[f"{side}_img_per_cpu_s"] > 0 for side in ("ort_fp32", "torch_fp32", "torch_bf16_cl"))
    assert abs(r["value"] - figures["ort_fp32_img_per_cpu_s"] / figures["torch_fp32_img_per_cpu_s"]) < 0.05 * r["value"]


def test_the_audit_bench_tallies_each_cleaning_action_against_what_was_planted(tmp_path):
    from bench.audit_planted import cleaning_tally, markdown

    changes = tmp_path / "clean.changes.csv"
    rows = ["relabel,1,10,wrong_class,0.5,a,b,40", "relabel,1,11,wrong_class,0.4,a,b,40", "drop,2,20,spurious,0.6,c,,9",
            "ignore,3,,missing,0.2,Background,ignore,50", "ignore,3,31,wrong_class,0.2,a,ignore,7"]  # fmt: skip
    changes.write_text("action,image_id,annotation_id,kind,score,from,to,pixels\n" + "\n".join(rows) + "\n")
    tally = cleaning_tally(changes, {"relabel": {"10": [1, 2], "31": [2, 1]}, "spurious": [21], "delete": []})
    assert tally == {
        "relabel": {"changes": 2, "planted": 1, "real": 1},
        "drop": {"changes": 1, "planted": 0, "real": 1},
        "ignore": {"changes": 2, "planted": 1, "real": 0},
    }
    results = {"ranking": {}, "cleaning": tally, "held_out_miou": {"noisy": [0.1, 0.2]}, "train_seeds": ["recipe", 7]}
    table = markdown(results)
    assert "| relabel | 2 | 1 | 1 |" in table and "| noisy | 0.1000 | 0.2000 | 0.1500 |" in table
