"""Plain-text tables for ``qtasks history``; pure functions of the rows."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from qtasks_cli.models import RunResult
from qtasks_cli.store.base import JobStats
from qtasks_cli.text import clean_line


def _when(value: datetime | None) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _secs(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f}ms" if value < 1 else f"{value:.2f}s"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    rows = [[clean_line(cell) for cell in row] for row in rows]  # job and state-file text
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart, under a header line."""
    return _table(header, rows)


def history_text(rows: Sequence[RunResult]) -> str:
    """Newest first: run id, job, trigger, scheduled, start, duration, status, attempts, error."""
    if not rows:
        return "no runs recorded yet"
    header = ["RUN", "JOB", "TRIGGER", "SCHEDULED", "STARTED", "TOOK", "STATUS", "TRIES", "ERROR"]
    body = []
    for r in rows:
        error = ": ".join(x for x in (r.error_type, r.error) if x)
        error = clean_line(error.splitlines()[0]) if error else ""  # cleaned before clipped
        body.append(
            [
                r.run_id,
                r.job,
                str(r.trigger),
                _when(r.scheduled),
                _when(r.started),
                _secs(r.duration),
                str(r.status),
                str(r.attempts),
                error[:80] + ("…" if len(error) > 80 else ""),
            ]
        )
    return _table(header, body)


def stats_text(rows: Sequence[JobStats]) -> str:
    """Per job: runs, success rate, p50/p95 duration, last success and failure."""
    if not rows:
        return "no runs recorded yet"
    header = [
        "JOB",
        "RUNS",
        "OK",
        "FAILED",
        "SUCCESS",
        "P50",
        "P95",
        "LAST SUCCESS",
        "LAST FAILURE",
    ]
    body = []
    for s in rows:
        rate = "-" if s.success_rate is None else f"{s.success_rate * 100:.1f}%"
        body.append(
            [
                s.job,
                str(s.runs),
                str(s.succeeded),
                str(s.failed),
                rate,
                _secs(s.p50),
                _secs(s.p95),
                _when(s.last_success),
                _when(s.last_failure),
            ]
        )
    return _table(header, body)


# A history row's JSON keys, in order: the stored columns (the preview is ``result``).
HISTORY_KEYS = (
    ("run_id", "run_id"), ("job", "job"), ("trigger", "trigger"), ("scheduled", "scheduled"),
    ("started", "started"), ("ended", "ended"), ("status", "status"), ("attempts", "attempts"),
    ("error_type", "error_type"), ("error", "error"), ("traceback", "traceback"),
    ("result", "result_preview"), ("items", "items"), ("pid", "pid"), ("host", "host"),
    ("created", "created"), ("node", "node"),
)  # fmt: skip


def row_json(row: RunResult | JobStats) -> dict[str, Any]:
    """A history row or statistic as a JSON-ready mapping."""
    if isinstance(row, RunResult):
        data = {key: getattr(row, name) for key, name in HISTORY_KEYS}
    else:
        data = {f.name: getattr(row, f.name) for f in dataclasses.fields(row)}
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, datetime):
            value = value.isoformat()
        elif hasattr(value, "value"):
            value = value.value
        out[key] = value
    if isinstance(row, RunResult):
        out["duration"] = row.duration
    else:
        out["success_rate"] = row.success_rate
        out["extra"] = dict(row.extra)
    return out
