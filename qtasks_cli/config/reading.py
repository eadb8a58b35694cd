"""What every part of the job file's reader shares: the context that collects located problems,
the known keys, and the readers of scalar values (each returns the value or raises ``_Bad``)."""

from __future__ import annotations

import dataclasses
import enum
import logging
import re
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, NoReturn

from qtasks_cli import entrypoints, yamltraps
from qtasks_cli.durations import parse_duration
from qtasks_cli.errors import (
    DurationError,
    EntryPointError,
    Problem,
)
from qtasks_cli.located import Located

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 10 * 1024 * 1024
KNOWN_TOP_KEYS = ("settings", "defaults", "jobs")
KNOWN_SETTINGS_KEYS = (
    "path", "state", "timezone", "max_concurrent", "shutdown_grace", "keep_runs",
    "keep_days", "max_catch_up", "node_timeout", "schema", "metrics",
)  # fmt: skip
KNOWN_JOB_KEYS = (
    "entrypoint", "schedule", "timezone", "args", "kwargs", "retry", "retry_on", "timeout",
    "overlap", "catch_up", "misfire_grace", "generate_handler", "echo", "on_failure",
    "on_success", "enabled", "description", "isolation", "kill_grace", "retry_interrupted",
)  # fmt: skip
KNOWN_RETRY_KEYS = ("retries", "on", "delay", "backoff", "max_delay", "jitter")
# Keys whose mapping values merge with the same mapping from `defaults`.
_MERGED_KEYS = ("retry", "kwargs")
_JOB_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
_SCHEMA = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_POSTGRES_SCHEMES = ("postgresql://", "postgres://")

Entries = dict[str, tuple[Located, Located]]


class _Bad(Exception):
    """A problem with the value being read; the caller reports it at that value."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class _Reported(Exception):
    """The problem was already reported in place; just skip the value."""


_ZONE_FROM_FILE = "job file (settings.timezone)"


@dataclasses.dataclass(slots=True)
class _Context:
    file: str
    base_dir: Path
    env: Mapping[str, str]
    check_imports: bool
    problems: list[Problem]
    # False where only the placeholders are kept (enqueue): an unset ${NAME} is no problem.
    variables_required: bool = True
    warnings: list[Problem] = dataclasses.field(default_factory=list)
    zone_source: str = _ZONE_FROM_FILE
    machine_zoned: set[str] = dataclasses.field(default_factory=set)  # jobs in the machine's zone
    where: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)  # settings keys

    def warn(self, node: Located, message: str) -> None:
        self.warnings.append(
            Problem(
                file=self.file,
                line=node.line,
                column=node.column,
                key=node.path,
                message=f"warning: {message}",
            )
        )

    def report(self, node: Located, message: str, path: str | None = None) -> None:
        key = node.path if path is None else path
        self.problems.append(
            Problem(file=self.file, line=node.line, column=node.column, key=key, message=message)
        )

    def fail(self, node: Located, message: str) -> NoReturn:
        self.report(node, message)
        raise _Reported


def _str(node: Located) -> str:
    if node.kind != "scalar" or not isinstance(node.value, str):
        raise _Bad(f"expected a string, got {node.type_name()}")
    return node.value


def _bool(node: Located) -> bool:
    if not isinstance(node.value, bool):
        raise _Bad(f"expected true or false, got {node.type_name()}")
    return node.value


def _plain_number(node: Located) -> None:
    """A count, a size or a port is read from plain decimal digits only: YAML 1.1 reads
    ``010`` as 8, ``0b101`` as 5, ``0x10`` as 16, ``1__0`` as 10 and ``1:30`` as 90."""
    if node.trap in yamltraps.NUMBER_TRAPS:
        raise _Bad(yamltraps.refusal(node, "a number") or node.trap_note())


# The largest count a setting takes: what a store's integer column holds (SQLite's INTEGER
# and PostgreSQL's bigint are 64-bit), so that no value validate accepts fails in use.
INT_MAX = 2**63 - 1
# The most days of history a ``keep_days`` keeps: 1,000 years, so that "now minus keep_days"
# is still a date (datetime's year 1 is the floor).
KEEP_DAYS_MAX = 365_000


def _int(node: Located, minimum: int, maximum: int = INT_MAX) -> int:
    _plain_number(node)
    value = node.value
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Bad(f"expected a whole number >= {minimum}, got {node.type_name()}")
    if value < minimum:
        raise _Bad(f"expected a whole number >= {minimum}, got {value}")
    if value > maximum:
        raise _Bad(f"expected a whole number from {minimum} to {maximum}, got {_show(node)}")
    return value


def _optional(read: Callable[[Located], Any]) -> Callable[[Located], Any]:
    return lambda node: None if node.is_null else read(node)


def _positive_number(node: Located, maximum: float = KEEP_DAYS_MAX) -> float:
    _plain_number(node)
    value = node.value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise _Bad(f"expected a number > 0, got {_show(node)}")
    if not value <= maximum:  # also infinity
        raise _Bad(f"expected a number > 0 and at most {maximum:,}, got {_show(node)}")
    return float(value)


def _duration(node: Located, *, positive: bool = False) -> timedelta:
    if node.kind != "scalar":
        raise _Bad(f"expected a duration such as 30s, 5m or 1h30m, got {node.type_name()}")
    problem = yamltraps.refusal(node, "a duration")
    if problem:
        raise _Bad(problem)
    try:
        value = parse_duration(node.value)
    except DurationError as exc:
        raise _Bad(str(exc)) from None
    if positive and not value:
        raise _Bad(f"expected a duration > 0, got {node.value!r}")
    return value


def _choice(enum_type: type[enum.Enum]) -> Callable[[Located], Any]:
    allowed = [str(member.value) for member in enum_type]

    def read(node: Located) -> Any:
        value = node.value
        if isinstance(value, bool):  # `none` is a string, but `off`/`no` are booleans in YAML
            value = str(value).lower()
        if not isinstance(value, str) or value not in allowed:
            raise _Bad(f"expected one of {', '.join(allowed)}; got {_show(node)}")
        return enum_type(value)

    return read


def _ref(node: Located) -> str:
    text = _str(node)
    try:
        entrypoints.split_ref(text)
    except EntryPointError as exc:
        raise _Bad(str(exc)) from None
    return text


def _zone(node: Located) -> str:
    from qtasks_cli.zones import ZoneError, get_zone

    name = _str(node)
    try:
        get_zone(name)
    except ZoneError as exc:
        from zoneinfo import available_timezones

        hint = entrypoints.did_you_mean(name, available_timezones())
        raise _Bad(f"{exc}{hint}") from None
    return name


def _show(node: Located) -> str:
    value = node.value
    if isinstance(value, int) and value.bit_length() > 256:
        try:
            return f"a number of {len(str(abs(value))):,} digits"
        except ValueError:  # int -> str is capped (sys.get_int_max_str_digits)
            return "a number of more than 4,300 digits"
    return repr(value) if node.kind == "scalar" else node.type_name()


def _unknown_key(key: str, known: tuple[str, ...]) -> str:
    hint = entrypoints.did_you_mean(key, known)
    if not hint:
        hint = f" (known keys: {', '.join(known)})"
    return f"unknown key {key!r}{hint}"


def _mapping(ctx: _Context, entry: tuple[Located, Located] | None, what: str) -> Entries:
    if entry is None or entry[1].is_null:
        return {}
    node = entry[1]
    if node.kind != "map":
        if not node.invalid:
            ctx.report(node, f"expected a mapping of {what}, got {node.type_name()}")
        return {}
    entries: Entries = node.value
    return entries
