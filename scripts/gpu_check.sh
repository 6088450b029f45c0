#!/usr/bin/env bash
# GPU check (docs/training.md, "GPU check"): SFT, GRPO with the real rollout and `ergo eval` in every mode on a
# random-weight Qwen2.5-VL-3B body in bf16, with step time, tokens/s and peak GPU memory per phase.
#
#   scripts/fetch_gpu_wheels.sh        # here, once: the wheels the GPU machine lacks -> .whl/
#   scripts/gpu_check.sh --dry-run     # here, on CPU: the same phases with the tiny model, one step each
#   scripts/gpu_check.sh               # on the GPU machine (no network): < 8 minutes on one H200
#
# It installs .whl/*.whl (if present) into /tmp/ergo-site without touching the machine's packages, and runs
# benchmarks/gpu_check.py from the checkout (no install of the project itself). Figures: $OUT or out/gpu_check.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1 && ! "$PY" -c "import trl, datasets" 2>/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/ergo-site .whl/*.whl
  export PYTHONPATH="/tmp/ergo-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec "$PY" benchmarks/gpu_check.py "$@"
