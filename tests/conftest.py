"""Shared fixtures. Hypothesis never has a deadline here: machines are shared and noisy."""

from __future__ import annotations

import os

from hypothesis import settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

settings.register_profile("ergo", deadline=None, max_examples=200)
settings.load_profile("ergo")


# Session fixtures used by several modules, imported here so each is created once per session (imported
# into each module, each module would get its own copy): the demo curation and a real Label Studio server.
from tests.support.demo import demo_run, demo_set  # noqa: F401
from tests.support.ls_server import ls_server  # noqa: F401
