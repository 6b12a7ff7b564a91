"""`make bench`: runs every benchmark, writes bench/results.json (rows: name, value, target, holds, figures)
and bench/results.md, and prints the table. Each row is a ratio measured side by side in one run.

    .venv/bin/python -m bench.run                      # everything (under 15 minutes on 2 CPU cores)
    .venv/bin/python -m bench.run bench.tta_cost ...   # some

On a machine with a CUDA GPU the same benches run there (bf16/fp16 at 512 px, batch 16).
"""

import ast
import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent
#: bench/ modules that are not benchmarks of `make bench`: helpers, and the long accuracy scripts
NOT_BENCHES = {"__init__", "common", "run", "baseline", "accuracy", "results_table", "audit_planted"}
#: the order `make bench` runs them in (the rest, alphabetically, after these)
ORDER = ["model_speed", "precision", "compute", "loop_overhead", "data_path", "mask_cache", "tta_cost"]


def discover(folder: Path = OUT) -> list[str]:
    """Every bench/ module with a top-level `run()` (read from its source, nothing imported), in ORDER first."""
    found = []
    for path in sorted(folder.glob("*.py")):
        if path.stem in NOT_BENCHES:
            continue
        tree = ast.parse(path.read_text())
        if any(isinstance(node, ast.FunctionDef) and node.name == "run" for node in tree.body):
            found.append(path.stem)
    ranked = sorted(found, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))
    return [f"bench.{name}" for name in ranked]


BENCHES = discover()


def markdown(rows: list[dict]) -> str:
    lines = ["| benchmark | value | target | holds | figures |", "|---|---|---|---|---|"]
    for r in rows:
        holds = {True: "yes", False: "**no**", None: "-"}[r["holds"]]
        figures = ", ".join(f"{k}={v}" for k, v in r["figures"].items())
        lines.append(f"| {r['name']} | {r['value']} | {r['target']} | {holds} | {figures} |")
    return "\n".join(lines) + "\n"


def machine() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{platform.machine()}, {os.cpu_count()} CPU cores, {gpu}, Python {platform.python_version()}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads)"
    )


def main(names: list[str]) -> int:
    rows, seconds = [], {}
    started = time.time()
    for name in names or BENCHES:
        begun = time.time()
        rows += importlib.import_module(name).run()
        seconds[name] = round(time.time() - begun)
        print(f"{name}: {seconds[name]} s", file=sys.stderr, flush=True)
    total = round(time.time() - started)
    result = {"machine": machine(), "seconds": seconds, "total_seconds": total, "rows": rows}
    (OUT / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(rows)
    (OUT / "results.md").write_text(f"{result['machine']}; {total} s\n\n{table}")
    print(table)
    print(f"total: {total} s ({result['machine']})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
