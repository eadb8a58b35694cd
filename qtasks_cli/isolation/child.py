"""The child's side: ``python -c ... qtasks_cli.isolation.child PARENT_PID STDOUT_FD`` serves one
job's calls, one at a time (see the package's docstring)."""

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
import sys
import traceback
import types
from collections.abc import Callable, Sequence
from typing import IO, TYPE_CHECKING, Any

from qtasks_cli import entrypoints, failures, frames, previews, redaction
from qtasks_cli.entrypoints import CallableKind
from qtasks_cli.failures import safe_str as _safe_str
from qtasks_cli.isolation.wire import CorruptStream, dumps, qualified_name

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)


_PR_SET_PDEATHSIG = 1


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
            self._out.write(frames.frame(tag, payload, call=self.call))
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
            data = dumps(item, f"item {count} of {ref}", "to send it to the parent process")
            shown = previews.preview(item, _redact, as_json=False, user_code=True)
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
            data = dumps(value, f"the result of {ref}", purpose)
            preview = "" if value is None else previews.preview(value, _redact, user_code=True)
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
    """The child: ``python -m qtasks_cli.isolation.child PARENT_PID STDOUT_FD``."""
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
