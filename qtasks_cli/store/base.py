"""The interfaces every state store implements (SQLite and PostgreSQL): four narrow seams
(ledger, history, queue, membership) and ``Store``, their whole; the value types they carry."""

from __future__ import annotations

import enum
import functools
import json
import os
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol, overload, runtime_checkable

from qtasks_cli.errors import StoreError
from qtasks_cli.models import Attempt, RunResult, RunStatus, TriggerKind


@dataclass(frozen=True, kw_only=True, slots=True)
class Fire:
    """A (job, scheduled time) pair the daemon wants to record; the pair is unique forever."""

    job: str
    scheduled: datetime  # aware UTC
    trigger: TriggerKind
    run_id: str
    schedule_key: str  # the schedule's canonical text, stored with the job's last fire
    status: RunStatus = RunStatus.CLAIMED  # or SKIPPED / MISSED, recorded as finished at once
    error: str | None = None  # why it was skipped or missed


class Claim(enum.IntEnum):
    """What ``Store.claim`` did with one fire.

    Compares equal to the bool of the old contract: EXISTS is False, INSERTED is True;
    BUSY is truthy too (a row was inserted) but differs from True.
    """

    EXISTS = 0  # the (job, scheduled) pair was already recorded: do not run it
    INSERTED = 1  # recorded as given: run it if its status is CLAIMED
    BUSY = 2  # recorded as SKIPPED: a run of the job is in progress on another node


@dataclass(frozen=True, kw_only=True, slots=True)
class NodeInfo:
    """A daemon sharing the store, as its last heartbeat described it."""

    node_id: str  # host:pid:random for PostgreSQL, host:pid for SQLite
    host: str
    pid: int
    started: datetime
    last_seen: datetime
    digest: str  # hash of the node's effective job file
    fingerprints: Mapping[str, str] = field(default_factory=dict)  # per job


@dataclass(frozen=True, kw_only=True, slots=True)
class QueuedRun:
    """A run handed over by ``trigger --enqueue`` or ``enqueue()``, taken by one daemon."""

    run_id: str
    job: str
    args: tuple[Any, ...] | None  # None: the job file's args (a re-run of a scheduled fire)
    kwargs: Mapping[str, Any] | None  # None: the job file's kwargs
    enqueued: datetime
    trigger: TriggerKind = TriggerKind.QUEUED  # or RERUN (retry_interrupted)


@dataclass(frozen=True, kw_only=True, slots=True)
class JobStats:
    job: str
    runs: int
    succeeded: int
    failed: int  # failed, timed out, interrupted
    p50: float | None  # seconds, over finished runs that started
    p95: float | None
    last_success: datetime | None
    last_failure: datetime | None
    extra: Mapping[str, int] = field(default_factory=dict)  # counts per other status

    @property
    def success_rate(self) -> float | None:
        done = self.succeeded + self.failed
        return None if done == 0 else self.succeeded / done


_FAILED = (RunStatus.FAILED, RunStatus.TIMED_OUT, RunStatus.INTERRUPTED)


def job_stats(
    job: str,
    per_status: Mapping[str, tuple[int, datetime | None]],
    p50: float | None,
    p95: float | None,
) -> JobStats:
    """A job's ``JobStats`` from its (count, last ended) per status and its percentiles."""

    def total(statuses: Sequence[RunStatus]) -> int:
        return sum(per_status.get(s.value, (0, None))[0] for s in statuses)

    def last(statuses: Sequence[RunStatus]) -> datetime | None:
        ends = [per_status[s.value][1] for s in statuses if s.value in per_status]
        return max((end for end in ends if end is not None), default=None)

    counted = {RunStatus.SUCCEEDED.value, *(s.value for s in _FAILED)}
    return JobStats(
        job=job,
        runs=sum(count for count, _ in per_status.values()),
        succeeded=total((RunStatus.SUCCEEDED,)),
        failed=total(_FAILED),
        p50=p50,
        p95=p95,
        last_success=last((RunStatus.SUCCEEDED,)),
        last_failure=last(_FAILED),
        extra={
            status: count
            for status, (count, _) in sorted(per_status.items())
            if status not in counted
        },
    )


def busy_error(node: str) -> str:
    """The error of a fire skipped because ``node`` runs the job (both stores say it so)."""
    return f"skipped: previous run still running on node {node}"


# The same, where the node's name cannot be read back.
BUSY_ELSEWHERE = "skipped: previous run still running on another node"


