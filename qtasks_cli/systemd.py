"""The daemon's side of systemd without a dependency: sd_notify datagrams (READY, STATUS,
RELOADING, STOPPING, WATCHDOG), the watchdog interval and the one-line STATUS= text. The unit
file that ``qtasks systemd-unit`` prints is ``qtasks_cli.systemd_unit``.

Only the standard library is imported, so the daemon can load this module whenever
``NOTIFY_SOCKET`` is set without slowing its start."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping

from qtasks_cli.events import Event, EventKind
from qtasks_cli.models import Snapshot

# Re-exported: tests/test_systemd.py reaches the unit writer as ``systemd.render_unit``.
from qtasks_cli.systemd_unit import render_unit as render_unit

log = logging.getLogger(__name__)

# systemd reads STATUS= as a one-liner; it is refreshed on events but no more often than this.
STATUS_MIN_INTERVAL = 1.0
# Without events the countdown in STATUS= still moves; look at it this often.
STATUS_REFRESH = 5.0

_NOTIFY_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


# --- sd_notify ---------------------------------------------------------------------------------


def notify_address(value: str) -> str | bytes | None:
    """The socket address ``NOTIFY_SOCKET`` names: a path, or ``@name`` for an abstract socket
    (a leading NUL byte); None for forms this module does not speak (``vsock:``, relative)."""
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None


class Notifier:
    """Sends sd_notify messages to one datagram socket; a lost message is logged, never raised."""

    def __init__(self, address: str | bytes) -> None:
        self.address = address
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        # A stalled receiver must never block the event loop: drop the message instead.
        self._sock.setblocking(False)
        self._warned = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Notifier | None:
        """A notifier for ``$NOTIFY_SOCKET``, or None when it is unset or unusable."""
        value = environ.get("NOTIFY_SOCKET", "")
        if not value:
            return None
        address = notify_address(value)
        if address is None:
            log.warning(
                "NOTIFY_SOCKET=%r is not an absolute path or @abstract name; not notifying systemd",
                value,
            )
            return None
        return cls(address)

    def send(self, *fields: str) -> bool:
        """Send ``KEY=VALUE`` fields as one datagram; True if it went out."""
        message = "\n".join(fields).encode("utf-8", "replace")
        try:
            self._sock.sendto(message, self.address)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("cannot notify systemd at %r: %s", self._shown_address(), exc)
            return False
        return True

    def close(self) -> None:
        self._sock.close()

    def _shown_address(self) -> str:
        if isinstance(self.address, bytes):
            return "@" + self.address[1:].decode(errors="replace")
        return self.address


def watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings: half of ``$WATCHDOG_USEC``, or None when systemd
    asks for no watchdog or asks another process (``$WATCHDOG_PID``)."""
    owner = environ.get("WATCHDOG_PID", "")
    if owner and owner != str(pid):
        return None
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    return usec / 2 / 1_000_000


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, as ``MONOTONIC_USEC=`` wants it."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def _in(seconds: float) -> str:
    """A short countdown for STATUS= (one unit: ``in 2h``, ``in 5m``, ``in 12s``)."""
    s = max(0, math.ceil(seconds))  # 0.4 s away is "in 1s"; only an overdue fire is "now"
    for size, unit in ((86_400, "d"), (3600, "h"), (60, "m")):
        if s >= size:
            return f"in {s // size}{unit}"
    return f"in {s}s" if s else "now"


def status_line(snapshot: Snapshot) -> str:
    """One line for ``STATUS=``: ``5 jobs, 1 running, next: daily_report in 2h``."""
    count = len(snapshot.jobs)
    parts = [f"{count} job{'s' if count != 1 else ''}", f"{snapshot.running} running"]
    if snapshot.waiting:
        parts.append(f"{snapshot.waiting} waiting for a slot")
    if snapshot.queued:
        parts.append(f"{snapshot.queued} queued")
    if snapshot.abandoned:
        parts.append(f"{snapshot.abandoned} abandoned still running")
    upcoming = [j for j in snapshot.jobs if j.enabled and not j.paused and j.next_fire is not None]
    if upcoming:
        soonest = min(upcoming, key=lambda j: (j.next_fire, j.name))
        assert soonest.next_fire is not None
        wait = (soonest.next_fire - snapshot.now).total_seconds()
        parts.append(f"next: {soonest.name} {_in(wait)}")
    else:
        parts.append("nothing scheduled")
    return ", ".join(parts)


