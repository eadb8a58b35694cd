"""The list of reliability cases, and RELIABILITY.md rendered from it.

Every case is one test function decorated with ``@case(...)``; the decorator records what the case
checks next to the code that checks it, so the table cannot drift from the suite. A case whose
product bug is still open carries ``bug=...``: it becomes a strict xfail, so a fix makes the suite
fail until the marker (and with it the table) is updated.

Regenerate the table after adding or changing a case:

    QTASKS_WRITE_RELIABILITY=1 pytest tests/reliability

It is written only when every case in the run had the outcome the table states (see conftest.py).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

ROOT = Path(__file__).resolve().parents[2]
REPORT = ROOT / "RELIABILITY.md"
WRITE_ENV = "QTASKS_WRITE_RELIABILITY"

_F = TypeVar("_F", bound=Callable[..., Any])


@dataclass(frozen=True, kw_only=True, slots=True)
class Case:
    id: str
    group: str
    title: str  # the fault, in a few words
    checks: str  # what must hold, in one or two sentences
    test: str  # module::function, relative to tests/
    bug: str | None = None  # an open product bug: the case is a strict xfail

    @property
    def expected(self) -> str:
        return "xfail" if self.bug else "pass"


CASES: dict[str, Case] = {}


def case(
    id: str, *, group: str, title: str, checks: str, bug: str | None = None
) -> Callable[[_F], _F]:
    """Register the decorated test as reliability case ``id`` (one row of RELIABILITY.md)."""

    def register(fn: _F) -> _F:
        module = fn.__module__.removeprefix("reliability.")
        test = f"reliability/{module}.py::{fn.__name__}"
        if id in CASES and CASES[id].test != test:
            raise ValueError(
                f"reliability case {id!r} is registered twice: {CASES[id].test}, {test}"
            )
        CASES[id] = Case(id=id, group=group, title=title, checks=checks, test=test, bug=bug)
        fn.reliability_case = id  # type: ignore[attr-defined]
        if bug:
            return pytest.mark.xfail(strict=True, reason=f"BUG: {bug}")(fn)  # type: ignore[no-any-return]
        return fn

    return register


def load_all_cases() -> dict[str, Case]:
    """Import every test module of the suite so that all cases are registered."""
    package = Path(__file__).parent
    for info in pkgutil.iter_modules([str(package)]):
        if info.name.startswith("test_"):
            importlib.import_module(f"reliability.{info.name}")
    return CASES


GROUP_ORDER = [
    "job faults (inline)",
    "job output",
    "job values",
    "output readers",
    "job faults (isolation: process)",
    "daemon and state file",
    "exactly once",
    "clock",
    "configuration",
    "trust boundaries",
]


INTRO = """\
# Reliability

The promise: whatever one job does, the other jobs keep their times, the daemon keeps running,
and the history tells the truth. The suite in `tests/reliability/` tries to break it. Each daemon
case runs the real `qtasks run` in a subprocess beside a per-second job (`tick`,
`* * * * * *`) and afterwards reads `qtasks history --json`. Unless a row says otherwise, every
daemon case also checks that:

- the per-second job's `scheduled` values are consecutive seconds, without gaps or duplicates,
  from the daemon's start until its stop, every one a `succeeded` run with trigger `schedule`
  that started within 1 s of its time;
- `qtasks run` exits 0 after SIGTERM, and its log holds no qtasks traceback;
- every faulty run has an honest status and error in `qtasks history`.

Result `pass` means the case passed when this file was generated. `xfail` means a known product
bug, described in the row, makes it fail; such a test is a strict xfail, so the suite turns red
as soon as the bug is fixed, and the row must then be updated. This file is generated from the
`@case` registrations in `tests/reliability/` (see `registry.py`); a test fails when it no longer
matches them. Regenerate it with

    QTASKS_WRITE_RELIABILITY=1 pytest tests/reliability

which writes it only when every case had the outcome its row states.
"""


def render(cases: dict[str, Case]) -> str:
    """RELIABILITY.md for ``cases``."""
    lines = [*INTRO.splitlines(), ""]
    groups = sorted({c.group for c in cases.values()}, key=_group_key)
    for group in groups:
        rows = sorted((c for c in cases.values() if c.group == group), key=lambda c: c.id)
        lines += [
            f"## {group[0].upper()}{group[1:]}",
            "",
            "| case | fault | what must hold | result |",
        ]
        lines.append("| --- | --- | --- | --- |")
        for c in rows:
            result = f"xfail: {c.bug}" if c.bug else "pass"
            lines.append(f"| `{c.id}` | {_cell(c.title)} | {_cell(c.checks)} | {_cell(result)} |")
        lines.append("")
    soak = Path(__file__).with_name("soak.md")
    if soak.exists():  # written by bench/soak_crash.py
        lines += [*soak.read_text().rstrip().splitlines(), ""]
    lines += ["## Where each case lives", ""]
    lines += [f"- `{c.id}`: `tests/{c.test}`" for c in sorted(cases.values(), key=lambda c: c.id)]
    lines.append("")
    return "\n".join(lines)


def _group_key(group: str) -> tuple[int, str]:
    return (GROUP_ORDER.index(group) if group in GROUP_ORDER else len(GROUP_ORDER), group)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")
