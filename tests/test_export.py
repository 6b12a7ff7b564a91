"""Exports: the manifest is checked before anything is unpickled, and weights.pth predicts like export.pkl."""

import json
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from app.cli import app
from app.data.images import list_images
from app.errors import TrashError
from app.export import TRUST_ENV
from app.infer.members import load_learners
from app.infer.stream import stream_predictions
from app.runs import EXPORT, MANIFEST, WEIGHTS

runner = CliRunner()


@pytest.fixture
def copied(trained_run, tmp_path):
    """A copy of the trained run's exports, free to damage."""
    folder = tmp_path / "run"
    folder.mkdir()
    for name in (EXPORT, WEIGHTS, MANIFEST):
        shutil.copy2(trained_run / name, folder / name)
    return folder


def refuse_unpickling(monkeypatch):
    def unpickle(*args, **kwargs):
        raise AssertionError("the export was unpickled")

    monkeypatch.setattr("fastai.learner.load_learner", unpickle)


def test_weights_only_export_predicts_like_the_pickled_one(trained_run, demo):
    payload = torch.load(trained_run / WEIGHTS, weights_only=True)  # tensors and plain values only
    assert payload["classes"] == json.loads((trained_run / "resolved.json").read_text())["classes"]
    images = list_images(demo["images"], demo["test"])
    pickled = [p.probs for p in stream_predictions(load_learners([trained_run]), images)]
    weights_only = [p.probs for p in stream_predictions(load_learners([trained_run / WEIGHTS]), images)]
    assert len(pickled) == len(weights_only) == 4
    for a, b in zip(pickled, weights_only):
        assert a.shape == b.shape
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)


@pytest.mark.parametrize("name", [EXPORT, WEIGHTS])
def test_a_tampered_export_is_refused_before_it_is_read(copied, monkeypatch, name):
    data = bytearray((copied / name).read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte changed, same size
    (copied / name).write_bytes(bytes(data))
    refuse_unpickling(monkeypatch)
    with pytest.raises(TrashError, match="does not match its manifest"):
        load_learners([copied / name])


def test_predict_refuses_a_tampered_export_with_exit_code_2(copied, demo, tmp_path):
    (copied / EXPORT).write_bytes((copied / EXPORT).read_bytes() + b"appended")
    args = ["predict", str(copied), "--images", str(demo["images"]), "--data", str(demo["test"])]
    args += ["--out", str(tmp_path / "out")]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "refusing to load it" in result.output
    assert not (tmp_path / "out" / "submission.csv").exists()


def test_an_export_without_manifest_loads_only_when_trusted(copied, monkeypatch):
    (copied / MANIFEST).unlink()
    monkeypatch.delenv(TRUST_ENV, raising=False)
    with pytest.raises(TrashError, match=f"no {MANIFEST}.*{TRUST_ENV}=1"):
        load_learners([copied])
    monkeypatch.setenv(TRUST_ENV, "1")
    assert load_learners([copied])[0].trash_classes


def test_a_lone_weights_file_predicts_without_a_manifest(copied, demo, tmp_path, monkeypatch):
    """weights.pth runs no code when loaded: copied alone (no manifest, no export.pkl) it still predicts."""
    monkeypatch.delenv(TRUST_ENV, raising=False)
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / WEIGHTS).write_bytes((copied / WEIGHTS).read_bytes())
    for model in (alone / WEIGHTS, alone):  # the file, or a folder holding only it
        args = ["predict", str(model), "--images", str(demo["images"]), "--data", str(demo["test"])]
        result = runner.invoke(app, [*args, "--out", str(tmp_path / "out"), "--no-overlays"])
        assert result.exit_code == 0, result.output
        assert (tmp_path / "out" / "submission.csv").is_file()