class LedgerStore(Protocol):
    """Claim -> start -> finish (``qtasks_cli.ledger``): what keeps a fire or a request from
    starting twice, and what recovery concludes for the runs of a daemon that died.

    Writes that do not decide anything (``start``, ``finish``) may be buffered and
    written in batches; ``flush`` writes them now and reads always see them.
    """

    location: str  # for messages: a path, or a URL without its password
    node_id: str  # this store's identity in the cluster; recorded with what it claims

    async def recover(self, now: datetime, *, rerun_jobs: Collection[str] = ()) -> list[RunResult]:
        """Conclude the unfinished runs of dead daemons by ``recovery.verdict``: running and
        claimed fires become ``interrupted``, requests taken but never begun go back to the
        queue. An interrupted run of a job in ``rerun_jobs`` is re-run as a new request with
        its original arguments, written in the same transaction. Returns the rows marked
        interrupted."""

    async def last_fired(self) -> dict[str, tuple[datetime, str]]:
        """Per job, the last scheduled time recorded and the schedule key it was recorded with."""

    @overload
    async def claim(self, fires: Sequence[Fire]) -> list[bool]: ...

    @overload
    async def claim(
        self, fires: Sequence[Fire], *, exclusive_jobs: Collection[str]
    ) -> list[Claim]: ...

    async def claim(
        self, fires: Sequence[Fire], *, exclusive_jobs: Collection[str] | None = None
    ) -> list[bool] | list[Claim]:
        """In one transaction, insert each fire under the unique (job, scheduled) key and
        advance the job's last fire; per fire, whether this call inserted it.

        Given ``exclusive_jobs`` (the jobs whose overlap is skip or queue), the result is
        a ``Claim`` per fire, and a CLAIMED fire of such a job is inserted as SKIPPED
        (``Claim.BUSY``, its error naming the node) when a non-manual run of the job is
        claimed or running on another node; check and insert are atomic across nodes.
        Runs of this store's own node never count: the daemon's in-memory overlap check
        covers them."""

    async def release(self, fires: Sequence[Fire]) -> None:
        """Give up claims of this daemon that never started (a graceful stop, a clock step
        back): delete their rows while still ``claimed`` and move each job's last fire back
        before the earliest of them, so a later start can fire or catch them up."""

    async def add_run(self, result: RunResult, *, args: Any = None, kwargs: Any = None) -> None:
        """Record a run that has no scheduled time (manual), usually RUNNING at first."""

    async def start(self, run_id: str, started: datetime) -> None:
        """The run has started (status RUNNING, pid and host set); may be buffered."""

    async def begin(self, run_id: str, started: datetime) -> bool:
        """Mark a request this daemon took ``running``, committed before the body starts
        (``ledger``); False when it is no longer this daemon's ``claimed`` request (a
        reaper gave it back), in which case the body must not start."""

    async def finish(self, result: RunResult) -> None:
        """Record the final outcome of a run, with its attempts (``result.attempt_log``)."""

    async def flush(self) -> None:
        """Write buffered writes now."""


class HistoryStore(Protocol):
    """What ran, as ``history``, ``show`` and the API read it, and its retention."""

    location: str

    async def get_run(self, run_id: str) -> RunResult | None: ...

    async def history(
        self, job: str | None = None, *, limit: int = 50, status: RunStatus | None = None
    ) -> list[RunResult]:
        """Newest first."""

    async def attempts(self, run_id: str) -> list[Attempt]: ...

    async def stats(self, job: str | None = None) -> list[JobStats]: ...

    async def prune(self, *, keep_runs: int | None, keep_days: float | None, now: datetime) -> int:
        """Delete finished runs beyond the retention; return how many."""


class QueueStore(Protocol):
    """Requests handed over (``trigger --enqueue``, ``enqueue()``) and taken by one daemon."""

    async def enqueue(
        self, job: str, args: Sequence[Any], kwargs: Mapping[str, Any], now: datetime
    ) -> str:
        """Write a pending request; return its run id."""

    async def take_queued(self, now: datetime, limit: int = 100) -> list[QueuedRun]:
        """Atomically take up to ``limit`` pending requests, oldest first (status CLAIMED)."""


class DaemonStore(Protocol):
    """Becoming the store's daemon (or one of its nodes), and what others wrote since."""

    node_id: str

    async def lock_daemon(self) -> None:
        """Become a daemon of this store: SQLite takes an exclusive lock (StoreError naming
        the pid holding it); PostgreSQL registers this node and starts listening for work."""

    async def changed(self) -> bool:
        """Cheaply tell whether anyone else wrote since the last call (PostgreSQL: since
        ``lock_daemon``; before it, the first call says True)."""


class Store(LedgerStore, HistoryStore, QueueStore, DaemonStore, Protocol):
    """A whole state store, the daemon's view: the four seams above, opened and closed.
    Every method is safe to await from the loop. Callers that need one seam take it
    (``ledger`` the ``LedgerStore``); the supervisor wires the whole.

    What only some stores can do is a seam of its own, which the daemon's wiring looks for
    once (``isinstance``) and hands to the one part that uses it, instead of flags the
    parts branch on: ``ClusterStore`` (several nodes share the store: PostgreSQL) and
    ``Announcer`` (the store itself announces handed-over work and operator's commands:
    PostgreSQL's NOTIFY). SQLite is neither: one daemon per file, by its lock, and the
    wake-ups come as datagrams (``wake.py``)."""

    async def open(self) -> None:
        """Create or migrate the schema."""

    async def close(self) -> None:
        """Flush buffered writes and release everything."""


