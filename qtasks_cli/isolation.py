"""``isolation: process``: each call of a job runs in a child process, kept and reused across runs.

A worker is ``python -m qtasks_cli.isolation``. It imports the job's entry point on its first
call and then serves calls one at a time. Parent and child exchange frames (qtasks_cli.frames):
the parent writes on the child's stdin pipe, the child answers on a UNIX socket given as its
stdout, on which the kernel names the writer of every message; the parent accepts a frame only
from its child and for the current call. The child moves both to private descriptors (a copy it
forks with os.fork finds /dev/null there); its own stdout and stderr are two more pipes,
which the parent reads, keeps for the run's ``qtasks show`` and passes on to its own (so a job
prints where an inline job would; qtasks_cli.childout). The exchange is lockstep: the parent
sends ``call`` and reads until a final frame (``done``, ``end`` or ``raised``); a generator's
every ``item`` waits for ``next`` or ``close``, because the generate_handler runs in the parent.

The executor imports this module only when a process job runs. The child imports asyncio (through
the executor), ctypes on Linux and, on its first call, the job's module.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import functools
import importlib
import inspect
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from qtasks_cli import entrypoints, failures, frames, redaction
from qtasks_cli.entrypoints import CallableKind
from qtasks_cli.executor import KILL_WAIT, ReportedError, _handle, _Run, qualified_name
from qtasks_cli.failures import safe_str as _safe_str
from qtasks_cli.pickled import Pickled

if TYPE_CHECKING:
    from qtasks_cli.childout import ChildOutput
    from qtasks_cli.models import JobSpec

log = logging.getLogger(__name__)

IDLE_PER_JOB = 4  # idle children kept per job; more only while runs overlap
CLOSE_WAIT = 2.0  # seconds shutdown waits for idle children to exit on end of input
# Lockstep keeps at most two frames in a pipe (``init`` and the first ``call``), so frames of at
# most 4 KiB never fill its 64 KiB and never block the loop; larger ones are written from a thread.
_DIRECT_WRITE = 4096
_PR_SET_PDEATHSIG = 1
# After the child exits, how long its last frames may take to be read. The pipe's end can come
# much later if the job forked a process that inherited it.
_OUTPUT_WAIT = 0.5
_MODULE = "qtasks_cli.isolation"  # this file runs as __main__ in the child


class ChildCrashed(Exception):
    """The child process running a call died before it answered."""


# --- frames --------------------------------------------------------------------------------------


_Raw = frames.Raw
_frame = frames.frame
CorruptStream = frames.CorruptStream


def _pickled(value: Any, what: str, purpose: str) -> bytes:
    try:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise TypeError(
            f"{what} cannot be pickled {purpose}: {type(exc).__name__}: {_safe_str(exc)}"
        ) from None


def describe_exit(returncode: int) -> str:
    """Why a child ended, for the run's error: ``child exited with signal 11 (SIGSEGV)``."""
    if returncode == -signal.SIGKILL:
        return "child was killed (SIGKILL), possibly out of memory"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "unknown signal"
        return f"child exited with signal {-returncode} ({name})"
    return f"child exited with code {returncode}"


# --- the parent's side ---------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class _Message:
    tag: str
    value: Any = None
    unreadable: str | None = None  # why the payload could not be unpickled here


def _decode(tag: str, payload: bytes | bytearray) -> _Message:
    if not payload:
        return _Message(tag=tag)
    try:
        return _Message(tag=tag, value=pickle.loads(payload))
    except BaseException as exc:
        return _Message(tag=tag, unreadable=f"{type(exc).__name__}: {_safe_str(exc, 500)}")


# The child's first statement drops the working directory that ``-m``/``-c`` put first on
# sys.path before anything is imported, so a module another user planted there (a pickle.py)
# is never run; the daemon's own sys.path arrives with ``init``. (``-I`` would do it too, but
# also hides the user site a --user install of qtasks lives in; ``-P`` needs Python 3.11.)
_BOOT = (
    "import sys; del sys.path[0]; import runpy; "
    f"runpy.run_module({_MODULE!r}, run_name='__main__', alter_sys=True)"
)


