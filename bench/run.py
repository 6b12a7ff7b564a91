"""`make bench`: runs every benchmark, writes bench/results.json (rows: name, value, target, holds, figures)
and bench/results.md, and prints the table. Each row is a ratio measured side by side in one run."""

import importlib
import json
import platform
import sys
import time
from pathlib import Path

BENCHES = ["bench.mask_cache", "bench.rare_classes"]
OUT = Path(__file__).resolve().parent


def markdown(rows: list[dict]) -> str:
    lines = ["| benchmark | value | target | holds | figures |", "|---|---|---|---|---|"]
    for r in rows:
        holds = {True: "yes", False: "**no**", None: "-"}[r["holds"]]
        figures = ", ".join(f"{k}={v}" for k, v in r["figures"].items())
        lines.append(f"| {r['name']} | {r['value']} | {r['target']} | {holds} | {figures} |")
    return "\n".join(lines) + "\n"


def main(names: list[str]) -> int:
    rows = []
    for name in names or BENCHES:
        started = time.time()
        rows += importlib.import_module(name).run()
        print(f"{name}: {time.time() - started:.0f} s", file=sys.stderr)
    machine = f"{platform.machine()}, {platform.python_version()}"
    (OUT / "results.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
    table = markdown(rows)
    (OUT / "results.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
