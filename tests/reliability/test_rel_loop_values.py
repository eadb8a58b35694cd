"""The event loop never runs a job value's code and keeps its signals (issue 12, second round).

A job's value is looked at on the loop only through ``type(x)`` identity, and dropped off it;
the daemon's own blocking work never waits on the executor jobs share; a job cannot take the
daemon's signals, make its signal handlers raise into the daemon, or change the GIL switch
interval for good; a task that ignored its cancellation counts as the job's run. Each scenario
runs beside the per-second job, which must keep its times.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from reliability.harness import (
    Daemon,
    Outcome,
    Scenario,
    assert_all,
    assert_healthy,
    run_scenarios,
    statuses,
    tail,
)
from reliability.registry import case

GROUP = "job values"

VALUES = """
import os, threading, time

HERE = os.path.dirname(os.path.abspath(__file__))


def note(what):
    with open(os.path.join(HERE, "notes.log"), "a") as f:
        f.write(f"{what} {threading.current_thread().name}\\n")


class SlowDel:
    def __del__(self):
        note("del")
        time.sleep(3)


def slow_del():
    return SlowDel()


class Proxy:
    @property
    def __class__(self):
        note("class")
        time.sleep(3)
        return object


def class_prop():
    return Proxy()


class LazyError(Exception):
    @property
    def __class__(self):
        note("exc_class")
        time.sleep(3)
        return LazyError


def exc_class():
    raise LazyError("boom")


async def aexc_class():
    raise LazyError("boom")


class Meta(type):
    def __eq__(cls, other):
        note("eq")
        time.sleep(3)
        return type.__eq__(cls, other)

    __hash__ = type.__hash__


class Record(metaclass=Meta):
    pass


def meta_eq():
    return Record()


class Mark:
    def __del__(self):
        note("del")


def nested():
    return {"rows": [[Mark()]] + [str(i) for i in range(200_000)]}


def rows():
    try:
        for i in range(10):
            yield i
    finally:
        note("finally")
        time.sleep(2)


def upload(item):
    time.sleep(3)
"""

VALUE_JOBS = """
slow_del: {entrypoint: "rel_lv:slow_del", schedule: "*/3 * * * * *"}
class_prop: {entrypoint: "rel_lv:class_prop", schedule: "*/3 * * * * *"}
exc_class: {entrypoint: "rel_lv:exc_class", schedule: "*/3 * * * * *"}
aexc_class: {entrypoint: "rel_lv:aexc_class", schedule: "*/3 * * * * *"}
meta_eq: {entrypoint: "rel_lv:meta_eq", schedule: "*/3 * * * * *"}
nested: {entrypoint: "rel_lv:nested", schedule: "*/3 * * * * *"}
gen_finally:
  entrypoint: rel_lv:rows
  generate_handler: rel_lv:upload
  schedule: "*/4 * * * * *"
  timeout: 1s
"""

SIGNALS = """
import asyncio, os, signal, sys, threading, time
from signal import signal as bound_signal
from sys import setswitchinterval as bound_interval

HERE = os.path.dirname(os.path.abspath(__file__))
LIVE = 0


def note(what):
    with open(os.path.join(HERE, "notes.log"), "a") as f:
        f.write(f"{what}\\n")


async def sneaky():
    bound_signal(signal.SIGTERM, signal.SIG_IGN)  # refused: signal.py looks _signal up per call
    import _signal

    _signal.signal(_signal.SIGTERM, _signal.SIG_IGN)  # past every Python-level guard
    await asyncio.sleep(3600)


async def class_level():
    loop = asyncio.get_running_loop()
    type(loop).add_signal_handler(loop, signal.SIGTERM, lambda: None)


class Deadline(Exception):
    pass


def _on_alarm(signum, frame):
    raise Deadline("took too long")


async def alarm():
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, 0.3)
    await asyncio.sleep(0.05)  # returns before the alarm, which then hits the daemon
    return "ok"


def tune():
    sys.setswitchinterval(2.0)
    bound_interval(2.0)


async def stubborn():
    global LIVE
    LIVE += 1
    note(f"live {LIVE}")
    try:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                continue
    finally:
        LIVE -= 1


_never = threading.Event()


async def fills_executor():
    await asyncio.gather(*(asyncio.to_thread(_never.wait) for _ in range(40)))
"""

SIGNAL_JOBS = """
sneaky: {entrypoint: "rel_lsig:sneaky", schedule: "@startup"}
class_level: {entrypoint: "rel_lsig:class_level", schedule: "@startup"}
alarm: {entrypoint: "rel_lsig:alarm", schedule: "* * * * * *"}
tune: {entrypoint: "rel_lsig:tune", schedule: "@startup"}
stubborn:
  entrypoint: rel_lsig:stubborn
  schedule: "*/2 * * * * *"
  timeout: 1s
  kill_grace: 200ms
fills_executor:
  entrypoint: rel_lsig:fills_executor
  schedule: "@startup"
  timeout: 1s
