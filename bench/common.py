"""Shared pieces of the benchmarks: result rows, timing, and where the real data lives."""

import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def row(name: str, value: float, target: str, holds: bool | None, **figures) -> dict:
    """One results.json row: a ratio measured side by side in one run, with the absolute figures beside it."""
    return {"name": name, "value": round(float(value), 4), "target": target, "holds": holds, "figures": figures}


def best_time(fn, repeat: int = 3) -> float:
    """Best wall time of `repeat` calls (seconds): the least disturbed by the other process on 2 cores."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)
