"""systemd integration without a dependency: sd_notify datagrams (READY, STATUS, RELOADING,
STOPPING, WATCHDOG) and the unit file that ``qtasks systemd-unit`` prints.

Only the standard library is imported, so the daemon can load this module whenever
``NOTIFY_SOCKET`` is set without slowing its start."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import re
import shutil
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from datetime import timedelta
from pathlib import Path

from qtasks_cli.errors import QtasksError
from qtasks_cli.events import Event, EventKind
from qtasks_cli.models import Snapshot

log = logging.getLogger(__name__)

# systemd reads STATUS= as a one-liner; it is refreshed on events but no more often than this.
STATUS_MIN_INTERVAL = 1.0
# Without events the countdown in STATUS= still moves; look at it this often.
STATUS_REFRESH = 5.0
# systemd waits this much longer than shutdown_grace before it sends SIGKILL.
STOP_MARGIN = timedelta(seconds=15)
WATCHDOG_SEC = 30
UNIT_NAME = re.compile(r"[A-Za-z0-9:_.@-]{1,250}")  # no "\\": SyslogIdentifier= would end in one

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


# --- the unit file -----------------------------------------------------------------------------


def qtasks_executable() -> Path:
    """The ``qtasks`` command of the running environment, as an absolute path: the one beside
    the interpreter first (a virtualenv's ``bin``), else the one on PATH, else ``argv[0]``."""
    beside = Path(sys.executable).with_name("qtasks")
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside.absolute()
    found = shutil.which("qtasks")
    if found:
        return Path(found).absolute()
    return Path(sys.argv[0]).resolve()


# systemd.syntax(7): a unit file is UTF-8 text read line by line; a value cannot hold a line
# break or another control character, loses leading and trailing white space, and a line ending
# in a backslash continues on the next one. Such values cannot be written; they are refused.
_UNWRITABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


class UnitValueError(QtasksError):
    """A value that a unit file cannot express (systemd.syntax(7)); exit code 2."""


def check_unit_value(text: str, what: str, *, bare: bool = True) -> str:
    """``text`` if a unit file can hold it as a value, else UnitValueError naming ``what``:
    no control characters (a newline would start a new directive) and valid UTF-8; a ``bare``
    (unquoted) value also without leading or trailing white space and a trailing backslash
    (a line continuation). Quoted ``ExecStart=`` words need only the first two."""
    problem = None
    found = _UNWRITABLE.search(text)
    if found:
        problem = f"it holds the control character {found.group()!r}"
    elif any("\ud800" <= c <= "\udfff" for c in text):
        problem = "it is not valid UTF-8"
    elif bare and text != text.strip():
        problem = "it starts or ends with white space, which systemd strips"
    elif bare and text.endswith("\\"):
        problem = "it ends with a backslash, which systemd reads as a line continuation"
    if problem:
        raise UnitValueError(
            f"{what} {text!r} cannot be written into a systemd unit: {problem} "
            "(systemd.syntax(7)); rename it"
        )
    return text


def _escape_specifiers(text: str) -> str:
    """systemd expands ``%x`` specifiers in most settings; ``%%`` is a literal percent sign."""
    return text.replace("%", "%%")


def _exec_word(text: str) -> str:
    """One word of an ``ExecStart=`` command line, quoted when systemd would split it."""
    text = _escape_specifiers(text).replace("$", "$$")
    if text and not re.search(r"[\s\"'\\;]", text):
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _seconds(delta: timedelta) -> str:
    return f"{math.ceil(delta.total_seconds())}s"


def render_unit(
    *,
    executable: Path,
    config: Path,
    working_directory: Path,
    shutdown_grace: timedelta,
    kill_grace: timedelta = timedelta(0),
    name: str = "qtasks",
    user: str | None = None,
    user_unit: bool = False,
) -> str:
    """The text of a ``Type=notify`` service that runs ``qtasks run CONFIG``.

    ``TimeoutStopSec=`` is ``shutdown_grace`` plus ``kill_grace`` (the longest of the
    ``isolation: process`` jobs: a stop waits for their children's SIGKILL and reap) plus
    ``STOP_MARGIN``, so systemd's SIGKILL never lands before the runs are recorded.

    ``user`` becomes ``User=`` in a system unit; a user unit (``user_unit``) runs as its owner
    and is wanted by ``default.target`` instead of ``multi-user.target``."""
    check_unit_value(str(executable), "the qtasks command's path", bare=False)
    check_unit_value(str(config), "the job file's path", bare=False)
    check_unit_value(str(working_directory), "the working directory")
    if user is not None:
        check_unit_value(user, "the user name")
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.@-]*\$?", user):
            user = str(os.getuid())  # systemd takes a numeric id for any name it rejects
    if not valid_unit_name(name):
        raise UnitValueError(f"--name: {name!r} is not a unit name")
    flag = " --user" if user_unit else ""
    where = (
        f"~/.config/systemd/user/{name}.service"
        if user_unit
        else f"/etc/systemd/system/{name}.service"
    )
    lines = [
        f"# Made by: qtasks systemd-unit{flag} --name {name} {_exec_word(str(config))}",
        f"# Install: save as {where}, then",
        f"#   systemctl{flag} daemon-reload && systemctl{flag} enable --now {name}",
        "[Unit]",
        f"Description=qtasks scheduler for {_exec_word(str(config))}",
    ]
    if not user_unit:
        lines += ["Wants=network-online.target", "After=network-online.target"]
    lines += [
        "",
        "[Service]",
        "Type=notify",
        "NotifyAccess=main",
        f"ExecStart={_exec_word(str(executable))} run {_exec_word(str(config))}",
        "ExecReload=/bin/kill -HUP $MAINPID",
        f"WorkingDirectory={_escape_specifiers(str(working_directory))}",
    ]
    if user is not None and not user_unit:
        lines.append(f"User={user}")
    lines += [
        "Environment=PYTHONUNBUFFERED=1",
        "Restart=on-failure",
        "RestartSec=5s",
        # A bad job file exits 2; restarting cannot fix it.
        "RestartPreventExitStatus=2",
        f"TimeoutStopSec={_seconds(shutdown_grace + kill_grace + STOP_MARGIN)}",
        f"WatchdogSec={WATCHDOG_SEC}s",
        "KillMode=mixed",
        f"SyslogIdentifier={name}",
        "",
        "[Install]",
        f"WantedBy={'default.target' if user_unit else 'multi-user.target'}",
        "",
    ]
    return "\n".join(lines)


def current_user() -> str:
    """The login name of the user running this process."""
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def valid_unit_name(name: str) -> bool:
    return bool(UNIT_NAME.fullmatch(name)) and not name.endswith(".service")
