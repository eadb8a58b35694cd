"""Objects a job puts in the daemon's way: a handler on the root logger that never returns, its
own logger's handler stuck on a hung reader, a ``sys.stdout`` whose ``flush`` never returns. The
daemon's own log calls never go through them, and the exit never waits on them for long."""

from __future__ import annotations

from pathlib import Path

import pytest

from reliability.harness import Outcome, Scenario, assert_all, assert_healthy, run_scenarios
from reliability.registry import case

GROUP = "job faults (inline)"

OBJECTS = """
import logging
import sys
import threading

HUNG = threading.Event()  # the collector, reader or remote console that never answers


class HungHandler(logging.Handler):
    # An HTTPHandler to a collector that accepts and never answers, in effect.
    def emit(self, record):
        HUNG.wait()


def root_handler():
    logging.getLogger().addHandler(HungHandler())


def chatty():
    return "tock"


_own = logging.getLogger("shop.export")
_own.propagate = False
_own.addHandler(HungHandler())


def own_handler():
    _own.warning("exported")  # blocks here for good, holding the handler's lock


class RemoteConsole:
    def __init__(self, inner):
        self.inner = inner

    def write(self, text):
        return self.inner.write(text)

    def flush(self):
        HUNG.wait()

    def __getattr__(self, name):
        return getattr(self.inner, name)


def replace_stdout():
    sys.stdout = RemoteConsole(sys.stdout)
    sys.stderr = RemoteConsole(sys.stderr)
"""

ROOT_JOBS = """
root_handler:
  entrypoint: rel_objects:root_handler
  schedule: "@startup"
chatty:
  entrypoint: rel_objects:chatty
  schedule: "* * * * * *"
"""

OWN_JOBS = """
own_handler:
  entrypoint: rel_objects:own_handler
  schedule: "@startup"
  timeout: 1s
"""

STDOUT_JOBS = """
replace_stdout:
  entrypoint: rel_objects:replace_stdout
  schedule: "@startup"
"""

SETTINGS = "shutdown_grace: 1s\n"
EXIT_BOUND = 1 + 8  # shutdown_grace, then at most exiting.OUR_WAIT + 2 * STEP_WAIT


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    root = Path(tmp_path_factory.mktemp("job-objects"))
    modules = {"rel_objects": OBJECTS}
    scenarios = [
        Scenario(name="root", jobs=ROOT_JOBS, modules=modules, settings=SETTINGS, ticks=4),
        Scenario(name="own", jobs=OWN_JOBS, modules=modules, settings=SETTINGS, ticks=4),
        Scenario(name="stdout", jobs=STDOUT_JOBS, modules=modules, settings=SETTINGS, ticks=4),
    ]
    return run_scenarios(scenarios, root)


def _exit_bounded(out: Outcome) -> None:
    assert out.stop_seconds is not None and out.stop_seconds < EXIT_BOUND, out.stop_seconds


@case(
    "job_root_log_handler_hangs",
    group=GROUP,
    title="a job adds a handler to the root logger whose `emit` never returns (an HTTPHandler "
    "to a collector that accepts and never answers)",
    checks="the daemon's own log lines (fires, starts, finishes) never go through it: every "
    "job keeps its times, the log goes on, exit 0 within `shutdown_grace` + 8 s",
)
def test_job_root_log_handler_hangs(outcomes: dict[str, Outcome]) -> None:
    out = outcomes["root"]
    assert_healthy(out)
    _exit_bounded(out)
    assert_all(out.of("chatty"), status="succeeded", at_least=3)


@case(
    "job_own_log_handler_hangs_at_exit",
    group=GROUP,
    title="a job's own logger (not propagating) writes to a reader that hung; the job is stuck "
    "in `emit` holding the handler's lock, and times out",
    checks="SIGTERM: exit 0 within `shutdown_grace` + 8 s (the exit's `logging.shutdown` is "
    "bounded, not waiting on that lock)",
)
def test_job_own_log_handler_hangs_at_exit(outcomes: dict[str, Outcome]) -> None:
    out = outcomes["own"]
    assert_healthy(out)
    _exit_bounded(out)
    assert_all(out.of("own_handler"), status="timed_out")


@case(
    "job_stdout_flush_hangs_at_exit",
    group=GROUP,
    title="a job replaces `sys.stdout` and `sys.stderr` with wrappers whose `flush()` never "
    "returns",
    checks="SIGTERM: exit 0 within `shutdown_grace` + 8 s; every flush at exit is bounded",
)
def test_job_stdout_flush_hangs_at_exit(outcomes: dict[str, Outcome]) -> None:
    out = outcomes["stdout"]
    assert_healthy(out)
    _exit_bounded(out)
