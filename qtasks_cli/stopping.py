"""The graceful stop of the runs in progress (design.md, after uvicorn's ``shutdown()``):
wait for them up to ``shutdown_grace``, then cancel what is left and say how many.

A run's task is named ``qtasks:<job>:<run id>`` (qtasks_cli.runs); one cancelled here is
recorded ``cancelled at shutdown`` (qtasks_cli.cancels) unless a reason was given already.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from qtasks_cli import cancels
from qtasks_cli.events import Event, Notice
from qtasks_cli.models import Isolation

if TYPE_CHECKING:
    from qtasks_cli.models import JobSpec

REAP_MARGIN = 5.0  # seconds, beyond a child's kill_grace, to reap it and record its run


async def stop_runs(
    tasks: Collection[asyncio.Task[None]],
    *,
    grace: float,
    waiting: Callable[[], int],
    why_cancelled: dict[str, str],
    emit: Callable[[Event], None],
    clock: Callable[[], datetime],
    settle: float = 5.0,
    cancel_waits: Callable[[], Collection[asyncio.Task[Any]]] = tuple,
) -> None:
    """Wait up to ``grace`` seconds for ``tasks`` (the daemon's, runs among them); cancel
    the rest and wait up to ``settle`` seconds more for them to end (a process job's child
    gets SIGTERM, then SIGKILL after its kill_grace, and is reaped and recorded: the caller
    passes the longest kill_grace plus a margin). ``waiting``: how many runs have no
    max_concurrent slot yet (they are not running). ``cancel_waits`` cancels those at once
    and returns their tasks: none starts once the stop began (a slot freed in the grace), and
    their ends are recorded (up to ``settle`` seconds) before the stop says what it waits for."""
    waits = cancel_waits()
    if waits:
        await asyncio.wait(waits, timeout=settle)
    running = [t for t in tasks if not t.done()]
    if not running:
        return
    emit(
        Notice(
            time=clock(),
            message=f"stopping: waiting up to {grace:g}s for "
            + runs_in_words(len(running), waiting(), "running job(s)"),
        )
    )
    _, still = await asyncio.wait(running, timeout=grace)
    if not still:
        return
    left_waiting = waiting()  # of those, the ones that never got a slot
    for task in still:
        name = task.get_name()
        if name.startswith("qtasks:"):  # a run's task (Runs.start names it)
            why_cancelled.setdefault(name.rpartition(":")[2], cancels.AT_SHUTDOWN)
        task.cancel()
    await asyncio.wait(still, timeout=settle)
    emit(
        Notice(
            time=clock(),
            level=logging.WARNING,
            message="abandoned "
            + runs_in_words(len(still), left_waiting, "run(s) still running")
            + " after shutdown_grace",
        )
    )


def longest_kill_grace(jobs: Iterable[JobSpec]) -> timedelta:
    """The longest ``kill_grace`` of the ``isolation: process`` jobs (their children get
    SIGTERM, then SIGKILL after it); zero without such jobs."""
    graces = [j.kill_grace for j in jobs if j.isolation is Isolation.PROCESS]
    return max(graces, default=timedelta(0))


def stop_settle(jobs: Iterable[JobSpec]) -> float:
    """Seconds a stop waits for cancelled runs to end: ``longest_kill_grace`` plus
    ``REAP_MARGIN``."""
    return longest_kill_grace(jobs).total_seconds() + REAP_MARGIN


def runs_in_words(tasks: int, waiting: int, what: str) -> str:
    """``2 running job(s) and 1 run(s) waiting for a free slot``: tasks of runs, of which
    ``waiting`` have no slot yet (they are not running)."""
    parts = [f"{tasks - waiting} {what}"] if tasks > waiting else []
    if waiting:
        parts.append(f"{waiting} run(s) waiting for a free slot")
    return " and ".join(parts)
