"""Values from jobs that are hostile to the daemon: exceptions and results whose ``__str__`` or
``__repr__`` raise SystemExit or KeyboardInterrupt, a result of ten million items or 100 MB, inline
(sync and async) and in a child process. The per-second job must keep its times beside them and the
daemon must go on."""

from __future__ import annotations

import itertools
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import clean_env

from reliability.harness import (
    Daemon,
    Outcome,
    Scenario,
    assert_all,
    assert_clean_exit,
    assert_consecutive,
    assert_healthy,
    false_busy_skips,
    run_scenarios,
    statuses,
    tail,
    when,
)
from reliability.registry import case

GROUP = "job values"
# The module's daemons run together and wait for ends of slow jobs (``wait_for_ends``).
pytestmark = pytest.mark.timeout(300)

VALUES = """
import asyncio
import os
import threading


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


class SpinsOnStr(Exception):
    def __str__(self):
        while True:
            pass


class SwallowsOnStr(Exception):
    def __str__(self):
        while True:
            try:
                while True:
                    pass
            except BaseException:
                pass


class SpinsOnRepr:
    def __repr__(self):
        while True:
            pass


def raise_spins_str():
    raise SpinsOnStr("never shown")


async def araise_swallows_str():
    raise SwallowsOnStr("never shown")


def return_spins_repr():
    return [SpinsOnRepr()]


class HoldsTheGil(Exception):
    def __str__(self):
        # One C call that never gives the GIL back (as a catastrophic regular expression).
        return str(sum(range(HOLD)))


HOLD = 0


def holds_gil(n):
    global HOLD
    HOLD = n
    raise HoldsTheGil()


def ten_million():
    return [i for i in range(10_000_000)]


def hundred_mb():
    return b"x" * (100 * 1024 * 1024)


def huge_message():
    raise ValueError("m" * (50 * 1024 * 1024))


async def _refresh(options):
    import argparse

    argparse.ArgumentParser().parse_args(options)  # bad options: SystemExit(2)


async def leaves_exits_behind():
    import sys

    loop = asyncio.get_running_loop()
    asyncio.create_task(_refresh(["--nope"]))  # fire and forget
    loop.call_soon(sys.exit, 3)
    r, w = os.pipe()
    loop.add_reader(r, sys.exit, 5)  # level-triggered: would raise at every turn
    os.write(w, b"x")


def _unpickled_in(pid):
    # Unpickling runs this: note which process did it (the daemon must not, for a record).
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "unpickled.log"), "a") as f:
        f.write(f"{os.getpid()} made in {pid}\\n")
    return [(i, i) for i in range(3)]


class Tuples(list):
    def __reduce__(self):
        return (_unpickled_in, (os.getpid(),))


def three_million_tuples():
    value = Tuples((i, i) for i in range(3_000_000))
    return [value, "tail"]


def tuple_items():
    for n in range(3):
        yield Tuples((i, i) for i in range(1000))


class SlowArg:
    def __str__(self):
        threading.Event().wait(5)  # idle: past the 2 s deadline without using the CPU
        return "slow"


def raise_value_error_of_slow_arg():
    raise ValueError(SlowArg())


def raise_plain_value_error():
    raise ValueError("an honest message")


class SlowCheck(type):
    def __subclasscheck__(cls, sub):
        if threading.current_thread() is threading.main_thread():
            threading.Event().wait(1.5)  # on the loop's thread this would stall every fire
        return type.__subclasscheck__(cls, sub)


class MetaError(ValueError, metaclass=SlowCheck):
    pass


def raise_meta_error():
    raise MetaError("checked slowly")
"""

INLINE = """
raise_exit_str: {entrypoint: "rel_values:raise_exit_str", schedule: "* * * * * *"}
araise_exit_str: {entrypoint: "rel_values:araise_exit_str", schedule: "* * * * * *"}
raise_interrupt_str: {entrypoint: "rel_values:raise_interrupt_str", schedule: "* * * * * *"}
araise_interrupt_str: {entrypoint: "rel_values:araise_interrupt_str", schedule: "* * * * * *"}
return_exit_repr: {entrypoint: "rel_values:return_exit_repr", schedule: "* * * * * *"}
areturn_exit_repr: {entrypoint: "rel_values:areturn_exit_repr", schedule: "* * * * * *"}
leaves_exits: {entrypoint: "rel_values:leaves_exits_behind", schedule: "*/2 * * * * *"}
slow_arg: {entrypoint: "rel_values:raise_value_error_of_slow_arg", schedule: "*/10 * * * * *"}
plain_value_error: {entrypoint: "rel_values:raise_plain_value_error", schedule: "* * * * * *"}
meta_error: {entrypoint: "rel_values:raise_meta_error", schedule: "*/2 * * * * *", retry: 1}
"""

