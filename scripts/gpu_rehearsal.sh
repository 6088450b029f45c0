#!/usr/bin/env bash
# Rehearse the GPU check here, on CPU, in the GPU machine's own package set (docs/training.md, "GPU check").
#
#   scripts/gpu_rehearsal.sh                       # with torchvision, as on the machine
#   scripts/gpu_rehearsal.sh --without-torchvision # the same without it (the code must not need it)
#
# 1. builds a throwaway venv ($REHEARSAL_VENV, default /tmp/ergo-gpu-rehearsal) on Python 3.12 (pyenv's, or
#    $REHEARSAL_PYTHON) with scripts/gpu_machine_packages.txt: the machine's versions where they were read, guesses
#    where not (marked there). PyPI's torch 2.11.0 is a CUDA build of several GB that runs on CPU; the first build
#    downloads ~3 GB (about 3 minutes here), later runs reuse the venv while the package list is unchanged;
# 2. removes whatever of scripts/gpu_machine_absent.txt (trl, datasets, duckdb, polars, pydantic, ...) got pulled in
#    as a dependency, and checks that none of them imports;
# 3. fetches the carried wheels (scripts/fetch_gpu_wheels.sh -> .whl/, for CPython 3.12 like the machine);
# 4. runs scripts/gpu_check.sh --dry-run with that venv's python: the carried wheels go to /tmp/ergo-site exactly
#    as on the machine, and a module that is neither there nor carried fails the imports phase by its name.
# Extra arguments go to the check (e.g. --phase grpo). The report: $OUT (default out/gpu_rehearsal).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TV=1
ARGS=()
for a in "$@"; do
  if [ "$a" = "--without-torchvision" ]; then TV=0; else ARGS+=("$a"); fi
done
PY312="${REHEARSAL_PYTHON:-}"
if [ -z "$PY312" ]; then
  for c in /root/.pyenv/versions/3.12*/bin/python3 "$(command -v python3.12 || true)"; do
    if [ -n "$c" ] && [ -x "$c" ]; then PY312="$c"; break; fi
  done
fi
[ -n "$PY312" ] || { echo "error: no Python 3.12 (set REHEARSAL_PYTHON)" >&2; exit 2; }
VENV="${REHEARSAL_VENV:-/tmp/ergo-gpu-rehearsal}"
LIST="$ROOT/scripts/gpu_machine_packages.txt"
STAMP="$VENV/.machine-$(cat "$LIST" "$ROOT/scripts/gpu_machine_absent.txt" | sha256sum | cut -c1-16)"
if [ ! -f "$STAMP" ]; then
  echo "== building $VENV on $("$PY312" --version) from scripts/gpu_machine_packages.txt"
  rm -rf "$VENV"
  "$PY312" -m venv "$VENV"
  "$VENV/bin/pip" install -q -r "$LIST"
  touch "$STAMP"
fi
mapfile -t ABSENT < <(grep -v '^#' "$ROOT/scripts/gpu_machine_absent.txt" | sed '/^$/d')
"$VENV/bin/pip" uninstall -y -q "${ABSENT[@]}" pydantic-core 2>&1 | grep -v "^WARNING: Skipping" || true
if [ "$TV" = 0 ]; then
  "$VENV/bin/pip" uninstall -y -q torchvision 2>&1 | grep -v "^WARNING: Skipping" || true
else
  "$VENV/bin/pip" install -q --no-deps "$(grep '^torchvision==' "$LIST" | cut -d' ' -f1)"
fi
"$VENV/bin/python" - "${ABSENT[@]}" <<'PY'
import importlib.util, sys
names = [n.replace("-", "_") for n in sys.argv[1:]] + ["label_studio_sdk", "flash_attn"]
present = [n for n in names if importlib.util.find_spec(n) is not None]
if present:
    sys.exit(f"error: the rehearsal venv has modules the GPU machine lacks: {present}")
print("absent as on the GPU machine:", ", ".join(sys.argv[1:]))
PY
echo "== venv: $("$VENV/bin/python" -c 'import platform, torch, transformers, numpy, importlib.util as u; print("python", platform.python_version(), "torch", torch.__version__, "transformers", transformers.__version__, "numpy", numpy.__version__, "torchvision", "yes" if u.find_spec("torchvision") else "no")')"
PIP="$VENV/bin/pip" scripts/fetch_gpu_wheels.sh
rm -rf /tmp/ergo-site  # installed afresh from .whl/ by gpu_check.sh, as on the machine
export OUT="${OUT:-$ROOT/out/gpu_rehearsal}"
env -u PYTHONPATH PYTHON="$VENV/bin/python" scripts/gpu_check.sh --dry-run "${ARGS[@]}"
