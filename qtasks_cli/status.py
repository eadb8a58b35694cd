"""``qtasks status``: what the daemons published and what the store says of the runs, read
from another shell (never from the daemon's loop), as a report; qtasks_cli.ui.status_view
puts it in words, JSON or the live table of ``qtasks run`` (``--watch``)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from qtasks_cli.models import Config, RunStatus
from qtasks_cli.store.base import RunRow, pid_alive
from qtasks_cli.store.control import ControlStore, DaemonInfo, Overview, Pause, process_start

EXIT_NO_DAEMON = 3  # as ``systemctl is-active`` says "inactive"
ANSWER_WAIT = 2.0  # seconds ``status`` waits for the daemons to describe themselves afresh
ANSWER_POLL = 0.05  # seconds between looks at whether they did

# A job's state, most telling first: what runs now, what waits to, what was given up on but
# still runs, then what the file and the operator say (disabled wins over paused: it holds
# whatever ``resume`` does), then idle.
STATES = ("running", "waiting", "queued", "abandoned", "unknown", "disabled", "paused", "idle")


@dataclass(frozen=True, kw_only=True, slots=True)
class DaemonView:
    info: DaemonInfo
    alive: bool  # its process exists (this host), or its heartbeat is fresh (another host)
    responsive: bool  # its heartbeat is fresh: it answers
    reload_pending: bool  # the file on disk differs from the definitions the daemon runs
    same_file: bool  # the daemon runs the job file ``status`` was given


@dataclass(frozen=True, kw_only=True, slots=True)
class JobStatus:
    name: str
    schedule: str  # in words
    state: str  # one of STATES
    enabled: bool
    pause: Pause | None
    running: Sequence[RunRow]  # running, oldest first
    queued: int  # handed over and not taken, or queued in a daemon behind the job's own run
    last: RunRow | None  # the latest run that ran
    next_fire: datetime | None  # the earliest next fire any live daemon published
    waiting: int = 0  # runs waiting for a free max_concurrent slot
    claimed: Sequence[RunRow] = ()  # claimed, not started yet (waiting or about to start)
    abandoned: Sequence[str] = ()  # runs given up on whose thread or task still runs

    @property
    def disabled(self) -> bool:
        return self.state != "unknown" and not self.enabled


@dataclass(frozen=True, kw_only=True, slots=True)
class StatusReport:
    now: datetime
    state: str  # where the history is, without a password
    digest: str  # the job file's fingerprint as ``status`` read it
    daemons: Sequence[DaemonView]
    jobs: Sequence[JobStatus]
    overview: Overview

    @property
    def up(self) -> bool:
        return any(d.alive for d in self.daemons)


def is_alive(info: DaemonInfo, now: datetime, here: str) -> bool:
    """A daemon on this host is up while its process exists (the same process: a reused pid
    has another start time); one on another host while its heartbeat is fresh."""
    if info.host != here:
        return info.alive(now)
    if not pid_alive(info.pid):
        return False
    if info.pid_start is not None:
        actual = process_start(info.pid)
        if actual is not None and actual != info.pid_start:
            return False
    return True


def build_report(
    config: Config,
    *,
    daemons: Sequence[DaemonInfo],
    paused: Mapping[str, Pause],
    overview: Overview,
    now: datetime,
    location: str,
    host: str,
) -> StatusReport:
    """The report from what was read (pure but for the pid check of local daemons)."""
    views = [
        DaemonView(
            info=d,
            alive=(alive := is_alive(d, now, host)),
            responsive=alive and d.alive(now),
            reload_pending=alive and d.digest != config.digest,
            same_file=d.config == str(config.path),
        )
        for d in daemons
    ]
    live = [v.info for v in views if v.alive]
    active: dict[str, list[RunRow]] = {}
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
        running = [r for r in runs if r.status is RunStatus.RUNNING]
        flags = {
            "running": bool(running),
            "waiting": bool(waiting),
            "queued": bool(queued),
            "abandoned": bool(abandoned),
            "unknown": spec is None,
            "disabled": not enabled,
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
                claimed=[r for r in runs if r.status is RunStatus.CLAIMED],
                abandoned=abandoned,
            )
        )
    return StatusReport(
        now=now,
        state=location,
        digest=config.digest,
        daemons=views,
        jobs=jobs,
        overview=overview,
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
) -> list[DaemonInfo]:
    """The daemons' rows, after asking the live ones to describe themselves afresh and
    waiting up to ``wait`` seconds for each to do so (a daemon that does not answer in time
    is shown as it last described itself). Daemons rewrite their row unasked only once a
    heartbeat (qtasks_cli.control), so what a job is doing would otherwise be that old."""
    now = datetime.now(timezone.utc)
    daemons = store.daemons()
    before = {d.node_id: d.written for d in daemons if is_alive(d, now, host)}
    if not before or wait <= 0:
        return daemons
    store.wake()
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        sleep(ANSWER_POLL)
        daemons = store.daemons()
        # Compared with what each wrote before, not with our clock: another host's may differ.
        written = {d.node_id: d.written for d in daemons}
        if all(written.get(node, when) != when for node, when in before.items()):
            break
    return daemons


def read_report(config: Config, store: ControlStore, *, wait: float = ANSWER_WAIT) -> StatusReport:
    """Read everything ``status`` shows from ``store`` (blocking; up to ``wait`` seconds
    more while the live daemons describe themselves afresh, see ``fresh_daemons``)."""
    import socket

    host = socket.gethostname()
    daemons = fresh_daemons(store, host=host, wait=wait)
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
    )


def _parse_time(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text).astimezone(timezone.utc)
    except ValueError:
        return None
