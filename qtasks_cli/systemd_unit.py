"""The unit file that ``qtasks systemd-unit`` prints: a ``Type=notify`` service for one job
file, every value checked against systemd.syntax(7) and escaped for systemd's quoting and
specifier expansion.

Only the standard library is imported."""

from __future__ import annotations

import math
import os
import re
import shutil
import sys
from datetime import timedelta
from pathlib import Path

from qtasks_cli.errors import QtasksError

# systemd waits this much longer than shutdown_grace before it sends SIGKILL.
STOP_MARGIN = timedelta(seconds=15)
WATCHDOG_SEC = 30
UNIT_NAME = re.compile(r"[A-Za-z0-9:_.@-]{1,250}")  # no "\\": SyslogIdentifier= would end in one


def qtasks_executable() -> Path:
    """The ``qtasks`` command of the running environment, as an absolute path: the one beside
    the interpreter first (a virtualenv's ``bin``), else the one on PATH, else ``argv[0]``."""
    beside = Path(sys.executable).with_name("qtasks")
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside.absolute()
    found = shutil.which("qtasks")
    if found:
        return Path(found).absolute()
    return Path(sys.argv[0]).resolve()


# systemd.syntax(7): a unit file is UTF-8 text read line by line; a value cannot hold a line
# break or another control character, loses leading and trailing white space, and a line ending
# in a backslash continues on the next one. Such values cannot be written; they are refused.
_UNWRITABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


class UnitValueError(QtasksError):
    """A value that a unit file cannot express (systemd.syntax(7)); exit code 2."""


def check_unit_value(text: str, what: str, *, bare: bool = True) -> str:
    """``text`` if a unit file can hold it as a value, else UnitValueError naming ``what``:
    no control characters (a newline would start a new directive) and valid UTF-8; a ``bare``
    (unquoted) value also without leading or trailing white space and a trailing backslash
    (a line continuation). Quoted ``ExecStart=`` words need only the first two."""
    problem = None
    found = _UNWRITABLE.search(text)
    if found:
        problem = f"it holds the control character {found.group()!r}"
    elif any("\ud800" <= c <= "\udfff" for c in text):
        problem = "it is not valid UTF-8"
    elif bare and text != text.strip():
        problem = "it starts or ends with white space, which systemd strips"
    elif bare and text.endswith("\\"):
        problem = "it ends with a backslash, which systemd reads as a line continuation"
    if problem:
        raise UnitValueError(
            f"{what} {text!r} cannot be written into a systemd unit: {problem} "
            "(systemd.syntax(7)); rename it"
        )
    return text


def _escape_specifiers(text: str) -> str:
    """systemd expands ``%x`` specifiers in most settings; ``%%`` is a literal percent sign."""
    return text.replace("%", "%%")


def _exec_word(text: str) -> str:
    """One word of an ``ExecStart=`` command line, quoted when systemd would split it."""
    text = _escape_specifiers(text).replace("$", "$$")
    if text and not re.search(r"[\s\"'\\;]", text):
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _seconds(delta: timedelta) -> str:
    return f"{math.ceil(delta.total_seconds())}s"


def render_unit(
    *,
    executable: Path,
    config: Path,
    working_directory: Path,
    shutdown_grace: timedelta,
    kill_grace: timedelta = timedelta(0),
    name: str = "qtasks",
    user: str | None = None,
    user_unit: bool = False,
) -> str:
    """The text of a ``Type=notify`` service that runs ``qtasks run CONFIG``.

    ``TimeoutStopSec=`` is ``shutdown_grace`` plus ``kill_grace`` (the longest of the
    ``isolation: process`` jobs: a stop waits for their children's SIGKILL and reap) plus
    ``STOP_MARGIN``, so systemd's SIGKILL never lands before the runs are recorded.

    ``user`` becomes ``User=`` in a system unit; a user unit (``user_unit``) runs as its owner
    and is wanted by ``default.target`` instead of ``multi-user.target``."""
    check_unit_value(str(executable), "the qtasks command's path", bare=False)
    check_unit_value(str(config), "the job file's path", bare=False)
    check_unit_value(str(working_directory), "the working directory")
    if user is not None:
        check_unit_value(user, "the user name")
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.@-]*\$?", user):
            user = str(os.getuid())  # systemd takes a numeric id for any name it rejects
    if not valid_unit_name(name):
        raise UnitValueError(f"--name: {name!r} is not a unit name")
    flag = " --user" if user_unit else ""
    where = (
        f"~/.config/systemd/user/{name}.service"
        if user_unit
        else f"/etc/systemd/system/{name}.service"
    )
    lines = [
        f"# Made by: qtasks systemd-unit{flag} --name {name} {_exec_word(str(config))}",
        f"# Install: save as {where}, then",
        f"#   systemctl{flag} daemon-reload && systemctl{flag} enable --now {name}",
        "[Unit]",
        f"Description=qtasks scheduler for {_exec_word(str(config))}",
    ]
    if not user_unit:
        lines += ["Wants=network-online.target", "After=network-online.target"]
    lines += [
        "",
        "[Service]",
        "Type=notify",
        "NotifyAccess=main",
        f"ExecStart={_exec_word(str(executable))} run {_exec_word(str(config))}",
        "ExecReload=/bin/kill -HUP $MAINPID",
        f"WorkingDirectory={_escape_specifiers(str(working_directory))}",
    ]
    if user is not None and not user_unit:
        lines.append(f"User={user}")
    lines += [
        "Environment=PYTHONUNBUFFERED=1",
        "Restart=on-failure",
        "RestartSec=5s",
        # A bad job file exits 2; restarting cannot fix it.
        "RestartPreventExitStatus=2",
        f"TimeoutStopSec={_seconds(shutdown_grace + kill_grace + STOP_MARGIN)}",
        f"WatchdogSec={WATCHDOG_SEC}s",
        "KillMode=mixed",
        f"SyslogIdentifier={name}",
        "",
        "[Install]",
        f"WantedBy={'default.target' if user_unit else 'multi-user.target'}",
        "",
    ]
    return "\n".join(lines)


def current_user() -> str:
    """The login name of the user running this process."""
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def valid_unit_name(name: str) -> bool:
    return bool(UNIT_NAME.fullmatch(name)) and not name.endswith(".service")
