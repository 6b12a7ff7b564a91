#!/usr/bin/env bash
# Run on this machine (PyPI reachable), before a GPU machine is lent: downloads the wheels of bench/gpu/wheels.txt
# for CPython 3.12 on manylinux x86_64 into .whl/gpu (ignored by git; carry it: `run` with carry [".whl/gpu"]),
# checks that the set is complete (every dependency carried, already on the GPU machine, or left out on purpose)
# and under the size limit, and, where a python3.12 exists here, that every wheel installs offline into a fresh
# venv of it.
#
#   bench/gpu/prepare.sh            # PYTHON=... to choose the interpreter that runs pip (default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
DEST=${WHEELS:-.whl/gpu}
PINS=$(mktemp)
trap 'rm -f "$PINS"' EXIT

mkdir -p "$DEST"
"$PY" -m bench.gpu.wheels pins > "$PINS"
# Wheels of another version (an older wheels.txt) would travel for nothing: keep only the pinned ones.
for w in "$DEST"/*.whl; do
    [ -e "$w" ] || continue
    base=$(basename "$w")
    "$PY" -c "import sys; from packaging.utils import canonicalize_name as c, parse_wheel_filename as p
n, v, *_ = p(sys.argv[1]); pins = dict(l.split('==') for l in open(sys.argv[2]).read().split())
sys.exit(0 if pins.get(c(n)) == str(v) else 1)" "$base" "$PINS" || rm -f "$w"
done
PLATFORMS=""
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_26 manylinux_2_24 manylinux_2_17 manylinux2014; do
    PLATFORMS="$PLATFORMS --platform ${tag}_x86_64"
done
# shellcheck disable=SC2086
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
    $PLATFORMS -d "$DEST" -r "$PINS"
"$PY" -m bench.gpu.wheels check "$DEST"

# A rehearsal of run.sh's install on a CPython 3.12 (the GPU machine's Python), offline: a fresh venv holding
# metadata-only stand-ins for the GPU machine's packages (torch 2.11, ...: bench/gpu/wheels.py GPU_VERSIONS), then
# the same two pip commands as run.sh. pip resolves every dependency or fails here, not there.
PY312=${PYTHON312:-$(command -v python3.12 || true)}
if [ -n "$PY312" ] && "$PY312" -V >/dev/null 2>&1; then
    VENV=$(mktemp -d)
    "$PY312" -m venv "$VENV"
    SITE=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    "$PY" -m bench.gpu.wheels stub "$SITE"
    PIP=("$VENV/bin/python" -m pip --isolated install --quiet --no-index --find-links "$DEST")
    # shellcheck disable=SC2046
    "${PIP[@]}" --no-deps $("$PY" -m bench.gpu.wheels no-deps)
    "${PIP[@]}" -r bench/gpu/install.txt
    echo "prepare: run.sh's install resolves offline in a fresh $("$PY312" -V) venv (the GPU machine's packages stubbed)"
    rm -rf "$VENV"
else
    echo "prepare: no python3.12 here (set PYTHON312): the offline install into a 3.12 venv was not checked"
fi
echo "prepare: done; carry $DEST ($(du -sm "$DEST" | cut -f1) MiB) with the working tree, then run bench/gpu/run.sh there"
