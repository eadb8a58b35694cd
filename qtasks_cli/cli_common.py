"""What every ``qtasks`` command module shares: the Typer app, the common options and how a
command fails (one clean line on stderr, an exit code)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from qtasks_cli.errors import EXIT_USAGE

app = typer.Typer(
    name="qtasks",
    help="A scheduler for Python functions: one YAML file, one process, history in SQLite.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

ConfigArg = Annotated[
    Path | None,
    typer.Argument(
        help="The job file [default: $QTASKS_CONFIG, else ./jobs.yaml].", show_default=False
    ),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="The job file [default: $QTASKS_CONFIG, else ./jobs.yaml].",
        show_default=False,
    ),
]
StateOpt = Annotated[
    str | None,
    typer.Option(
        "--state",
        help="The state file (or PostgreSQL URL) instead of settings.state.",
        show_default=False,
    ),
]


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    print(one_line(message), file=sys.stderr)
    raise typer.Exit(code)


def one_line(message: str) -> str:
    """``message`` as one line safe for a terminal (it may quote paths and values)."""
    from qtasks_cli.text import clean_line

    return clean_line(message)
