"""RELIABILITY.md is the table of the registered cases; it cannot drift from the suite."""

from __future__ import annotations

import os

import pytest

from reliability import registry


def test_every_case_is_one_registered_test() -> None:
    cases = registry.load_all_cases()
    assert len(cases) >= 25
    tests = [c.test for c in cases.values()]
    assert len(set(tests)) == len(tests), "two cases share one test"
    for c in cases.values():
        assert c.group in registry.GROUP_ORDER, c
        assert c.title and c.checks, c


def test_reliability_md_matches_the_cases() -> None:
    if os.environ.get(registry.WRITE_ENV) == "1":
        pytest.skip("RELIABILITY.md is rewritten at the end of this run (see conftest.py)")
    expected = registry.render(registry.load_all_cases())
    assert registry.REPORT.exists(), (
        "RELIABILITY.md is missing; generate it with QTASKS_WRITE_RELIABILITY=1 pytest "
        "tests/reliability"
    )
    assert registry.REPORT.read_text() == expected, (
        "RELIABILITY.md does not match the registered cases; regenerate it with "
        "QTASKS_WRITE_RELIABILITY=1 pytest tests/reliability"
    )
