"""Pytest plugin: a test that loads a model or starts a server without ``@pytest.mark.integration`` fails.

The markers are checked where it happens, not by reading the test's source: the entry points below are
wrapped as their modules are imported (an import hook: nothing is imported earlier than it would be), and
each records a violation when it is called during (the setup or body of) a test not marked ``integration``;
a fixture whose setup called one makes every test that uses it need the marker too (module and session
fixtures are set up once, for the first test that asks). Running a model counts like loading one (models
are cached and shared between tests). A doctest gets the marker when one of its examples carries the comment
``# integration`` (``>>> model = build_tiny()  # integration: builds the tiny model``). The wrapped
calls run unchanged.
"""

from __future__ import annotations

import functools
import importlib.abc
import sys
from types import ModuleType
from typing import Any

import pytest

# (module whose import makes it available, attribute path to the owner in it ("" = the module), name, what)
ENTRY_POINTS = [
    ("transformers.modeling_utils", "PreTrainedModel", "__init__", "builds a transformers model"),
    ("transformers.generation.utils", "GenerationMixin", "generate", "runs a transformers model"),
    ("onnxruntime", "InferenceSession", "__init__", "loads an ONNX model (OCR)"),
    ("onnxruntime", "InferenceSession", "run", "runs an ONNX model (OCR)"),
    ("cv2", "dnn", "readNetFromTensorflow", "loads the detector model"),
    ("cv2", "dnn.Net", "forward", "runs the detector model"),
    ("ray", "", "init", "starts or joins a Ray cluster"),
    ("ergo_data.labelstudio.server", "LabelStudioServer", "start", "starts a Label Studio server"),
]

_current: pytest.Item | None = None
_fixtures_in_setup: list[str] = []
_violations: dict[str, set[str]] = {}  # test id -> what it did unmarked
_model_fixtures: dict[str, str] = {}  # fixture name -> what its setup did (a test using it needs the marker)


def _guard(func: Any, what: str) -> Any:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = func(*args, **kwargs)  # a call that raises loaded nothing and started nothing
        for name in _fixtures_in_setup:
            _model_fixtures.setdefault(name, what)
        item = _current
        if item is not None and item.get_closest_marker("integration") is None:
            _violations.setdefault(item.nodeid, set()).add(what)
        return result

    wrapper.__ergo_guarded__ = True  # type: ignore[attr-defined]
    return wrapper


def _wrap_entry_points(module_name: str, module: ModuleType) -> None:
    for name, owner_path, attr, what in ENTRY_POINTS:
        if name != module_name:
            continue
        owner: Any = module
        for part in filter(None, owner_path.split(".")):
            owner = getattr(owner, part)
        func = getattr(owner, attr)
        if not getattr(func, "__ergo_guarded__", False):
            setattr(owner, attr, _guard(func, what))


class _WrapAfterExec(importlib.abc.Loader):
    """Runs the real loader, then wraps the module's entry points (no import is made earlier than it would be)."""

    def __init__(self, loader: importlib.abc.Loader, name: str) -> None:
        self.loader, self.name = loader, name

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        _wrap_entry_points(self.name, module)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname not in {e[0] for e in ENTRY_POINTS}:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _WrapAfterExec(spec.loader, fullname)
                return spec
        return None


def pytest_configure(config: pytest.Config) -> None:
    for name in {e[0] for e in ENTRY_POINTS}:
        if name in sys.modules:
            _wrap_entry_points(name, sys.modules[name])
    sys.meta_path.insert(0, _Finder())


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    from _pytest.doctest import DoctestItem

    for item in items:
        if isinstance(item, DoctestItem) and item.dtest is not None and any(
                "# integration" in ex.source for ex in item.dtest.examples):
            item.add_marker(pytest.mark.integration)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    global _current
    _current = item
    try:
        yield
    finally:
        _current = None


@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(fixturedef: pytest.FixtureDef, request: pytest.FixtureRequest):
    _fixtures_in_setup.append(fixturedef.argname)
    try:
        yield
    finally:
        _fixtures_in_setup.pop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if call.when != "teardown":
        return
    found = _violations.pop(item.nodeid, set())
    if item.get_closest_marker("integration") is None:  # fixtures set up earlier, for another test, count too
        found |= {f"uses fixture {name!r}, which {_model_fixtures[name][:1].lower()}{_model_fixtures[name][1:]}"
                  for name in getattr(item, "fixturenames", ()) if name in _model_fixtures}
    if found and report.passed:
        report.outcome = "failed"
        report.longrepr = (f"{item.nodeid} {' and '.join(sorted(found))} but is not marked "
                           "@pytest.mark.integration (in a doctest: comment the example `# integration`)")
