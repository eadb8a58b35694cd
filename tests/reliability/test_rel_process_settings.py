"""Inline job code changes process-wide settings the daemon's loop depends on: the loop stopped,
its task factory and exception handler replaced, the recursion limit lowered, a slow log record
factory, a slow handler on the daemon's logger, ``logging.config.dictConfig``, a profile function
left on the loop's thread, a slow ``gc.callbacks`` function. The daemon keeps its own
(keepstate.py, sigguard.py, gchooks.py) and goes on."""

from __future__ import annotations

from pathlib import Path

import pytest

from reliability.harness import (
    Outcome,
    Scenario,
    assert_all,
    assert_healthy,
    late_rows,
    run_scenarios,
    show_rows,
    tail,
)
from reliability.registry import case

GROUP = "job values"

SETTINGS = """
import asyncio
import gc
import logging
import logging.config
import signal
import sys
import threading
import time


def _slow_factory(*args, **kwargs):
    time.sleep(0.3)
    return logging.LogRecord(*args, **kwargs)


class _Slow(logging.Handler):
    def emit(self, record):
        time.sleep(0.5)  # a collector that answers slowly


class Odd(Exception):
    def __repr__(self):
        time.sleep(3)
        return "Odd()"


async def _boom():
    raise Odd("x")


def _profile(frame, event, arg):
    if event == "call":
        time.sleep(0.001)


async def stops_loop():
    asyncio.get_running_loop().stop()


async def task_factory():
    def factory(loop, coro, **kwargs):
        raise RuntimeError("no tasks for you")

    asyncio.get_running_loop().set_task_factory(factory)


def recursion_limit():
    sys.setrecursionlimit(30)


def record_factory():
    logging.setLogRecordFactory(_slow_factory)


def daemon_handler():
    logging.getLogger("qtasks").addHandler(_Slow())


async def exception_handler():
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(None)
    loop.create_task(_boom())


def dict_config():
    logging.config.dictConfig({"version": 1})  # disable_existing_loggers: True


def logging_disable():
    logging.disable(logging.CRITICAL)  # meant for the job's own loggers


def dict_config_then_signal():
    logging.config.dictConfig({"version": 1})
    # Refused; the refusal's warning must not be lost to the loggers dictConfig just disabled.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(0.5)


async def profiles():
    sys.setprofile(_profile)


class _PickyFilter(logging.Filter):
    def filter(self, record):
        time.sleep(0.3)  # a host name looked up for each record
        return record.request_id is not None  # AttributeError on records without one


def handler_filter():
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _PickyFilter) for f in handler.filters):
            handler.addFilter(_PickyFilter())


def _slow_firstiter(agen):
    time.sleep(1.5)  # asyncio's own hook, which finalizes async generators, replaced


async def asyncgen_hooks():
    sys.set_asyncgen_hooks(firstiter=_slow_firstiter)


async def feed():
    for i in range(3):
        yield i


async def debug_mode():
    asyncio.get_running_loop().set_debug(True)  # left on, it costs every fire


def _gc_metric(phase, info):
    if threading.current_thread() is threading.main_thread():
        time.sleep(2.5)  # a gc-pause metric pushed to a collector that hangs


_kept = []


def keep(item):
    return item


def gc_callback():
    if _gc_metric not in gc.callbacks:
        gc.callbacks.append(_gc_metric)
    # Leave the collector one allocation short of a pass: the loop's next one makes it.
    threshold = gc.get_threshold()[0]
    while gc.get_count()[0] < threshold - 2:
        _kept.append([])
"""

NAMES = (
    "stops_loop",
    "task_factory",
    "recursion_limit",
    "record_factory",
    "daemon_handler",
    "exception_handler",
    "dict_config",
    "dict_config_then_signal",
    "logging_disable",
    "profiles",
    "debug_mode",
    "gc_callback",
    "asyncgen_hooks",
    "handler_filter",
)
JOBS = "".join(
    f'{name}: {{entrypoint: "rel_settings:{name}", schedule: "*/3 * * * * *"}}\n' for name in NAMES
) + (
    # an async generator job every second: asyncio's hooks run as each starts
    'feed: {entrypoint: "rel_settings:feed", schedule: "* * * * * *", '
    'generate_handler: "rel_settings:keep"}\n'
)


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    root = tmp_path_factory.mktemp("process-settings")
    scenario = Scenario(name="settings", jobs=JOBS, modules={"rel_settings": SETTINGS}, ticks=8)
    return run_scenarios([scenario], Path(root))["settings"]


@case(
    "process_settings_kept",
    group=GROUP,
    title="inline jobs, every 3 s: `loop.stop()`, a task factory that raises, "
    "`sys.setrecursionlimit(30)`, a log record factory that sleeps 0.3 s, a handler that sleeps "
    "0.5 s added to the `qtasks` logger, `loop.set_exception_handler(None)` before a task whose "
    "exception's `__repr__` takes 3 s, `logging.config.dictConfig({'version': 1})` (and then "
    "`signal.signal(SIGTERM, SIG_IGN)` in the same attempt), `logging.disable(CRITICAL)`, "
    "a profile function left on the loop's thread, `loop.set_debug(True)`, a `gc.callbacks` "
    "function that sleeps 2.5 s on the loop's thread (the collector left one allocation short "
    "of a pass), `sys.set_asyncgen_hooks` with a `firstiter` that sleeps 1.5 s (beside an async "
    "generator job every second), a filter that sleeps 0.3 s and raises `AttributeError` added to "
    "the root logger's handlers (the daemon's)",
    checks="every run succeeds, the per-second job keeps its times (under 1 s late, each of these "
    "used to stop the daemon, stop its fires or make every fire late), the daemon's log goes on "
    "to `stopping`, each change is put back or refused with a warning (none lost to the loggers "
    "a job's dictConfig disabled a moment before), and SIGTERM exits 0",
)
def test_process_settings_kept(outcome: Outcome) -> None:
    out = outcome
    assert_healthy(out)
    for name in NAMES:
        assert_all(out.of(name), status="succeeded", at_least=2)
    assert not late_rows(out.of("tick")), show_rows(late_rows(out.of("tick")))
    for what in (
        "job code stopped the event loop",
        "loop.set_task_factory(...) at",
        "sys.setrecursionlimit(30)",
        "the log record factory (logging.setLogRecordFactory) was changed",
        "a handler added to logger 'qtasks' (now called off the loop) was changed",
        "loop.set_exception_handler(...) at",
        "disabled, as logging.config.dictConfig does by default) was changed",
        "signal.signal(SIGTERM, ...) at",
        "logging.disable's level (the daemon's loggers ignore it)",
        "profile function (sys.setprofile) was changed",
        "the event loop's debug mode (loop.set_debug) was changed",
        "a garbage collector callback (gc.callbacks; now called off the loop) was changed",
        "async generator hooks (sys.set_asyncgen_hooks) was changed",
        "qtasks stopping",
    ):
        assert what in out.log, (what, tail(out.log))
