"""The ``qtasks`` command: Typer commands that parse, call ``qtasks_cli.api`` and map errors to
exit codes. Heavy modules are imported inside the commands that need them."""

from __future__ import annotations

import contextlib
import enum
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from qtasks_cli import __version__
from qtasks_cli.cli_common import ConfigArg, ConfigOpt, StateOpt, app
from qtasks_cli.cli_common import fail as _fail
from qtasks_cli.cli_common import one_line as _one_line
from qtasks_cli.errors import EXIT_FORCED, EXIT_JOB_FAILED, EXIT_OK, EXIT_USAGE, QtasksError

if TYPE_CHECKING:
    from qtasks_cli.events import Event
    from qtasks_cli.models import Config

MAX_LIMIT = 1_000_000_000  # rows; SQLite and PostgreSQL take 64-bit limits
MAX_DEPTH = 100  # levels of nesting in --arg, --kwarg and --json-kwargs values


class UI(str, enum.Enum):
    auto = "auto"
    live = "live"
    plain = "plain"
    json = "json"


def _error_text(exc: QtasksError) -> str:
    """What the user reads for ``exc``: one line per located problem, else one line."""
    from qtasks_cli.errors import ConfigError

    if isinstance(exc, ConfigError):
        return "\n".join(_one_line(str(problem)) for problem in exc.problems)
    return _one_line(str(exc))


def _load(
    config: Path | None, *, check_imports: bool = True, variables_required: bool = True
) -> Config:
    from qtasks_cli import api

    try:
        return api.load(config, check_imports=check_imports, variables_required=variables_required)
    except QtasksError as exc:
        print(_error_text(exc), file=sys.stderr)
        raise typer.Exit(exc.exit_code) from None


