#!/usr/bin/env bash
# GPU check (docs/training.md, "GPU check"): one 7B-shaped random Qwen2.5-VL in bf16 kept in memory through SFT,
# GRPO with the real two-turn zoom rollout and `ergo eval` in every mode; per phase step time, tokens/s, peak GPU
# memory, host vs GPU time, each phase under its own time limit.
#
#   scripts/fetch_gpu_wheels.sh        # here, once: the wheels the GPU machine lacks -> .whl/ (carry it)
#   scripts/gpu_check.sh               # on the GPU machine (no network): ~2.5 minutes estimated on one H100
#   scripts/gpu_check.sh --phase grpo  # one phase again (curate + build run first)
#   scripts/gpu_check.sh --dry-run     # CPU: the same code on a small body (scripts/gpu_rehearsal.sh runs it in
#                                      # the GPU machine's package set)
#
# It installs .whl/*.whl (if present and the modules are missing) into /tmp/ergo-site without touching the
# machine's packages and runs benchmarks/gpu_check.py from the checkout. Only gpu_check.json and gpu_check.log go
# to $OUT (default out/gpu_check); the curated set and trainer folders stay in a scratch folder under /tmp.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
OUT="${OUT:-$ROOT/out/gpu_check}"
mkdir -p "$OUT"
export OUT
exec > >(tee "$OUT/gpu_check.log") 2>&1
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1 && ! "$PY" -c "import trl, datasets, pydantic" 2>/dev/null; then
  echo "installing the carried wheels (.whl/, $(ls .whl/*.whl | wc -l) files) into /tmp/ergo-site"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/ergo-site \
    .whl/*.whl
  export PYTHONPATH="/tmp/ergo-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
"$PY" benchmarks/gpu_check.py "$@"
