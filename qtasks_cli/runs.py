"""The runs of one daemon: each started through the executor, queued behind its job's run in
progress, cancelled by the operator or let go when another node concluded it.

A run's path: ``start`` (or a wait in its job's ``pending`` list, policy.waits_behind) ->
a free max_concurrent slot -> the ledger's start mark (a handed-over request: its durable
begin) -> the executor (``gate``: a run prepared before its instant, burst.py) -> the
ledger's finish, with the lines it printed. Handed-over requests come in through
``start_queued`` (qtasks_cli.intake). A run cancelled before its body started is recorded
``cancelled`` and said once (qtasks_cli.cancels)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Coroutine
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from qtasks_cli import cancels, offthread, outcomes
from qtasks_cli.errors import QtasksError
from qtasks_cli.events import Event, EventBus, Fired, Queued
from qtasks_cli.executor import CANCELLED_RESULT, execute
from qtasks_cli.ledger import Ledger
from qtasks_cli.models import JobSpec, RunResult, RunStatus, TriggerKind
from qtasks_cli.policy import HANDED_OVER, queued_may_start, waits_behind
from qtasks_cli.request import call_for_start
from qtasks_cli.runtime import Runtime
from qtasks_cli.timetable import JobState

if TYPE_CHECKING:
    from qtasks_cli.burst import Burst, Gate
    from qtasks_cli.clock import Wakeup
    from qtasks_cli.models import Config
    from qtasks_cli.store.base import QueuedRun, Store

log = logging.getLogger(__name__)


class Runs:
    """Starts, queues, cancels and records the runs of the daemon's jobs."""

    def __init__(
        self,
        *,
        jobs: dict[str, JobState],
        store: Store,
        ledger: Ledger,
        runtime: Runtime,
        bus: EventBus,
        clock: Callable[[], datetime],
        emit: Callable[[Event], None],
        tasks: set[asyncio.Task[None]],
        background: Callable[[Coroutine[Any, Any, None]], None],
        wake: Wakeup,
        config: Callable[[], Config],
        stopping: Callable[[], bool],
    ) -> None:
        self.jobs = jobs  # the supervisor's table, shared
        self.store = store  # (qtasks_cli.fencing's Holder)
        self.ledger = ledger
        self.runtime = runtime
        self.bus = bus
        self.clock = clock
        self._emit = emit
        self._tasks = tasks  # the daemon's tasks, which a stop waits for
        self._background = background  # a task of the daemon's, for what may wait
        self._wake = wake
        self._config = config
        self._stopping = stopping
        # Why runs cancelled by ``cancel`` were cancelled; runs another node concluded
        # (qtasks_cli.fencing).
        self._cancelled_by: dict[str, str] = {}
        self._let_go: set[str] = set()
        # Runs whose body may run, until they are recorded (``left_running``).
        self._going: dict[str, tuple[JobSpec, TriggerKind, datetime | None]] = {}
        # The lines a finished run printed (qtasks_cli.output.Capture.take), recorded with its
        # end.
        self.output_of: Callable[[str], list[str]] | None = None
        self._recording: set[asyncio.Future[None]] = set()  # ends being recorded
        self.occupancy = runtime.occupancy

    @property
    def queued(self) -> int:
        """Runs queued behind their job's previous run (overlap: queue, catch-up)."""
        return sum(len(state.pending) for state in self.jobs.values())

    def cancel(self, run_id: str, by: str) -> bool:
        """Stop a run of this daemon for ``qtasks cancel``, as a timeout does: the task is
        cancelled (an async job is cancelled, a process job gets SIGTERM then SIGKILL after
        kill_grace, a thread job is abandoned and marked stuck); a run waiting in the
        overlap queue is dropped. Recorded ``cancelled`` with ``by`` in its error; False
        when no run of that id is in progress here."""
        reason = f"cancelled by {by}"
        for state in self.jobs.values():
            for index, (pending_id, trigger, scheduled, _, _) in enumerate(state.pending):
                if pending_id == run_id:
                    del state.pending[index]
                    result = self.cancelled(state.spec.name, run_id, trigger, scheduled, reason)
                    self._background(self.ledger.finish(result))
                    return True
        suffix = f":{run_id}"
        for task in self._tasks:
            if task.get_name().endswith(suffix) and not task.done():
                self._cancelled_by[run_id] = reason
                self.runtime.why_cancelled[run_id] = reason  # for the executor's event
                task.cancel(reason)
                return True
        return False

    def cancelled(
        self, job: str, run_id: str, trigger: TriggerKind, scheduled: datetime | None, why: str
    ) -> RunResult:
        """Report a run cancelled before its body started (qtasks_cli.cancels); its row."""
        result, event = outcomes.never_started(job, run_id, trigger, scheduled, why, self.clock())
        self.bus.emit(event)
        return result

    def runs_in_hand(self) -> dict[str, str]:
        """Every run this daemon holds (run id -> job): run tasks, claims waiting for their
        instant, runs queued behind their job's previous run."""
        held = self.ledger.held_runs()
        for name, state in self.jobs.items():
            held.update((entry[0], name) for entry in state.pending)
        for task in self._tasks:
            kind, _, rest = task.get_name().partition(":")
            if kind == "qtasks" and not task.done():
                job, _, run_id = rest.rpartition(":")
                held[run_id] = job
        return held

    def going_specs(self) -> list[JobSpec]:
        """The specs of the runs whose body may run (a reload may have changed their job)."""
        return [spec for spec, _, _ in self._going.values()]

    def left_running(self, why: str) -> list[RunResult]:
        """At the end of a stop, the runs whose task has still not ended (an async job that
        ignores its cancellation, a slow child): ``cancelled`` with ``why``, said once; the
        caller records them before the store closes (no row stays ``running``)."""
        return [
            self.cancelled(spec.name, run_id, trigger, scheduled, why)
            for run_id, (spec, trigger, scheduled) in self._going.items()
            if run_id not in self._let_go
        ]

    def let_go(self, run_id: str, status: RunStatus, why: str) -> None:
        """Stop holding a run another node concluded ``status`` (qtasks_cli.fencing): drop
        its claim or queued entry, or stop its body as a cancel does; nothing is recorded."""
        self.ledger.forget({run_id})
        for state in self.jobs.values():
            state.pending = [entry for entry in state.pending if entry[0] != run_id]
        for task in self._tasks:
            if task.get_name().endswith(f":{run_id}") and not task.done():
                self._let_go.add(run_id)
                self.runtime.concluded[run_id] = status
                self.runtime.why_cancelled[run_id] = why
                task.cancel(why)

    def start(
        self,
        spec: JobSpec,
        run_id: str,
        trigger: TriggerKind,
        scheduled: datetime | None,
        args: Any = None,
        kwargs: Any = None,
        *,
        burst: Burst | None = None,
    ) -> None:
        """Start a run's task (``burst``: prepared now, its body starts at ``burst.go``), or
        queue it behind the job's current run (overlap)."""
        state = self.jobs.get(spec.name)
        if state is None:
            return
        busy = self.occupancy.busy(spec.name) is not None
        # A handed-over request waits without a QUEUED event (_start_queued decided already).
        if trigger not in HANDED_OVER and waits_behind(spec.overlap, trigger, busy):
            state.pending.append((run_id, trigger, scheduled, args, kwargs))
            self._emit(
                Queued(
                    time=self.clock(),
                    job=spec.name,
                    run_id=run_id,
                    trigger=trigger,
                    scheduled=scheduled,
                )
            )
            return
        self.occupancy.begin(spec.name)
        name = f"qtasks:{spec.name}:{run_id}"
        if burst is not None:
            coro = self._run(spec, run_id, trigger, scheduled, args, kwargs, burst.gate)
            task = burst.add(coro, name=name)
        else:
            task = asyncio.create_task(
                self._run(spec, run_id, trigger, scheduled, args, kwargs), name=name
            )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(
        self,
        spec: JobSpec,
        run_id: str,
        trigger: TriggerKind,
        scheduled: datetime | None,
        args: Any,
        kwargs: Any,
        gate: Gate | None = None,
    ) -> None:
        result: RunResult | None = None
        # A request cancelled before its begin stays taken: the next start gives it back.
        recordable = trigger not in HANDED_OVER
        try:
            await self.occupancy.take_slot(spec.name, (run_id, trigger))
            try:
                if trigger in HANDED_OVER:
                    if not await self.ledger.begin(spec.name, run_id):
                        return
                    recordable = True
                    if self._stopping():  # the stop came while its begin was written
                        stop = cancels.AT_SHUTDOWN
                        result = self.cancelled(spec.name, run_id, trigger, None, stop)
                        return
                else:  # a fire decided before the stop goes on, as a running run does
                    await self.ledger.started(run_id)
                self._going[run_id] = (spec, trigger, scheduled)  # recorded from here on
                try:
                    call = call_for_start(spec, args, kwargs)
                except QtasksError as exc:
                    result, event = outcomes.refused(
                        spec, run_id, trigger, scheduled, exc, self.clock()
                    )
                    self._emit(event)
                    return
                try:
                    result = await execute(
                        spec,
                        run_id=run_id,
                        trigger=trigger,
                        scheduled=scheduled,
                        runtime=self.runtime,
                        emit=self.bus.emit,
                        clock=self.clock,
                        args=call.args,
                        kwargs=call.kwargs,
                        gate=gate,
                    )
                except Exception as exc:  # ours, or the process's (no thread could start)
                    result = outcomes.not_run(spec, run_id, trigger, scheduled, exc, self.clock())
            finally:
                self.occupancy.give_slot()
        except asyncio.CancelledError as exc:
            if run_id in self._let_go:
                raise  # concluded by another node: its record stands (qtasks_cli.fencing)
            if not recordable and run_id not in self._cancelled_by:
                raise  # a stop before the request began: it stays taken and is given back
            reason = self._cancelled_by.pop(run_id, cancels.AT_SHUTDOWN)
            self.runtime.why_cancelled.pop(run_id, None)
            so_far = getattr(exc, CANCELLED_RESULT, None)  # its attempts, if it had started
            if isinstance(so_far, RunResult):  # the executor reported its end
                result = replace(so_far, error=reason)
            else:  # cancelled waiting for a slot, or before the request began
                result = self.cancelled(spec.name, run_id, trigger, scheduled, reason)
            raise
        finally:
            self._going.pop(run_id, None)  # its own end is recorded below, not left_running's
            if run_id in self._let_go:  # concluded elsewhere: nothing to record here
                result = None
            # Over once its body and attempts are: a fire decided while this end is still
            # being recorded (its output redacted, its row written) finds the job free, as
            # its recorded end says.
            self._ended(spec.name)
            try:
                if result is not None:  # its own task: a stop waits for it (all_recorded)
                    record = asyncio.ensure_future(self._record(spec, result))
                    self._recording.add(record)
                    record.add_done_callback(self._recording.discard)
                    await asyncio.shield(record)
            finally:  # also when a cancel lands while the end is being recorded
                self._cancelled_by.pop(run_id, None)
                self._let_go.discard(run_id)
                self.runtime.concluded.pop(run_id, None)
                self.runtime.why_cancelled.pop(run_id, None)

    async def all_recorded(self) -> None:
        """Wait until every ended run is recorded: a run whose task a stop cancelled while
        its output was being redacted (in a thread) is recorded all the same."""
        while self._recording:
            await asyncio.wait(set(self._recording))

    async def _record(self, spec: JobSpec, result: RunResult) -> None:
        """Record ``result`` with the lines its run printed (qtasks_cli.output.recorded),
        their secrets hidden in a thread of the daemon's own: up to 1.2 MB of a job's
        output, which took the loop seconds to redact when it was full of invisible
        characters."""
        lines = self.output_of(result.run_id) if self.output_of is not None else []
        if lines:
            from qtasks_cli.output import recorded

            try:
                result = await offthread.run(recorded, result, lines, spec, name="qtasks-output")
            except RuntimeError:  # no thread can start: here, then
                result = recorded(result, lines, spec)
        await self.ledger.finish(result)

    def _ended(self, name: str) -> None:
        self.occupancy.end(name)
        self.start_pending(name)
        self._wake.set()

    def start_pending(self, name: str) -> None:
        """Start the job's pending runs that may start now (``policy.queued_may_start``): the
        next once nothing of the job runs, all of them under ``allow``; never one before its
        scheduled instant (a run that ends just before it): that one is started then."""
        state = self.jobs.get(name)
        while state is not None and state.pending and not self._stopping():
            busy = self.occupancy.busy(name) is not None
            if not queued_may_start(state.spec.overlap, busy):
                return
            run_id, trigger, scheduled, args, kwargs = state.pending[0]
            early = (scheduled - self.clock()).total_seconds() if scheduled is not None else 0
            if early > 0:
                asyncio.get_running_loop().call_later(early, self.start_pending, name)
                return
            del state.pending[0]
            self.start(state.spec, run_id, trigger, scheduled, args, kwargs)

    def drop_pending(self, jobs: Collection[str], why: str) -> list[RunResult]:
        """The runs waiting behind a run of ``jobs`` (removed by a reload, as are those waiting
        for a slot): each ``cancelled`` with ``why``, said once, returned to be recorded."""
        self.cancel_slot_waits(why, jobs)
        results: list[RunResult] = []
        for name in jobs:
            state = self.jobs.get(name)
            if state is None:
                continue
            for run_id, trigger, scheduled, _, _ in state.pending:
                results.append(self.cancelled(name, run_id, trigger, scheduled, why))
            state.pending = []
        return results

    def start_queued(self, request: QueuedRun) -> None:
        """Start a request taken from the queue (qtasks_cli.intake), or let it wait behind its
        job's run; a request for a job the file no longer has fails at once."""
        state = self.jobs.get(request.job)
        if state is None:
            result, event = outcomes.unknown_job(
                request.job, request.run_id, request.trigger, self._config().path, self.clock()
            )
            self._emit(event)
            self._background(self.ledger.finish(result))
            return
        self._emit(
            Fired(
                time=self.clock(), job=request.job, run_id=request.run_id, trigger=request.trigger
            )
        )
        # A handed-over request is never skipped: under skip or queue it waits for the
        # current run instead, so no order notification is lost.
        busy = self.occupancy.busy(request.job) is not None
        if waits_behind(state.spec.overlap, request.trigger, busy):
            state.pending.append(
                (request.run_id, request.trigger, None, request.args, request.kwargs)
            )
            return
        self.start(state.spec, request.run_id, request.trigger, None, request.args, request.kwargs)

    def cancel_slot_waits(
        self, why: str, jobs: Collection[str] | None = None
    ) -> list[asyncio.Task[Any]]:
        """Cancel the runs of ``jobs`` (None: all, a stop: a handed-over request stays taken)
        still waiting for a slot, each recorded ``cancelled`` with ``why``; their tasks."""
        cancelled: list[asyncio.Task[Any]] = []
        for (run_id, trigger), (job, task) in list(self.occupancy.slot_waits.items()):
            if jobs is not None and job not in jobs:
                continue
            if jobs is not None or trigger not in HANDED_OVER:
                self._cancelled_by[run_id] = why
            task.cancel(why)
            cancelled.append(task)
        return cancelled

    def drop_queued(self, why: str) -> list[RunResult]:
        """Take the fires still waiting to start (``overlap: queue``, catch-up runs waiting
        for each other) off the pending lists at a stop: each was said ``queued`` with its
        run id, so it is recorded under that id, ``cancelled`` with ``why`` (as a run waiting
        for a slot is), and said once. Handed-over requests stay taken, and the next start
        gives them back to the queue."""
        results: list[RunResult] = []
        for state in self.jobs.values():
            keep = []
            for entry in state.pending:
                run_id, trigger, scheduled = entry[0], entry[1], entry[2]
                if trigger in HANDED_OVER or scheduled is None:
                    keep.append(entry)
                    continue
                results.append(self.cancelled(state.spec.name, run_id, trigger, scheduled, why))
            state.pending = keep
        return results