def _version(value: bool) -> None:
    if value:
        print(f"qtasks {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """A scheduler for Python functions: one YAML file, one process, history in SQLite."""


@app.command()
def validate(
    config: ConfigArg = None,
    no_import: Annotated[
        bool, typer.Option("--no-import", help="Do not import the entry points.")
    ] = False,
) -> None:
    """Check the job file; print every problem with its line, or 'N jobs OK'."""
    loaded = _load(config, check_imports=not no_import)
    for warning in loaded.warnings:
        print(warning, file=sys.stderr)
    count = len(loaded.jobs)
    print(f"{count} job{'s' if count != 1 else ''} OK")


@app.command("list")
def list_(
    config: ConfigArg = None,
    next_: Annotated[
        int, typer.Option("--next", min=1, max=1000, help="How many next fire times to show.")
    ] = 1,
    after: Annotated[
        str | None,
        typer.Option(
            help="Show fires after this ISO-8601 time instead of now.", show_default=False
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show every job, its schedule in words, its zone and its next fire times."""
    from qtasks_cli import api

    start = _parse_after(after) if after else None
    loaded = _load(config, check_imports=False, variables_required=False)
    rows = api.list_jobs(loaded, count=next_, after=start)
    paused = api.paused_jobs(loaded)
    # A pause is kept by name until resumed: one of a job no longer in the file is listed too.
    kept = sorted(paused - set(loaded.jobs))
    if as_json:
        keys = ("name", "schedule", "timezone", "enabled", "next")
        listed: list[dict[str, Any]] = [
            {**{k: r[k] for k in keys}, "timezone_source": r["timezone_source"],
             "paused": r["name"] in paused, "in_file": True}
            for r in rows
        ]  # fmt: skip
        listed += [
            {"name": name, "schedule": None, "timezone": None, "enabled": False, "next": [],
             "timezone_source": None, "paused": True, "in_file": False}
            for name in kept
        ]  # fmt: skip
        print(json.dumps(listed, indent=2))
        return
    from qtasks_cli.text import clean_line

    width = max(len(clean_line(name)) for name in [*(r["name"] for r in rows), *kept, ""])
    if loaded.zone_source:  # the machine's zone is the default: say where it was found
        zone = clean_line(f"{loaded.settings.timezone} (from {loaded.zone_source})")
        print(f"default time zone: {zone}")
    for row in rows:
        state = "enabled" if row["enabled"] else "disabled"
        if row["name"] in paused:  # the file's enabled: false wins over a pause
            state = "paused, enabled" if row["enabled"] else "disabled, also paused"
        nexts = row["next"] or ["-"]
        name, schedule = clean_line(row["name"]), clean_line(row["schedule"])
        print(f"{name:<{width}}  {schedule}  [{clean_line(row['timezone'])}, {state}]")
        for when in nexts:
            print(f"{'':<{width}}  next: {when}")
    for name in kept:
        shown = clean_line(name)
        print(f"{shown:<{width}}  not in the job file  [paused: `qtasks resume {shown}` lifts it]")


def _parse_after(text: str) -> Any:
    from datetime import datetime, timezone

    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        _fail(f"--after: {text!r} is not an ISO-8601 date and time (e.g. 2026-03-29T00:00+01:00)")
    try:
        if when.tzinfo is None:
            when = when.astimezone()  # a naive time is the machine's local time
        return when.astimezone(timezone.utc)
    except (OverflowError, ValueError):
        _fail(f"--after: {text!r} is outside the dates qtasks can compute with")


@app.command()
def run(
    config: ConfigArg = None,
    ui: Annotated[
        UI,
        typer.Option(
            help="auto: the live table when stderr is a terminal (not under systemd), "
            "else plain log lines (journald-style under systemd)."
        ),
    ] = UI.auto,
    state: StateOpt = None,
) -> None:
    """Supervise every job until stopped (SIGTERM/Ctrl-C); SIGHUP reloads the file."""

    from qtasks_cli import daemon, looprun
    from qtasks_cli.events import EventBus
    from qtasks_cli.ui.output import bound_stdio

    # Before the job modules are imported: a logging.StreamHandler one makes at import then
    # holds the bounded, secret-hiding stream, not the raw one.
    bound_stdio()
    loaded = _load(config)
    path = loaded.path
    mode = _log_mode(ui)
    bus = EventBus()
    try:
        if mode == "live":
            from qtasks_cli.ui import live

            code = live.run_live(
                lambda on_ready: daemon.serve(
                    path, loaded, bus=bus, state=state, on_ready=on_ready
                ),
                bus=bus,
            )
        else:
            from qtasks_cli.ui import log as ui_log

            bus.subscribe(ui_log.sink_for(mode))
            code = looprun.run_until_done(daemon.serve(path, loaded, bus=bus, state=state))
    except QtasksError as exc:
        _fail(str(exc), exc.exit_code)
    _exit_now(code)


def _log_mode(ui: UI) -> str:
    """``live``, ``json``, ``journal`` or ``plain``: what ``--ui`` amounts to here."""
    if ui is UI.json:
        return "json"
    under_systemd = bool(os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"))
    on_terminal = sys.stderr.isatty() and os.environ.get("TERM") != "dumb"
    if ui is UI.live and on_terminal:
        return "live"
    if ui is UI.auto and on_terminal and not under_systemd:
        return "live"
    if under_systemd and not sys.stderr.isatty():
        return "journal"
    if ui is UI.live:
        print("qtasks: --ui live needs a terminal on stderr; writing plain lines", file=sys.stderr)
    return "plain"


def _exit_now(code: int) -> NoReturn:
    """Exit without waiting for job threads that never returned (they were reported), nor on
    a job's streams or log handlers: every flush is bounded (``exiting``)."""
    from qtasks_cli import exiting

    exiting.exit_now(code)


@app.command()
def trigger(
    job: Annotated[str, typer.Argument(help="The job to run.")],
    config: ConfigOpt = None,
    arg: Annotated[
        list[str] | None,
        typer.Option(
            "--arg",
            help="A positional argument (parsed as YAML: 42 is an int); repeatable.",
            show_default=False,
        ),
    ] = None,
    kwarg: Annotated[
        list[str] | None,
        typer.Option(
            "--kwarg",
            help="KEY=VALUE keyword argument (VALUE read as the job file's YAML); repeatable.",
            show_default=False,
        ),
    ] = None,
    json_kwargs: Annotated[
        str | None,
        typer.Option(
            "--json-kwargs", help="Keyword arguments as a JSON object.", show_default=False
        ),
    ] = None,
    enqueue: Annotated[
        bool,
        typer.Option("--enqueue", help="Hand the run to the daemon and return its run id at once."),
    ] = False,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait", help="With --enqueue: wait until the run ends and exit with its result."
        ),
    ] = False,
    state: StateOpt = None,
) -> None:
    """Run JOB now in the foreground (or hand it to the daemon with --enqueue)."""
    import asyncio

    from qtasks_cli import api, looprun
    from qtasks_cli.events import EventBus

    if wait and not enqueue:
        _fail("--wait goes with --enqueue")
    if not enqueue:
        from qtasks_cli.ui.output import bound_stdio

        bound_stdio()  # before the job modules are imported (see `run`)
    # A handed-over run keeps ${NAME} placeholders and the daemon resolves them.
    loaded = _load(config, variables_required=not enqueue)
    try:
        spec = api.get_job(loaded, job)  # first: no warning about the arguments of no job
        args, kwargs = _parse_call_args(arg, kwarg, json_kwargs)
        if enqueue:
            run_id = api.enqueue_loaded(loaded, spec.name, args, kwargs, state=state)
            print(run_id)
            if not wait:
                raise typer.Exit(EXIT_OK)
            row = asyncio.run(api.wait_for_run(loaded, run_id, state=state))
            from qtasks_cli.text import clean_line

            print(
                clean_line(
                    f"{row.job} {row.run_id} {row.status}"
                    + (f": {row.error_type}: {row.error}" if row.error else "")
                ),
                file=sys.stderr,
            )
            raise typer.Exit(EXIT_OK if row.status.ok else EXIT_JOB_FAILED)
        mode = _log_mode(UI.plain)
        bus = EventBus()
        from qtasks_cli.ui import log as ui_log

        bus.subscribe(ui_log.sink_for(mode))
        bus.subscribe(_print_items)
        from qtasks_cli.output import hiding

        with hiding():  # the job's own prints, as the daemon shows them
            result = looprun.run_until_done(
                api.trigger_now(loaded, job, args=args, kwargs=kwargs, state=state, bus=bus)
            )
    except QtasksError as exc:
        _fail(str(exc), exc.exit_code)
    _exit_now(_trigger_exit(result))


