"""The ``defaults`` and ``jobs`` sections: each job's keys merged over ``defaults`` into a
``JobSpec``, every problem located."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any
from zoneinfo import ZoneInfo

from qtasks_cli import entrypoints, yamlload, yamltraps
from qtasks_cli.config.arguments import _ArgumentReader
from qtasks_cli.config.reading import (
    _JOB_NAME,
    _MERGED_KEYS,
    _ZONE_FROM_FILE,
    KNOWN_JOB_KEYS,
    Entries,
    _Bad,
    _bool,
    _choice,
    _Context,
    _duration,
    _mapping,
    _optional,
    _ref,
    _show,
    _str,
    _unknown_key,
    _zone,
)
from qtasks_cli.config.retry import _normalize_retry, _RetryReader, _synthetic_map
from qtasks_cli.config.settings import _settings
from qtasks_cli.errors import (
    EntryPointError,
)
from qtasks_cli.located import Located
from qtasks_cli.models import (
    CatchUp,
    Isolation,
    JobSpec,
    Overlap,
    Schedule,
    Settings,
)

log = logging.getLogger(__name__)


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
    for name_node, node in entries.values():
        _read_job(ctx, name_node, node, settings, defaults, jobs)
    return jobs


def _read_job(
    ctx: _Context,
    name_node: Located,
    node: Located,
    settings: Settings,
    defaults: Entries,
    into: dict[str, JobSpec],
) -> None:
    name = name_node.value
    if not _JOB_NAME.match(name):
        ctx.report(
            name_node,
            f"invalid job name {name!r}: use letters, digits, '_', '.' and '-' "
            "(at most 100 characters)",
        )
    spec = _JobReader(ctx, name, name_node, settings).read(node, defaults)
    if spec is not None:
        into[name] = spec


class JobStream:
    """Reads each job as the YAML reader finishes it (``yamlstream``), so that the located
    values of the whole file are never alive at once: 18 MB for 10,000 jobs, whose memory
    stayed with the daemon, fragmented by the jobs read meanwhile (issue 16).

    ``begin`` is called at the top-level ``jobs`` mapping with the top-level entries read so
    far. Unless a job's module would be imported before a ``settings.path`` written after the
    jobs is known (then nothing is streamed), ``settings`` and ``defaults`` are read from them,
    and the jobs handed to ``job`` as they end are read 256 at a time. A file that writes
    ``defaults`` after ``jobs`` (or that the plain reader leaves to PyYAML's composer after it
    began) is read again the whole way:
    ``usable`` says whether what was read here stands."""

    def __init__(self, ctx: _Context) -> None:
        self.ctx = ctx
        self.began = False
        self.done = False  # the reader finished the document
        self.settings = Settings()
        self.defaults: Entries = {}
        self.jobs: dict[str, JobSpec] = {}
        self._pending: list[tuple[Located, Located]] = []

    BATCH = 256

    def begin(self, top: Entries) -> bool:
        """Whether to read the jobs as they end: not when their modules are to be imported
        and ``settings`` (its ``path``) may still come after them."""
        if self.ctx.check_imports and "settings" not in top:
            return False
        self.began = True
        self.settings = _settings(self.ctx, top.get("settings"))
        if self.ctx.check_imports:
            entrypoints.add_to_sys_path(self.settings.path)
        self.defaults = _defaults(self.ctx, top.get("defaults"))
        return True

    def job(self, name_node: Located, node: Located) -> None:
        # Read in batches: reading each job between the parser's events cost 12% more time
        # (the two kept evicting each other from the CPU's caches); a batch is 0.5 MB.
        pending = self._pending
        pending.append((name_node, node))
        if len(pending) >= self.BATCH:
            self.flush()

    def flush(self) -> None:
        """Read the jobs the reader handed over and not read yet."""
        pending, self._pending = self._pending, []
        for name_node, node in pending:
            _read_job(self.ctx, name_node, node, self.settings, self.defaults, self.jobs)

    def usable(self, top: Entries) -> bool:
        """What was streamed stands: the reader finished, and neither ``settings`` nor
        ``defaults`` came after ``jobs``."""
        if not (self.began and self.done):
            return False
        keys = list(top)
        later = keys[keys.index("jobs") + 1 :] if "jobs" in keys else []
        if "settings" in later or "defaults" in later:
            return False
        self.flush()
        return True


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
# What the executor passes to each hook: they must accept exactly one argument.
_HOOKS = (
    ("generate_handler", "each yielded item"),
    ("on_failure", "the RunResult"),
    ("on_success", "the RunResult"),
)


class _JobReader(_ArgumentReader, _RetryReader):
    """Reads one job (its own keys merged over `defaults`) into a JobSpec, reporting problems."""

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