async def _wait(timeout: float, wake: asyncio.Event | None) -> None:
    """Sleep ``timeout`` seconds, or less if ``wake`` is set meanwhile."""
    if wake is None:
        await asyncio.sleep(timeout)
        return
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(wake.wait(), timeout)


class SystemdAgent:
    """The daemon's side of the sd_notify protocol, driven by bus events.

    ``on_event`` is a bus sink: READY/RELOADING/RELOADED/STOPPING events become the matching
    messages at once, and any event marks STATUS= for an update (at most once a second).
    ``run`` is a task on the daemon's loop that sends WATCHDOG=1 every ``watchdog`` seconds,
    so a blocked loop stops the pings and systemd restarts the service. ``clock`` and ``wait``
    (sleep up to a timeout or until the event is set) are injected so tests control time."""

    def __init__(
        self,
        notifier: Notifier,
        *,
        watchdog: float | None = None,
        snapshot: Callable[[], Snapshot] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wait: Callable[[float, asyncio.Event | None], Awaitable[None]] | None = None,
    ) -> None:
        self.notifier = notifier
        self.watchdog = watchdog
        self.snapshot = snapshot
        self.clock = clock
        self._wait = wait or _wait
        self._wake = asyncio.Event()
        self._status_due = False
        self._stopping = False
        self._last_status_at = -math.inf
        self._last_status = ""

    def on_event(self, event: Event) -> None:
        kind = event.kind
        if kind is EventKind.READY:
            self.notifier.send("READY=1", *self._status_field(force=True))
        elif kind is EventKind.RELOADING:
            self.notifier.send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}")
        elif kind in (EventKind.RELOADED, EventKind.RELOAD_FAILED):
            self.notifier.send("READY=1", *self._status_field(force=True))
        elif kind is EventKind.STOPPING:
            self._stopping = True
            self.notifier.send("STOPPING=1", *self._status_field(force=True))
        else:
            self._status_due = True
            self._wake.set()

    def status_text(self) -> str:
        if self.snapshot is None:
            return "starting" if not self._stopping else "stopping"
        snapshot = self.snapshot()
        if self._stopping:
            return f"stopping, {snapshot.running} running"
        return status_line(snapshot)

    def _status_field(self, *, force: bool = False) -> list[str]:
        """``["STATUS=..."]`` when there is something new to say (or ``force``), else ``[]``."""
        text = self.status_text()
        self._status_due = False
        self._last_status_at = self.clock()
        if text == self._last_status and not force:
            return []
        self._last_status = text
        return [f"STATUS={text}"]

    def send_status(self, *, force: bool = False) -> None:
        """Send STATUS= now if it changed (or ``force``)."""
        fields = self._status_field(force=force)
        if fields:
            self.notifier.send(*fields)

    async def run(self) -> None:
        """Ping the watchdog and keep STATUS= current until cancelled."""
        next_ping = self.clock() if self.watchdog is not None else math.inf
        next_look = self.clock() + STATUS_REFRESH
        while True:
            now = self.clock()
            if self.watchdog is not None and now >= next_ping:
                self.notifier.send("WATCHDOG=1")
                next_ping = now + self.watchdog
            if self._status_due:
                status_at = self._last_status_at + STATUS_MIN_INTERVAL
            else:
                status_at = next_look
            if now >= status_at:
                self.send_status()
                next_look = now + STATUS_REFRESH
                status_at = next_look
            timeout = max(0.0, min(next_ping, status_at) - self.clock())
            self._wake.clear()
            # While a STATUS= update waits for its turn, another event cannot make it sooner.
            await self._wait(timeout, None if self._status_due else self._wake)


def agent_from_env(
    environ: MutableMapping[str, str], *, pid: int | None = None
) -> SystemdAgent | None:
    """The daemon's agent when systemd gave it a notify socket (the notify variables are then
    removed from ``environ`` so jobs do not inherit them); None otherwise."""
    interval = watchdog_interval(environ, os.getpid() if pid is None else pid)
    notifier = Notifier.from_env(environ)
    for name in _NOTIFY_ENV:
        environ.pop(name, None)
    if notifier is None:
        return None
    return SystemdAgent(notifier, watchdog=interval)