def _trigger_exit(result: Any) -> int:
    """``trigger``'s exit code: 0 if the run succeeded, 1 if it failed; stopped by Ctrl-C
    130, by SIGTERM 143 (128 + the signal, as a shell reports it)."""
    from qtasks_cli.models import RunStatus

    if result.status is RunStatus.CANCELLED:
        return 143 if result.error == "cancelled by SIGTERM" else EXIT_FORCED
    return EXIT_OK if result.status.ok else EXIT_JOB_FAILED


def _print_items(event: Event) -> None:
    from qtasks_cli.events import Item

    if isinstance(event, Item):
        from qtasks_cli.text import clean_line

        print(clean_line(event.item), flush=True)


def _parse_call_args(
    arg: list[str] | None, kwarg: list[str] | None, json_kwargs: str | None
) -> tuple[Any, Any]:
    """--arg, --kwarg and --json-kwargs as a run's arguments. A VALUE is read by the job
    file's own YAML reader (keys are the text written, a key given twice is refused, tags and
    YAML 1.1's surprises as in the job file, which are said on stderr); --json-kwargs refuses
    a key given twice; so does giving a keyword twice across the options. Bad input: exit 2;
    so is an argument that is not UTF-8 text (``request.not_text``)."""
    from qtasks_cli.request import not_text

    given = (("--arg", arg or []), ("--kwarg", kwarg or []), ("--json-kwargs", [json_kwargs or ""]))
    for option, texts in given:
        for text in texts:
            reason = not_text(text)
            if reason:
                _fail(f"{option} {_shown(text)}: {reason}")
    args = [_yaml_value(a, "--arg", a) for a in arg] if arg else None
    kwargs: dict[str, Any] | None = None
    if kwarg:
        kwargs = {}
        for item in kwarg:
            key, sep, value = item.partition("=")
            if not sep or not key:
                _fail(f"--kwarg {_shown(item)}: expected KEY=VALUE")
            if key in kwargs:
                _fail(f"--kwarg {_shown(item)}: keyword {key!r} is given twice")
            kwargs[key] = _yaml_value(value, "--kwarg", item)
    if json_kwargs:
        extra = _json_object(json_kwargs)
        twice = sorted(set(extra) & set(kwargs or {}))
        if twice:
            _fail(f"--json-kwargs: keyword {twice[0]!r} is given by --kwarg too")
        kwargs = {**(kwargs or {}), **extra}
    return args, kwargs


def _yaml_value(text: str, option: str, shown: str) -> Any:
    from qtasks_cli import yamlload, yamltraps
    from qtasks_cli.errors import ConfigError

    if not text.strip():
        return text
    where = f"{option} {_shown(shown)}"
    try:
        tree, problems = yamlload.load(text, option)
    except ConfigError as exc:
        first = exc.problems[0]
        if first.message.startswith("invalid YAML") and "nesting" not in first.message:
            return text  # not YAML at all: the text as given
        _fail(f"{where}: {first.message}")
    except RecursionError:
        _fail(f"{where}: nested deeper than {MAX_DEPTH} levels")
    if problems:
        _fail(f"{where}: {problems[0].message}")
    if _cut_by_yaml(text, tree is None or (tree.kind == "scalar" and tree.value is None)):
        # A command line has no comments: `note=fix bug #42` means the whole text.
        from qtasks_cli.text import clean_line

        print(
            clean_line(
                f"{where}: warning: YAML would read what follows '#' (or the whole '---') as "
                "a comment; passed as the text given, quote it to say so"
            ),
            file=sys.stderr,
        )
        return text
    if tree is None:
        return None
    for _, note in yamltraps.notes(tree):
        from qtasks_cli.text import clean_line

        print(clean_line(f"{where}: warning: {note}"), file=sys.stderr)
    return yamlload.plain(tree)