class Worker:
    """One child process serving one job's calls, one at a time.

    One daemon thread reads the child's frames and hands them to the loop; another reaps the
    child and then hands over its exit status, so ``exited`` resolves once the process is gone.
    """

    def __init__(
        self, proc: subprocess.Popen[bytes], loop: asyncio.AbstractEventLoop, channel: socket.socket
    ) -> None:
        self.proc = proc
        self._channel = frames.SenderStream(channel, proc.pid, self._on_foreign)
        self._foreign: set[int] = set()  # pids of other processes that wrote on the channel
        self.ready = True  # waiting for a call and in step with the protocol
        self.exited: asyncio.Future[int] = loop.create_future()
        self._loop = loop
        self._inbox: asyncio.Queue[_Message] = asyncio.Queue()
        self._ended = False  # the child's output reached its end: it is exiting or gone
        self.call = 0  # the number of the current (or last) call
        self.tainted = ""  # why another process speaks on our pipes: never reuse the child
        self.output: ChildOutput | None = None  # its stdout and stderr (set by ``spawn``)
        self._reader = threading.Thread(
            target=self._read_all, name=f"qtasks-child-{proc.pid}-output", daemon=True
        )
        self._reader.start()
        waiter = threading.Thread(
            target=self._wait_exit, name=f"qtasks-child-{proc.pid}", daemon=True
        )
        waiter.start()

    @classmethod
    def spawn(cls) -> Worker:
        """Start a child; it waits for ``init`` (see ``Workers.take``)."""
        if not sys.executable:
            raise RuntimeError("cannot start a child process: sys.executable is unknown")
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        ours, theirs = frames.socket_pair()  # the child's frames come on it (see frames)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-c", _BOOT, str(os.getpid()), str(out_w)],
                stdin=subprocess.PIPE,
                stdout=theirs.fileno(),
                stderr=err_w,
                pass_fds=(out_w,),
                # Its own process group: a terminal's Ctrl-C goes to the daemon alone, which
                # stops jobs gracefully, and killpg reaches whatever the job itself started.
                start_new_session=True,
            )
        except BaseException:
            for fd in (out_r, err_r):
                os.close(fd)
            ours.close()
            raise
        finally:
            for fd in (out_w, err_w):
                os.close(fd)
            theirs.close()
        worker = cls(proc, asyncio.get_running_loop(), ours)
        from qtasks_cli.childout import ChildOutput

        worker.output = ChildOutput(out_r, err_r, proc.pid)
        return worker

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return not self._ended and self.proc.returncode is None

    def _read_all(self) -> None:
        try:
            while (frame := frames.read_frame(self._channel)) is not None:
                self._post(self._accept, (frame, _decode(frame.tag, frame.payload)))
        except CorruptStream as exc:
            # Out of step for good: nothing more from this channel can be trusted.
            self.tainted = f"its pipe carried data that is not a qtasks frame ({exc})"
            self.signal(signal.SIGKILL)
        except MemoryError:
            self.tainted = "its frame could not be read: out of memory in the daemon"
            self.signal(signal.SIGKILL)
        except (OSError, ValueError):
            log.debug("reading from child process %d failed", self.pid, exc_info=True)
        finally:
            self._ended = True
            self._channel.close()

    def _on_foreign(self, pid: int) -> None:
        """Another process wrote on the child's channel (a copy the job forked): what it wrote
        was dropped; the child is not reused. Called by the reader thread."""
        if pid in self._foreign:
            return
        self._foreign.add(pid)
        who = f"process {pid}" if pid else "a process the kernel did not name"
        self.tainted = f"{who}, not the child, wrote on its channel (did the job fork?)"
        self._post(_log_foreign, (self.pid, self.tainted))

    def _wait_exit(self) -> None:
        returncode = self.proc.wait()
        self._reader.join(timeout=_OUTPUT_WAIT)
        self._post(self._on_exit, returncode)

    def _post(self, fn: Callable[[Any], None], arg: Any) -> None:
        # RuntimeError: the loop is closed, so nobody is listening any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(fn, arg)

    def _accept(self, item: tuple[_Raw, _Message]) -> None:
        """Pass on a frame from the child process of the current call; drop any other (from a
        process the job forked, or a call that is over) and never reuse this child."""
        frame, message = item
        if frame.pid == self.pid and frame.call == self.call:
            self._inbox.put_nowait(message)
            return
        who = "" if frame.pid == self.pid else f" by process {frame.pid}"
        self.tainted = (
            f"a {frame.tag!r} frame{who} for call {frame.call} came while call {self.call} "
            "was current (did the job fork?)"
        )
        log.warning("child process %d: %s; dropped", self.pid, self.tainted)

    def _on_exit(self, returncode: int) -> None:
        self._inbox.put_nowait(_Message(tag="exit", value=returncode))
        if not self.exited.done():
            self.exited.set_result(returncode)

    async def send(self, tag: str, payload: bytes = b"") -> None:
        if tag == "call":
            self.call += 1
        frame = _frame(tag, payload, call=self.call)
        if len(frame) <= _DIRECT_WRITE:
            self.write(frame)
        else:
            from qtasks_cli import offthread  # not the default executor jobs may fill

            await offthread.run(self.write, frame, name="qtasks-child-write")

    def write(self, frame: bytes) -> None:
        stdin = self.proc.stdin
        assert stdin is not None
        try:
            stdin.write(frame)
            stdin.flush()
        except (OSError, ValueError):
            # The child is gone or going; its exit status will say how. Make sure it goes.
            log.debug("writing to child process %d failed", self.pid, exc_info=True)
            self.signal(signal.SIGKILL)

    async def receive(self) -> _Message:
        """The next frame from the child; ChildCrashed once it has exited."""
        message = await self._inbox.get()
        if message.tag == "exit":
            self._inbox.put_nowait(message)  # so that every later receive sees it too
            if self.tainted and message.value in (-signal.SIGKILL, -signal.SIGTERM):
                why = f"child was stopped by qtasks: {self.tainted}"  # not out of memory
            else:
                why = describe_exit(message.value)
                if self.tainted:
                    why = f"{why}: {self.tainted}"
            raise ChildCrashed(why)
        return message

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the child's process group: the child and what the job started.

        Called only while the child runs or just after it died, so the group id is not reused.
        """
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    async def stop(self, grace: float) -> list[Any] | None:
        """SIGTERM; SIGKILL if it still runs ``grace`` seconds later; wait until it is reaped.

        Returns the stack the child reported when it got SIGTERM, if it did.
        """
        self.ready = False
        self.signal(signal.SIGTERM)
        if not await self._exits_within(grace):
            log.warning(
                "child process %d still running %.3gs after SIGTERM; sending SIGKILL",
                self.pid,
                grace,
            )
            self.signal(signal.SIGKILL)
            if not await self._exits_within(KILL_WAIT):
                log.error("child process %d not gone %gs after SIGKILL", self.pid, KILL_WAIT)
        return self._reported_stack()

    async def _exits_within(self, seconds: float) -> bool:
        done, _ = await asyncio.wait({self.exited}, timeout=seconds)
        return bool(done)

    def _reported_stack(self) -> list[Any] | None:
        stack = None
        while not self._inbox.empty():
            message = self._inbox.get_nowait()
            if message.tag == "stack" and isinstance(message.value, list):
                stack = message.value
        return stack

    def retire(self) -> None:
        """Let an idle child exit at the end of its input; kill one that is mid-call or has
        died mid-call, with whatever it started."""
        if not self.ready:
            self.signal(signal.SIGKILL)
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError, ValueError):
                self.proc.stdin.close()

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds for the child to be reaped; for shutdown only."""
        try:
            self.proc.wait(timeout=max(timeout, 0.0))
        except subprocess.TimeoutExpired:
            return False
        return True