SPINNING = """
raise_spins_str: {entrypoint: "rel_values:raise_spins_str", schedule: "* * * * * *"}
araise_swallows_str: {entrypoint: "rel_values:araise_swallows_str", schedule: "* * * * * *"}
return_spins_repr: {entrypoint: "rel_values:return_spins_repr", schedule: "* * * * * *"}
"""


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def slow_text_given_up(daemon: Daemon) -> None:
    """Until the first slow text (``slow_arg``, every 10 s) was given up: then ``ticks`` more."""
    daemon.wait_for(
        lambda log: any("slow_arg" in line and "within 2s" in line for line in log.splitlines()),
        60,
        "slow_arg's text given up",
    )


def measure_cpu(daemon: Daemon) -> float:
    """CPU seconds per second of the daemon over 3 s, once every spinning value was met."""
    daemon.wait_for(lambda log: log.count("hung before") >= 6, 60, "the hung texts learned")
    before, start = _cpu_seconds(daemon.proc.pid), time.monotonic()
    time.sleep(3)
    return (_cpu_seconds(daemon.proc.pid) - before) / (time.monotonic() - start)


FREEZE = """
holds_gil: {entrypoint: "rel_values:holds_gil", schedule: "@startup", kwargs: {n: 150000000}}
"""


def watch_pings(sock: socket.socket) -> Callable[[Daemon], list[float]]:
    """The driver: the monotonic times of the daemon's WATCHDOG=1 datagrams, until the gap
    the frozen loop makes has closed (pings resumed) or 60 s passed."""

    def driver(daemon: Daemon) -> list[float]:
        sock.settimeout(0.1)
        pings: list[float] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                data = sock.recv(4096)
            except TimeoutError:
                continue
            if data == b"WATCHDOG=1":
                pings.append(time.monotonic())
                gaps = [b - a for a, b in itertools.pairwise(pings)]
                if any(g > 1.5 for g in gaps) and len(pings) - 1 - gaps.index(max(gaps)) >= 3:
                    break
        return pings

    return driver


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
p_tuples:
  entrypoint: rel_values:three_million_tuples
  schedule: "*/3 * * * * *"
  isolation: process
p_items:
  entrypoint: rel_values:tuple_items
  schedule: "*/2 * * * * *"
  isolation: process
  echo: true