@runtime_checkable
class ClusterStore(Protocol):
    """The daemons sharing the store as equal nodes: heartbeats and reaping the silent ones.
    With such a store the claim is the only guard against running a fire on every node, so
    a fire never runs unclaimed, and the nodes' clocks keep the wall times (qtasks_cli.cluster,
    qtasks_cli.claims)."""

    node_id: str
    location: str

    async def heartbeat(
        self, now: datetime, *, digest: str, fingerprints: Mapping[str, str]
    ) -> bool:
        """Record that this node is alive at ``now``, with the digest of its job file and
        a fingerprint per job, for ``nodes``. False when another node had presumed this one
        dead meanwhile (and concluded its runs: qtasks_cli.fencing); it is registered again."""

    async def nodes(self, now: datetime, timeout: timedelta) -> list[NodeInfo]:
        """The nodes whose last heartbeat is within ``timeout`` of ``now``, by node id."""

    async def reap_dead_nodes(
        self, now: datetime, timeout: timedelta, *, rerun_jobs: Collection[str] = ()
    ) -> list[RunResult]:
        """``recover`` for the runs of nodes silent for longer than ``timeout``; forget
        the nodes. Each dead run is returned by one caller only."""


@runtime_checkable
class Announcer(Protocol):
    """A store that announces handed-over work and operator's commands itself (PostgreSQL
    NOTIFY on a listening connection of its own)."""

    location: str
    # Called on the loop when an operator's command (pause, cancel, a status that wants a
    # fresh view) is announced, or when such an announcement may have been missed.
    on_control: Callable[[], None] | None

    async def wait_for_work(self, timeout: float) -> bool:
        """Wait until a request may have been handed over or ``timeout`` seconds pass;
        True when woken early (possibly spuriously: callers then take_queued)."""


# -- helpers shared by the stores ------------------------------------------------------

TRACEBACK_LIMIT = 16 * 1024  # characters of a traceback kept (the end, where the error is)


def storable(text: str | None) -> str | None:
    """``text`` as both stores can keep it: a lone surrogate (an undecodable file name in an
    error, say) becomes its ``\\udcXX`` escape, since UTF-8 cannot hold it, and a NUL
    becomes ``\\x00``, since PostgreSQL text cannot. Other text is returned as it is."""
    if text is None:
        return None
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def truncate_traceback(text: str | None) -> str | None:
    """Keep the end of a long traceback, where the error is."""
    text = storable(text)
    if text is None or len(text) <= TRACEBACK_LIMIT:
        return text
    dropped = len(text) - TRACEBACK_LIMIT
    return f"[{dropped} characters cut]\n" + text[-TRACEBACK_LIMIT:]


def encode_request(job: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> tuple[str, str]:
    """The JSON texts of a request's arguments, or StoreError saying what is wrong."""
    bad_keys = [key for key in kwargs if not isinstance(key, str)]
    if bad_keys:
        raise StoreError(f"cannot enqueue {job!r}: keyword names must be strings, got {bad_keys!r}")
    try:
        return json.dumps(list(args)), json.dumps(dict(kwargs))
    except (TypeError, ValueError) as exc:
        raise StoreError(
            f"cannot enqueue {job!r}: its arguments must be JSON values "
            f"(str, int, float, bool, None, lists and dicts): {exc}"
        ) from None


def pid_alive(pid: int) -> bool:
    """True when a process ``pid`` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process, but alive
    except OSError:
        return False
    return True


@functools.cache
def local_key() -> str:
    """This kernel boot and pid namespace: pids compare only within one (containers, and
    ``unshare --pid``, may share a host name); "" where that cannot be told."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as boot:
            boot_id = boot.read().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return ""
    return f"{boot_id}:{namespace}"


# A cancel request whose run was cancelled without a daemon (``qtasks cancel`` of a request no
# daemon had taken, recovery of a dead daemon's run with a pending cancel) carries this
# outcome until a daemon's control thread reports it (``take_unreported_cancels``).
UNREPORTED = "unreported"

# Lines of output kept per run (the last ones), and characters per line.
OUTPUT_LINES = 200
OUTPUT_LINE_CHARS = 2000
# Characters of a line kept while a run prints, before its secrets are hidden and the line is
# cut to OUTPUT_LINE_CHARS: a secret that straddles the cut is then hidden whole.
OUTPUT_KEPT_CHARS = OUTPUT_LINE_CHARS + 4096


def clip_lines(lines: Sequence[str]) -> list[str]:
    """The last OUTPUT_LINES lines, each cut to OUTPUT_LINE_CHARS characters and made
    storable (no NUL, no lone surrogate: PostgreSQL's jsonb refuses both)."""
    kept = list(lines[-OUTPUT_LINES:])
    return [storable(line[:OUTPUT_LINE_CHARS]) or "" for line in kept]
