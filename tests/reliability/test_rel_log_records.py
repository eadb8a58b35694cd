"""Log records whose text runs a job's code: a ``__str__`` that is slow or never returns, logged
by a job or by a thread its module left running; a 16 MB message; a fire-and-forget task whose
exception's ``__repr__`` is slow. Under the plain log and the live table, the per-second job keeps
its times, the log goes on, and SIGTERM stops the daemon."""

from __future__ import annotations

from pathlib import Path

import pytest

from reliability.harness import Outcome, Scenario, assert_all, assert_healthy, run_scenarios, tail
from reliability.registry import case

GROUP = "output readers"

RECORDS = """
import asyncio
import logging
import threading
import time

log = logging.getLogger("shop.orders")


class Slow:
    def __str__(self):
        time.sleep(3)  # a lazy database object
        return "order 17"


class Hung:
    def __str__(self):
        time.sleep(3600)  # waits on a lock a stuck thread holds
        return "conn"


class Odd(Exception):
    def __repr__(self):
        time.sleep(3)
        return "Odd()"


def _background():
    time.sleep(2)
    log.warning("pool connection %s is slow", Hung())


threading.Thread(target=_background, daemon=True).start()


def logs_slow():
    log.info("processing %s", Slow())


def logs_big():
    log.info("response body:\\n" + "line\\n" * 2_000_000)  # 10 MB in two million lines


async def _boom():
    raise Odd("x")


async def leaves_failing_task():
    asyncio.get_running_loop().create_task(_boom())  # fire and forget, never awaited
"""

JOBS = """
slow: {entrypoint: "rel_records:logs_slow", schedule: "*/4 * * * * *"}
big: {entrypoint: "rel_records:logs_big", schedule: "*/3 * * * * *"}
orphan: {entrypoint: "rel_records:leaves_failing_task", schedule: "*/2 * * * * *"}
"""


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    root = tmp_path_factory.mktemp("log-records")
    modules = {"rel_records": RECORDS}
    scenarios = [
        Scenario(name="plain", jobs=JOBS, modules=modules, ticks=9),
        Scenario(name="live", jobs=JOBS, modules=modules, ticks=9, ui="live"),
    ]
    return run_scenarios(scenarios, Path(root))


@case(
    "log_records_run_job_code",
    group=GROUP,
    title="jobs log an object whose `__str__` takes 3 s, a thread a job's module started logs "
    "one whose `__str__` never returns, a job logs a 10 MB message of two million lines, an "
    "async job leaves a task whose exception's `__repr__` takes 3 s; under `--ui plain` and "
    "`--ui live`",
    checks="the per-second job keeps its times and SIGTERM stops the daemon with exit 0 (the "
    "live table's handler made the text under its lock: the loop froze, and for good with the "
    "hung one; the plain log's writer thread hung on it and every later line was lost): the "
    "thread that logs pays for its own objects' text, under no lock; the log goes on to "
    "`stopping`; the orphan task's report is made off the loop",
)
@pytest.mark.parametrize("ui", ["plain", "live"])
def test_log_records_run_job_code(outcomes: dict[str, Outcome], ui: str) -> None:
    out = outcomes[ui]
    assert_healthy(out)
    # Its log call takes 3 s: the run going on at the stop is cancelled (shutdown_grace 2s).
    slow = [r for r in out.of("slow") if r["error"] != "cancelled at shutdown"]
    assert_all(slow, status="succeeded", at_least=2)
    assert_all(out.of("big"), status="succeeded", at_least=2)
    assert_all(out.of("orphan"), status="succeeded", at_least=2)
    if ui == "plain":
        assert "processing order 17" in out.log, tail(out.log)
        assert "Task exception was never retrieved" in out.log, tail(out.log)
        assert "qtasks stopping" in out.log, tail(out.log)