"""


def reload_with_full_executor(daemon: Daemon) -> None:
    """Once the job's 40 hung to_thread calls fill its pool, SIGHUP must still reload."""

    def timed_out(log: str) -> bool:
        return any("fills_executor" in line and "timed out" in line for line in log.split("\n"))

    daemon.wait_for(timed_out, 20, "the timeout")
    daemon.send(signal.SIGHUP)
    daemon.wait_for(lambda log: "reloaded" in log, 15, "the reload")


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    root = tmp_path_factory.mktemp("loop-values")
    scenarios = [
        Scenario(name="values", jobs=VALUE_JOBS, modules={"rel_lv": VALUES}, ticks=8),
        Scenario(
            name="signals",
            jobs=SIGNAL_JOBS,
            modules={"rel_lsig": SIGNALS},
            ticks=5,
            driver=reload_with_full_executor,
        ),
    ]
    return run_scenarios(scenarios, Path(root))


def notes(out: Outcome) -> list[str]:
    path = out.config.parent / "notes.log"
    return path.read_text().splitlines() if path.exists() else []


@case(
    "value_code_off_loop",
    group=GROUP,
    title="jobs return a value whose `__del__` sleeps 3 s, whose `__class__` property sleeps 3 s, "
    "whose metaclass `__eq__` sleeps 3 s, a dict holding a big list that holds such a value, and "
    "raise (sync and async) an exception whose `__class__` property sleeps 3 s, every 3 s",
    checks="the per-second job keeps its times; every `__del__` runs in the `qtasks-release` "
    "thread, and no `__class__` or `__eq__` of theirs runs on the loop (`MainThread`); runs "
    "succeed or fail with the exception's type",
)
def test_value_code_off_loop(outcomes: dict[str, Outcome]) -> None:
    out = outcomes["values"]
    assert_healthy(out)
    for job in ("slow_del", "class_prop", "meta_eq", "nested"):
        assert_all(out.of(job), status="succeeded", at_least=2)
    for job in ("exc_class", "aexc_class"):
        assert_all(out.of(job), status="failed", error_type="rel_lv.LazyError", at_least=2)
    seen = notes(out)
    dels = [n for n in seen if n.startswith("del ")]
    assert dels, seen
    assert all(n == "del qtasks-release" for n in dels), seen
    assert not [n for n in seen if n.endswith(" MainThread")], seen


@case(
    "generator_finally_off_loop",
    group=GROUP,
    title="a sync generator job whose `finally` sleeps 2 s times out (1 s) in its slow "
    "`generate_handler`, every 4 s",
    checks="each run `timed_out`; the generator's `finally` runs in a helper thread, never on the "
    "loop; the per-second job keeps its times",
)
def test_generator_finally_off_loop(outcomes: dict[str, Outcome]) -> None:
    out = outcomes["values"]
    assert_healthy(out)
    assert_all(out.of("gen_finally"), status="timed_out", at_least=1)
    finals = [n for n in notes(out) if n.startswith("finally ")]
    assert finals, notes(out)
    assert "finally MainThread" not in finals, finals


@case(
    "signals_kept",
    group=GROUP,
    title="inline jobs set SIG_IGN for SIGTERM through a `signal.signal` bound before the daemon "
    "(refused) and through the `_signal` C module "
    "and then await for an hour; take SIGTERM through the loop's class "
    "(`Loop.add_signal_handler(loop, ...)`); leave a SIGALRM whose handler raises to go off in "
    "the daemon, every second; set `sys.setswitchinterval(2.0)` (directly and bound)",
    checks="the handler is put back at the next wake-up and SIGTERM stops the daemon with exit "
    "0; the class-level call is refused; the raising handler is logged against its job and "
    "every run succeeds; the switch interval is refused and put back",
)
def test_signals_kept(outcomes: dict[str, Outcome]) -> None:
    out = outcomes["signals"]
    assert_healthy(out)
    assert "the handler of SIGTERM was changed past the guard" in out.log, tail(out.log)
    assert "(through the loop's class)" in out.log and "rel_lsig.py:" in out.log, tail(out.log)
    assert "job alarm: its SIGALRM handler raised rel_lsig.Deadline" in out.log, tail(out.log)
    assert "the supervisor loop failed" not in out.log
    assert_all(out.of("alarm"), status="succeeded", at_least=3)
    assert "sys.setswitchinterval(2.0) at" in out.log, tail(out.log)
    assert "the GIL switch interval (to 2s) was changed past the guard" in out.log, tail(out.log)


@case(
    "stray_task_counts_as_running",
    group=GROUP,
    title="an async job swallows every cancellation, `timeout: 1s`, `kill_grace: 200ms`, every "
    "2 s, `overlap: skip`",
    checks="its first run `timed_out`, later fires are `skipped` while its task still runs: "
    "never two bodies at once",
)
def test_stray_task_counts_as_running(outcomes: dict[str, Outcome]) -> None:
    out = outcomes["signals"]
    assert_healthy(out)
    rows = out.of("stubborn")
    assert rows and rows[0]["status"] == "timed_out", out.show(rows)
    assert set(statuses(rows[1:])) <= {"skipped", "cancelled"}, out.show(rows)
    assert [n for n in notes(out) if n.startswith("live")] == ["live 1"], notes(out)


@case(
    "default_executor_full",
    group=GROUP,
    title="an async job leaves 40 `asyncio.to_thread` calls hung for good (the loop's default "
    "executor full)",
    checks="SIGHUP still reloads the file and SIGTERM still stops the daemon with exit 0: the "
    "daemon's own blocking work never waits on the executor jobs share",
)
def test_default_executor_full(outcomes: dict[str, Outcome]) -> None:
    out = outcomes["signals"]
    assert_healthy(out)
    assert_all(out.of("fills_executor"), status="timed_out")
    assert "reloaded" in out.log
