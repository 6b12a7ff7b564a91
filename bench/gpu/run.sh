#!/usr/bin/env bash
# Run on the GPU machine, before anything else (one command, under 10 minutes): installs the wheels that
# bench/gpu/prepare.sh downloaded (.whl/gpu, carried with the working tree) offline into the machine's Python,
# prints `python -m app.doctor`, then measures the CUDA paths within a budget it enforces itself (default 480 s,
# at most 8 minutes; rows that do not fit are listed as skipped) and writes $OUT/gpu.json and $OUT/gpu.md.
#
#   bench/gpu/run.sh                 # on the GPU machine (PYTHON=python3 by default)
#   bench/gpu/run.sh --cpu-dry-run   # here: pip install --dry-run into .venv, every row at a tiny size on CPU
#
# Environment: OUT (default bench/gpu/out), BUDGET (seconds, <= 480), WHEELS (default .whl/gpu), PYTHON.
set -uo pipefail
cd "$(dirname "$0")/../.."
DRY=""
[ "${1:-}" = "--cpu-dry-run" ] && DRY="--cpu-dry-run"
WHEELS=${WHEELS:-.whl/gpu}
BUDGET=${BUDGET:-}
OUT=${OUT:-bench/gpu/out}
mkdir -p "$OUT"
if [ -n "$DRY" ]; then
    PY=${PYTHON:-.venv/bin/python}
    [ -x "$PY" ] || PY=python3
    PIP_DRY="--dry-run"           # resolve offline against the wheels, change nothing here
    export CUDA_VISIBLE_DEVICES=""  # the dry run is the CPU path, even on a machine with a GPU
else
    PY=${PYTHON:-python3}
    PIP_DRY=""
fi
if [ ! -d "$WHEELS" ]; then
    echo "run: $WHEELS is missing: run bench/gpu/prepare.sh on a machine with PyPI and carry $WHEELS" >&2
    exit 2
fi

# --isolated: no pip config or PIP_* variables of the machine (no index, no other find-links).
PIP=("$PY" -m pip --isolated install $PIP_DRY --no-index --find-links "$WHEELS" --disable-pip-version-check)
if "$PY" -m pip install --help 2>/dev/null | grep -q -- --break-system-packages; then
    PIP+=(--break-system-packages)  # a distribution's Python (PEP 668) refuses pip without it
fi
{
    echo "== install (offline from $WHEELS) =="
    # shellcheck disable=SC2046
    "${PIP[@]}" --no-deps $("$PY" -m bench.gpu.wheels no-deps) &&
        "${PIP[@]}" -r bench/gpu/install.txt
} 2>&1 | tee "$OUT/install.log"
if [ "${PIPESTATUS[0]}" -ne 0 ]; then
    echo "run: the offline install failed (see $OUT/install.log); measuring what imports anyway" >&2
fi

echo "== python -m app.doctor ==" | tee "$OUT/doctor.txt"
"$PY" -m app.doctor 2>&1 | tee -a "$OUT/doctor.txt"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$OUT/doctor.txt"

# The measurement stops itself within the budget (480 s, or BUDGET if less; the dry run 1800 s); the timeout is
# the backstop for a hung row (gpu.json is rewritten after every row, so what finished is kept).
LIMIT=${BUDGET:-$([ -n "$DRY" ] && echo 1800 || echo 480)}
echo "== measure (budget $LIMIT s) =="
timeout --signal=TERM --kill-after=10 $((LIMIT + 30)) "$PY" -m bench.gpu.measure --out "$OUT" --budget "$LIMIT" $DRY
status=$?
echo "run: gpu.json and gpu.md in $OUT (exit $status)"
exit $status