def _log_foreign(item: tuple[int, str]) -> None:
    log.warning("child process %d: %s; what it wrote was dropped", *item)


def _key(job: JobSpec) -> tuple[str, str]:
    return job.name, job.entrypoint


class Workers:
    """The child processes of one runtime's process jobs: per job, idle ones kept for reuse."""

    def __init__(self) -> None:
        self._idle: dict[tuple[str, str], list[Worker]] = {}
        self._live: set[Worker] = set()  # every child started and not yet reaped
        self._closed = False

    async def take(self, job: JobSpec) -> Worker:
        """An idle child of ``job``, or a new one."""
        idle = self._idle.get(_key(job), [])
        while idle:
            worker = idle.pop()
            if worker.alive:
                return worker
            worker.retire()
        if self._closed:
            raise RuntimeError("the qtasks runtime is shut down; no new child processes start")
        self._live = {w for w in self._live if w.proc.returncode is None}
        worker = Worker.spawn()
        self._live.add(worker)
        log.debug("job %r: started child process %d", job.name, worker.pid)
        try:
            # The child imports what the daemon can: settings.path is already on sys.path.
            await worker.send("init", _pickled(list(sys.path), "sys.path", "for the child"))
        except BaseException:
            worker.ready = False
            worker.retire()
            raise
        return worker

    def give_back(self, job: JobSpec, worker: Worker) -> None:
        """Keep ``worker`` for ``job``'s next run if it is healthy and there is room."""
        idle = self._idle.setdefault(_key(job), [])
        if worker.tainted:
            worker.ready = False  # killed with its process group, forked copies included
        if worker.ready and worker.alive and not self._closed and len(idle) < IDLE_PER_JOB:
            idle.append(worker)
        else:
            worker.retire()

    def close(self) -> None:
        """Stop every child: idle ones exit at the end of their input, busy ones are killed.

        Blocks (at most CLOSE_WAIT + KILL_WAIT seconds) until they are reaped, so that none
        outlives the daemon.
        """
        self._closed = True
        self._idle.clear()
        workers = [w for w in self._live if w.proc.returncode is None]
        self._live.clear()
        for worker in workers:
            worker.retire()
        deadline = time.monotonic() + CLOSE_WAIT
        stubborn = [w for w in workers if not w.wait(deadline - time.monotonic())]
        for worker in stubborn:
            log.warning("child process %d did not exit at shutdown; sending SIGKILL", worker.pid)
            worker.signal(signal.SIGKILL)
        for worker in stubborn:
            if not worker.wait(KILL_WAIT):
                log.error("child process %d not gone %gs after SIGKILL", worker.pid, KILL_WAIT)


