"""Values from jobs that are hostile to the daemon: exceptions and results whose ``__str__`` or
``__repr__`` raise SystemExit or KeyboardInterrupt, a result of ten million items or 100 MB, inline
(sync and async) and in a child process. The per-second job must keep its times beside them and the
daemon must go on."""

from __future__ import annotations

from pathlib import Path

import pytest

from reliability.harness import Outcome, Scenario, assert_all, assert_healthy, run_scenarios
from reliability.registry import case

GROUP = "job values"

VALUES = """
import asyncio


class ExitsOnStr(Exception):
    def __str__(self):
        raise SystemExit(7)


class InterruptsOnStr(Exception):
    def __str__(self):
        raise KeyboardInterrupt


class ExitsOnRepr:
    def __repr__(self):
        raise SystemExit(7)


def raise_exit_str():
    raise ExitsOnStr("never shown")


async def araise_exit_str():
    raise ExitsOnStr("never shown")


def raise_interrupt_str():
    raise InterruptsOnStr("never shown")


async def araise_interrupt_str():
    raise InterruptsOnStr("never shown")


def return_exit_repr():
    return ExitsOnRepr()


async def areturn_exit_repr():
    return [1, {"x": ExitsOnRepr()}]


def ten_million():
    return [i for i in range(10_000_000)]


def hundred_mb():
    return b"x" * (100 * 1024 * 1024)


def huge_message():
    raise ValueError("m" * (50 * 1024 * 1024))
"""

INLINE = """
raise_exit_str: {entrypoint: "rel_values:raise_exit_str", schedule: "* * * * * *"}
araise_exit_str: {entrypoint: "rel_values:araise_exit_str", schedule: "* * * * * *"}
raise_interrupt_str: {entrypoint: "rel_values:raise_interrupt_str", schedule: "* * * * * *"}
araise_interrupt_str: {entrypoint: "rel_values:araise_interrupt_str", schedule: "* * * * * *"}
return_exit_repr: {entrypoint: "rel_values:return_exit_repr", schedule: "* * * * * *"}
areturn_exit_repr: {entrypoint: "rel_values:areturn_exit_repr", schedule: "* * * * * *"}
"""

BIG = """
ten_million: {entrypoint: "rel_values:ten_million", schedule: "*/3 * * * * *"}
hundred_mb: {entrypoint: "rel_values:hundred_mb", schedule: "*/3 * * * * *"}
huge_message: {entrypoint: "rel_values:huge_message", schedule: "*/3 * * * * *"}
"""

PROCESS = """
p_raise_exit_str:
  entrypoint: rel_values:raise_exit_str
  schedule: "*/2 * * * * *"
  isolation: process
p_raise_interrupt_str:
  entrypoint: rel_values:raise_interrupt_str
  schedule: "*/2 * * * * *"
  isolation: process
p_huge_message:
  entrypoint: rel_values:huge_message
  schedule: "*/3 * * * * *"
  isolation: process
"""


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    root = tmp_path_factory.mktemp("values")
    modules = {"rel_values": VALUES}
    scenarios = [
        Scenario(name="inline", jobs=INLINE, modules=modules, ticks=5),
        Scenario(name="big", jobs=BIG, modules=modules, ticks=7),
        Scenario(name="process", jobs=PROCESS, modules=modules, ticks=6),
    ]
    return run_scenarios(scenarios, Path(root))


@case(
    "str_raises_system_exit",
    group=GROUP,
    title="a sync and an async job raise an exception whose `__str__` raises SystemExit(7) "
    "or KeyboardInterrupt, every second",
    checks="each run `failed` with the exception's type and a placeholder message saying its "
    "str() raised; the daemon neither exits 7 nor 130 and logs no traceback of its own",
)
def test_str_raises_system_exit(outcomes: dict[str, Outcome]) -> None:
    out = outcomes["inline"]
    assert_healthy(out)
    for job in ("raise_exit_str", "araise_exit_str"):
        assert_all(
            out.of(job),
            status="failed",
            error_type="rel_values.ExitsOnStr",
            at_least=3,
            error="str() raised SystemExit",
        )
    for job in ("raise_interrupt_str", "araise_interrupt_str"):
        assert_all(
            out.of(job),
            status="failed",
            error_type="rel_values.InterruptsOnStr",
            at_least=3,
            error="str() raised KeyboardInterrupt",
        )


@case(
    "repr_raises_system_exit",
    group=GROUP,
    title="a sync and an async job return an object whose `__repr__` raises SystemExit(7)",
    checks="each run `succeeded`; its result preview is a placeholder; the daemon goes on",
)
def test_repr_raises_system_exit(outcomes: dict[str, Outcome]) -> None:
    out = outcomes["inline"]
    for job in ("return_exit_repr", "areturn_exit_repr"):
        rows = out.of(job)
        assert_all(rows, status="succeeded", at_least=3)
        assert all("repr() raised SystemExit" in (r["result"] or "") for r in rows), rows


@case(
    "huge_results",
    group=GROUP,
    title="jobs return a list of 10 million items, 100 MB of bytes, and raise a 50 MB message, "
    "every 3 s",
    checks="the per-second job keeps its times beside them (the previews read a few hundred "
    "items off the loop); results are `succeeded` with previews of at most 200 characters; the "
    "message is clipped to 2,000 characters",
)
def test_huge_results(outcomes: dict[str, Outcome]) -> None:
    out = outcomes["big"]
    assert_healthy(out)
    for job in ("ten_million", "hundred_mb"):
        rows = out.of(job)
        assert_all(rows, status="succeeded", at_least=2)
        assert all(len(r["result"] or "") <= 200 for r in rows), rows
    assert out.of("ten_million")[0]["result"].startswith("[0, 1, 2, 3")
    assert out.of("hundred_mb")[0]["result"].startswith("b'xxxx")
    rows = out.of("huge_message")
    assert_all(rows, status="failed", error_type="ValueError", at_least=2, error="mmmm")
    assert all(len(r["error"]) <= 2000 for r in rows)
    # The other fires of the per-second neighbours were never called "still running".
    assert not [r for r in out.rows if "previous run still running" in (r["error"] or "")]


@case(
    "process_str_raises",
    group=GROUP,
    title="`isolation: process` jobs raise an exception whose `__str__` raises SystemExit or "
    "KeyboardInterrupt, or a 50 MB message",
    checks="each run `failed` with the exception's type and an honest placeholder or clipped "
    "message; the child is not counted as crashed; the daemon goes on",
)
def test_process_str_raises(outcomes: dict[str, Outcome]) -> None:
    out = outcomes["process"]
    assert_healthy(out)
    assert_all(
        out.of("p_raise_exit_str"),
        status="failed",
        error_type="rel_values.ExitsOnStr",
        at_least=2,
        error="str() raised SystemExit",
    )
    assert_all(
        out.of("p_raise_interrupt_str"),
        status="failed",
        error_type="rel_values.InterruptsOnStr",
        at_least=2,
        error="str() raised KeyboardInterrupt",
    )
    rows = out.of("p_huge_message")
    assert_all(rows, status="failed", error_type="ValueError", at_least=1, error="mmmm")
    assert all(len(r["error"]) <= 2000 for r in rows)
