"""``qtasks status``: what the daemons published and what the store says of the runs, read
from another shell (never from the daemon's loop), as a report; qtasks_cli.ui.status_view
puts it in words, JSON or the live table of ``qtasks run`` (``--watch``)."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from qtasks_cli.liveness import is_alive as is_alive  # callers of status find it here
from qtasks_cli.liveness import judge
from qtasks_cli.models import Config, RunResult, RunStatus
from qtasks_cli.store.base import pid_alive
from qtasks_cli.store.control import ControlStore, DaemonInfo, Overview, Pause

EXIT_NO_DAEMON = 3  # as ``systemctl is-active`` says "inactive"
ANSWER_WAIT = 2.0  # seconds ``status`` waits for the daemons to describe themselves afresh
ANSWER_POLL = 0.05  # seconds between looks at whether they did

# A job's state, most telling first: what runs now, what waits to, what was given up on but
# still runs, then what the file and the operator say (disabled wins over paused: it holds
# whatever ``resume`` does), then idle.
STATES = (
    "running", "orphaned", "waiting", "queued", "abandoned", "unknown", "disabled", "paused",
    "idle",
)  # fmt: skip

# Whose a claimed or running run is, as ``owner_state`` tells it.
OWNER_ANSWERING = "answering"  # its daemon is up and answers
OWNER_LATE = (
    "late"  # its daemon's process exists (or its heartbeat is fresh) but it does not answer
)
OWNER_GONE = "gone"  # its daemon (or foreground ``qtasks trigger``) is gone: nothing runs it
OWNER_UNKNOWN = "unknown"  # nothing says (another host's foreground run, an old row)


@dataclass(frozen=True, kw_only=True, slots=True)
class DaemonView:
    info: DaemonInfo
    alive: bool  # its process exists (this host), or its heartbeat is fresh (another host)
    responsive: bool  # it answered ``status`` in time (or, not asked, its heartbeat is fresh)
    reload_pending: bool  # the file on disk differs from the definitions the daemon runs
    same_file: bool  # the daemon runs the job file ``status`` was given
    judged_by: str = "process"  # what told ``alive``: process, namespace or heartbeat


@dataclass(frozen=True, kw_only=True, slots=True)
class JobStatus:
    name: str
    schedule: str  # in words
    state: str  # one of STATES
    enabled: bool
    pause: Pause | None
    running: Sequence[RunResult]  # running, oldest first
    queued: int  # handed over and not taken, or queued in a daemon behind the job's own run
    last: RunResult | None  # the latest run that ran
    next_fire: datetime | None  # the earliest next fire any live daemon published
    waiting: int = 0  # runs waiting for a free max_concurrent slot
    claimed: Sequence[RunResult] = ()  # claimed, not started yet (waiting or about to start)
    abandoned: Sequence[str] = ()  # runs given up on whose thread or task still runs
    # Claimed or running in the store, but whoever ran them is gone (a SIGKILLed daemon):
    # nothing runs them; they will be concluded ``interrupted`` (see ``owner_state``).
    orphaned: Sequence[RunResult] = ()
    owners: Mapping[str, str] = field(default_factory=dict)  # run id -> OWNER_* of running

    in_file: bool = True  # the job file defines it (else: an old run's, or a kept pause)

    @property
    def disabled(self) -> bool:
        return self.in_file and not self.enabled


@dataclass(frozen=True, kw_only=True, slots=True)
class StatusReport:
    now: datetime
    state: str  # where the history is, without a password
    digest: str  # the job file's fingerprint as ``status`` read it
    daemons: Sequence[DaemonView]
    jobs: Sequence[JobStatus]
    overview: Overview
    multi_node: bool = False  # PostgreSQL: live nodes reap the runs of dead ones

    @property
    def up(self) -> bool:
        return any(d.alive for d in self.daemons)


def owner_state(
    row: RunResult, daemons: Sequence[DaemonView], *, here: str, key: str | None = None
) -> str:
    """Whether whoever runs ``row`` (claimed or running) is still there: its daemon, by the
    daemon's liveness (``is_alive``, answered or not), else a foreground ``qtasks trigger``
    by its process on this host (as recovery judges it); else unknown (a daemon that
    stopped withdraws its row, one that died leaves it). An OWNER_* constant."""
    from qtasks_cli.models import TriggerKind

    for view in daemons:
        if row.node is not None and view.info.node_id == row.node:
            if not view.alive:
                return OWNER_GONE
            return OWNER_ANSWERING if view.responsive else OWNER_LATE
    if row.pid is not None and row.host == here and row.trigger is TriggerKind.MANUAL:
        return OWNER_ANSWERING if pid_alive(row.pid) else OWNER_GONE
    return OWNER_UNKNOWN


def daemon_views(
    config: Config | None,
    daemons: Sequence[DaemonInfo],
    *,
    now: datetime,
    host: str,
    answered: Collection[str] | None = None,
    key: str | None = None,
) -> list[DaemonView]:
    """Each daemon judged: alive (``is_alive``) and responsive: it answered the ``status``
    that asked it to describe itself (node ids in ``answered``), or, when it was not asked
    or cannot be woken at once, its heartbeat is fresh."""
    views = []
    for d in daemons:
        alive, judged_by = judge(d, now, host, key)
        asked = answered is not None and d.wakeable is not False
        responsive = alive and (d.node_id in answered if asked and answered is not None
                                else d.alive(now))  # fmt: skip
        views.append(
            DaemonView(
                info=d,
                alive=alive,
                responsive=responsive,
                reload_pending=config is not None and alive and d.digest != config.digest,
                same_file=config is not None and d.config == str(config.path),
                judged_by=judged_by,
            )
        )
    return views


def build_report(
    config: Config,
    *,
    daemons: Sequence[DaemonInfo],
    paused: Mapping[str, Pause],
    overview: Overview,
    now: datetime,
    location: str,
    host: str,
    answered: Collection[str] | None = None,
    key: str | None = None,
) -> StatusReport:
    """The report from what was read (pure but for the pid checks of local daemons and
    foreground runs); ``answered``: see ``daemon_views``."""
    from qtasks_cli.store import is_url

    views = daemon_views(config, daemons, now=now, host=host, answered=answered, key=key)
    live = [v.info for v in views if v.alive]
    active: dict[str, list[RunResult]] = {}
    for row in overview.active:
        active.setdefault(row.job, []).append(row)
    names = list(config.jobs) + sorted({*active, *paused, *overview.waiting} - set(config.jobs))
    jobs = []
    for name in names:
        spec = config.jobs.get(name)
        runs = active.get(name, [])
        published = [d.jobs.get(name, {}) for d in live]
        # Claimed rows are runs about to start or waiting to; only the daemons know which
        # wait for a slot and which for their job's previous run.
        queued = overview.waiting.get(name, 0) + _total(published, "pending")
        waiting = _total(published, "waiting")
        abandoned = sorted({r for p in published for r in _strings(p.get("abandoned"))})
        nexts = [_parse_time(p.get("next")) for p in published]
        next_fire = min((t for t in nexts if t is not None), default=None)
        if next_fire is not None and next_fire <= now and spec is not None and spec.schedule:
            # Published a while ago and passed since: the daemon fired it (or is about to)
            # and moved on to the schedule's next time after now.
            next_fire = spec.schedule.next_after(now)
        enabled = spec.enabled if spec is not None else False
        pause = paused.get(name)
        owners = {r.run_id: owner_state(r, views, here=host, key=key) for r in runs}
        orphaned = [r for r in runs if owners[r.run_id] == OWNER_GONE]
        running = [
            r for r in runs if r.status is RunStatus.RUNNING and owners[r.run_id] != OWNER_GONE
        ]
        flags = {
            "running": bool(running),
            "orphaned": bool(orphaned),
            "waiting": bool(waiting),
            "queued": bool(queued),
            "abandoned": bool(abandoned),
            # A pause is kept by name until resumed, in the file or not: a paused job out
            # of the file is paused (and its pause holds if it comes back).
            "unknown": spec is None and pause is None,
            "disabled": spec is not None and not enabled,
            "paused": pause is not None,
        }
        state = next((s for s in STATES if flags.get(s, True)), "idle")
        words = "not in the job file"
        if spec is not None:
            words = spec.schedule.describe() if spec.schedule else "only when triggered"
        jobs.append(
            JobStatus(
                name=name,
                schedule=words,
                state=state,
                enabled=enabled,
                pause=pause,
                running=running,
                queued=queued,
                last=overview.last.get(name),
                next_fire=next_fire if enabled and pause is None else None,
                waiting=waiting,
                claimed=[
                    r
                    for r in runs
                    if r.status is RunStatus.CLAIMED and owners[r.run_id] != OWNER_GONE
                ],
                abandoned=abandoned,
                orphaned=orphaned,
                owners={r.run_id: owners[r.run_id] for r in running},
                in_file=spec is not None,
            )
        )
    return StatusReport(
        now=now,
        state=location,
        digest=config.digest,
        daemons=views,
        jobs=jobs,
        overview=overview,
        multi_node=is_url(location),
    )


def _total(published: Sequence[Mapping[str, Any]], key: str) -> int:
    total = 0
    for body in published:
        value = body.get(key, 0)
        total += value if isinstance(value, int) and not isinstance(value, bool) else 0
    return total


def _strings(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


def fresh_daemons(
    store: ControlStore,
    *,
    host: str,
    wait: float = ANSWER_WAIT,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[list[DaemonInfo], set[str] | None]:
    """The daemons' rows, after asking the live ones to describe themselves afresh and
    waiting up to ``wait`` seconds for each to do so (a daemon that does not answer in time
    is shown as it last described itself), and the node ids of those that answered (None
    when nobody was asked). Daemons rewrite their row unasked only once a heartbeat
    (qtasks_cli.control), so what a job is doing would otherwise be that old; and a daemon
    whose process exists but that does not answer (stopped with SIGSTOP, hung) is late."""
    now = datetime.now(timezone.utc)
    daemons = store.daemons()
    before = {d.node_id: d.written for d in daemons if is_alive(d, now, host)}
    if not before or wait <= 0:
        return daemons, None
    store.wake()
    deadline = time.monotonic() + wait
    answered: set[str] = set()
    while time.monotonic() < deadline:
        sleep(ANSWER_POLL)
        daemons = store.daemons()
        # Compared with what each wrote before, not with our clock: another host's may differ.
        written = {d.node_id: d.written for d in daemons}
        answered = {node for node, when in before.items() if written.get(node, when) != when}
        if answered == set(before):
            break
    return daemons, answered


def read_report(config: Config, store: ControlStore, *, wait: float = ANSWER_WAIT) -> StatusReport:
    """Read everything ``status`` shows from ``store`` (blocking; up to ``wait`` seconds
    more while the live daemons describe themselves afresh, see ``fresh_daemons``)."""
    import socket

    host = socket.gethostname()
    daemons, answered = fresh_daemons(store, host=host, wait=wait)
    now = datetime.now(timezone.utc)
    alive = [d for d in daemons if is_alive(d, now, host)]
    since = min((d.started for d in alive), default=None)
    return build_report(
        config,
        daemons=daemons,
        paused=store.paused(),
        overview=store.overview(since=since),
        now=now,
        location=store.location,
        host=host,
        answered=answered,
    )


def _parse_time(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text).astimezone(timezone.utc)
    except ValueError:
        return None
