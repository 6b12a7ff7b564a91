"""bench/gpu: the measurement rows at their smallest size on CPU, the row runner (errors, budget), the wheel check.

The whole dry run (`bench/gpu/run.sh --cpu-dry-run`, minutes on 2 shared cores) runs with TRASH_GPU_DRY_RUN=1.
"""

import json
import os
import subprocess
import zipfile
from pathlib import Path

import pytest

from bench.gpu import measure, wheels

REPO = Path(__file__).resolve().parents[1]
#: the rows cheap enough for the suite (the fit rows train in subprocesses: the full dry run covers them)
QUICK = ["train fp32", "train fp16+GradScaler+channels_last", "predict TTA flip: batched / one view"]


def test_quick_rows_run_at_the_smallest_size_on_cpu(tmp_path, monkeypatch):
    monkeypatch.setattr(measure, "cuda", lambda: False)
    assert measure.main(["--cpu-dry-run", "--out", str(tmp_path), "--only", *QUICK]) == 0
    result = json.loads((tmp_path / "gpu.json").read_text())
    rows = {r["name"]: r for r in result["rows"]}
    assert list(rows) == QUICK and result["dry_run"] is True
    assert rows["train fp32"]["status"] == "ok" and rows["train fp32"]["figures"]["img_s"] > 0
    fp16 = rows["train fp16+GradScaler+channels_last"]
    assert fp16["status"] == "skipped-on-cpu" and "CUDA" in fp16["reason"]
    tta = rows["predict TTA flip: batched / one view"]["figures"]
    assert tta["views"] == 4 and tta["mask_equal_to_cpu"] == 1.0  # on CPU both paths are the CPU path
    assert "| train fp32 | ok |" in (tmp_path / "gpu.md").read_text()


def test_every_precision_and_layout_has_a_train_row():
    names = [n for n in measure.ROWS if n.startswith("train ") and "smp" not in n]
    assert len(names) == 6 and sum("channels_last" in n for n in names) == 3
    assert {measure.ROWS[n].kwargs["precision"] for n in names} == {"fp32", "bf16", "fp16"}
    assert all(measure.ROWS[n].cuda_only for n in names if "fp16" in n)


def _rows(*specs):
    return {name: measure.Row(fn, estimate) for name, fn, estimate in specs}


def test_a_failing_row_is_recorded_and_the_next_still_runs(tmp_path, monkeypatch):
    def broken(s):
        raise ValueError("no such kernel")

    monkeypatch.setattr(measure, "ROWS", _rows(("bad", broken, 1), ("good", lambda s: {"x": 1}, 1)))
    result = measure.measure(measure.setting(True, tmp_path), 60, tmp_path)
    bad, good = result["rows"]
    assert bad["status"] == "error" and "ValueError: no such kernel" in bad["error"]
    assert good["status"] == "ok" and good["figures"] == {"x": 1}
    assert json.loads((tmp_path / "gpu.json").read_text())["rows"][1]["name"] == "good"


def test_rows_that_do_not_fit_the_budget_are_listed_not_run(tmp_path, monkeypatch):
    ran = []
    rows = _rows(("short", lambda s: ran.append("short") or {}, 5), ("long", lambda s: ran.append("long") or {}, 500))
    monkeypatch.setattr(measure, "ROWS", rows)
    result = measure.measure(measure.setting(False, tmp_path), 60, tmp_path)
    assert ran == ["short"] and [r["status"] for r in result["rows"]] == ["ok", "skipped-budget"]
    assert "budget" in result["rows"][1]["reason"]


def _wheel(folder: Path, name: str, version: str, requires: list[str]) -> None:
    meta = "".join(f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(folder / f"{name.replace('-', '_')}-{version}-py3-none-any.whl", "w") as z:
        z.writestr(f"{name}-{version}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {name}\n{meta}")


def test_the_wheel_check_finds_missing_wheels_and_unmet_dependencies(tmp_path, monkeypatch):
    (tmp_path / "wheels.txt").write_text("alpha==1.0\nbeta==2.0  # a comment\n")
    (tmp_path / "install.txt").write_text("alpha==1.0\n")
    monkeypatch.setattr(wheels, "WHEELS_TXT", tmp_path / "wheels.txt")
    monkeypatch.setattr(wheels, "INSTALL_TXT", tmp_path / "install.txt")
    monkeypatch.setattr(wheels, "NO_DEPS", ())
    folder = tmp_path / "w"
    folder.mkdir()
    _wheel(folder, "alpha", "1.0", ["beta>=2", "torch>=2", "spacy<4", 'pywin32; sys_platform == "win32"'])
    unmet = "alpha requires beta>=2, which is neither carried nor on the GPU machine"
    assert wheels.problems(folder) == ["missing wheel beta==2.0", unmet]  # torch: there; spacy: left out
    _wheel(folder, "beta", "2.0", ["gamma"])
    assert wheels.problems(folder) == ["beta requires gamma, which is neither carried nor on the GPU machine"]
    assert "over the 0.0001 MiB limit" in wheels.problems(folder, limit_mib=0.0001)[-1]


def test_the_carried_wheel_folder_is_complete_when_prepared():
    folder = REPO / ".whl" / "gpu"
    if not folder.is_dir():
        pytest.skip("no .whl/gpu: run bench/gpu/prepare.sh (downloads from PyPI) to check the real wheel set")
    assert wheels.problems(folder) == []


@pytest.mark.skipif(os.environ.get("TRASH_GPU_DRY_RUN") != "1", reason="minutes: set TRASH_GPU_DRY_RUN=1")
def test_run_sh_cpu_dry_run(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path)}
    done = subprocess.run(["bash", "bench/gpu/run.sh", "--cpu-dry-run"], cwd=REPO, env=env)
    assert done.returncode == 0
    rows = json.loads((tmp_path / "gpu.json").read_text())["rows"]
    assert len(rows) == len(measure.ROWS) and {r["status"] for r in rows} <= {"ok", "skipped-on-cpu"}


def test_stubs_stand_in_for_the_gpu_machines_packages(tmp_path):
    from importlib.metadata import distributions

    lines = wheels.write_stubs(tmp_path)
    found = {d.metadata["Name"]: d.version for d in distributions(path=[str(tmp_path)])}
    assert f"torch=={found['torch']}" in lines and found["torch"] == wheels.GPU_VERSIONS["torch"]
    assert set(found) == wheels.ON_GPU_MACHINE - {"pip"}


def test_an_incomplete_install_still_writes_every_row(tmp_path, monkeypatch):
    monkeypatch.setattr(measure, "steps", None)
    monkeypatch.setattr(measure, "IMPORT_ERROR", "ModuleNotFoundError: No module named 'fastai'")
    monkeypatch.setattr(measure, "cuda", lambda: True)
    measure.measure(measure.setting(True, tmp_path), 60, tmp_path)
    rows = json.loads((tmp_path / "gpu.json").read_text())["rows"]
    assert len(rows) == len(measure.ROWS) and all("fastai" in r["error"] for r in rows)