async def call_attempt(run: _Run) -> Any:
    """One attempt of ``run``'s job in a child process, with the same contract as an inline
    call: the value, or a generator's handled items; the job's exception as a ReportedError."""
    job = run.job
    handler = run.resolve(job.generate_handler) if job.generate_handler else None
    # The secrets go with the call: the child previews the result with them hidden (pickled.py).
    secrets = tuple(dict((*job.secrets, *redaction.known_pairs())).items())
    call = _pickled(
        (job.entrypoint, run.args, run.kwargs, secrets),
        f"the arguments of job {job.name!r}",
        "to send them to its child process",
    )
    workers = run.runtime.workers
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


async def _converse(run: _Run, worker: Worker, call: bytes, handler: Any) -> Any:
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


def _final(worker: Worker, message: _Message, handled: list[Any]) -> Any:
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


def _unpickled(message: _Message, what: str) -> Any:
    if message.unreadable is not None:
        raise TypeError(
            f"{what} sent back by the child process cannot be unpickled: {message.unreadable}"
        )
    return message.value


async def _take_item(
    run: _Run, worker: Worker, handler: Any, message: _Message, handled: list[Any]
) -> None:
    try:
        shown, data = _unpickled(message, f"item {(run.items or 0) + 1}")
        item: Any = Pickled(shown, data)
        if handler is not None:  # the handler gets the item itself (see pickled.py)
            item = await _item_value(item, (run.items or 0) + 1)
        handled.append(await _handle(run, handler, item))
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

    timeout = f"not unpickled within {failures.TEXT_TIMEOUT:g}s"
    done, value = await failures.off_loop(load, fallback=(False, timeout))
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


