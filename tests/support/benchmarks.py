"""Load a script of ``benchmarks/`` as a module (they are scripts, not a package), for the tests of their short runs.

>>> load_benchmark("learning").QUICK["grpo_steps"] > 0
True
"""

from __future__ import annotations

import importlib.util
from types import ModuleType

from tests.support.paths import ROOT


def load_benchmark(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` imported under the name ``<name>_benchmark``."""
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
