"""The operator's commands (``status``, ``show``, ``pause``, ``resume``, ``cancel``), added to
the ``qtasks`` Typer app; they parse, call ``status``/``show``/``steer`` and map errors to exit
codes. Heavy modules are imported inside the commands."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from qtasks_cli.cli_common import ConfigOpt, StateOpt, app
from qtasks_cli.cli_common import fail as _fail
from qtasks_cli.errors import EXIT_OK, QtasksError

if TYPE_CHECKING:
    from qtasks_cli.models import Config
    from qtasks_cli.store.control import ControlStore

EXIT_NO_DAEMON = 3  # as ``systemctl is-active`` exits when the unit is inactive

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _load(config: Path | None, *, check_imports: bool = False) -> Config:
    """The job file for an operator's command. A ``${NAME}`` the shell does not have (the
    daemon's environment may come from systemd's EnvironmentFile) is no problem (see
    ``variables_required``): these commands never run a job, and the fingerprint hashes the
    placeholders as written."""
    from qtasks_cli.config import default_config_path, load_config

    try:
        return load_config(
            config if config is not None else default_config_path(),
            check_imports=check_imports,
            variables_required=False,
        )
    except QtasksError as exc:
        _fail(str(exc), exc.exit_code)


def _control(loaded: Config, state: str | None) -> ControlStore:
    from qtasks_cli import steer

    try:
        return steer.control_for(loaded, state)
    except QtasksError as exc:
        _fail(str(exc), exc.exit_code)


def _no_state_yet(loaded: Config, state: str | None) -> str | None:
    """The state file's path when it does not exist yet (nothing ever ran), else None."""
    from qtasks_cli.api import state_location
    from qtasks_cli.store import is_url

    location = state_location(loaded, state)
    return None if is_url(location) or Path(location).exists() else location


@app.command()
def status(
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
    watch: Annotated[
        bool, typer.Option("--watch", help="The live table of `qtasks run`, redrawn until Ctrl-C.")
    ] = False,
    state: StateOpt = None,
) -> None:
    """Show the daemon(s) and every job: state, last result, next fire.

    Exit 0 when a daemon is up, 3 when none is (as `systemctl is-active`)."""
    from qtasks_cli import status as report_module
    from qtasks_cli.ui import status_view

    loaded = _load(config, check_imports=False)
    missing = _no_state_yet(loaded, state)
    if missing is not None:
        if as_json:
            print(json.dumps({"up": False, "state": missing, "daemons": [], "jobs": []}))
        from qtasks_cli.text import clean_line

        print(clean_line(f"no daemon is running on {missing} (no state file yet)"), file=sys.stderr)
        raise typer.Exit(EXIT_NO_DAEMON)
    store = _control(loaded, state)
    try:
        if watch:
            if not sys.stdout.isatty():
                _fail("--watch needs a terminal on stdout; use --json to read it from a program")
            from qtasks_cli.ui.watch import watch as watch_loop

            raise typer.Exit(watch_loop(lambda: report_module.read_report(loaded, store)))
        try:
            report = report_module.read_report(loaded, store)
        except QtasksError as exc:
            _fail(str(exc), exc.exit_code)
    finally:
        store.close()
    if as_json:
        print(json.dumps(status_view.report_json(report), indent=2, default=str))
    else:
        print(status_view.report_text(report))
    if not report.up and as_json:  # the text's first line says it already
        from qtasks_cli.text import clean_line

        print(clean_line(f"no daemon is running on {report.state}"), file=sys.stderr)
    raise typer.Exit(EXIT_OK if report.up else EXIT_NO_DAEMON)


def _check_run_id(run: str) -> None:
    """Refuse (exit 2) text that cannot be a run id (20 hex digits, see qtasks history)."""
    import re

    if not re.fullmatch(r"[0-9A-Za-z_-]{1,64}", run):
        from qtasks_cli.text import clean_line

        _fail(f"{clean_line(ascii(run)[:80])} is not a run id (see qtasks history)")