async def _stop(run: _Run, worker: Worker) -> None:
    stack = await worker.stop(run.job.kill_grace.total_seconds())
    if not worker.exited.done():  # not reaped even after SIGKILL: no retry beside it
        run.leftover = worker.exited
    if stack and run.stuck_stack is None:
        run.stuck_stack = traceback.StackSummary.from_list(stack)
        run.stuck_where = "the child process was here when stopped"


# --- the child's side ----------------------------------------------------------------------------


class _Stop(BaseException):
    """Unwinds the child: SIGTERM (``terminated``) or the parent went away."""

    def __init__(self, terminated: bool) -> None:
        super().__init__(terminated)
        self.terminated = terminated


class _Channel:
    """The child's end of the protocol."""

    def __init__(self, inbound: IO[bytes], outbound: IO[bytes]) -> None:
        self._in = inbound
        self._out = outbound
        self._sending = False
        self.owner = os.getpid()
        self.call = 0

    def _never_from_a_copy(self) -> None:
        """A copy the job forked that comes back here must not speak or listen for us: it
        ends, quietly, the way a forked child should (os._exit)."""
        if os.getpid() != self.owner:
            _flush_stdio()
            os._exit(0)

    def receive(self) -> tuple[str, bytes] | None:
        self._never_from_a_copy()
        try:
            frame = frames.read_frame(self._in)
        except CorruptStream:
            return None
        if frame is None:
            return None
        if frame.tag == "call":
            self.call = frame.call
        return frame.tag, bytes(frame.payload)  # the same object when it is bytes

    def send(self, tag: str, payload: bytes = b"") -> None:
        self._never_from_a_copy()
        self._sending = True
        try:
            self._out.write(_frame(tag, payload, call=self.call))
            self._out.flush()
        except BrokenPipeError:
            raise _Stop(terminated=False) from None
        finally:
            self._sending = False

    def on_sigterm(self, signum: int, frame: types.FrameType | None) -> None:
        """Tell the parent where the job was, then unwind it so its finally blocks run."""
        if frame is not None and not self._sending:  # never cut into a frame being written
            frames = traceback.extract_stack(frame)
            if frames and frames[0].filename == "<string>":  # the boot line (``_BOOT``)
                frames = traceback.StackSummary.from_list(frames[1:])
            stack = [(f.filename, f.lineno, f.name, f.line) for f in frames]
            with contextlib.suppress(Exception):
                self.send("stack", pickle.dumps(stack))
        raise _Stop(terminated=True)


class _Loop:
    """The child's event loop for async jobs: made on first use, kept across calls."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None

    def run(self, awaitable: Any) -> Any:
        if self._loop is None or self._loop.is_closed():
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
        return self._loop.run_until_complete(_awaited(awaitable))


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


_END = object()


async def _anext(agen: Any) -> Any:
    try:
        return await agen.__anext__()
    except StopAsyncIteration:
        return _END


def _stepper(loop: _Loop, stream: Any) -> Callable[[], Any]:
    """A function returning the generator's next item, or _END."""
    if isinstance(stream, types.AsyncGeneratorType):
        return functools.partial(_next_async, loop, stream)
    return functools.partial(next, stream, _END)


