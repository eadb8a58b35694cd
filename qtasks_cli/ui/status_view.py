"""``qtasks status`` in words: the report as text, as JSON, and as the inputs of the live table
(``--watch``), from a ``qtasks_cli.status.StatusReport`` (pure)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from qtasks_cli.models import JobView, RunResult, RunStatus, Snapshot
from qtasks_cli.status import JobStatus, StatusReport

_FAILED = ("failed", "timed_out", "interrupted")


def _local(when: datetime | None) -> str:
    return when.astimezone().strftime("%Y-%m-%d %H:%M:%S") if when is not None else "-"


def _ago(now: datetime, when: datetime) -> str:
    from qtasks_cli.ui.humanize import ago

    return ago(max(0.0, (now - when).total_seconds()))


def _here() -> str:
    import socket

    return socket.gethostname()


def _span(seconds: float) -> str:
    from qtasks_cli.ui.humanize import elapsed

    return elapsed(max(0.0, seconds))


def owner_words(run: RunResult, owner: str, *, multi_node: bool) -> str:
    """What is true of a claimed or running run whose owner is not answering (``owner``:
    ``status.OWNER_*``): ``running on a daemon that is gone (...): ...``; "" when it answers."""
    from qtasks_cli.models import TriggerKind
    from qtasks_cli.status import OWNER_GONE, OWNER_LATE

    doing = "running" if run.status is RunStatus.RUNNING else "claimed"
    who = f"pid {run.pid}" if run.pid is not None else "pid ?"
    if run.node:
        who += f", node {run.node}"
    foreground = run.trigger is TriggerKind.MANUAL
    where = "in a `qtasks trigger` that" if foreground else "on a daemon that"
    if owner == OWNER_LATE:
        return f"{doing} {where} does not answer ({who})"
    if owner != OWNER_GONE:
        return ""
    if multi_node and not foreground:
        then = "a live node marks it interrupted once node_timeout has passed, or the next start"
    else:
        then = "it will be marked interrupted at the next start"
    return f"{doing} {where} is gone ({who}): nothing runs it; {then}"


def state_words(job: JobStatus, now: datetime, *, multi_node: bool = False) -> str:
    """The job's state in a few words: ``running since 12:00:01 (run R, 3s, node N)``..."""
    more = []
    if job.orphaned and job.state != "orphaned":
        more.append(f"{len(job.orphaned)} on a daemon that is gone")
    if job.waiting and job.state != "waiting":
        more.append(f"{job.waiting} waiting for a slot")
    if job.queued and job.state != "queued":
        more.append(f"{job.queued} queued")
    if job.abandoned and job.state != "abandoned":
        more.append(f"{len(job.abandoned)} abandoned still running")
    if job.pause is not None and job.state != "paused":
        more.append("also paused")
    tail = f", {', '.join(more)}" if more else ""
    if job.state == "running":
        run = job.running[0]
        started = run.started or run.created or now
        others = f" +{len(job.running) - 1} more" if len(job.running) > 1 else ""
        node = f", node {run.node}" if run.node else ""
        took = _span((now - started).total_seconds())
        since = _local(started)[11:]
        owner = job.owners.get(run.run_id, "")
        late = "; its daemon does not answer" if owner == "late" else ""
        return f"running since {since} (run {run.run_id}, {took}{node}{late}){others}{tail}"
    if job.state == "orphaned":
        run = job.orphaned[0]
        others = f" +{len(job.orphaned) - 1} more" if len(job.orphaned) > 1 else ""
        words = owner_words(run, "gone", multi_node=multi_node)
        return f"{words} (run {run.run_id}){others}{tail}"
    if job.state == "waiting":
        which = f" (run {job.claimed[0].run_id})" if len(job.claimed) == 1 else ""
        count = f"{job.waiting} " if job.waiting > 1 else ""
        return f"{count}waiting for a free slot (max_concurrent){which}{tail}"
    if job.state == "queued":
        return f"queued ({job.queued}){tail}"
    if job.state == "abandoned":
        runs = ", ".join(job.abandoned)
        return f"abandoned run {runs} still running{tail}"
    if job.state == "paused" and job.pause is not None:
        out = "" if job.in_file else f"; not in the job file (qtasks resume {job.name} lifts it)"
        return f"paused since {_local(job.pause.since)} by {job.pause.by}{out}{tail}"
    return f"{job.state}{tail}"


