"""The ``qtasks`` command: Typer commands that parse, call ``qtasks_cli.api`` and map errors to
exit codes. Heavy modules are imported inside the commands that need them."""

from __future__ import annotations

import contextlib
import enum
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from qtasks_cli import __version__, cli_args
from qtasks_cli.cli_common import ConfigArg, ConfigOpt, StateOpt, app
from qtasks_cli.cli_common import fail as _fail
from qtasks_cli.cli_common import one_line as _one_line
from qtasks_cli.errors import EXIT_FORCED, EXIT_OK, EXIT_USAGE, QtasksError

if TYPE_CHECKING:
    from qtasks_cli.models import Config

MAX_LIMIT = 1_000_000_000  # rows; SQLite and PostgreSQL take 64-bit limits

# The option readers (cli_args), under the names the tests reach through ``cli``.
_parse_call_args = cli_args.parse_call_args
_yaml_value = cli_args.yaml_value
_json_object = cli_args.json_object


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
    from qtasks_cli.cli_results import print_job_list

    start = cli_args.parse_after(after) if after else None
    loaded = _load(config, check_imports=False, variables_required=False)
    rows = api.list_jobs(loaded, count=next_, after=start)
    print_job_list(loaded, rows, api.paused_jobs(loaded), as_json=as_json)


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
            from qtasks_cli.ui.live_session import run_live

            code = run_live(
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
    from qtasks_cli.cli_results import print_items, print_run_end, trigger_exit
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
            raise typer.Exit(print_run_end(row))
        mode = _log_mode(UI.plain)
        bus = EventBus()
        from qtasks_cli.ui import log as ui_log

        bus.subscribe(ui_log.sink_for(mode))
        bus.subscribe(print_items)
        from qtasks_cli.output import hiding

        with hiding():  # the job's own prints, as the daemon shows them
            result = looprun.run_until_done(
                api.trigger_now(loaded, job, args=args, kwargs=kwargs, state=state, bus=bus)
            )
    except QtasksError as exc:
        _fail(str(exc), exc.exit_code)
    _exit_now(trigger_exit(result))


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
    from qtasks_cli.cli_results import print_history

    loaded = _load(config, check_imports=False, variables_required=False)
    wanted = cli_args.parse_status(status) if status is not None else None
    unknown: QtasksError | None = None
    if job is not None:
        try:
            api.get_job(loaded, job)
        except QtasksError as exc:  # a job the file no longer has may still have its runs
            unknown = exc
    try:
        rows = asyncio.run(
            api.read_history(loaded, job=job, limit=limit, status=wanted, state=state, stats=stats)
        )
    except QtasksError as exc:
        _fail(str(exc), exc.exit_code)
    if unknown is not None:
        if not any(getattr(row, "runs", 1) for row in rows):  # nothing recorded: a typo?
            _fail(str(unknown), unknown.exit_code)
        print(f"qtasks: {job!r} is not in {loaded.path}: its recorded runs", file=sys.stderr)
    print_history(loaded, rows, as_json=as_json, stats=stats, limit=limit, state=state)


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
    from qtasks_cli import systemd_unit as systemd
    from qtasks_cli.stopping import longest_kill_grace

    cli_args.check_unit_name(name)
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


# The operator's commands (status, show, pause, resume, cancel) register themselves on ``app``.
from qtasks_cli import cli_ops as _cli_ops  # noqa: E402

del _cli_ops
