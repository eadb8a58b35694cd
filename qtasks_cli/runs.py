"""The runs of one daemon: each started through the executor, queued behind its job's run in
progress, cancelled by the operator or let go when another node concluded it.

A run's path: ``start`` (or a wait in its job's ``pending`` list, policy.waits_behind) ->
a free max_concurrent slot -> the ledger's start mark (a handed-over request: its durable
begin) -> the executor (``gate``: a run prepared before its instant, burst.py) -> the
ledger's finish, with the lines it printed. Handed-over requests come in through
``start_queued`` (qtasks_cli.intake). A run cancelled before its body started is recorded
``cancelled`` and said once (qtasks_cli.cancels).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from qtasks_cli import cancels, offthread
from qtasks_cli.errors import QtasksError
from qtasks_cli.events import Event, EventBus, Finished, Fired, Queued
from qtasks_cli.executor import CANCELLED_RESULT, execute
from qtasks_cli.ledger import Ledger
from qtasks_cli.models import JobSpec, RunResult, RunStatus, TriggerKind
from qtasks_cli.policy import HANDED_OVER, busy_reason, waits_behind
from qtasks_cli.recovery import never_ran
from qtasks_cli.request import call_for_start
from qtasks_cli.runtime import Runtime
from qtasks_cli.store.base import Fire
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
        self.store = store
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
        runtime.on_unstuck = self.start_pending

    @property
    def running(self) -> int:
        """Runs whose body runs, or is about to start: they hold a slot."""
        return sum(state.running - state.waiting for state in self.jobs.values())

    @property
    def waiting(self) -> int:
        """Runs waiting for a free max_concurrent slot."""
        return sum(state.waiting for state in self.jobs.values())

    @property
    def queued(self) -> int:
        """Runs queued behind their job's previous run (overlap: queue, catch-up)."""
        return sum(len(state.pending) for state in self.jobs.values())

    def busy(self, name: str) -> str | None:
        """Why the job counts as still running, or None: a run in progress or waiting for a
        slot, or a thread of an earlier run that timed out and has not returned, or a task of
        one that ignored its cancellation and still runs."""
        state = self.jobs[name]
        return busy_reason(
            running=state.running,
            waiting=state.waiting,
            stuck=self.runtime.stuck[name],
            stuck_tasks=self.runtime.stuck_tasks[name],
        )

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
                    result = self._never_started(state.spec, run_id, trigger, scheduled, reason)
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
    ) -> None:
        """Report a run cancelled before its body started (qtasks_cli.cancels)."""
        self.bus.emit(
            cancels.cancelled_event(
                job=job, run_id=run_id, trigger=trigger, scheduled=scheduled, error=why,
                time=self.clock(),
            )
        )  # fmt: skip

    def _not_run(
        self,
        spec: JobSpec,
        run_id: str,
        trigger: TriggerKind,
        scheduled: datetime | None,
        exc: Exception,
    ) -> RunResult:
        """A run the daemon could not carry through (``execute`` raised: a bug of ours, or no
        thread could start): recorded ``failed`` with what stood in the way, never lost."""
        log.error(
            "%s %s: the daemon could not run it: %s: %s",
            spec.name,
            run_id,
            type(exc).__name__,
            exc,
            exc_info=exc,
        )
        return never_ran(
            job=spec.name,
            run_id=run_id,
            trigger=trigger,
            scheduled=scheduled,
            ended=self.clock(),
            status=RunStatus.FAILED,
            error=f"the daemon could not run it: {type(exc).__name__}: {exc}",
        )

    def _never_started(
        self,
        spec: JobSpec,
        run_id: str,
        trigger: TriggerKind,
        scheduled: datetime | None,
        reason: str,
    ) -> RunResult:
        """The outcome of a run cancelled before its body started, reported once."""
        result = never_ran(
            job=spec.name,
            run_id=run_id,
            trigger=trigger,
            scheduled=scheduled,
            ended=self.clock(),
            status=RunStatus.CANCELLED,
            error=reason,
        )
        self.cancelled(spec.name, run_id, trigger, scheduled, reason)
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
        """The specs of the runs whose body may run: a reload may have changed or removed
        their job since they started (a stop waits for their kill_grace, not the new one)."""
        return [spec for spec, _, _ in self._going.values()]

    def left_running(self, why: str) -> list[RunResult]:
        """At the end of a stop, the runs whose task has still not ended (an async job that
        ignores its cancellation, a child slower to die than the wait): concluded
        ``cancelled`` with ``why`` and said once. The caller records them before the store
        closes, so that no row stays ``running`` after a clean exit."""
        return [
            self._never_started(spec, run_id, trigger, scheduled, why)
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
        busy = self.busy(spec.name) is not None
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
        state.running += 1
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
        state = self.jobs.get(spec.name) or JobState(spec=spec)  # gone if a reload removed it
        # A request cancelled before its begin stays taken: the next start gives it back.
        recordable = trigger not in HANDED_OVER
        try:
            state.waiting += 1
            try:
                await self.runtime.capacity.acquire()
            finally:
                state.waiting -= 1
            try:
                if trigger in HANDED_OVER:
                    if not await self.ledger.begin(spec.name, run_id):
                        return
                    recordable = True
                else:
                    await self.ledger.started(run_id)
                self._going[run_id] = (spec, trigger, scheduled)  # recorded from here on
                try:
                    call = call_for_start(spec, args, kwargs)
                except QtasksError as exc:
                    result = self._refused(spec, run_id, trigger, scheduled, exc)
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
                    result = self._not_run(spec, run_id, trigger, scheduled, exc)
            finally:
                self.runtime.capacity.release()
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
                result = self._never_started(spec, run_id, trigger, scheduled, reason)
            raise
        finally:
            self._going.pop(run_id, None)  # its own end is recorded below, not left_running's
            if run_id in self._let_go:  # concluded elsewhere: nothing to record here
                result = None
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
                self._ended(spec.name)

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

    def _refused(
        self,
        spec: JobSpec,
        run_id: str,
        trigger: TriggerKind,
        scheduled: datetime | None,
        exc: QtasksError,
    ) -> RunResult:
        """A run whose arguments were refused as it started: failed, with the reason."""
        now = self.clock()
        result = RunResult(
            job=spec.name,
            run_id=run_id,
            trigger=trigger,
            scheduled=scheduled,
            started=now,
            ended=now,
            attempts=0,
            status=RunStatus.FAILED,
            error_type=type(exc).__name__,
            error=spec.redact(str(exc)),
        )
        self._emit(
            Finished(
                time=self.clock(),
                job=spec.name,
                run_id=run_id,
                trigger=trigger,
                scheduled=scheduled,
                status=RunStatus.FAILED,
                error=result.error,
                level=logging.ERROR,
            )
        )
        return result

    def _ended(self, name: str) -> None:
        state = self.jobs.get(name)
        if state is None:
            return
        state.running -= 1
        self.start_pending(name)
        self._wake.set()

    def start_pending(self, name: str) -> None:
        """Start the job's next pending run once nothing of it runs any more."""
        state = self.jobs.get(name)
        if state is None or not state.pending or self._stopping() or self.busy(name):
            return
        run_id, trigger, scheduled, args, kwargs = state.pending.pop(0)
        self.start(state.spec, run_id, trigger, scheduled, args, kwargs)

    def start_queued(self, request: QueuedRun) -> None:
        """Start a request taken from the queue (qtasks_cli.intake), or let it wait behind its
        job's run; a request for a job the file no longer has fails at once."""
        state = self.jobs.get(request.job)
        if state is None:
            result = never_ran(
                job=request.job,
                run_id=request.run_id,
                trigger=request.trigger,
                scheduled=None,
                ended=self.clock(),
                status=RunStatus.FAILED,
                error=f"no job named {request.job!r} in {self._config().path}",
                error_type="UnknownJob",
            )
            self._emit(
                Finished(
                    time=self.clock(),
                    job=request.job,
                    run_id=request.run_id,
                    trigger=request.trigger,
                    status=RunStatus.FAILED,
                    error=result.error,
                    level=logging.ERROR,
                )
            )
            self._background(self.ledger.finish(result))
            return
        self._emit(
            Fired(
                time=self.clock(), job=request.job, run_id=request.run_id, trigger=request.trigger
            )
        )
        # A handed-over request is never skipped: under skip or queue it waits for the
        # current run instead, so no order notification is lost.
        if waits_behind(state.spec.overlap, request.trigger, self.busy(request.job) is not None):
            state.pending.append(
                (request.run_id, request.trigger, None, request.args, request.kwargs)
            )
            return
        self.start(state.spec, request.run_id, request.trigger, None, request.args, request.kwargs)

    def take_unstarted(self) -> list[Fire]:
        """Take the claimed fires still waiting to start (``overlap: queue``, catch-up runs
        waiting for each other) off the pending lists, to give their claims back at a stop:
        they never ran, so the next start fires or catches them up. Handed-over requests
        stay taken, and the next start gives them back to the queue."""
        fires: list[Fire] = []
        for name, state in self.jobs.items():
            keep = []
            for entry in state.pending:
                run_id, trigger, scheduled = entry[0], entry[1], entry[2]
                if trigger in HANDED_OVER or scheduled is None:
                    keep.append(entry)
                    continue
                fires.append(
                    Fire(
                        job=name,
                        scheduled=scheduled,
                        trigger=trigger,
                        run_id=run_id,
                        schedule_key="",
                    )
                )
            state.pending = keep
        return fires
