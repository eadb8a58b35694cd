"""``qtasks status``: what the daemons published and what the store says of the runs, read
from another shell (never from the daemon's loop), as a report, text, JSON or the live
table of ``qtasks run`` (``--watch``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from qtasks_cli.models import Config, JobView, RunStatus, Snapshot
from qtasks_cli.store.base import RunRow, pid_alive
from qtasks_cli.store.control import ControlStore, DaemonInfo, Overview, Pause

EXIT_NO_DAEMON = 3  # as ``systemctl is-active`` says "inactive"
_FAILED = ("failed", "timed_out", "interrupted")


@dataclass(frozen=True, kw_only=True, slots=True)
class DaemonView:
    info: DaemonInfo
    alive: bool
    reload_pending: bool  # the file on disk differs from the definitions the daemon runs
    same_file: bool  # the daemon runs the job file ``status`` was given


@dataclass(frozen=True, kw_only=True, slots=True)
class JobStatus:
    name: str
    schedule: str  # in words
    state: str  # running, queued, paused, disabled, idle, or unknown (not in the file)
    enabled: bool
    pause: Pause | None
    running: Sequence[RunRow]  # claimed or running, oldest first
    queued: int  # handed over and not taken, or waiting in a daemon
    last: RunRow | None  # the latest run that ran
    next_fire: datetime | None  # the earliest next fire any live daemon published


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
    """A daemon is up when its last publish is fresh and, on this host, its pid exists."""
    if not info.alive(now):
        return False
    return info.host != here or pid_alive(info.pid)


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
        # Claimed rows are runs about to start (their start is written a moment later);
        # only the daemons know which of them wait for their job's previous run.
        queued = overview.waiting.get(name, 0) + sum(
            int(p.get("pending", 0) or 0) for p in published
        )
        nexts = [_parse_time(p.get("next")) for p in published]
        next_fire = min((t for t in nexts if t is not None), default=None)
        if next_fire is not None and next_fire <= now and spec is not None and spec.schedule:
            # Published up to one heartbeat ago and passed since: the daemon fired it (or is
            # about to) and moved on to the schedule's next time after now.
            next_fire = spec.schedule.next_after(now)
        enabled = spec.enabled if spec is not None else False
        pause = paused.get(name)
        if any(r.status is RunStatus.RUNNING for r in runs):
            state = "running"
        elif queued:
            state = "queued"
        elif pause is not None:
            state = "paused"
        elif spec is None:
            state = "unknown"
        elif not enabled:
            state = "disabled"
        else:
            state = "idle"
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
                running=[r for r in runs if r.status is RunStatus.RUNNING],
                queued=queued,
                last=overview.last.get(name),
                next_fire=next_fire if enabled and pause is None else None,
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


def read_report(config: Config, store: ControlStore) -> StatusReport:
    """Read everything ``status`` shows from ``store`` (blocking)."""
    import socket

    now = datetime.now(timezone.utc)
    daemons = store.daemons()
    alive = [d for d in daemons if d.alive(now)]
    since = min((d.started for d in alive), default=None)
    return build_report(
        config,
        daemons=daemons,
        paused=store.paused(),
        overview=store.overview(since=since),
        now=now,
        location=store.location,
        host=socket.gethostname(),
    )


def _parse_time(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text).astimezone(timezone.utc)
    except ValueError:
        return None


# --- words -------------------------------------------------------------------------------------


def _local(when: datetime | None) -> str:
    return when.astimezone().strftime("%Y-%m-%d %H:%M:%S") if when is not None else "-"


def _ago(now: datetime, when: datetime) -> str:
    from qtasks_cli.ui.live import ago

    return ago(max(0.0, (now - when).total_seconds()))


def _span(seconds: float) -> str:
    from qtasks_cli.ui.live import elapsed

    return elapsed(max(0.0, seconds))


def state_words(job: JobStatus, now: datetime) -> str:
    """The job's state in a few words: ``running since 12:00:01 (run R, 3s, node N)``..."""
    if job.state == "running":
        run = job.running[0]
        started = run.started or run.created or now
        more = f" +{len(job.running) - 1} more" if len(job.running) > 1 else ""
        node = f", node {run.node}" if run.node else ""
        took = _span((now - started).total_seconds())
        text = f"running since {_local(started)[11:]} (run {run.run_id}, {took}{node}){more}"
        return text + (f", {job.queued} queued" if job.queued else "")
    if job.state == "queued":
        return f"queued ({job.queued})"
    if job.state == "paused" and job.pause is not None:
        return f"paused since {_local(job.pause.since)} by {job.pause.by}"
    return job.state


def last_words(run: RunRow | None, now: datetime | None) -> str:
    """``failed in 2.1s 3h ago: ConnectionError``; without the age when ``now`` is None."""
    if run is None:
        return "-"
    when = run.ended or run.started or run.created
    age = f" {_ago(now, when)}" if when is not None and now is not None else ""
    took = f" in {_span(run.duration)}" if run.duration is not None else ""
    what = str(run.status).replace("_", " ")
    error = f": {run.error_type or run.error}" if run.status.value in _FAILED else ""
    if run.status in (RunStatus.CANCELLED, RunStatus.SKIPPED, RunStatus.MISSED) and run.error:
        error = f": {run.error}"
    return f"{what}{took}{age}{error}"


