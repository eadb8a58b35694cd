"""The operator's channel: what a daemon publishes about itself, paused jobs, cancel requests
and the captured output of runs.

A narrow Protocol of its own (``ControlStore``), beside ``Store``: it is synchronous and
used from threads (the daemon's control thread, and the short-lived ``qtasks status``,
``pause``, ``resume``, ``cancel`` and ``show`` commands), each with a connection of its own,
so nothing here ever runs on the daemon's event loop or queues behind its claims.
"""

from __future__ import annotations

import getpass
import os
import socket
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from qtasks_cli.models import Attempt, RunResult

# Statuses of runs that ran (for "last result"); skipped and missed fires did not.
RAN = ("succeeded", "failed", "timed_out", "cancelled", "interrupted")


@dataclass(frozen=True, kw_only=True, slots=True)
class DaemonInfo:
    """One daemon as it last described itself; ``jobs`` maps a job name to ``{"next":
    ISO-8601 UTC or None, "running": int, "waiting": int, "pending": int, "abandoned": [run
    ids], "enabled": bool, "paused": bool}`` (see ``qtasks_cli.control.daemon_info``)."""

    node_id: str
    host: str
    pid: int
    started: datetime  # aware UTC
    last_seen: datetime  # aware UTC: its latest heartbeat (a publish, or a node's beat)
    version: str
    config: str  # the job file's path
    digest: str  # Config.digest of the definitions the daemon runs
    every: float  # seconds between heartbeats, to judge how fresh ``last_seen`` is
    running: int = 0  # runs whose body runs
    queued: int = 0  # runs queued behind their job's previous run
    jobs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    waiting: int = 0  # runs waiting for a free max_concurrent slot
    abandoned: int = 0  # runs given up on whose thread or task still runs
    published: datetime | None = None  # aware UTC: when this description was written
    pid_start: int | None = None  # the process's start time (see ``process_start``)
    # Its kernel boot and pid namespace (``base.local_key``): its pid means something to a
    # reader with the same key only; None from a daemon that did not say.
    local_key: str | None = None
    # Whether a command's wake-up reaches it at once (``ControlStore.wake``): then it answers
    # a ``status`` within a moment, else only at its next look; None: it did not say.
    wakeable: bool | None = None

    def alive(self, now: datetime, grace: float = 0.0) -> bool:
        """True when the last heartbeat is recent: within three cadences (or ``grace`` s)."""
        return (now - self.last_seen).total_seconds() <= max(3 * self.every, grace)

    @property
    def written(self) -> datetime:
        """When this description was written (aware UTC)."""
        return self.published if self.published is not None else self.last_seen


def process_start(pid: int) -> int | None:
    """The start time of process ``pid`` in clock ticks since boot (``/proc/PID/stat`` field
    22, proc(5)): with the pid, it names one process, which a reused pid does not match.
    None where there is no such file (not Linux, or no such process)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read()
    except OSError:
        return None
    try:
        # The command name may hold spaces and parentheses; the fields follow the last ')'.
        return int(raw[raw.rindex(b")") + 2 :].split()[19])
    except (ValueError, IndexError):
        return None


@dataclass(frozen=True, kw_only=True, slots=True)
class Overview:
    """The runs ``qtasks status`` needs, in one read."""

    active: Sequence[RunResult]  # claimed or running, oldest first
    last: Mapping[str, RunResult]  # per job, its latest run that ran (not skipped or missed)
    waiting: Mapping[str, int]  # per job, handed-over requests no daemon has taken yet
    counts: Mapping[str, Mapping[str, int]]  # per job and status, runs ended since ``since``
    recent: Sequence[RunResult]  # the latest finished runs, newest first


@dataclass(frozen=True, kw_only=True, slots=True)
class Pause:
    job: str
    since: datetime  # aware UTC
    by: str  # who paused it: user@host (pid N)


@dataclass(frozen=True, kw_only=True, slots=True)
class CancelRequest:
    run_id: str
    requested: datetime  # aware UTC
    by: str


class ControlStore(Protocol):
    """The operator's tables; every method blocks (call it from a thread, never the loop).
    Errors are ``StoreError`` with a message naming the state."""

    location: str

    def close(self) -> None: ...

    # -- what daemons publish --------------------------------------------------------------

    def publish(self, info: DaemonInfo) -> None:
        """Insert or replace this daemon's row."""

    def withdraw(self, node_id: str) -> None:
        """Remove a daemon's row (it stopped cleanly)."""

    def daemons(self) -> list[DaemonInfo]:
        """Every daemon row, alive or not, by node id; ``last_seen`` is the latest sign of
        life the store has (a PostgreSQL node's heartbeat may be newer than its row)."""

    def wake(self) -> None:
        """Ask every daemon of this state to look at the operator's tables now (and publish
        what it is doing): a datagram for SQLite, a NOTIFY for PostgreSQL; never raises for
        nobody listening."""

    # -- pause -----------------------------------------------------------------------------

    def pause(self, job: str, by: str, now: datetime) -> Pause:
        """Pause ``job``; the existing pause when it already was paused."""

    def resume(self, job: str) -> Pause | None:
        """Lift the pause of ``job``; the pause lifted, or None when it was not paused."""

    def paused(self) -> dict[str, Pause]:
        """The paused jobs, by name."""

    # -- cancel ----------------------------------------------------------------------------

    def request_cancel(self, run_id: str, by: str, now: datetime) -> str:
        """Ask for ``run_id`` to be stopped. Returns ``requested`` (claimed or running: the
        daemon running it stops it), ``cancelled`` (handed over and not taken yet: marked
        cancelled here, atomically, with an UNREPORTED request a daemon then reports), the
        status of a finished run, or ``unknown``."""

    def cancel_requests(self) -> list[CancelRequest]:
        """Requests no daemon has settled yet whose run is still claimed or running,
        oldest first."""

    def settle_cancel(self, run_ids: Sequence[str], outcome: str) -> None:
        """Mark requests handled (``outcome`` says how), so daemons stop looking at them."""

    def take_unreported_cancels(self, outcome: str) -> list[RunResult]:
        """The runs cancelled without a daemon (their request's outcome is UNREPORTED), each
        marked ``outcome`` in the same transaction, so that one daemon of a cluster reports
        each once (qtasks_cli.cancels)."""

    # -- runs in full ----------------------------------------------------------------------

    def add_output(self, run_id: str, lines: Sequence[str]) -> None:
        """Keep a run's captured output lines (bounded by the caller)."""

    def output(self, run_id: str) -> list[str]:
        """A run's captured output lines, oldest first."""

    def run(self, run_id: str) -> RunResult | None:
        """One run as history shows it, or None."""

    def attempts(self, run_id: str) -> list[Attempt]:
        """A run's attempts, first first."""

    def run_arguments(self, run_id: str) -> tuple[Any, Any] | None:
        """The JSON-decoded (args, kwargs) stored with a manual or handed-over run (with
        ``${NAME}`` placeholders), or None when the run used its job's own arguments."""

    def last_successes(self) -> dict[str, datetime]:
        """Per job, when its last successful run ended (aware UTC), over every node."""

    def overview(self, *, since: datetime | None, recent: int = 20) -> Overview:
        """Runs in progress, each job's last result, waiting requests, counts of runs ended
        since ``since`` (all when None) and the ``recent`` latest finished runs."""

    def tidy(self) -> int:
        """Delete output and cancel rows whose run is gone (pruned); return how many."""


