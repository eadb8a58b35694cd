"""A wake-up call to the daemon: one datagram on a local socket named after the state file,
so handed-over runs start within milliseconds and operator's commands (pause, cancel, a
``status`` that wants a fresh view) are served at once, while the idle daemon need not poll
the store. A datagram says which: ``WORK`` (``enqueue``) wakes the loop, ``CONTROL`` the
control thread (qtasks_cli.control)."""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import sys
from collections.abc import Callable

log = logging.getLogger(__name__)


def address(state: str) -> str | None:
    """The socket's name for ``state``: an abstract Unix name (Linux), or None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    digest = hashlib.sha256(os.path.realpath(state).encode()).hexdigest()[:24]
    return f"\0qtasks-wake-{digest}"


WORK = b"!"
CONTROL = b"c"


def send(state: str, kind: bytes = WORK) -> None:
    """Tell a daemon on ``state`` to look for handed-over runs (``WORK``) or at the operator's
    tables (``CONTROL``); nobody listening is fine."""
    name = address(state)
    if name is None:
        return
    global _sender
    try:
        if _sender is None:
            _sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            _sender.setblocking(False)
        _sender.sendto(kind, name)
    except OSError:
        pass  # no daemon, or its queue of wake-ups is full: it is awake anyway


_sender: socket.socket | None = None  # reused: enqueue() may be called thousands of times


class Listener:
    """The daemon's end: for each burst of datagrams, calls ``on_wake`` on the event loop if
    one of them was ``WORK`` and ``on_control`` if one was ``CONTROL``."""

    def __init__(
        self,
        state: str,
        on_wake: Callable[[], None],
        on_control: Callable[[], None] | None = None,
    ) -> None:
        self._name = address(state)
        self._on_wake = on_wake
        self._on_control = on_control
        self._sock: socket.socket | None = None

    def start(self) -> bool:
        """Listen; False when this platform or machine offers no such socket."""
        import asyncio

        if self._name is None:
            return False
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind(self._name)
        except OSError as exc:
            log.debug("no wake-up socket (%s); polling the store instead", exc)
            sock.close()
            return False
        sock.setblocking(False)
        self._sock = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._read)
        return True

    def _read(self) -> None:
        assert self._sock is not None
        work = control = False
        try:
            while data := self._sock.recv(64):
                if data == CONTROL:
                    control = True
                else:
                    work = True
        except OSError:
            pass  # drained
        if control and self._on_control is not None:
            self._on_control()
        if work or self._on_control is None:
            self._on_wake()

    def close(self) -> None:
        if self._sock is not None:
            import asyncio

            asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