def _cut_by_yaml(text: str, empty: bool) -> bool:
    """Whether YAML drops part of ``text`` (a comment after `` #``, or a document marker
    such as ``---`` that leaves no value), which on a command line is never meant."""
    if empty:
        return text.strip() not in ("~", "null", "Null", "NULL")
    if "#" not in text:
        return False
    import yaml

    try:
        node = yaml.compose(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError:
        return False
    return node is not None and text[node.end_mark.index :].strip().startswith("#")


class _TwiceInJSON(Exception):
    pass


def _json_object(text: str) -> dict[str, Any]:
    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for key, value in pairs:
            if key in found:
                raise _TwiceInJSON(key)
            found[key] = value
        return found

    try:
        extra = json.loads(text, object_pairs_hook=unique)
    except _TwiceInJSON as exc:
        _fail(f"--json-kwargs: key {exc.args[0]!r} is given twice in one object")
    except json.JSONDecodeError as exc:
        _fail(f"--json-kwargs: not valid JSON: {exc}")
    except RecursionError:
        _fail(f"--json-kwargs: nested deeper than {MAX_DEPTH} levels")
    except ValueError as exc:  # an integer of more than 4,300 digits, say
        _fail(f"--json-kwargs: {exc}")
    try:
        _check_depth(extra, "--json-kwargs", text)
    except RecursionError:
        _fail(f"--json-kwargs: nested deeper than {MAX_DEPTH} levels")
    if not isinstance(extra, dict):
        _fail(f"--json-kwargs: expected a JSON object, got {type(extra).__name__}")
    return extra


def _shown(text: str) -> str:
    return repr(text if len(text) <= 60 else text[:59] + "…")


MAX_VALUES = 100_000  # values in one --arg/--kwarg/--json-kwargs, aliases expanded


def _check_depth(value: Any, option: str, text: str) -> None:
    """Refuse (exit 2) a value nested deeper than MAX_DEPTH: it could not be stored or shown."""
    level = [value]
    seen = 0
    for _ in range(MAX_DEPTH + 1):
        level = [
            item
            for node in level
            if isinstance(node, (dict, list))
            for item in (node.values() if isinstance(node, dict) else node)
        ]
        seen += len(level)
        if seen > MAX_VALUES:  # YAML aliases can make a few bytes expand without end
            _fail(f"{option} {_shown(text)}: more than {MAX_VALUES:,} values")
        if not level:
            return
    _fail(f"{option} {_shown(text)}: nested deeper than {MAX_DEPTH} levels")


@app.command()
def history(
    job: Annotated[str | None, typer.Argument(help="Only this job.", show_default=False)] = None,
    config: ConfigOpt = None,
    limit: Annotated[int, typer.Option(min=1, max=MAX_LIMIT, help="How many runs.")] = 50,
    status: Annotated[
        str | None,
        typer.Option(
            help="Only runs with this status (succeeded, failed, timed_out, ...).",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Full rows as JSON lines.")] = False,
    stats: Annotated[bool, typer.Option("--stats", help="Per-job statistics.")] = False,
    state: StateOpt = None,
) -> None:
    """Show past runs, newest first (or per-job statistics with --stats)."""
    import asyncio

    from qtasks_cli import api
    from qtasks_cli.models import RunStatus
    from qtasks_cli.ui import tables

    loaded = _load(config, check_imports=False, variables_required=False)
    wanted = None
    if status is not None:
        try:
            wanted = RunStatus(status)
        except ValueError:
            _fail(
                f"--status: {status!r} is not a status "
                f"(expected one of {', '.join(s.value for s in RunStatus)})"
            )
    if job is not None:
        try:
            api.get_job(loaded, job)
        except QtasksError as exc:
            _fail(str(exc), exc.exit_code)
    try:
        rows = asyncio.run(
            api.read_history(loaded, job=job, limit=limit, status=wanted, state=state, stats=stats)
        )
    except QtasksError as exc:
        _fail(str(exc), exc.exit_code)
    if as_json:
        for row in rows:
            print(json.dumps(tables.row_json(row), default=str))
    elif stats and rows and _rich_terminal():
        print_stats_pictures(loaded, rows, limit=limit, state=state)
    else:
        print(tables.stats_text(rows) if stats else tables.history_text(rows))


def _rich_terminal() -> bool:
    """stdout is a terminal that can show colours and block characters (NO_COLOR and
    TERM=dumb mean plain text)."""
    return (
        sys.stdout.isatty()
        and os.environ.get("TERM", "") not in ("", "dumb")
        and "NO_COLOR" not in os.environ
    )


@app.command("systemd-unit")
def systemd_unit(
    config: ConfigArg = None,
    user: Annotated[
        bool,
        typer.Option("--user", help="A user unit (systemctl --user), for ~/.config/systemd/user/."),
    ] = False,
    name: Annotated[
        str, typer.Option("--name", help="The service's name (NAME.service).")
    ] = "qtasks",
) -> None:
    """Print a systemd service (Type=notify, watchdog, reload on SIGHUP) that runs CONFIG."""
    from qtasks_cli import systemd
    from qtasks_cli.stopping import longest_kill_grace

    if not systemd.valid_unit_name(name):
        _fail(
            f"--name: {name!r} is not a unit name (expected letters, digits and :_.@- "
            "without the .service suffix, such as 'qtasks' or 'shop-jobs')"
        )
    loaded = _load(config, check_imports=False, variables_required=False)
    path = loaded.path.resolve()
    try:
        unit = systemd.render_unit(
            executable=systemd.qtasks_executable(),
            config=path,
            working_directory=path.parent,
            shutdown_grace=loaded.settings.shutdown_grace,
            kill_grace=longest_kill_grace(loaded.jobs.values()),
            name=name,
            user=None if user else systemd.current_user(),
            user_unit=user,
        )
    except QtasksError as exc:
        _fail(str(exc), exc.exit_code)
    print(unit, end="")


def _click_error(exc: BaseException, name: str) -> bool:
    return any(cls.__name__ == name for cls in type(exc).__mro__)


def main() -> None:
    """Console-script entry point: every bad argument is one line on stderr and exit 2."""
    from qtasks_cli.text import clean_line

    # A terminal or pipe whose encoding lacks a character we print (PYTHONIOENCODING=ascii and
    # the "…" of a cut text) gets an escape, not a traceback.
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
    from qtasks_cli import pipes

    pipes.guard_stdio()  # `qtasks status | head -1` exits with status's code (pipes.py)
    try:
        code = app(standalone_mode=False)
    except BrokenPipeError:  # a write that bypassed the guard: end quietly, as SIGPIPE would
        sys.exit(pipes.quiet_exit())
    except QtasksError as exc:  # anything a command did not map itself
        print(_error_text(exc), file=sys.stderr)
        sys.exit(exc.exit_code)
    except Exception as exc:
        if _click_error(exc, "NoArgsIsHelpError"):
            print(exc.format_message(), file=sys.stderr)  # type: ignore[attr-defined]
            sys.exit(EXIT_USAGE)
        if _click_error(exc, "ClickException"):  # usage errors: bad option, value, command
            ctx = getattr(exc, "ctx", None)
            where = ctx.command_path if ctx is not None else "qtasks"
            message = clean_line(exc.format_message())  # type: ignore[attr-defined]
            print(f"{where}: {message} (see '{where} --help')", file=sys.stderr)
            sys.exit(EXIT_USAGE)
        if _click_error(exc, "Abort"):
            sys.exit(EXIT_FORCED)
        raise
    sys.exit(pipes.exit_code(code if isinstance(code, int) else EXIT_OK))


def print_stats_pictures(loaded: Config, rows: list[Any], *, limit: int, state: str | None) -> None:
    """``history --stats`` on a terminal: the statistics with a duration sparkline and a
    success strip of each job's latest runs (at most RECENT_RUNS, fewer with --limit)."""
    import asyncio

    from rich.console import Console

    from qtasks_cli import api
    from qtasks_cli.ui import sparkline

    count = min(limit, sparkline.RECENT_RUNS)
    try:
        recent = asyncio.run(api.recent_runs(loaded, [r.job for r in rows], count, state=state))
    except QtasksError as exc:
        _fail(str(exc), exc.exit_code)
    console = Console()
    ascii_only = "utf" not in (console.encoding or "").lower()
    console.print(sparkline.stats_table(rows, recent, ascii_only=ascii_only))


# The operator's commands (status, show, pause, resume, cancel) register themselves on ``app``.
from qtasks_cli import cli_ops as _cli_ops  # noqa: E402

del _cli_ops