"""


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    root = tmp_path_factory.mktemp("values")
    modules = {"rel_values": VALUES}
    notify = root / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify))
    watchdog = clean_env(NOTIFY_SOCKET=str(notify), WATCHDOG_USEC="1000000")
    scenarios = [
        Scenario(name="inline", jobs=INLINE, modules=modules, ticks=5, driver=slow_text_given_up),
        Scenario(name="big", jobs=BIG, modules=modules, ticks=7),
        Scenario(name="spinning", jobs=SPINNING, modules=modules, ticks=3, driver=measure_cpu),
        Scenario(
            name="process",
            jobs=PROCESS,
            modules=modules,
            ticks=6,
            driver=lambda daemon: daemon.wait_for_ends(
                {
                    "p_tuples": 1,
                    "p_items": 2,
                    "p_raise_exit_str": 2,
                    "p_raise_interrupt_str": 2,
                    "p_huge_message": 1,
                }
            ),
        ),
    ]
    # The freeze holds a core for seconds on purpose (its daemon misses fires, and says so):
    # beside the others on a 2-core machine it starved their daemons of CPU, which then missed
    # a per-second fire or a stop's deadline for want of a core, not for a fault of their own.
    freeze = Scenario(
        name="freeze", jobs=FREEZE, modules=modules, ticks=2, driver=watch_pings(sock), env=watchdog
    )
    try:
        return run_scenarios(scenarios, Path(root)) | run_scenarios([freeze], Path(root))
    finally:
        sock.close()


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
    "slow_text_blames_its_own_class",
    group=GROUP,
    title="a job raises `ValueError(x)` where `x.__str__` takes 5 s, beside a job raising a plain "
    "`ValueError` every second",
    checks="the slow run `failed` with a placeholder message (its text not read within 2 s); "
    "every plain `ValueError` after it keeps its own message: only `x`'s class is not called "
    "again, never the builtin class that held it (every later `ValueError` of every job used "
    "to be recorded as `its str() hung before`)",
)
def test_slow_text_blames_its_own_class(outcomes: dict[str, Outcome]) -> None:
    out = outcomes["inline"]
    assert_healthy(out)
    slow = [r for r in out.of("slow_arg") if r["status"] != "skipped"]
    assert_all(slow, status="failed", error_type="ValueError")
    assert "within 2s" in slow[0]["error"], out.show(slow)  # later: its class is not called
    given_up = when(slow[0]["ended"])
    # (runs that ran and ended: on a busy machine one may still be going at the stop)
    after = [r for r in out.ended("plain_value_error") if when(r["started"]) > given_up]
    assert_all(after, status="failed", error_type="ValueError", error="an honest message")
    assert all(r["error"] == "an honest message" for r in after), out.show(after)


@case(
    "exception_metaclass_off_loop",
    group=GROUP,
    title="a sync job raises an exception whose metaclass's `__subclasscheck__` takes 1.5 s on "
    "the main thread, every 2 s, with a retry",
    checks="each run `failed` with the job's exception after two attempts; the per-second job "
    "keeps its times: the exception never travels up the loop's frames as itself (CPython "
    "called that `__subclasscheck__` at each `except` it passed, and fires were missed)",
)
def test_exception_metaclass_off_loop(outcomes: dict[str, Outcome]) -> None:
    out = outcomes["inline"]
    assert_healthy(out)
    # Two attempts of 1.5 s checks each may outlast the 2 s period on a busy machine: a skip
    # is then the truth (while the previous run goes on), and a run going at the stop is
    # cancelled honestly.
    assert not false_busy_skips(out.of("meta_error")), out.show(out.of("meta_error"))
    rows = out.ended("meta_error")
    assert_all(rows, status="failed", error_type="rel_values.MetaError", error="checked slowly")
    assert all(r["attempts"] == 2 for r in rows), out.show(rows)


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
        rows = out.ended(job)
        assert_all(rows, status="succeeded", at_least=2)
        assert all(len(r["result"] or "") <= 200 for r in rows), rows
    assert out.of("ten_million")[0]["result"].startswith("[0, 1, 2, 3")
    assert out.of("hundred_mb")[0]["result"].startswith("b'xxxx")
    rows = out.ended("huge_message")
    assert_all(rows, status="failed", error_type="ValueError", at_least=2, error="mmmm")
    assert all(len(r["error"]) <= 2000 for r in rows)
    # No fire was called "previous run still running" while no earlier run was going (a busy
    # machine may make a 10-million-item build outlast its 3 s period; that skip is true).
    assert not false_busy_skips(out.rows), out.show(false_busy_skips(out.rows))


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
        out.ended("p_raise_exit_str"),
        status="failed",
        error_type="rel_values.ExitsOnStr",
        at_least=2,
        error="str() raised SystemExit",
    )
    assert_all(
        out.ended("p_raise_interrupt_str"),
        status="failed",
        error_type="rel_values.InterruptsOnStr",
        at_least=2,
        error="str() raised KeyboardInterrupt",
    )
    rows = out.ended("p_huge_message")
    assert_all(rows, status="failed", error_type="ValueError", at_least=1, error="mmmm")
    assert all(len(r["error"]) <= 2000 for r in rows)
    # On a busy machine a 50 MB message may outlast the 3 s period: that skip is true.
    assert not false_busy_skips(out.rows), out.show(false_busy_skips(out.rows))


@case(
    "exits_left_on_the_loop",
    group=GROUP,
    title="an async job leaves behind a task that raises SystemExit(2) (argparse on bad options), "
    "a `call_soon(sys.exit, 3)` and an `add_reader` callback calling `sys.exit(5)` on a readable "
    "pipe, every 2 s",
    checks="each is logged with the job's file and line and ignored (the reader is removed, not "
    "called again at every turn); the daemon keeps firing and exits 0 on SIGTERM (asyncio "
    "re-raises them out of the loop: the daemon used to exit with the job's code)",
)
def test_exits_left_on_the_loop(outcomes: dict[str, Outcome]) -> None:
    out = outcomes["inline"]
    assert_healthy(out)
    assert_all(out.of("leaves_exits"), status="succeeded", at_least=2)
    for code in ("SystemExit(2)", "SystemExit(3)", "SystemExit(5)"):
        assert f"job code raised {code} on the event loop outside its run" in out.log, tail(out.log)
    assert "rel_values.py:" in out.log


@case(
    "process_big_result_stays_pickled",
    group=GROUP,
    title="`isolation: process` jobs return a list of three million tuples every 3 s, and yield "
    "lists of tuples (no handler, `echo: true`); unpickling either notes the process that does it",
    checks="the runs `succeeded` with previews made in the child; the daemon never unpickles "
    "them (unpickling holds the GIL: 0.7 s for three million tuples, in which nothing fires); "
    "the per-second job keeps its times",
)
def test_process_big_result_stays_pickled(outcomes: dict[str, Outcome]) -> None:
    out = outcomes["process"]
    assert_healthy(out)
    # Building and pickling them takes seconds on a busy machine: a fire may find the run going.
    rows = out.ended("p_tuples")
    assert_all(rows, status="succeeded", at_least=1)
    assert all((r["result"] or "").startswith("[[(0, 0), (1, 1)") for r in rows), out.show(rows)
    assert_all(out.ended("p_items"), status="succeeded", at_least=2)
    log = out.config.parent / "unpickled.log"
    assert not log.exists(), log.read_text()


@case(
    "str_spins",
    group=GROUP,
    title="jobs raise exceptions whose `__str__` loops forever (one swallows every "
    "BaseException while it loops) and return an object whose `__repr__` loops, every second",
    checks="after 2 s the text is given up, the thread is asked to stop (and slowed to a "
    "sleep if it will not), and that class's text is never called again; runs `failed`/"
    "`succeeded` with placeholders; the daemon uses under half a core afterwards (it used to "
    "pile up spinning threads); the per-second job keeps its times",
)
def test_str_spins(outcomes: dict[str, Outcome]) -> None:
    out = outcomes["spinning"]
    assert_healthy(out)
    for job, status, field, text in (
        ("raise_spins_str", "failed", "error", "str() hung before"),
        ("araise_swallows_str", "failed", "error", "str() hung before"),
        ("return_spins_repr", "succeeded", "result", "repr() hung before"),
    ):
        rows = out.of(job)
        # While the first run's text is being given up (2 s) it is still running: the fires
        # meanwhile are honestly skipped. After that, no fire waits on that text again.
        ran = [r for r in rows if r["status"] != "skipped"]
        assert_all(ran, status=status, at_least=3)
        # (on a busy machine the 2 s may end later than the third fire: no fixed count)
        # After it, a skip is the truth only while an earlier run was still going (a machine
        # busy elsewhere can hold a run past its second); a run waiting on the text again
        # would show "within 2s", not the placeholder (checked below).
        second = rows.index(ran[1])
        false = [r for r in false_busy_skips(rows) if rows.index(r) > second]
        assert not false, out.show(rows)
        assert "within 2s" in (ran[0][field] or ""), out.show(rows)
        # Until the class is known to hang, a value whose text needs job code is shown as a
        # placeholder while two given-up threads still run; then never called again.
        later = [r[field] or "" for r in ran[1:]]
        assert all(text in v or "still hang" in v for v in later), out.show(rows)
        assert text in later[-1], out.show(rows)
    cpu = out.extra["driver"]
    assert cpu < 0.5, f"{cpu:.2f} CPU seconds per second with the texts given up\n{tail(out.log)}"


@case(
    "gil_held_by_a_value",
    group=GROUP,
    title="under systemd's watchdog (`WATCHDOG_USEC=1s`), a job's exception `__str__` runs one C "
    "call that holds the GIL for seconds (as a catastrophic regular expression would)",
    checks="the daemon cannot run meanwhile (a known limit of inline jobs), so its `WATCHDOG=1` "
    "pings stop for longer than the watchdog allows, which is what makes systemd restart it; "
    "afterwards it pings again, the run is `failed`, the per-second fires the freeze cost are "
    "recorded `missed` (none lost, none doubled) and SIGTERM exits 0",
)
def test_gil_held_by_a_value(outcomes: dict[str, Outcome]) -> None:
    out = outcomes["freeze"]
    assert_clean_exit(out)
    ticks = out.of("tick")
    assert_consecutive(ticks)
    assert set(statuses(ticks)) <= {"succeeded", "missed"}, out.show(ticks)
    pings: list[float] = out.extra["driver"]
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert gaps and max(gaps) > 1.0, f"no watchdog gap in {gaps}\n{tail(out.log)}"
    assert len(pings) - 1 - gaps.index(max(gaps)) >= 3, "the pings did not resume"
    assert_all(out.of("holds_gil"), status="failed", error_type="rel_values.HoldsTheGil")
