"""One attempt of a process job: the call, its items and its end, spoken with a ``Worker``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import traceback
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from qtasks_cli import offloop, redaction
from qtasks_cli.failures import safe_str as _safe_str
from qtasks_cli.isolation.pool import Worker, Workers
from qtasks_cli.isolation.wire import ChildCrashed, Message, ReportedError, dumps
from qtasks_cli.pickled import Pickled

if TYPE_CHECKING:
    from qtasks_cli.models import JobSpec

log = logging.getLogger(__name__)


class Invocation(Protocol):
    """What an attempt needs of the executor's run (a ``calling.Run``): the seam that keeps this
    package from importing the executor."""

    job: JobSpec
    run_id: str
    items: int | None
    leftover: Any
    stuck_stack: traceback.StackSummary | None
    stuck_where: str

    @property
    def args(self) -> Sequence[Any]: ...

    @property
    def kwargs(self) -> Mapping[str, Any]: ...

    @property
    def label(self) -> str: ...

    @property
    def workers(self) -> Workers: ...

    def resolve(self, ref: str) -> Any: ...

    async def handle(self, handler: Any, item: Any) -> Any:
        """The item passed to ``generate_handler`` (or kept), counted and echoed."""


async def call_attempt(run: Invocation) -> Any:
    """One attempt of ``run``'s job in a child process, with the same contract as an inline
    call: the value, or a generator's handled items; the job's exception as a ReportedError."""
    job = run.job
    handler = run.resolve(job.generate_handler) if job.generate_handler else None
    # The secrets go with the call: the child previews the result with them hidden (pickled.py).
    secrets = tuple(dict((*job.secrets, *redaction.known_pairs())).items())
    call = dumps(
        (job.entrypoint, run.args, run.kwargs, secrets),
        f"the arguments of job {job.name!r}",
        "to send them to its child process",
    )
    workers = run.workers
    worker = await workers.take(job)
    if worker.output is not None:
        worker.output.run_id = run.run_id
    try:
        return await _converse(run, worker, call, handler)
    except ChildCrashed as exc:
        log.debug("%s: child process %d: %s", run.label, worker.pid, exc)
        raise
    except asyncio.CancelledError:
        await _stop(run, worker)
        raise
    finally:
        if worker.output is not None:
            # What the child wrote is in its pipes by now: keep it for this run first.
            await asyncio.shield(worker.output.drain())
            worker.output.run_id = None
        workers.give_back(job, worker)


async def _converse(run: Invocation, worker: Worker, call: bytes, handler: Any) -> Any:
    worker.ready = False
    await worker.send("call", call)
    handled: list[Any] = []
    while True:
        message = await worker.receive()
        if message.tag == "stream":
            run.items = 0
        elif message.tag == "item":
            await _take_item(run, worker, handler, message, handled)
        elif message.tag != "stack":  # a stack comes with someone else's SIGTERM; exit follows
            return _final(worker, message, handled)


def _final(worker: Worker, message: Message, handled: list[Any]) -> Any:
    if message.tag == "end":
        worker.ready = True
        return handled
    if message.tag == "done":
        worker.ready = True
        preview, data = _unpickled(message, "the result")
        return Pickled(preview, data)
    if message.tag == "raised":
        worker.ready = True
        raise ReportedError(**message.value)
    raise RuntimeError(f"unexpected frame {message.tag!r} from child process {worker.pid}")


def _unpickled(message: Message, what: str) -> Any:
    if message.unreadable is not None:
        raise TypeError(
            f"{what} sent back by the child process cannot be unpickled: {message.unreadable}"
        )
    return message.value


async def _take_item(
    run: Invocation, worker: Worker, handler: Any, message: Message, handled: list[Any]
) -> None:
    try:
        shown, data = _unpickled(message, f"item {(run.items or 0) + 1}")
        item: Any = Pickled(shown, data)
        if handler is not None:  # the handler gets the item itself (see pickled.py)
            item = await _item_value(item, (run.items or 0) + 1)
        handled.append(await run.handle(handler, item))
    except Exception:
        await _close_stream(worker)
        raise
    await worker.send("next")


async def _item_value(item: Pickled, number: int) -> Any:
    def load() -> tuple[bool, Any]:
        try:
            return True, item.load()
        except Exception as exc:
            return False, f"{type(exc).__name__}: {_safe_str(exc, 500)}"

    timeout = f"not unpickled within {offloop.TEXT_TIMEOUT:g}s"
    done, value = await offloop.off_loop(load, fallback=(False, timeout))
    if not done:
        what = f"item {number} sent back by the child process cannot be unpickled: {value}"
        raise TypeError(what)
    return value


async def _close_stream(worker: Worker) -> None:
    """Have the child close its generator, running its finally blocks, as inline does."""
    await worker.send("close")
    with contextlib.suppress(ChildCrashed):  # the error on its way out is the one to report
        reply = await worker.receive()
        worker.ready = reply.tag == "closed"


async def _stop(run: Invocation, worker: Worker) -> None:
    stack = await worker.stop(run.job.kill_grace.total_seconds())
    if not worker.exited.done():  # not reaped even after SIGKILL: no retry beside it
        run.leftover = worker.exited
    if stack and run.stuck_stack is None:
        run.stuck_stack = traceback.StackSummary.from_list(stack)
        run.stuck_where = "the child process was here when stopped"
