"""`trash export --format onnx` and ONNX files as models of predict / evaluate (app/infer/onnx_*.py)."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from app.cli import app
from app.errors import EXPORT_MISMATCH, TrashError
from app.infer.onnx_export import EXPORT_MULTIPLE, Deployed, checked_size, refusal, verify, write_graph
from app.model.build import ARCHS, build_model
from app.recipe import Model

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def onnx_files(trained_run, tmp_path_factory):
    """The tiny run exported at its training size and with free height and width."""
    root = tmp_path_factory.mktemp("onnx")
    fixed, dynamic = root / "model.onnx", root / "dynamic.onnx"
    for path, extra in ((fixed, ()), (dynamic, ("--dynamic",))):
        result = invoke("export", trained_run, "--out", path, *extra)
        assert result.exit_code == 0, result.output
        assert "verified" in result.output
    return fixed, dynamic


def masks(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in sorted((folder / "masks").rglob("*.png"))}


def same_pixels(a: dict, b: dict) -> float:
    assert a.keys() == b.keys() and a
    return sum(int((a[k] == b[k]).sum()) for k in a) / sum(a[k].size for k in a)


def predict(tmp_path, name, *models_and_options, demo):
    out = tmp_path / name
    args = ["predict", *models_and_options, "--images", demo["images"], "--data", demo["test"], "--out", out]
    result = invoke(*args, "--no-overlays")
    assert result.exit_code == 0, result.output
    return out


def test_export_metadata_stands_alone(onnx_files, trained_run):
    import onnx

    props = {p.key: p.value for p in onnx.load(str(onnx_files[0])).metadata_props}
    resolved = json.loads((trained_run / "resolved.json").read_text())
    assert json.loads(props["classes"]) == resolved["classes"]
    assert len(json.loads(props["colours"])) == len(resolved["classes"])
    assert props["size"] == props["train_size"] == f"{resolved['data']['size']}x{resolved['data']['size']}"
    assert props["recipe"] == resolved["name"] and props["arch"] == resolved["model"]["arch"]
    report = json.loads(props["verification"])
    assert report["max_prob_diff"] <= 1e-3 and report["same_pixels"] >= 0.999 and report["images"] >= 2
    dynamic = {p.key: p.value for p in onnx.load(str(onnx_files[1])).metadata_props}
    assert dynamic["dynamic"] == "true" and len(json.loads(dynamic["verification"])["checked_sizes"]) == 2


def test_plain_onnxruntime_runs_it_without_trash_or_torch(onnx_files, trained_run, demo, tmp_path):
    """A subprocess with only onnxruntime and numpy imported predicts what PyTorch's export predicts."""
    from app.export import load_export
    from app.infer.onnx_runtime import resized_pixels

    learn = load_export(trained_run / "export.pkl")
    paths = sorted(Path(demo["images"]).glob("images/test_*.jpg"))[:3]
    pixels = resized_pixels(paths, (64, 64))
    np.save(tmp_path / "x.npy", pixels.numpy())
    x = learn.dls.test_dl(paths, bs=len(paths)).one_batch()[0]
    with torch.no_grad():
        reference = torch.softmax(learn.model.eval()(x).float(), 1).numpy()
    np.save(tmp_path / "ref.npy", reference)
    script = f"""
import json, sys
import numpy as np, onnxruntime as ort
s = ort.InferenceSession({str(onnx_files[0])!r}, providers=["CPUExecutionProvider"])
meta = s.get_modelmeta().custom_metadata_map
probs = s.run(["probs"], {{"image": np.load({str(tmp_path / "x.npy")!r})}})[0]
ref = np.load({str(tmp_path / "ref.npy")!r})
assert not any(m == "torch" or m == "app" or m.startswith(("torch.", "app.")) for m in sys.modules)
print(json.dumps({{"classes": json.loads(meta["classes"]), "diff": float(np.abs(probs - ref).max()),
                  "same": float((probs.argmax(1) == ref.argmax(1)).mean())}}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["classes"] == list(learn.trash_classes)
    assert result["diff"] <= 1e-3 and result["same"] >= 0.999


def test_predict_onnx_tta_gives_the_run_s_submission(onnx_files, trained_run, demo, tmp_path):
    run = predict(tmp_path, "run", trained_run, "--tta", demo=demo)
    ort_out = predict(tmp_path, "onnx", onnx_files[0], "--tta", demo=demo)
    assert same_pixels(masks(run), masks(ort_out)) >= 0.999
    rows = [list(csv.reader((d / "submission.csv").open())) for d in (run, ort_out)]
    assert len(rows[0]) == len(rows[1]) > 1
    same_rows = sum(a == b for a, b in zip(*rows)) / len(rows[0])
    assert same_rows >= 0.95, same_rows  # run-length strings: one flipped pixel changes a row


def test_tiles_ms_views_and_mixed_ensembles(onnx_files, trained_run, demo, tmp_path):
    for options in (("--tile",), ("--tta-views", "d4")):  # tiles at the image's own size; the 8 dihedral views
        run = predict(tmp_path, f"run{len(options)}", trained_run, *options, demo=demo)
        ort_out = predict(tmp_path, f"onnx{len(options)}", onnx_files[1], *options, demo=demo)
        assert same_pixels(masks(run), masks(ort_out)) >= 0.999
    # scales round to the file's stride (32: 48 -> 64, 80 -> 96), the run's to its own (1): similar, not equal
    predict(tmp_path, "ms", onnx_files[1], "--tta-views", "ms", demo=demo)
    mixed = predict(tmp_path, "mixed", trained_run, onnx_files[0], demo=demo)  # one model twice: its own masks
    plain = predict(tmp_path, "plain", trained_run, demo=demo)
    assert same_pixels(masks(mixed), masks(plain)) >= 0.999
    summary = json.loads((mixed / "predictions.json").read_text())
    assert [m["name"] for m in summary["members"]][1] == str(onnx_files[0])


def test_evaluate_onnx_scores_as_the_run(onnx_files, trained_run, demo):
    scores = []
    for model in (trained_run, onnx_files[0]):
        result = invoke("evaluate", model, "--data", demo["val"], "--images", demo["images"])
        assert result.exit_code == 0, result.output
        scores.append(float(result.output.split("mIoU (dataset confusion matrix)")[1].split()[0]))
    assert abs(scores[0] - scores[1]) <= 1e-3


def test_a_fixed_size_file_refuses_scaled_views(onnx_files, demo, tmp_path):
    args = ["predict", onnx_files[0], "--tta-views", "ms", "--images", demo["images"], "--data", demo["test"]]
    args += ["--out", tmp_path / "p"]
    result = invoke(*args)
    assert result.exit_code == 2 and "--dynamic" in result.output and str(onnx_files[0]) in result.output


def test_bad_inputs_name_the_file(onnx_files, trained_run, demo, tmp_path):
    fake = tmp_path / "fake.onnx"
    fake.write_bytes(b"not a protobuf at all")
    result = invoke("predict", fake, "--images", demo["images"], "--out", tmp_path / "p")
    assert result.exit_code == 2 and "fake.onnx is not an ONNX model" in result.output
    data = json.loads(Path(demo["test"]).read_text())
    data["categories"] = data["categories"][:-1]
    other = tmp_path / "other.json"
    other.write_text(json.dumps(data))
    result = invoke("predict", onnx_files[0], "--images", demo["images"], "--data", other, "--out", tmp_path / "q")
    assert result.exit_code == 2 and str(onnx_files[0]) in result.output and "other.json" in result.output
    result = invoke("export", trained_run, "--size", "64by64", "--out", tmp_path / "x.onnx")
    assert result.exit_code == 2 and "'64by64' is not HxW" in result.output and not (tmp_path / "x.onnx").exists()
    result = invoke("export", trained_run, "--format", "tflite", "--out", tmp_path / "x.onnx")
    assert result.exit_code == 2 and "onnx" in result.output


def test_an_onnx_file_from_elsewhere_is_refused(demo, tmp_path):
    model = build_model(Model(encoder="test_resnet", pretrained=False, last_cross=False), 3, 64)[0]
    write_graph(Deployed(model, (0.5,) * 3, (0.25,) * 3), (64, 64), False, tmp_path / "plain.onnx")
    result = invoke("predict", tmp_path / "plain.onnx", "--images", demo["images"], "--out", tmp_path / "p")
    assert result.exit_code == 2 and "plain.onnx" in result.output and "trash export" in result.output


def test_a_mismatch_fails_loudly_and_writes_nothing(trained_run, tmp_path, monkeypatch):
    import app.infer.onnx_export as onnx_export

    impossible = onnx_export.Precision("test", False, -1.0, 1.1)  # no graph can meet it
    monkeypatch.setattr(onnx_export, "ONNX_PRECISIONS", {"fp32": impossible})
    out = tmp_path / "model.onnx"
    result = invoke("export", trained_run, "--out", out)
    assert result.exit_code == EXPORT_MISMATCH and "disagree" in result.output and not out.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary file left either


def test_a_size_off_the_stride_is_refused_naming_it():
    fpn = {"arch": "fpn", "stride": 32, "multiple": 32}
    with pytest.raises(TrashError, match="--size 65x64: sides must be positive multiples of the model's stride 32"):
        checked_size((65, 64), fpn, False)
    assert checked_size((96, 64), fpn, False) == (96, 64)
    assert checked_size((65, 64), {"arch": "unet", "stride": 32, "multiple": 1}, False) == (65, 64)  # any side


def test_upernet_refuses_a_free_size_up_front():
    assert "adaptive_avg_pool2d" in refusal({"arch": "upernet"}, True)
    assert refusal({"arch": "upernet"}, False) is None and refusal({"arch": "unet"}, True) is None
    upernet = {"arch": "upernet", "stride": 32, "multiple": 32}
    with pytest.raises(TrashError, match="--size HxW"):
        checked_size((64, 64), upernet, True)
    with pytest.raises(TrashError, match="multiples of the model's stride 192 .*pyramid pooling"):
        checked_size((256, 256), upernet, False)
    assert checked_size((384, 192), upernet, False) == (384, 192)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_every_arch_exports_and_matches(arch, tmp_path):
    """Every arch of `trash models` (tiny encoder, random weights) exports and verifies; free sizes where allowed."""
    model = build_model(Model(arch=arch, encoder="test_resnet", pretrained=False, last_cross=False), 3, 64)[0]
    deployed = Deployed(model, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    dynamic = refusal({"arch": arch}, True) is None
    side = EXPORT_MULTIPLE.get(arch, (64,))[0]  # upernet: 192, its smallest exportable side
    write_graph(deployed, (side, side), dynamic, tmp_path / "m.onnx")
    report = verify(deployed, tmp_path / "m.onnx", torch.rand(2, 3, side, side) * 255, 32 if dynamic else 0)
    assert report["max_prob_diff"] <= 1e-3 and report["same_pixels"] >= 0.999


def test_fp16_export_from_the_command_line(trained_run, demo, tmp_path):
    import onnx

    out = tmp_path / "half.onnx"
    result = invoke("export", trained_run, "--fp16", "--images", Path(demo["images"]) / "images", "--out", out)
    assert result.exit_code == 0, result.output
    assert "fp16" in result.output and "verified" in result.output
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    report = json.loads(props["verification"])
    assert props["precision"] == "fp16" and report["tolerance"] == {"max_prob_diff": 5e-2, "same": 0.99}
    assert report["max_prob_diff"] <= 5e-2 and report["same_pixels"] >= 0.99
    weights = onnx.load(str(out)).graph.initializer
    assert any(w.data_type == onnx.TensorProto.FLOAT16 for w in weights)  # really half weights
    ort_out = predict(tmp_path, "half", out, demo=demo)
    assert len(masks(ort_out)) == 4
