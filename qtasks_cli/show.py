"""``qtasks show RUN``: one run in full, from the store: trigger, arguments (``${NAME}``
placeholders, never the secrets), every attempt, the traceback, captured output lines, the
result preview and the node that ran it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from qtasks_cli.argforms import TAG as _TAG
from qtasks_cli.models import Attempt, Config, JobSpec, RunResult
from qtasks_cli.store.control import ControlStore


@dataclass(frozen=True, kw_only=True, slots=True)
class RunDetail:
    run: RunResult
    attempts: Sequence[Attempt]
    args: Any  # a list, with ${NAME} placeholders
    kwargs: Any  # a mapping, with ${NAME} placeholders
    arguments_from: str  # "the run" (manual, handed over) or "the job file" or "unknown"
    output: Sequence[str]
    # For a claimed or running run: whether whoever runs it is still there (status.OWNER_*),
    # and what that means in words ("" while it answers).
    owner: str | None = None
    owner_note: str = ""


def _redacted(job: JobSpec, value: Any, depth: int = 0) -> Any:
    """``value`` (arguments in the store's JSON form) with every interpolated secret shown as
    ``${NAME}``: in its strings, its mapping keys and its binary values (decoded, redacted as
    bytes, encoded again). A caller's value is stored literally even when it holds a secret,
    so it is hidden here, where it is shown."""
    if isinstance(value, str):
        return job.redact(value)
    if depth > 200:
        return value
    if isinstance(value, (list, tuple)):
        return [_redacted(job, item, depth + 1) for item in value]
    if isinstance(value, Mapping):
        if set(value) == {_TAG, "value"} and value[_TAG] == "bytes":
            return {_TAG: "bytes", "value": _redacted_bytes(job, value["value"])}
        return {
            _redacted(job, key, depth + 1) if isinstance(key, str) else key: _redacted(
                job, item, depth + 1
            )
            for key, item in value.items()
        }
    return value


def _redacted_bytes(job: JobSpec, encoded: Any) -> Any:
    """Stored bytes (base64 text) with secrets hidden in the bytes they stand for."""
    import base64
    import binascii

    from qtasks_cli.redaction import redact_value

    if not isinstance(encoded, str) or not job.secrets:
        return encoded
    try:
        data = base64.b64decode(encoded.encode("ascii"), validate=True)
    except (ValueError, binascii.Error):
        return job.redact(encoded)
    hidden = redact_value(data, job.secrets)
    return encoded if hidden == data else base64.b64encode(hidden).decode("ascii")


def read_detail(config: Config, store: ControlStore, run_id: str) -> RunDetail | None:
    """Everything ``show`` prints about ``run_id``, or None when there is no such run."""
    run = store.run(run_id)
    if run is None:
        return None
    stored = store.run_arguments(run_id)
    spec = config.jobs.get(run.job)
    if stored is not None:
        args, kwargs = stored
        source = "the run"
        if spec is not None:  # a caller's values are stored as given: hidden here
            args, kwargs = _redacted(spec, args), _redacted(spec, kwargs)
    elif spec is not None:
        args, kwargs = _redacted(spec, list(spec.args)), _redacted(spec, dict(spec.kwargs))
        source = "the job file"
    else:
        args, kwargs, source = None, None, "unknown"
    owner, note = _owner(store, run)
    return RunDetail(
        run=run,
        attempts=store.attempts(run_id),
        args=args,
        kwargs=kwargs,
        arguments_from=source,
        output=store.output(run_id),
        owner=owner,
        owner_note=note,
    )


def _owner(store: ControlStore, run: RunResult) -> tuple[str | None, str]:
    """Whether whoever runs an unfinished ``run`` is still there, judged as ``status`` judges
    daemons (without asking them: by process on this host, else by heartbeat)."""
    if run.status.finished:
        return None, ""
    import socket
    from datetime import datetime, timezone

    from qtasks_cli.status import daemon_views, owner_state
    from qtasks_cli.store import is_url
    from qtasks_cli.ui.status_view import owner_words

    here = socket.gethostname()
    now = datetime.now(timezone.utc)
    views = daemon_views(None, store.daemons(), now=now, host=here)
    owner = owner_state(run, views, here=here)
    return owner, owner_words(run, owner, multi_node=is_url(store.location))


def _when(value: Any) -> str:
    return value.astimezone().isoformat(sep=" ", timespec="milliseconds") if value else "-"


def _took(seconds: float | None) -> str:
    from qtasks_cli.ui.humanize import elapsed

    return elapsed(seconds) if seconds is not None else "-"


def detail_text(detail: RunDetail) -> str:
    """What ``qtasks show`` prints; terminal escapes in stored text are removed."""
    import json

    from qtasks_cli.redaction import clean_output
    from qtasks_cli.ui.tables import table

    run = detail.run
    lines = [f"run {run.run_id} of job {run.job}: {detail.owner_note or run.status}"]

    def field(name: str, value: object) -> None:
        lines.append(f"  {name:<10} {clean_output(str(value))}")

    field("trigger", run.trigger)
    if run.scheduled is not None:
        field("scheduled", _when(run.scheduled))
    field("created", _when(run.created))
    field("started", _when(run.started))
    field("ended", _when(run.ended))
    field("took", _took(run.duration))
    field("node", run.node or "-")
    if run.error_type or run.error:
        for index, part in enumerate((": ".join(x for x in (run.error_type, run.error) if x))
                                     .splitlines() or [""]):  # fmt: skip
            field("error" if index == 0 else "", part)
    if detail.args is not None:
        field("args", json.dumps(detail.args, default=repr))
        field("kwargs", json.dumps(detail.kwargs, default=repr))
        field("", f"(arguments from {detail.arguments_from})")
    field("items", run.items if run.items is not None else "-")
    field("result", run.result_preview if run.result_preview is not None else "-")
    lines.append("")
    if detail.attempts:
        rows = [
            [
                str(a.number),
                _when(a.started),
                _took((a.ended - a.started).total_seconds() if a.ended else None),
                str(a.status),
                clean_output(": ".join(x for x in (a.error_type, a.error) if x))[:200],
            ]
            for a in detail.attempts
        ]
        lines.append(f"attempts ({run.attempts})")
        header = ["#", "STARTED", "TOOK", "STATUS", "ERROR"]
        lines.extend("  " + line for line in table(header, rows).splitlines())
    else:
        lines.append(f"attempts ({run.attempts}): none recorded")
    if run.traceback:
        lines.append("")
        lines.append("traceback")
        lines.extend("  " + clean_output(line) for line in run.traceback.splitlines())
    lines.append("")
    if detail.output:
        lines.append(f"output (last {len(detail.output)} lines)")
        lines.extend("  " + clean_output(line) for line in detail.output)
    else:
        lines.append("output: none captured")
    return "\n".join(lines)


def detail_json(detail: RunDetail) -> dict[str, Any]:
    """What ``qtasks show --json`` prints."""
    from qtasks_cli.ui.tables import row_json

    data = row_json(detail.run)
    data["args"] = detail.args
    data["kwargs"] = detail.kwargs
    data["arguments_from"] = detail.arguments_from
    data["attempt_log"] = [
        {
            "number": a.number,
            "started": a.started.isoformat(),
            "ended": a.ended.isoformat() if a.ended else None,
            "duration": (a.ended - a.started).total_seconds() if a.ended else None,
            "status": a.status.value,
            "error_type": a.error_type,
            "error": a.error,
        }
        for a in detail.attempts
    ]
    data["output"] = list(detail.output)
    if detail.owner is not None:
        data["daemon"] = detail.owner
        data["note"] = detail.owner_note or None
    return data