def last_words(run: RunResult | None, now: datetime | None) -> str:
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
    from qtasks_cli.redaction import clean_output
    from qtasks_cli.status import ANSWER_WAIT
    from qtasks_cli.ui.tables import table

    now = report.now
    up = [d for d in report.daemons if d.alive]
    lines = []
    if up:
        late_count = sum(1 for d in up if not d.responsive)
        late_part = f", {late_count} not answering" if late_count else ""
        lines.append(
            f"{len(up)} daemon{'s' if len(up) != 1 else ''} up{late_part} on {report.state}"
        )
    else:
        lines.append(f"no daemon is running on {report.state}")
    for view in report.daemons:
        info = view.info
        late = ""
        if not view.responsive:
            late = (
                f" (late: no answer within {ANSWER_WAIT:g}s; stopped or hung?)"
                if info.wakeable is not False
                else " (late: no heartbeat for three cadences)"
            )
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
            f" {_ago(now, info.last_seen)}{late}  version {info.version}"
        )
        lines.append(f"    {loaded} (fingerprint {info.digest[:12] or '-'})")
        if view.judged_by == "namespace":
            lines.append(f"    in another pid namespace (a container?), as pid {info.pid} there")
        elif view.judged_by == "heartbeat" and info.host == _here():
            lines.append(
                "    in another pid namespace (a container?) this shell cannot see into: "
                "judged by its heartbeat and answers"
            )
    lines.append("")
    rows = [
        [
            clean_output(job.name),
            clean_output(state_words(job, now, multi_node=report.multi_node)),
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
                "responsive": v.responsive,
                "judged_by": v.judged_by,
                "up_since": when(v.info.started),
                "last_heartbeat": when(v.info.last_seen),
                "version": v.info.version,
                "config": v.info.config,
                "fingerprint": v.info.digest,
                "reload_pending": v.reload_pending,
                "running": v.info.running,
                "waiting_for_slot": v.info.waiting,
                "queued": v.info.queued,
                "abandoned": v.info.abandoned,
            }
            for v in report.daemons
        ],
        "jobs": [
            {
                "name": job.name,
                "schedule": job.schedule,
                "state": job.state,
                "enabled": job.enabled,
                "disabled": job.disabled,
                "in_file": job.in_file,
                "paused": None
                if job.pause is None
                else {"since": when(job.pause.since), "by": job.pause.by},
                "running": [
                    {**row_json(r), "daemon": job.owners.get(r.run_id, "unknown")}
                    for r in job.running
                ],
                "orphaned": [
                    {
                        **row_json(r),
                        "daemon": "gone",
                        "note": owner_words(r, "gone", multi_node=report.multi_node),
                    }
                    for r in job.orphaned
                ],
                "waiting_for_slot": job.waiting,
                "claimed": [r.run_id for r in job.claimed],
                "queued": job.queued,
                "abandoned": list(job.abandoned),
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

    from qtasks_cli.redaction import clean_output
    from qtasks_cli.ui.tally import EventLine, RunProgress
    from qtasks_cli.ui.tally import JobTally as LiveStats

    up = [d.info for d in report.daemons if d.alive]
    started = min((d.started for d in up), default=report.now)
    views = []
    stats: dict[str, LiveStats] = {}
    for job in report.jobs:
        views.append(
            JobView(
                name=job.name,
                schedule=job.schedule,
                # "disabled" is said of a job the file disables; one not in it (a kept pause) is not
                enabled=job.enabled or not job.in_file,
                next_fire=job.next_fire,
                running=len(job.running),
                pending=job.queued,
                max_attempts=1,
                paused=job.pause is not None,
                waiting=job.waiting,
                abandoned=len(job.abandoned),
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
        waiting=sum(j.waiting for j in report.jobs),
        abandoned=sum(len(j.abandoned) for j in report.jobs),
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
