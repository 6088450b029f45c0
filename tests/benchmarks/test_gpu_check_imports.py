"""The GPU check's import path on a machine without the optional engines (the GPU machine has no duckdb, polars,
ray, OCR, Label Studio SDK, vLLM or torchvision): the check's modules import, the stage registry loads every
built-in stage, and the check's curation runs. A module the check needs that is missing fails the imports phase
with its name. Each case runs in a fresh subprocess with the packages hidden (``tests/support/hidden_modules.py``).
The whole check on the machine's package set is ``scripts/gpu_rehearsal.sh`` (minutes; not part of the suite).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from tests.support.paths import ROOT

NOT_ON_GPU_MACHINE = ("duckdb", "polars", "ray", "label_studio_sdk", "rapidocr", "onnxruntime", "vllm",
                      "torchvision", "deepspeed", "flash_attn")


def _run(code: str, hidden: tuple[str, ...], tmp_path) -> subprocess.CompletedProcess:
    script = f"from tests.support.hidden_modules import hide\nhide({list(hidden)!r})\n" + textwrap.dedent(code)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'benchmarks'}", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "OUT": str(tmp_path / "out")}
    return subprocess.run([sys.executable, "-c", script], check=False, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


def test_check_imports_and_curates_without_the_optional_engines(tmp_path):
    done = _run(f"""
        import json, sys
        from pathlib import Path
        from gpu_check_phases import Settings, phase_functions
        from ergo_data.pipeline.registry import stage_registry
        fns, state = phase_functions(Settings.dry(), Path({str(tmp_path)!r}), cuda=False), {{}}
        entries = {{}}
        for name in ("imports", "curate"):
            entries[name] = {{}}
            fns[name](entries[name], state)
        entries["stages"] = [n for n, _ in stage_registry.items()]
        entries["loaded"] = sorted(m for m in {NOT_ON_GPU_MACHINE!r} if m in sys.modules)
        print(json.dumps(entries))
    """, NOT_ON_GPU_MACHINE, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["curate"]["kept"] > 0 and "sql" not in got["curate"]["stages"]
    assert {"decode", "sql", "dedup", "split"} <= set(got["stages"])  # every stage module imported, sql included
    assert got["loaded"] == []


def test_a_missing_module_fails_the_imports_phase_by_name(tmp_path):
    done = _run("""
        import sys
        import gpu_check
        sys.exit(gpu_check.main(["--dry-run", "--phase", "imports"]))
    """, ("pydantic",), tmp_path)
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    phase = report["phases"]["imports"]
    assert phase["status"] == "failed" and "No module named 'pydantic'" in phase["error"]
    assert report["pip_freeze"], "the report keeps pip freeze"
