"""The job file: YAML to a validated ``Config``, collecting every located problem in one pass."""

from __future__ import annotations

import dataclasses
import enum
import logging
import os
import re
import stat
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, NoReturn
from zoneinfo import ZoneInfo

from qtasks_cli import entrypoints, yamlload, yamltraps
from qtasks_cli.digests import config_digest
from qtasks_cli.durations import parse_duration
from qtasks_cli.errors import (
    ConfigError,
    ConfigFileError,
    DurationError,
    EntryPointError,
    Problem,
)
from qtasks_cli.models import (
    CatchUp,
    Config,
    Isolation,
    JobSpec,
    Overlap,
    RetryPolicy,
    Schedule,
    Settings,
)
from qtasks_cli.yamlload import Located

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


# --- loading ----------------------------------------------------------------------------------


def default_config_path(env: Mapping[str, str] | None = None) -> Path:
    """``$QTASKS_CONFIG`` if set, else ``./jobs.yaml``."""
    chosen = (os.environ if env is None else env).get("QTASKS_CONFIG")
    return Path(chosen) if chosen else Path("jobs.yaml")


def load_config(
    path: str | os.PathLike[str],
    *,
    check_imports: bool = True,
    env: Mapping[str, str] | None = None,
    variables_required: bool = True,
) -> Config:
    """Read and validate the job file at ``path``; ConfigFileError if it cannot be read,
    ConfigError listing every problem if it is invalid. Without ``variables_required`` an
    unset ``${NAME}`` is no problem (its value is then empty; see qtasks_cli.request)."""
    shown = os.fspath(path)
    try:
        # Non-blocking open, then a check: a FIFO nobody writes would block here for ever.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with open(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fd).st_mode) and not stat.S_ISDIR(os.fstat(fd).st_mode):
                raise ConfigFileError(
                    f"{shown}: not a regular file (a FIFO, socket or device); "
                    "write the job file to a file"
                )
            os.set_blocking(fd, True)
            data = fh.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ConfigFileError(f"{shown}: no such file") from None
    except IsADirectoryError:
        raise ConfigFileError(f"{shown}: is a directory, not a job file") from None
    except PermissionError:
        raise ConfigFileError(f"{shown}: permission denied") from None
    except OSError as exc:
        raise ConfigFileError(f"{shown}: cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        limit = MAX_FILE_BYTES // (1024 * 1024)
        raise ConfigError([_file_problem(shown, f"the file is larger than {limit} MB")])
    text = _decode(data, shown)
    base_dir = Path(os.path.normpath(Path(path).absolute().parent))
    return parse_config_text(
        text,
        filename=shown,
        base_dir=base_dir,
        check_imports=check_imports,
        env=env,
        variables_required=variables_required,
    )


def _file_problem(file: str, message: str, line: int = 1, column: int = 1) -> Problem:
    return Problem(file=file, line=line, column=column, key="", message=message)


def _decode(data: bytes, file: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        message = f"the file is not UTF-8 text (byte 0x{data[exc.start]:02x} cannot be decoded)"
        raise ConfigError([_file_problem(file, message, line, column)]) from None


def parse_config_text(
    text: str,
    *,
    filename: str,
    base_dir: Path,
    check_imports: bool = True,
    env: Mapping[str, str] | None = None,
    variables_required: bool = True,
) -> Config:
    """Validate job-file ``text``; relative paths in it are taken from ``base_dir``."""
    base_dir = Path(os.path.normpath(base_dir.absolute()))
    tree, problems = yamlload.load(text, filename)
    ctx = _Context(
        file=filename,
        base_dir=base_dir,
        env=os.environ if env is None else env,
        check_imports=check_imports,
        problems=problems,
        variables_required=variables_required,
    )
    if tree is None:
        message = "the file is empty; expected a mapping with a 'jobs' key"
        raise ConfigError([*problems, _file_problem(filename, message)])
    if tree.kind != "map":
        ctx.report(tree, f"expected a mapping with a 'jobs' key at the top, got {tree.type_name()}")
        raise ConfigError(_sorted(ctx.problems))
    top: Entries = tree.value
    for key, (key_node, _) in top.items():
        # `x-` keys hold YAML anchors for reuse, as in docker compose files.
        if key not in KNOWN_TOP_KEYS and not key.startswith("x-"):
            ctx.report(key_node, _unknown_key(key, KNOWN_TOP_KEYS))
    settings = _settings(ctx, top.get("settings"))
    if check_imports:
        entrypoints.add_to_sys_path(settings.path)
    defaults = _defaults(ctx, top.get("defaults"))
    jobs = _jobs(ctx, tree, top.get("jobs"), settings, defaults)
    if ctx.problems:
        raise ConfigError(_sorted(ctx.problems))
    path = Path(filename) if Path(filename).is_absolute() else base_dir / Path(filename).name
    # Text that belongs to no run (a job's printed lines under the live table, log records)
    # is redacted with every secret this process has seen.
    from qtasks_cli import redaction

    redaction.remember(pair for job in jobs.values() for pair in job.secrets)
    return Config(
        path=path,
        settings=settings,
        jobs=jobs,
        digest=config_digest(jobs, ctx.machine_zoned),
        warnings=tuple(_sorted(ctx.warnings)),
        zone_source=ctx.zone_source,
        where={key: (filename, line, column) for key, (line, column) in ctx.where.items()},
    )


def _sorted(problems: list[Problem]) -> list[Problem]:
    unique = {(p.line, p.column, p.message): p for p in reversed(problems)}
    return sorted(unique.values(), key=lambda p: (p.line, p.column))


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


# --- scalar readers: each returns the value or raises _Bad --------------------------------------


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


def _int(node: Located, minimum: int) -> int:
    _plain_number(node)
    value = node.value
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Bad(f"expected a whole number >= {minimum}, got {node.type_name()}")
    if value < minimum:
        raise _Bad(f"expected a whole number >= {minimum}, got {value}")
    return value


def _optional(read: Callable[[Located], Any]) -> Callable[[Located], Any]:
    return lambda node: None if node.is_null else read(node)


def _positive_number(node: Located) -> float:
    _plain_number(node)
    value = node.value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise _Bad(f"expected a number > 0, got {_show(node)}")
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
    return repr(node.value) if node.kind == "scalar" else node.type_name()


# --- settings ---------------------------------------------------------------------------------


def _settings(ctx: _Context, entry: tuple[Located, Located] | None) -> Settings:
    readers: dict[str, Callable[[Located], Any]] = {
        "path": lambda node: _folders(ctx, node),
        "state": lambda node: _state(ctx, node),
        "timezone": _zone,
        "max_concurrent": lambda node: _int(node, 1),
        "shutdown_grace": _duration,
        "keep_runs": _optional(lambda node: _int(node, 1)),
        "keep_days": _optional(_positive_number),
        "max_catch_up": lambda node: _int(node, 1),
        "node_timeout": lambda node: _duration(node, positive=True),
        "schema": _schema,
        "metrics": _optional(lambda node: _listen_address(ctx, node)),
    }
    values: dict[str, Any] = {
        "path": (ctx.base_dir,),
        "state": str(ctx.base_dir / ".qtasks" / "state.db"),
    }
    for key, (key_node, node) in _mapping(ctx, entry, "settings").items():
        ctx.where[f"settings.{key}"] = (node.line, node.column)
        if key not in readers:
            ctx.report(key_node, _unknown_key(key, KNOWN_SETTINGS_KEYS))
        elif not node.invalid:
            try:
                values[key] = readers[key](node)
            except _Bad as exc:
                ctx.report(node, exc.message)
            except _Reported:
                pass
    if "timezone" not in values:
        values["timezone"] = _machine_zone(ctx, entry)
    return Settings(**values)


def _machine_zone(ctx: _Context, entry: tuple[Located, Located] | None) -> str:
    """The default zone: the machine's (qtasks_cli.zones), or a problem if $TZ is unusable."""
    from qtasks_cli.zones import ZoneError, machine_zone

    try:
        found = machine_zone(ctx.env)
    except ZoneError as exc:
        if (ctx.env or os.environ).get("TZ") is not None and entry is None:
            # The environment's fault, not the file's: named as such, not as line 1.
            ctx.problems.append(
                Problem(file="environment variable TZ", line=0, column=0, key="", message=str(exc))
            )
            return "UTC"  # not used: the file is refused
        where = entry[0] if entry is not None else Located("scalar", None, 1, 1, "")
        ctx.report(where, str(exc), path="settings.timezone")
        return "UTC"  # not used: the file is refused
    ctx.zone_source = found.source
    return found.name


def _folders(ctx: _Context, node: Located) -> tuple[Path, ...]:
    items = node.value if node.kind == "seq" else [node]
    folders = []
    for item in items:
        if item.kind != "scalar" or not isinstance(item.value, str) or not item.value:
            ctx.fail(item, f"expected a folder or a list of folders, got {_show(item)}")
        folder = Path(os.path.normpath(ctx.base_dir / os.path.expanduser(item.value)))
        if ctx.check_imports and not folder.is_dir():
            ctx.fail(item, f"folder {str(folder)!r} does not exist")
        folders.append(folder)
    return tuple(folders)


def _state(ctx: _Context, node: Located) -> str:
    text = _str(node)
    if text.startswith(_POSTGRES_SCHEMES):
        return text
    if "://" in text or not text.strip():
        raise _Bad(f"expected a file path or a postgresql:// URL, got {text!r}")
    return os.path.normpath(ctx.base_dir / os.path.expanduser(text))


def _listen_address(ctx: _Context, node: Located) -> tuple[str, int]:
    """``settings.metrics``: ``HOST:PORT`` (``[::1]:9464`` for IPv6) or a bare port, which
    listens on 127.0.0.1 only. Where the environment is checked (``validate``, ``run``), the
    host must resolve to an address of this machine (qtasks_cli.listen)."""
    _plain_number(node)
    value = node.value
    expected = "expected HOST:PORT such as 127.0.0.1:9464, or a port number"
    if isinstance(value, int) and not isinstance(value, bool):
        host, port_text = "127.0.0.1", str(value)
    elif isinstance(value, str):
        host, sep, port_text = value.strip().rpartition(":")
        if not sep or not host:
            raise _Bad(f"{expected}, got {value!r}")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    else:
        raise _Bad(f"{expected}, got {_show(node)}")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise _Bad(f"{expected} (port 1 to 65535), got {value!r}")
    if not host or any(c.isspace() or c in "/[]" for c in host):
        raise _Bad(f"{expected}, got {value!r}")
    if ctx.check_imports:
        from qtasks_cli import listen

        why = listen.problem(host, int(port_text))
        if why is not None:
            raise _Bad(why)
    return host, int(port_text)


def _schema(node: Located) -> str:
    text = _str(node)
    if not _SCHEMA.match(text):
        raise _Bad(f"expected an SQL identifier (letters, digits, _; at most 63), got {text!r}")
    return text


# --- defaults and jobs ------------------------------------------------------------------------


def _defaults(ctx: _Context, entry: tuple[Located, Located] | None) -> Entries:
    entries = _mapping(ctx, entry, "job keys applied to every job")
    for key, (key_node, _) in entries.items():
        if key not in KNOWN_JOB_KEYS:
            ctx.report(key_node, _unknown_key(key, KNOWN_JOB_KEYS))
    return _normalize_retry(ctx, entries)


def _jobs(
    ctx: _Context,
    root: Located,
    entry: tuple[Located, Located] | None,
    settings: Settings,
    defaults: Entries,
) -> dict[str, JobSpec]:
    if entry is None:
        ctx.report(root, "no jobs defined (add a 'jobs' mapping)")
        return {}
    entries = _mapping(ctx, entry, "job names to jobs")
    if not entries and (entry[1].kind == "map" or entry[1].is_null):
        ctx.report(entry[1], "no jobs defined")
    jobs: dict[str, JobSpec] = {}
    for name, (name_node, node) in entries.items():
        if not _JOB_NAME.match(name):
            ctx.report(
                name_node,
                f"invalid job name {name!r}: use letters, digits, '_', '.' and '-' "
                "(at most 100 characters)",
            )
        spec = _JobReader(ctx, name, name_node, settings).read(node, defaults)
        if spec is not None:
            jobs[name] = spec
    return jobs


def _normalize_retry(ctx: _Context, entries: Entries) -> Entries:
    """Spell `retry` as a mapping and fold `retry_on` into it, so defaults merge key by key."""
    result = dict(entries)
    retry = result.get("retry")
    if retry is not None and retry[1].kind == "scalar" and _is_int(retry[1].value):
        key_node, node = retry
        result["retry"] = (key_node, _synthetic_map(node, {"retries": node}))
    retry_on = result.pop("retry_on", None)
    if retry_on is None:
        return result
    on_key, on_node = retry_on
    retry = result.get("retry")
    if retry is None or retry[1].is_null:
        result["retry"] = (on_key, _synthetic_map(on_node, {"on": on_node}))
    elif retry[1].kind == "map":
        if "on" in retry[1].value:
            line = retry[1].value["on"][0].line
            ctx.report(on_key, f"retry_on repeats retry.on (line {line}); give only one")
        else:
            merged = {**retry[1].value, "on": (on_key, on_node)}
            result["retry"] = (retry[0], _synthetic_map(retry[1], {}, merged))
    return result


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _synthetic_map(
    at: Located, values: dict[str, Located], entries: Entries | None = None
) -> Located:
    entries = dict(entries or {})
    for key, node in values.items():
        key_node = Located(
            kind="scalar", value=key, line=node.line, column=node.column, path=node.path
        )
        entries[key] = (key_node, node)
    return Located(kind="map", value=entries, line=at.line, column=at.column, path=at.path)


def _merge_defaults(defaults: Entries, own: Entries) -> Entries:
    result = dict(defaults)
    for key, (key_node, node) in own.items():
        base = result.get(key)
        if key in _MERGED_KEYS and base and base[1].kind == "map" and node.kind == "map":
            node = _synthetic_map(node, {}, {**base[1].value, **node.value})
        result[key] = (key_node, node)
    return result


def _description(node: Located) -> str:
    return "" if node.is_null else _str(node)


def _backoff(node: Located) -> float:
    _plain_number(node)
    value = node.value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 1:
        raise _Bad(f"expected a number >= 1, got {_show(node)}")
    return float(value)


_JOB_FIELDS: dict[str, Callable[[Located], Any]] = {
    "entrypoint": _ref,
    "timezone": _optional(_zone),
    "timeout": _optional(lambda node: _duration(node, positive=True)),
    "overlap": _choice(Overlap),
    "catch_up": _choice(CatchUp),
    "misfire_grace": _duration,
    "generate_handler": _optional(_ref),
    "echo": _bool,
    "on_failure": _optional(_ref),
    "on_success": _optional(_ref),
    "enabled": _bool,
    "description": _description,
    "isolation": _choice(Isolation),
    "kill_grace": _duration,
    "retry_interrupted": _bool,
}
_RETRY_FIELDS: dict[str, Callable[[Located], Any]] = {
    "retries": lambda node: _int(node, 0),
    "delay": _duration,
    "backoff": _backoff,
    "max_delay": _duration,
    "jitter": _duration,
}
# What the executor passes to each hook: they must accept exactly one argument.
_HOOKS = (
    ("generate_handler", "each yielded item"),
    ("on_failure", "the RunResult"),
    ("on_success", "the RunResult"),
)


class _JobReader:
    """Reads one job (its own keys merged over `defaults`) into a JobSpec, reporting problems."""

    def __init__(self, ctx: _Context, name: str, name_node: Located, settings: Settings) -> None:
        self.ctx = ctx
        self.name = name
        self.name_node = name_node
        self.settings = settings
        self.ok = True
        self.nodes: dict[str, Located] = {}
        self.values: dict[str, Any] = {"name": name, "line": name_node.line}
        self.secrets: dict[str, str] = {}
        self.variables: dict[str, str] = {}
        self.exception_nodes: list[Located] = []
        self.arguments_ok = True  # args and kwargs read without problems

    def report(self, node: Located, message: str, *, per_job: bool = False) -> None:
        """Report at ``node``; ``per_job`` problems depend on the job, so a value inherited
        from `defaults` says which job it broke (others are reported once)."""
        self.ok = False
        own = node.path == f"jobs.{self.name}" or node.path.startswith(f"jobs.{self.name}.")
        self.ctx.report(node, f"job {self.name!r}: {message}" if per_job and not own else message)

    def read(self, node: Located, defaults: Entries) -> JobSpec | None:
        if node.kind != "map":
            if not node.invalid:
                self.report(
                    node, f"expected a mapping with at least 'entrypoint', got {node.type_name()}"
                )
            return None
        for key, (key_node, _) in node.value.items():
            if key not in KNOWN_JOB_KEYS:
                self.report(key_node, _unknown_key(key, KNOWN_JOB_KEYS))
        entries = _merge_defaults(defaults, _normalize_retry(self.ctx, node.value))
        self.nodes = {key: value for key, (_, value) in entries.items()}
        for key, value in self.nodes.items():
            if value.invalid:
                self.ok = False
            elif key in _JOB_FIELDS:
                self._read_field(key, value)
        if "entrypoint" not in self.nodes:
            self.report(
                self.name_node, "missing 'entrypoint' (the function to run, 'module:function')"
            )
        zone = self.values.get("timezone") or self.settings.timezone
        if not self.values.get("timezone") and self.ctx.zone_source != _ZONE_FROM_FILE:
            self.ctx.machine_zoned.add(self.name)  # the zone is the environment's, not the file's
        self.values["timezone"] = zone
        self._read_schedule(self.nodes.get("schedule"), zone)
        self._read_arguments()
        self._read_retry(self.nodes.get("retry"))
        if self.ctx.check_imports:
            self._check_imports()
        if not self.ok:
            return None
        secrets = sorted(self.secrets.items(), key=lambda pair: -len(pair[0]))
        return JobSpec(**self.values, secrets=tuple(secrets), variables=self.variables)

    def _read_field(self, key: str, node: Located) -> None:
        try:
            self.values[key] = _JOB_FIELDS[key](node)
        except _Bad as exc:
            self.report(node, exc.message)

    def _read_schedule(self, node: Located | None, zone_name: str) -> None:
        if node is None or node.is_null or node.invalid:
            return
        from qtasks_cli.schedule import parse_schedule, union
        from qtasks_cli.zones import ZoneError, get_zone

        try:
            zone = get_zone(zone_name)
        except ZoneError:
            zone = ZoneInfo("UTC")  # already reported; still check the schedule itself
        items: list[Located] = node.value if node.kind == "seq" else [node]
        if not items:
            self.report(node, "expected a schedule or a list of schedules, got an empty list")
        compiled: list[Schedule] = []
        for item in items:
            # Every scalar: a quoted "1:30" is refused as 1:30 is, for the same reason.
            trapped = [item] if item.kind == "scalar" and not item.invalid else []
            if item.kind == "map":
                trapped = [
                    child
                    for _, value in item.value.values()
                    for child in (value.value if value.kind == "seq" else [value])
                    if child.trap
                ]
            if any(self._schedule_trap(node) for node in trapped):
                continue
            if item.kind == "map" and any(
                child.invalid
                for _, value in item.value.values()
                for child in (value.value if value.kind == "seq" else [value])
            ):
                self.ok = False  # already reported where it is written
                continue
            if item.invalid:
                self.ok = False
            elif item.kind == "seq" or (item.kind == "scalar" and not isinstance(item.value, str)):
                self.report(
                    item,
                    "expected a cron string such as '59 23 * * *' or a mapping such as "
                    f"{{hour: 23, minute: 59}}, got {_show(item)}",
                )
            else:
                try:
                    compiled.append(parse_schedule(yamlload.plain(item), zone))
                except ValueError as exc:
                    self.report(item, str(exc))
                    continue
                warning = getattr(compiled[-1], "day_rule_warning", None)
                if warning is not None and (text := warning()):
                    self.ctx.warn(item, text)
        if compiled and len(compiled) == len(items):
            self.values["schedule"] = compiled[0] if len(compiled) == 1 else union(compiled)
            self.values["schedule_text"] = "; ".join(_compact(yamlload.plain(i)) for i in items)

    def _schedule_trap(self, node: Located) -> bool:
        in_mapping = node.path.rsplit(".", 1)[-1].split("[")[0] in yamltraps.MAPPING_FIELDS
        problem = yamltraps.refusal(node, "a valid value" if in_mapping else "a schedule")
        if problem:
            self.report(node, problem)
        return problem is not None

    def _read_arguments(self) -> None:
        args, kwargs = self.nodes.get("args"), self.nodes.get("kwargs")
        for node in (args, kwargs):
            if node is not None:
                for where, note in yamltraps.notes(node):
                    self.ctx.warn(where, note)
        if args is not None and not args.is_null and not args.invalid:
            if args.kind == "seq":
                self.values["args"] = tuple(self._interpolate(item) for item in args.value)
                raw_args = tuple(yamlload.plain(args))
                if raw_args != self.values["args"]:  # placeholders: keep them as written
                    self.values["raw_args"] = raw_args
            else:
                self.arguments_ok = False
                self.report(args, f"expected a list of arguments, got {args.type_name()}")
        if kwargs is not None and not kwargs.is_null and not kwargs.invalid:
            if kwargs.kind == "map":
                self.values["kwargs"] = self._interpolate(kwargs)
                raw_kwargs = yamlload.plain(kwargs)
                if raw_kwargs != self.values["kwargs"]:
                    self.values["raw_kwargs"] = raw_kwargs
            else:
                self.arguments_ok = False
                self.report(
                    kwargs, f"expected a mapping of keyword arguments, got {kwargs.type_name()}"
                )
        # What every start path checks, checked up front (qtasks_cli.request).
        from qtasks_cli.request import check_value

        for node, key, value in (
            (args, "args", list(self.values.get("args", ()))),
            (kwargs, "kwargs", self.values.get("kwargs", {})),
        ):
            if node is None or _has_invalid(node):
                continue  # reported where it is
            problem = check_value(value, key)
            if problem:
                self.arguments_ok = False
                self.report(node, f"arguments refused: {problem}")

    def _interpolate(self, node: Located) -> Any:
        """The plain value of ``node`` with ``${NAME}`` taken from the environment."""
        if node.kind == "map":
            for key, (key_node, _) in node.value.items():
                if "${" in key.replace("$${", ""):
                    self.arguments_ok = False
                    self.report(
                        key_node,
                        f"a mapping key is taken as written; {key!r:.40} would not be filled "
                        "from the environment (placeholders are read in values only)",
                    )
            return {key: self._interpolate(value) for key, (_, value) in node.value.items()}
        if node.kind == "seq":
            return [self._interpolate(item) for item in node.value]
        if not isinstance(node.value, str) or "${" not in node.value:
            return node.value
        from qtasks_cli.request import PLACEHOLDER, expand, unsupported_placeholder

        problem = unsupported_placeholder(node.value)
        if problem:
            self.arguments_ok = False
            self.report(node, problem)
            return node.value

        for match in PLACEHOLDER.finditer(node.value):
            name = match.group(1)
            value = self.ctx.env.get(name) if name else None
            if value is not None:
                self.variables[name] = value
            if value:
                self.secrets.setdefault(value, match.group(0))
                self._warn_if_shown(node, match.group(0), value)
        text, missing = expand(node.value, self.ctx.env.get)
        if missing and self.ctx.variables_required:
            self.arguments_ok = False
            names = ", ".join(repr(name) for name in missing)
            what = f"variables {names} are" if len(missing) > 1 else f"variable {names} is"
            hint = f"give a default with ${{{missing[0]}:-value}}"
            self.report(node, f"environment {what} not set ({hint})")
        return text

    def _warn_if_shown(self, node: Located, placeholder: str, value: str) -> None:
        from qtasks_cli.redaction import MIN_SECRET_CHARS, is_secret

        if not is_secret(value):
            self.ctx.warn(
                node,
                f"the value of {placeholder} is shorter than {MIN_SECRET_CHARS} characters, "
                "so it is not hidden in what jobs print, raise or return (the stored "
                f"arguments keep {placeholder}); see the README's Security section",
            )

    def _read_retry(self, node: Located | None) -> None:
        if node is None or node.is_null or node.invalid:
            return
        if node.trap in yamltraps.NUMBER_TRAPS:
            self.report(node, yamltraps.refusal(node, "a number") or node.trap_note())
            return
        if node.kind != "map":
            self.report(
                node,
                "expected a number of retries such as 3, or a mapping such as "
                f"{{retries: 3, delay: 1s}}, got {_show(node)}",
            )
            return
        fields: dict[str, Any] = {}
        for key, (key_node, value) in node.value.items():
            if key not in KNOWN_RETRY_KEYS:
                self.report(key_node, _unknown_key(key, KNOWN_RETRY_KEYS))
            elif value.invalid:
                self.ok = False
            elif key == "on":
                fields["on"] = self._exception_names(value)
            else:
                try:
                    fields[key] = _RETRY_FIELDS[key](value)
                except _Bad as exc:
                    self.report(value, exc.message)
        self.values["retry"] = RetryPolicy(**fields)

    def _exception_names(self, node: Located) -> tuple[str, ...]:
        items = [] if node.is_null else node.value if node.kind == "seq" else [node]
        names = []
        for item in items:
            if item.kind != "scalar" or not isinstance(item.value, str):
                self.report(item, f"expected an exception class name, got {_show(item)}")
                continue
            try:
                if ":" in item.value:
                    entrypoints.split_ref(item.value)  # imported with the other references
                else:
                    entrypoints.resolve_exception(item.value)
            except EntryPointError as exc:
                self.report(item, str(exc))
                continue
            names.append(item.value)
            self.exception_nodes.append(item)
        return tuple(names)

    # --- import checks ------------------------------------------------------------------------

    def _check_imports(self) -> None:
        """Import what the job names; runs on whatever parsed, so one pass finds everything."""
        values = self.values
        ref = values.get("entrypoint")
        fn = self._callable(ref, "entrypoint") if ref else None
        if fn is not None:
            args, kwargs = values.get("args", ()), values.get("kwargs", {})
            reason = None
            if self.arguments_ok:
                # A job without a schedule gets its arguments with each trigger, so the file
                # may leave required ones out; a scheduled job must be callable as written.
                partial = values.get("schedule") is None
                reason = entrypoints.check_binding(fn, args, kwargs, partial=partial)
            if reason:
                signature = entrypoints.describe_signature(fn)
                message = f"arguments do not fit {signature}: {reason}"
                self.report(self._binding_node(reason), message, per_job=True)
            kind = entrypoints.kind_of(fn)
            if not kind.is_generator:
                why = f"{ref!r} is a {kind.value} function, not a generator"
                if values.get("generate_handler"):
                    message = f"generate_handler needs a generator entrypoint; {why}"
                    self.report(self.nodes["generate_handler"], message, per_job=True)
                if values.get("echo"):
                    message = f"echo: true needs a generator entrypoint; {why}"
                    self.report(self.nodes["echo"], message, per_job=True)
        for key, receives in _HOOKS:
            ref = values.get(key)
            handler = self._callable(ref, key) if ref else None
            reason = entrypoints.check_binding(handler, (None,), {}) if handler else None
            if reason:
                message = f"{ref!r} must accept one argument ({receives}): {reason}"
                self.report(self.nodes[key], message)
        for item in self.exception_nodes:
            if ":" in item.value:
                try:
                    entrypoints.resolve_exception(item.value)
                except EntryPointError as exc:
                    self.report(item, str(exc))

    def _callable(self, ref: str, key: str) -> Any:
        try:
            obj = entrypoints.resolve(ref)
        except EntryPointError as exc:
            self.report(self.nodes[key], str(exc))
            return None
        if not callable(obj):
            what = f"{type(obj).__name__} {obj!r:.60}"
            self.report(self.nodes[key], f"{ref!r} is not callable (it is {what})")
            return None
        return obj

    def _binding_node(self, reason: str) -> Located:
        args, kwargs = self.nodes.get("args"), self.nodes.get("kwargs")
        if kwargs is not None and "keyword" in reason:
            return kwargs
        return args or kwargs or self.nodes["entrypoint"]


def _has_invalid(node: Located) -> bool:
    stack = [node]
    while stack:
        item = stack.pop()
        if item.invalid:
            return True
        if item.kind == "map":
            stack.extend(value for _, value in item.value.values())
        elif item.kind == "seq":
            stack.extend(item.value)
    return False


def _compact(value: Any) -> str:
    """A schedule as written, on one line: ``{hour: 23, minute: 59}``."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}: {_compact(item)}" for key, item in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_compact(item) for item in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return str(value)