def _next_async(loop: _Loop, agen: Any) -> Any:
    return loop.run(_anext(agen))


def _invoke(loop: _Loop, fn: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    """Call ``fn`` as the inline executor would: async awaited, sync awaitables awaited,
    generators returned for streaming."""
    kind = entrypoints.kind_of(fn)
    if kind is CallableKind.ASYNC:
        return loop.run(fn(*args, **kwargs))
    value = fn(*args, **kwargs)
    if not kind.is_generator and inspect.isawaitable(value):
        value = loop.run(value)
    return value


def _describe(exc: BaseException) -> dict[str, Any]:
    """ReportedError's fields for ``exc``: what the parent needs to report and retry it,
    bounded here (a 100 MB message is not shipped) and contained (its ``__str__`` may raise
    SystemExit). Secrets are redacted by the parent, which knows them."""
    error_type, message, text = failures.describe_exception(
        exc,
        _unredacted,
        error_chars=failures.SHIPPED_CHARS,
        traceback_chars=failures.SHIPPED_CHARS,
    )
    try:
        bases = [qualified_name(cls) for cls in type(exc).__mro__]
    except BaseException:
        bases = [error_type]
    return {"type_name": error_type, "message": message, "traceback_text": text, "bases": bases}


def _unredacted(text: str) -> str:
    return text


def _redact(text: str) -> str:
    """The daemon's secrets (sent with the call) hidden, as ``JobSpec.redact`` does there."""
    return redaction.redact_known(text)


def _close_quietly(loop: _Loop, stream: Any) -> None:
    try:
        if isinstance(stream, types.AsyncGeneratorType):
            loop.run(stream.aclose())
        else:
            stream.close()
    except _Stop:
        raise
    except BaseException:  # the failure on its way to the parent is the one to report
        log.debug("closing the generator failed", exc_info=True)


def _stream(channel: _Channel, loop: _Loop, ref: str, stream: Any) -> None:
    """Send each item; wait for ``next`` (go on) or ``close`` (the handler failed)."""
    step = _stepper(loop, stream)
    channel.send("stream")
    count = 0
    while (item := step()) is not _END:
        count += 1
        try:
            data = _pickled(item, f"item {count} of {ref}", "to send it to the parent process")
            shown = failures.preview(item, _redact, as_json=False, user_code=True)
        except TypeError:
            _close_quietly(loop, stream)
            raise
        channel.send("item", pickle.dumps((shown, data), protocol=pickle.HIGHEST_PROTOCOL))
        reply = channel.receive()
        if reply is None:
            raise _Stop(terminated=False)
        if reply[0] == "close":
            _close_quietly(loop, stream)
            channel.send("closed")
            return
    channel.send("end")


def _serve_call(channel: _Channel, loop: _Loop, payload: bytes) -> None:
    try:
        try:
            ref, args, kwargs, secrets = pickle.loads(payload)
            redaction.remember(secrets)
        except Exception as exc:
            raise TypeError(
                f"the arguments cannot be unpickled in the child process: "
                f"{type(exc).__name__}: {_safe_str(exc)}"
            ) from None
        value = _invoke(loop, entrypoints.resolve(ref), args, kwargs)
        if isinstance(value, (types.GeneratorType, types.AsyncGeneratorType)):
            _stream(channel, loop, ref, value)
        else:
            purpose = "to send it to the parent process"
            data = _pickled(value, f"the result of {ref}", purpose)
            preview = "" if value is None else failures.preview(value, _redact, user_code=True)
            channel.send("done", pickle.dumps((preview, data), protocol=pickle.HIGHEST_PROTOCOL))
    except _Stop:
        raise
    except BaseException as exc:
        channel.send("raised", pickle.dumps(_describe(exc)))
    finally:
        _flush_stdio()


class _Baseline:
    """What a reused child puts back before each call, whatever the previous job did to it:
    fds 0, 1 and 2, ``sys.stdin``/``stdout``/``stderr``, the working directory and the
    SIGTERM handler. A job that closed its stdout, chdir'd or ignored SIGTERM does not break
    or change the next call of the same child."""

    def __init__(self, channel: _Channel) -> None:
        self.fds = {fd: os.dup(fd) for fd in (0, 1, 2)}  # not inheritable: no job child gets them
        self.streams = {name: getattr(sys, name) for name in ("stdin", "stdout", "stderr")}
        self.cwd = os.getcwd()
        self.on_sigterm = channel.on_sigterm

    def restore(self) -> None:
        signal.signal(signal.SIGTERM, self.on_sigterm)
        for fd, saved in self.fds.items():
            with contextlib.suppress(OSError):
                os.dup2(saved, fd)
        for (name, stream), fd in zip(self.streams.items(), (0, 1, 2), strict=True):
            if stream is None or getattr(stream, "closed", True):
                mode = "r" if fd == 0 else "w"
                stream = self.streams[name] = open(  # noqa: SIM115 (lives as the process's)
                    fd, mode, buffering=1 if fd else -1, closefd=False, errors="backslashreplace"
                )
            setattr(sys, name, stream)
        with contextlib.suppress(OSError):
            os.chdir(self.cwd)


def _serve(channel: _Channel) -> None:
    first = channel.receive()
    if first is None or first[0] != "init":
        return
    sys.path[:] = pickle.loads(first[1])
    importlib.invalidate_caches()
    loop = _Loop()
    baseline = _Baseline(channel)
    while (frame := channel.receive()) is not None:
        tag, payload = frame
        if tag == "call":
            baseline.restore()
            _serve_call(channel, loop, payload)
        else:
            log.warning("qtasks child %d: unexpected frame %r; ignored", os.getpid(), tag)


def _flush_stdio() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def _die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this child when the daemon dies (Linux; best effort)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            log.debug("prctl(PR_SET_PDEATHSIG) is not available", exc_info=True)
    if os.getppid() != parent_pid:  # the parent died before we asked
        os._exit(1)


def _take_stdio(stdout: int) -> _Channel:
    """Move the protocol pipes off fds 0 and 1; the job gets /dev/null and the output pipe
    the parent reads (qtasks_cli.childout), written a line at a time as on a terminal."""
    inbound, outbound = os.dup(0), os.dup(1)  # not inherited by the job's own subprocesses
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(stdout, 1)
    os.close(stdout)
    with contextlib.suppress(Exception):
        sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    # A copy the job forks with os.fork (multiprocessing, a daemonizer) finds /dev/null where the
    # channel was: it cannot read the parent's frames. One forked some other way may write on
    # the channel, but the daemon drops what any process but this one writes (see frames).
    os.register_at_fork(after_in_child=functools.partial(_blind, (inbound, outbound)))
    return _Channel(os.fdopen(inbound, "rb"), os.fdopen(outbound, "wb"))


def _blind(fds: tuple[int, ...]) -> None:
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        for fd in fds:
            with contextlib.suppress(OSError):
                os.dup2(devnull, fd, inheritable=False)
        os.close(devnull)


def main(argv: Sequence[str]) -> int:
    """The child: ``python -m qtasks_cli.isolation PARENT_PID STDOUT_FD``."""
    parent_pid, stdout = int(argv[0]), int(argv[1])
    _die_with_parent(parent_pid)
    faulthandler.enable()  # a crash prints the job's Python stack to the daemon's stderr
    channel = _take_stdio(stdout)
    signal.signal(signal.SIGTERM, channel.on_sigterm)
    try:
        _serve(channel)
    except _Stop as stop:
        _flush_stdio()
        if stop.terminated:  # end the way SIGTERM ends a process, so the status says so
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