def report_text(report: StatusReport) -> str:
    """What ``qtasks status`` prints."""
    from qtasks_cli.ui.tables import table
    from qtasks_cli.ui.text import clean_output

    now = report.now
    up = [d for d in report.daemons if d.alive]
    lines = []
    if up:
        lines.append(f"{len(up)} daemon{'s' if len(up) != 1 else ''} up on {report.state}")
    else:
        lines.append(f"no daemon is running on {report.state}")
    for view in report.daemons:
        info = view.info
        if not view.alive:
            if info.host != "" and (now - info.last_seen).total_seconds() < 86400:
                lines.append(
                    f"  node {info.node_id}: gone (last heartbeat {_ago(now, info.last_seen)})"
                )
            continue
        if not view.same_file:
            loaded = f"runs {info.config}"
        elif view.reload_pending:
            loaded = "job file changed since it was loaded: reload pending (systemctl reload)"
        else:
            loaded = "job file as loaded"
        lines.append(
            f"  node {info.node_id}  pid {info.pid}  up since {_local(info.started)}"
            f" ({_span((now - info.started).total_seconds())})  heartbeat"
            f" {_ago(now, info.last_seen)}  version {info.version}"
        )
        lines.append(f"    {loaded} (fingerprint {info.digest[:12] or '-'})")
    lines.append("")
    rows = [
        [
            clean_output(job.name),
            clean_output(state_words(job, now)),
            clean_output(last_words(job.last, now).splitlines()[0]),
            _local(job.next_fire) if job.next_fire is not None else "-",
        ]
        for job in report.jobs
    ]
    lines.append(table(["JOB", "STATE", "LAST", "NEXT"], rows))
    return "\n".join(lines)


def report_json(report: StatusReport) -> dict[str, Any]:
    """What ``qtasks status --json`` prints."""
    from qtasks_cli.ui.tables import row_json

    def when(value: datetime | None) -> str | None:
        return value.isoformat() if value is not None else None

    return {
        "up": report.up,
        "state": report.state,
        "fingerprint": report.digest,
        "daemons": [
            {
                "node": v.info.node_id,
                "host": v.info.host,
                "pid": v.info.pid,
                "alive": v.alive,
                "up_since": when(v.info.started),
                "last_heartbeat": when(v.info.last_seen),
                "version": v.info.version,
                "config": v.info.config,
                "fingerprint": v.info.digest,
                "reload_pending": v.reload_pending,
                "running": v.info.running,
                "queued": v.info.queued,
            }
            for v in report.daemons
        ],
        "jobs": [
            {
                "name": job.name,
                "schedule": job.schedule,
                "state": job.state,
                "enabled": job.enabled,
                "paused": None
                if job.pause is None
                else {"since": when(job.pause.since), "by": job.pause.by},
                "running": [row_json(r) for r in job.running],
                "queued": job.queued,
                "last": row_json(job.last) if job.last is not None else None,
                "next": when(job.next_fire),
            }
            for job in report.jobs
        ],
    }


# --- the live table from the store (--watch) -----------------------------------------------------


def watch_frame(report: StatusReport) -> tuple[Snapshot, dict[str, Any], list[Any]]:
    """The live table's inputs (snapshot, per-job statistics, event lines) from a report."""
    import logging

    from qtasks_cli.ui.live import EventLine, RunProgress
    from qtasks_cli.ui.live import JobStats as LiveStats
    from qtasks_cli.ui.text import clean_output

    up = [d.info for d in report.daemons if d.alive]
    started = min((d.started for d in up), default=report.now)
    views = []
    stats: dict[str, LiveStats] = {}
    for job in report.jobs:
        views.append(
            JobView(
                name=job.name,
                schedule=job.schedule,
                enabled=job.enabled,
                next_fire=job.next_fire,
                running=len(job.running),
                pending=job.queued,
                max_attempts=1,
                paused=job.pause is not None,
            )
        )
        counts = report.overview.counts.get(job.name, {})
        last = job.last
        stats[job.name] = LiveStats(
            successes=counts.get("succeeded", 0),
            failures=sum(counts.get(s, 0) for s in _FAILED),
            last_status=last.status if last is not None else None,
            last_error_type=clean_output(last.error_type)
            if last is not None and last.error_type
            else None,
            last_ended=last.ended if last is not None else None,
            last_duration=last.duration if last is not None else None,
            runs={
                r.run_id: RunProgress(started=r.started or report.now, attempt=max(1, r.attempts))
                for r in job.running
            },
        )
    snapshot = Snapshot(
        now=report.now,
        started_at=started,
        jobs=tuple(views),
        running=sum(len(j.running) for j in report.jobs),
        queued=sum(j.queued for j in report.jobs),
        state=report.state,
        nodes=tuple(d.node_id for d in up),
    )
    lines = []
    for run in reversed(report.overview.recent):
        level = logging.INFO if run.status.ok else logging.WARNING
        if run.status.value in _FAILED:
            level = logging.ERROR
        lines.append(
            EventLine(
                time=run.ended or report.now,
                level=level,
                text=clean_output(f"{run.job} {run.run_id} {last_words(run, None)}"),
            )
        )
    return snapshot, stats, lines
