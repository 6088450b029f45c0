"""Shared fixtures. Hypothesis never has a deadline here: machines are shared and noisy."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

settings.register_profile("ergo", deadline=None, max_examples=200)
settings.load_profile("ergo")

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
DATA = Path(__file__).resolve().parent / "data"

# Label Studio session fixtures (a real server, the demo set) used by several modules: imported here so
# each is created once per session (imported into each module, each module would get its own copy).
from tests.ls_server_fixture import demo_set, ls_server  # noqa: F401