@app.command()
def show(
    run: Annotated[str, typer.Argument(help="The run id (see qtasks history).")],
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
    state: StateOpt = None,
) -> None:
    """Show one run in full: trigger, arguments, attempts, traceback, output, result, node."""
    from qtasks_cli import show as show_module

    _check_run_id(run)
    loaded = _load(config, check_imports=False)
    if _no_state_yet(loaded, state) is not None:
        _fail(f"no run {run!r}: nothing has run yet (no state file)")
    store = _control(loaded, state)
    try:
        detail = show_module.read_detail(loaded, store, run)
    except QtasksError as exc:
        _fail(str(exc), exc.exit_code)
    finally:
        store.close()
    if detail is None:
        _fail(f"{store.location}: no run {run!r} (see qtasks history)")
    if as_json:
        print(json.dumps(show_module.detail_json(detail), indent=2, default=str))
    else:
        print(show_module.detail_text(detail))


@app.command()
def pause(
    job: Annotated[str, typer.Argument(help="The job to pause.")],
    config: ConfigOpt = None,
    state: StateOpt = None,
) -> None:
    """Pause JOB until `qtasks resume JOB`: its fires are recorded as skipped (paused).

    Lasts across restarts and reloads; `qtasks trigger` still runs it."""
    from qtasks_cli import steer

    loaded = _load(config, check_imports=False)
    try:
        pause_row, new = steer.pause_job(loaded, job, state=state)
    except QtasksError as exc:
        _fail(str(exc), exc.exit_code)
    since = pause_row.since.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    if new:
        print(f"paused {job}: its fires are skipped until `qtasks resume {job}`")
    else:
        print(f"{job} was already paused (since {since}, by {pause_row.by})")


@app.command()
def resume(
    job: Annotated[str, typer.Argument(help="The job to resume.")],
    config: ConfigOpt = None,
    state: StateOpt = None,
) -> None:
    """Lift the pause of JOB: its next fire runs again (missed fires are not caught up)."""
    from qtasks_cli import steer

    loaded = _load(config, check_imports=False)
    try:
        if _no_state_yet(loaded, state) is not None:  # nothing was ever paused: make no file
            from qtasks_cli.api import get_job

            get_job(loaded, job)
            lifted = None
        else:
            lifted = steer.resume_job(loaded, job, state=state)
    except QtasksError as exc:
        _fail(str(exc), exc.exit_code)
    if lifted is None:
        print(f"{job} was not paused")
    else:
        since = lifted.since.astimezone().strftime("%Y-%m-%d %H:%M:%S")
        print(f"resumed {job} (paused since {since} by {lifted.by})")


@app.command()
def cancel(
    run: Annotated[str, typer.Argument(help="The run id (see qtasks status or history).")],
    config: ConfigOpt = None,
    wait: Annotated[
        float | None,
        typer.Option(
            "--wait",
            min=0,
            help="Seconds to wait for the daemon to stop it [default: kill_grace + 15].",
            show_default=False,
        ),
    ] = None,
    state: StateOpt = None,
) -> None:
    """Stop a running run (async: cancelled; process: SIGTERM, then SIGKILL after kill_grace;
    thread: abandoned as on a timeout). Recorded as cancelled, with who cancelled it."""
    from qtasks_cli import steer

    _check_run_id(run)
    loaded = _load(config, check_imports=False)
    if _no_state_yet(loaded, state) is not None:
        _fail(f"no run {run!r}: nothing has run yet (no state file)")
    try:
        outcome = steer.cancel_run(loaded, run, state=state, wait=wait)
    except QtasksError as exc:
        _fail(str(exc), exc.exit_code)
    if outcome.status.finished:
        print(f"run {outcome.run_id} of {outcome.job}: {outcome.status} ({outcome.error})")
    elif outcome.note:
        print(f"run {outcome.run_id} of {outcome.job}: {outcome.note}")
    else:
        print(f"run {outcome.run_id} of {outcome.job}: cancel requested (--wait 0)")
