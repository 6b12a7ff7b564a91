"""Inference engines and `--backend auto` (app/infer/backend.py): the fastest engine whose masks agree."""

import json

import pytest
import torch
from typer.testing import CliRunner

import app.infer.backend as backend
from app.cli import app
from app.registry import Registry
from tests.infer.test_onnx import masks, same_pixels

runner = CliRunner()


def predict(tmp_path, name, model, demo, *options, data="test"):
    out = tmp_path / name
    args = ["predict", model, "--images", demo["images"], "--data", demo[data], "--out", out, "--no-overlays"]
    result = runner.invoke(app, [str(a) for a in [*args, *options]])
    assert result.exit_code == 0, result.output
    return out, result.output, json.loads((out / "predictions.json").read_text())["members"]


class Liar:
    """A fast engine whose masks are all class 1: auto must never use it."""

    def __init__(self, model, sizes):
        self.classes = model(torch.zeros(1, 3, 64, 64)).shape[1]

    def __call__(self, x):
        logits = torch.zeros(x.shape[0], self.classes, *x.shape[-2:])
        logits[:, 1] = 1.0
        return logits


def test_the_cli_help_names_every_engine():
    import re

    from app.cli.options import BACKEND_HELP

    named = re.findall(r"(\w+) \(", BACKEND_HELP.split(": ", 1)[1])
    assert named == list(backend.BACKENDS)


def test_pick_is_the_fastest_engine_that_agrees():
    seconds = {"torch": 1.0, "bf16": 0.2, "onnx": 0.5}
    assert backend.pick(seconds, {"torch": 1.0, "bf16": 0.99995, "onnx": 1.0}) == "bf16"
    assert backend.pick(seconds, {"torch": 1.0, "bf16": 0.99, "onnx": 1.0}) == "onnx"
    assert backend.pick(seconds, {"torch": 1.0, "bf16": 0.5, "onnx": 0.9}) == "torch"
    assert backend.pick({"torch": 0.1, "onnx": 0.5}, {"torch": 1.0, "onnx": 1.0}) == "torch"


def test_auto_skips_a_faster_engine_whose_masks_differ(trained_run, demo, tmp_path, monkeypatch):
    """Timings are fixed (liar fastest, then onnx): auto must refuse the liar and run ONNX Runtime for real."""
    engines = {**backend.ENGINES, "liar": backend.Engine("test: wrong masks, fast", Liar)}
    monkeypatch.setattr(backend, "ENGINES", Registry("inference backend", engines))
    order = {"Liar": 0.01, "OrtNet": 0.02}
    forward = backend._timed_argmax
    fixed = lambda net, x: (order.get(type(net).__name__, 1.0), forward(net, x)[1])  # noqa: E731
    monkeypatch.setattr(backend, "_timed_argmax", fixed)
    out, printed, members = predict(tmp_path, "auto", trained_run, demo, "--batch-size", "1", data="val")
    choice = members[0]["backend"]
    assert choice["engine"] == "onnx" and choice["same_pixels"]["liar"] < backend.AGREE
    assert "backend    onnx (fastest whose masks agree" in printed and "liar masks" in printed
    reference, _, plain = predict(tmp_path, "torch", trained_run, demo, "--backend", "torch", data="val")
    assert plain[0]["backend"]["engine"] == "torch"
    assert same_pixels(masks(out), masks(reference)) >= 0.999


def test_auto_measures_every_engine_and_records_why(trained_run, demo, tmp_path):
    options = ("--batch-size", "1", "--tta-views", "ms")
    _, printed, members = predict(tmp_path, "auto", trained_run, demo, *options, data="val")
    choice = members[0]["backend"]
    assert choice["reason"] == "measured" and choice["engine"] in backend.ENGINES
    assert set(choice["seconds"]) | set(choice["unavailable"]) == set(backend.ENGINES)
    # the run's own multiple is 1, so ms views ask for sides (48, 80 px) that an ONNX graph cannot take freely
    assert "multiples of the ONNX stride" in choice["unavailable"]["onnx"]
    assert f"backend    {choice['engine']}" in printed


def test_few_images_keep_torch_and_say_so(trained_run, demo, tmp_path):
    _, printed, members = predict(tmp_path, "few", trained_run, demo)  # 4 images, batches of 8
    assert members[0]["backend"]["engine"] == "torch" and "too few" in members[0]["backend"]["reason"]
    assert "backend    torch (4 images: too few to be worth timing the engines (from 64 on))" in printed


@pytest.mark.parametrize("engine", ["onnx", "bf16"])
def test_each_engine_predicts_the_torch_masks(engine, trained_run, demo, tmp_path):
    if engine == "bf16":
        try:
            backend._bf16(torch.nn.Conv2d(3, 3, 1), set())
        except backend.Unavailable as e:
            pytest.skip(str(e))
    reference, _, _ = predict(tmp_path, "torch", trained_run, demo, "--backend", "torch", "--tile")
    out, printed, members = predict(tmp_path, engine, trained_run, demo, "--backend", engine, "--tile")
    assert members[0]["backend"] == {"engine": engine, "reason": f"--backend {engine}"}
    # bf16 rounds activations to 8 bits of mantissa: near-ties may flip (the ONNX file's fp32 tolerance is 99.9%)
    assert same_pixels(masks(out), masks(reference)) >= (0.999 if engine == "onnx" else 0.99)


def test_bad_backend_choices_are_named(trained_run, demo, tmp_path):
    args = ["predict", str(trained_run), "--images", str(demo["images"]), "--out", str(tmp_path / "p")]
    result = runner.invoke(app, [*args, "--backend", "onxx"])
    assert result.exit_code == 2 and "'onxx'" in result.output and "did you mean 'onnx'" in result.output


def test_top_k_epochs_run_on_torch_only(trained_run, demo):
    from app.errors import TrashError
    from app.infer.members import load_members
    from app.infer.options import InferenceOptions

    members = load_members([trained_run])
    members[0].states = [members[0].learn.model.state_dict()]  # as --topk makes them
    chunk = [("a", next(iter(sorted(demo["images"].glob("images/test_*.jpg")))))]
    with pytest.raises(TrashError, match="--backend onnx with --topk"):
        backend.choose_engines(members, chunk, InferenceOptions(backend="onnx"), 100)
    backend.choose_engines(members, chunk, InferenceOptions(backend="auto", batch_size=1), 100)
    assert members[0].backend["engine"] == "torch" and "top-k" in members[0].backend["reason"]


def test_evaluate_defaults_to_torch(trained_run, demo):
    args = ["evaluate", str(trained_run), "--data", str(demo["val"]), "--images", str(demo["images"])]
    result = runner.invoke(app, [*args, "--batch-size", "1"])
    assert result.exit_code == 0, result.output
    assert "backend    torch (--backend torch)" in result.output


def test_a_fold_group_is_timed_once(fold_group, demo, tmp_path):
    _, printed, members = predict(tmp_path, "group", fold_group[2], demo, "--batch-size", "1", data="val")
    first, second = (m["backend"] for m in members)
    assert first["reason"] == second["reason"] == "measured" and first["seconds"] == second["seconds"]
    assert "[2 members]" in printed
