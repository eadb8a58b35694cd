"""What the child process of an ``isolation: process`` job writes to its descriptors 1 and 2.

The child's stdout and stderr are pipes the daemon reads in one thread per child. Each chunk
is first kept for the run the child serves now (qtasks_cli.output.feed), then passed on to the
daemon's own ``sys.stdout`` or ``sys.stderr`` (qtasks_cli.output.pass_on), so it lands where
an inline job's output lands (the terminal, the live table, the journal) the way an inline
job's prints do: the loaded secrets hidden, terminal control stripped, its partial lines held
apart from other writers'. Bytes that are not UTF-8 are shown as U+FFFD. Because the child is
the run's own, this takes in everything: its Python prints, C code, and the processes it
starts (``os.system``, ``subprocess`` with inherited descriptors), which inherit the pipes.

At the end of a call the child flushes its streams before it sends its last frame, so all it
wrote is in the pipes by then: ``drain`` has the thread read whatever the pipes hold now,
and only then is the run's output closed and recorded (bounded by DRAIN_WAIT, since the
daemon's own stdout may be stalled).
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import logging
import os
import select
import threading

from qtasks_cli import output

log = logging.getLogger(__name__)

DRAIN_WAIT = 1.0  # seconds a call's end waits for the thread to read what the pipes hold
_CHUNK = 65536


class ChildOutput:
    """The reading end of one child's stdout and stderr pipes, and the thread reading them."""

    def __init__(self, stdout: int, stderr: int, pid: int) -> None:
        self._fds = {stdout: 1, stderr: 2}  # our end -> the daemon's stream it goes on to
        self._writer = f"child-{pid}"  # whose text it is between runs (``output.pass_on``)
        self._decoders = {fd: codecs.getincrementaldecoder("utf-8")("replace") for fd in self._fds}
        self.run_id: str | None = None  # the run the child serves now
        self._lock = threading.Lock()
        self._drains: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._poke_r, self._poke_w = os.pipe()
        for fd in (*self._fds, self._poke_r, self._poke_w):
            os.set_blocking(fd, False)
        self._thread = threading.Thread(
            target=self._read_all, name=f"qtasks-child-{pid}-stdio", daemon=True
        )
        self._thread.start()

    async def drain(self) -> None:
        """Return once the thread has read what the pipes hold now (or after DRAIN_WAIT)."""
        if not self._thread.is_alive():
            return
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        with self._lock:
            self._drains.append((loop, done))
        with contextlib.suppress(OSError):  # full: a drain is already asked for
            os.write(self._poke_w, b"d")
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(done), DRAIN_WAIT)

    def _read_all(self) -> None:
        open_fds = set(self._fds)
        try:
            while open_fds:
                try:
                    ready, _, _ = select.select([*open_fds, self._poke_r], [], [])
                except InterruptedError:
                    continue
                asked = self._poke_r in ready
                if asked:
                    with contextlib.suppress(OSError):
                        os.read(self._poke_r, 4096)
                for fd in list(open_fds):
                    if (asked or fd in ready) and not self._read_now(fd):
                        open_fds.discard(fd)
                if asked:
                    self._answer()
        except Exception:
            log.exception("reading a child process's output failed")
        finally:
            for fd in (*self._fds, self._poke_r):
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._answer()
            with contextlib.suppress(OSError):
                os.close(self._poke_w)

    def _read_now(self, fd: int) -> bool:
        """Read what ``fd`` holds now; False at its end (every writer is gone)."""
        while True:
            try:
                data = os.read(fd, _CHUNK)
            except BlockingIOError:
                return True
            except InterruptedError:
                continue
            except OSError:
                return False
            text = self._decoders[fd].decode(data, final=not data)
            output.feed(self.run_id, text, self._fds[fd])
            # Where an inline job's prints go: secrets hidden, terminal control stripped.
            output.pass_on(self._fds[fd], self.run_id or self._writer, text)
            if not data:
                return False

    def _answer(self) -> None:
        with self._lock:
            drains, self._drains = self._drains, []
        for loop, done in drains:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(_resolve, done)


def _resolve(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)
