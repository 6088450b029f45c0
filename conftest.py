"""Pytest setup for the whole repository: the tests under ``tests/`` and the doctests in the packages.

At the root so that doctests reach the session fixtures too (``getfixture("demo_set")`` in a docstring).
Hypothesis never has a deadline here: machines are shared and noisy. With ``ERGO_SKIP_LOG=FILE`` every
skipped test (and skipped module) is appended to FILE as one JSON line ``{"nodeid", "reason"}``, which
``.ci/run`` checks against ``.ci/allowed-skips``.
"""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

settings.register_profile("ergo", deadline=None, max_examples=200)
settings.load_profile("ergo")

# A test that loads a model or starts a server must be marked `integration` (checked as it runs).
pytest_plugins = ["tests.support.integration_guard"]


# Session fixtures used by several modules, imported here so each is created once per session (imported
# into each module, each module would get its own copy): the demo curation and a real Label Studio server.
from tests.support.demo import demo_run, demo_set  # noqa: F401
from tests.support.ls_server import ls_server  # noqa: F401


def _log_skip(nodeid: str, longrepr: object) -> None:
    path = os.environ.get("ERGO_SKIP_LOG")
    if not path:
        return
    # a skip's longrepr is (file, line, "Skipped: reason"); anything else is logged as its text
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps({"nodeid": nodeid, "reason": str(reason).removeprefix("Skipped: ")}) + "\n")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and hasattr(report, "wasxfail"):  # an expected failure did not really pass either
        _log_skip(report.nodeid, ("", 0, f"xfail: {report.wasxfail}"))
    elif report.skipped:  # skip markers, pytest.skip(), doctests whose every example is +SKIP
        _log_skip(report.nodeid, report.longrepr)


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.skipped:  # a module skipped as a whole (pytest.importorskip / skip(allow_module_level=True))
        _log_skip(report.nodeid, report.longrepr)
