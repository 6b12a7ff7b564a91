"""`trash data audit` on a real (tiny) `trash fit --fold all` group: outputs, the cleaned json, clear refusals."""

import json
import shutil
from pathlib import Path

from typer.testing import CliRunner

from app.cli import app
from app.infer.audit import oof_image_ids

runner = CliRunner()


def run(*args, code=0):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output
    return result


def test_audit_of_a_fold_group_writes_its_report_and_a_clean_json_that_checks(fold_group, demo, tmp_path):
    group = tmp_path / "group"  # a copy: the audit adds its summary to the group it reads
    shutil.copytree(fold_group[2], group, symlinks=True)
    clean = tmp_path / "clean.json"
    out = run("data", "audit", group, "--out", tmp_path / "audit", "--top", 4, "--write-clean", clean,
              "--clean-min-score", 0).output  # fmt: skip
    report = json.loads((tmp_path / "audit" / "audit.json").read_text())
    scored = sum(len(oof_image_ids(group / f"fold{k}" / "oof.npz")) for k in (0, 1))
    audited = json.loads((tmp_path / "audit" / "audited.json").read_text())  # the folds' val jsons, merged
    assert report["images_audited"] == scored == len(audited["images"])
    assert f"{scored} images audited" in out
    assert ("out-of-fold mIoU is" in out) == (report["oof_miou"] < 0.3)  # 1-epoch tiny folds: a warning
    assert (tmp_path / "audit" / "audit.csv").is_file() and (tmp_path / "audit" / "images.csv").is_file()
    assert ("gallery.png" in out) == bool(report["findings"])
    changes = (tmp_path / "clean.changes.csv").read_text().splitlines()
    applied = [f for f in report["findings"] if f["kind"] != "loose_boundary"]
    assert len(changes) == 1 + len(applied)  # --clean-min-score 0: every finding with an action is applied
    assert "0 error(s)" in run("data", "check", clean, "--images", demo["images"]).output
    # the group's page shows the audit, and keeps it when rebuilt without the audit's folder
    summary = json.loads((group / "audit_summary.json").read_text())
    assert summary["counts"] == report["counts"] and len(summary["top"]) == min(4, len(report["findings"]))
    assert (group / "audit_gallery.png").is_file() == bool(report["findings"])
    shutil.rmtree(tmp_path / "audit")
    run("report", group)
    html = (group / "report.html").read_text()
    assert "Data audit: likely label errors" in html and "images audited" in html
    assert all(f["kind"] in html for f in summary["top"])
    assert ('alt="the audit' in html) == bool(report["findings"])


def test_audit_refuses_a_single_run_a_fold_missing_and_a_json_of_other_classes(fold_group, demo, tmp_path):
    _, _, group = fold_group
    assert "single run" in run("data", "audit", group / "fold0", "--out", tmp_path, code=2).output
    partial = tmp_path / "partial"
    shutil.copytree(group, partial, ignore=shutil.ignore_patterns("*.pth", "*.pkl"))
    (partial / "fold1" / "oof.npz").unlink()
    result = run("data", "audit", partial, "--out", tmp_path / "a", code=2)
    assert "fold1 of 2 folds have no oof.npz" in result.output and "trash fit --resume" in result.output
    other = json.loads(Path(demo["train"]).read_text())
    other["categories"] = other["categories"][:-1]
    last = other["categories"][-1]["id"]
    other["annotations"] = [a for a in other["annotations"] if a["category_id"] <= last]
    (tmp_path / "other.json").write_text(json.dumps(other))
    result = run("data", "audit", group, "--data", tmp_path / "other.json", "--out", tmp_path / "b", code=2)
    assert "has classes" in result.output and "Traceback" not in result.output
