"""Collects each reliability case's outcome; with QTASKS_WRITE_RELIABILITY=1 rewrites RELIABILITY.md
at the end of a run in which every case had the outcome the table states."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest

from reliability import registry

_case_of: dict[str, str] = {}  # nodeid -> case id ('' for a test that is no case)
_outcomes: dict[str, str] = {}  # case id -> passed / failed / skipped / xfailed


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        case_id = getattr(getattr(item, "function", None), "reliability_case", None)
        if case_id is not None:
            _case_of[item.nodeid] = case_id


def _case_from_nodeid(nodeid: str) -> str | None:
    """The case of a test collected elsewhere (an xdist worker): from its module's function."""
    path, _, name = nodeid.partition("::")
    if not path.startswith("tests/reliability/test_") or not name:
        return None
    module = importlib.import_module("reliability." + Path(path).stem)
    function = getattr(module, name.split("[")[0], None)
    case_id = getattr(function, "reliability_case", None)
    return case_id if isinstance(case_id, str) else None


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.nodeid not in _case_of:
        _case_of[report.nodeid] = _case_from_nodeid(report.nodeid) or ""
    case_id = _case_of[report.nodeid]
    if not case_id:
        return
    if hasattr(report, "wasxfail") and report.skipped:
        outcome = "xfailed"
    elif report.failed:
        outcome = "failed"
    elif report.skipped:
        outcome = "skipped"
    elif report.when == "call":
        outcome = "passed"
    else:
        return
    # The worst outcome of setup, call and teardown wins.
    if _outcomes.get(case_id) not in ("failed", "skipped"):
        _outcomes[case_id] = outcome


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if os.environ.get(registry.WRITE_ENV) != "1":
        return
    cases = registry.load_all_cases()
    wanted = {"pass": "passed", "xfail": "xfailed"}
    wrong = {
        case_id: _outcomes.get(case_id, "not run")
        for case_id, c in cases.items()
        if _outcomes.get(case_id) != wanted[c.expected]
    }
    write = terminalreporter.write_line
    if wrong:
        write(f"RELIABILITY.md not written: cases without the outcome the table states: {wrong}")
        return
    text = registry.render(cases)
    if registry.REPORT.exists() and registry.REPORT.read_text() == text:
        write("RELIABILITY.md is up to date")
        return
    registry.REPORT.write_text(text)
    write(f"RELIABILITY.md written ({len(cases)} cases)")
