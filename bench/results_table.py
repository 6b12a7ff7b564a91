"""The table of docs/results.md from the folders bench/trashcan_large_results.sh writes (one per run).

    .venv/bin/python -m bench.results_table runs/results-large

Each folder holds time.txt ("user sys wall" of the whole training process, /usr/bin/time), eval/evaluate.json (the
held-out test set's scores from `trash evaluate`) and the run itself (a trash run directory, or the baseline's
result.json). Prints one markdown row per folder and the per-class IoU of the recipe and baseline seeds.
"""

import json
import sys
from pathlib import Path

import numpy as np


def row(folder: Path) -> dict | None:
    score = folder / "eval" / "evaluate.json"
    if not score.is_file():
        return None
    report = json.loads(score.read_text())
    ious = {c: v for c, v in report["per_class_iou"].items() if v is not None}
    user, system, wall = (
        (map(float, (folder / "time.txt").read_text().split()))
        if (folder / "time.txt").is_file()
        else (np.nan, np.nan, np.nan)
    )
    return {
        "name": folder.name,
        "miou": report["miou"],
        "miou_per_image": report["miou_per_image"],
        "classes": len(ious),
        "above_0.1": sum(v > 0.1 for c, v in ious.items() if c != "Background"),
        "cpu": user + system,
        "wall": wall,
        "images_seen": _images_seen(folder),
        "per_class": ious,
        "comparison": report.get("comparison", []),
    }


def _images_seen(folder: Path):
    result = folder / "run" / "result.json"
    if result.is_file():
        return json.loads(result.read_text()).get("images_seen")
    metrics = next(folder.glob("run/*/latest/metrics.json"), None)
    return None if metrics is None else json.loads(metrics.read_text()).get("images_seen")


def markdown(rows: list[dict]) -> str:
    lines = [
        "| run | test mIoU | per-image mIoU | classes > 0.1 IoU | classes in the mean | CPU-s | wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['miou']:.4f} | {r['miou_per_image']:.4f} | {r['above_0.1']} | {r['classes']} | "
            f"{r['cpu']:.0f} | {r['wall']:.0f} |"
        )
    return "\n".join(lines)


def per_class(rows: list[dict]) -> str:
    names = sorted({c for r in rows for c in r["per_class"]}, key=lambda c: (c != "Background", c))
    lines = ["| class | " + " | ".join(r["name"] for r in rows) + " |", "|---" * (len(rows) + 1) + "|"]
    for c in names:
        cells = [f"{r['per_class'][c]:.3f}" if c in r["per_class"] else "-" for r in rows]
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    root = Path(argv[0] if argv else "runs/results-large")
    rows = [r for r in (row(f) for f in sorted(root.iterdir()) if f.is_dir()) if r]
    print(markdown(rows))
    print()
    print(per_class([r for r in rows if r["name"].startswith(("recipe-s", "baseline-"))]))
    for r in rows:
        for c in r["comparison"]:
            print(f"{r['name']} {c['model'][-30:]} {c['tta']}: {c['miou']:.4f} (per image {c['miou_per_image']:.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
