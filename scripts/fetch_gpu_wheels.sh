#!/usr/bin/env bash
# Download the wheels of scripts/gpu_wheels.txt for the GPU machine (CPython 3.12, manylinux x86_64) into .whl/
# (ignored by git). Needs PyPI; run it here, not on the GPU machine. pyvips ships as a pure-Python sdist only:
# it is built into a wheel locally.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT/.whl"
PIP="${PIP:-}"
if [ -z "$PIP" ]; then if [ -x "$ROOT/.venv/bin/pip" ]; then PIP="$ROOT/.venv/bin/pip"; else PIP="python3 -m pip"; fi; fi
mkdir -p "$DEST"
mapfile -t pins < <(grep -v '^#' "$ROOT/scripts/gpu_wheels.txt" | grep -v '^pyvips==' | sed '/^$/d')
$PIP download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DEST" "${pins[@]}"
$PIP wheel -q --no-deps -w "$DEST" "$(grep '^pyvips==' "$ROOT/scripts/gpu_wheels.txt")"
du -sh "$DEST"
