"""The parent's side: child processes (``Worker``) and the idle ones kept per job (``Workers``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from qtasks_cli import frames
from qtasks_cli.isolation.wire import (
    KILL_WAIT,
    ChildCrashed,
    CorruptStream,
    Message,
    decode,
    describe_exit,
    dumps,
)

if TYPE_CHECKING:
    from qtasks_cli.childout import ChildOutput
    from qtasks_cli.models import JobSpec

log = logging.getLogger(__name__)


IDLE_PER_JOB = 4  # idle children kept per job; more only while runs overlap
CLOSE_WAIT = 2.0  # seconds shutdown waits for idle children to exit on end of input
# Lockstep keeps at most two frames in a pipe (``init`` and the first ``call``), so frames of at
# most 4 KiB never fill its 64 KiB and never block the loop; larger ones are written from a thread.
_DIRECT_WRITE = 4096
# After the child exits, how long its last frames may take to be read. The pipe's end can come
# much later if the job forked a process that inherited it.
_OUTPUT_WAIT = 0.5
_MODULE = "qtasks_cli.isolation.child"  # runs as __main__ in the child


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
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
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
                self._post(self._accept, (frame, decode(frame.tag, frame.payload)))
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

    def _accept(self, item: tuple[frames.Raw, Message]) -> None:
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
        self._inbox.put_nowait(Message(tag="exit", value=returncode))
        if not self.exited.done():
            self.exited.set_result(returncode)

    async def send(self, tag: str, payload: bytes = b"") -> None:
        if tag == "call":
            self.call += 1
        frame = frames.frame(tag, payload, call=self.call)
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

    async def receive(self) -> Message:
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
            await worker.send("init", dumps(list(sys.path), "sys.path", "for the child"))
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