class PlaceholderEnv(Mapping[str, str]):
    """``os.environ``, but a variable it lacks reads as its own ``${NAME}`` placeholder
    when asked without a default (as ``${NAME}`` interpolation asks)."""

    def __getitem__(self, name: str) -> str:
        return os.environ[name]

    def __iter__(self) -> Iterator[str]:
        return iter(os.environ)

    def __len__(self) -> int:
        return len(os.environ)

    def get(self, name: str, default: Any = None) -> Any:
        if name in os.environ:
            return os.environ[name]
        return f"${{{name}}}" if default is None else default


def who() -> str:
    """This process as a cancel or pause records it: ``user@host (pid N)``."""
    try:
        user = getpass.getuser()
    except Exception:  # no name for this uid (containers)
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()} (pid {os.getpid()})"


def info_body(info: DaemonInfo) -> dict[str, Any]:
    """The parts of ``info`` stored as one JSON document."""
    return {
        "version": info.version,
        "config": info.config,
        "digest": info.digest,
        "every": info.every,
        "running": info.running,
        "queued": info.queued,
        "waiting": info.waiting,
        "abandoned": info.abandoned,
        "pid_start": info.pid_start,
        "local_key": info.local_key,
        "wakeable": info.wakeable,
        "jobs": info.jobs,
    }


def info_from_row(
    node_id: str,
    host: str,
    pid: int,
    started: datetime,
    last_seen: datetime,
    data: Any,
    *,
    beat: datetime | None = None,
) -> DaemonInfo:
    """A ``DaemonInfo`` from its columns and the JSON document of ``info_body``; ``beat`` is
    a newer heartbeat than the row's ``last_seen`` (a PostgreSQL node's), if any."""
    body: Mapping[str, Any] = data if isinstance(data, Mapping) else {}
    start = body.get("pid_start")
    key = body.get("local_key")
    wakeable = body.get("wakeable")
    return DaemonInfo(
        node_id=node_id,
        host=host,
        pid=int(pid),
        started=started,
        last_seen=max(last_seen, beat) if beat is not None else last_seen,
        published=last_seen,
        pid_start=start if isinstance(start, int) else None,
        local_key=key if isinstance(key, str) else None,
        wakeable=wakeable if isinstance(wakeable, bool) else None,
        version=str(body.get("version", "?")),
        config=str(body.get("config", "")),
        digest=str(body.get("digest", "")),
        every=float(body.get("every", 2.0)),
        running=int(body.get("running", 0)),
        queued=int(body.get("queued", 0)),
        waiting=int(body.get("waiting", 0)),
        abandoned=int(body.get("abandoned", 0)),
        jobs=dict(body.get("jobs", {})),
    )
