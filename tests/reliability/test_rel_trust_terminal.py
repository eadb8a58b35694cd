"""The operator's terminal: escape sequences in a job's error, result, items and output, and in
a job name read back from the state file, reach no terminal and no log line; ``--json`` keeps
the exact text."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import QTASKS, clean_env

from reliability.harness import Daemon, tail, write_project
from reliability.registry import case

GROUP = "trust boundaries"

# The body: window title, clear screen, clipboard write; then C1 forms, a lone ESC,
# a DCS string and a right-to-left override.
BODY = (
    "\x1b]0;owned\x07\x1b[2J\x1b]52;c;cm0gLXJmIH4=\x07\x9b31m\x9d2;t\x9c\x1bPq#0\x1b\\\x1b"
    "tail\u202eevil\rforged"
)
MODULE = f"""
BODY = {BODY!r}


def crm():
    raise ConnectionError("CRM answered: " + BODY)


def items():
    yield "item " + BODY


def keep(item):
    return item


def oddtype():
    raise type("Odd\x1b]0;owned\x07", (Exception,), {{}})("odd")


def chatty():
    print("out " + BODY, flush=True)
    return {{"answer": BODY}}
"""
JOBS = """\
crm:
  entrypoint: rel_term:crm
  schedule: "* * * * * *"
items:
  entrypoint: rel_term:items
  generate_handler: rel_term:keep
  echo: true
  schedule: "* * * * * *"
chatty:
  entrypoint: rel_term:chatty
  schedule: "* * * * * *"
oddtype:
  entrypoint: rel_term:oddtype
  schedule: "* * * * * *"
"""
# What a terminal would obey, and the payloads that must vanish with their sequences.
OBEYED = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
PAYLOADS = ("cm0gLXJmIH4=", "owned", "#0")


def assert_clean(text: str, where: str) -> None:
    found = OBEYED.search(text)
    assert found is None, f"{where}: {found.group()!r} reached the output:\n{text[-2000:]!r}"
    for line in text.splitlines():
        if "CRM answered" in line:  # an error as text (items show as repr: \x1b is harmless)
            for payload in PAYLOADS:
                assert payload not in line, f"{where}: the escape payload {payload!r} was shown"


def qtasks(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [QTASKS, *args], cwd=cwd, capture_output=True, text=True, timeout=60, env=clean_env(**env)
    )


@case(
    "escapes_in_job_text",
    group=GROUP,
    title="a job's exception, item, result and printed line hold OSC 0 (title), CSI 2J (clear), "
    "OSC 52 (clipboard), C1 CSI/OSC, DCS, a lone ESC, a bidi override and a carriage return; "
    "an exception class's name holds OSC 0",
    checks="`trigger`, `history`, `history --stats`, the plain and journal logs of `qtasks run` "
    "show none of them (nor their payloads); `history --json` and the JSON log keep the exact "
    "text",
)
def test_escapes_in_job_text(tmp_path: Path) -> None:
    config = write_project(tmp_path, JOBS, {"rel_term": MODULE}, tick=False)
    for job in ("crm", "items", "chatty", "oddtype"):
        result = qtasks("trigger", job, "-c", str(config), cwd=tmp_path)
        assert result.returncode == (1 if job in ("crm", "oddtype") else 0), result.stderr
        assert_clean(result.stderr, f"trigger {job} (stderr)")
        if job != "chatty":  # a foreground job's own print goes to stdout untouched
            assert_clean(result.stdout, f"trigger {job} (stdout)")
    for args in (["history"], ["history", "--stats"]):
        result = qtasks(*args, "-c", str(config), cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert_clean(result.stdout + result.stderr, " ".join(args))
        assert "CRM answered: " in result.stdout or "--stats" in args
    rows = [
        json.loads(line)
        for line in qtasks("history", "--json", "-c", str(config), cwd=tmp_path).stdout.splitlines()
    ]
    assert any(row["error"] == "CRM answered: " + BODY for row in rows), rows

    for ui, env in (("plain", {}), ("plain", {"JOURNAL_STREAM": "8:1"}), ("json", {})):
        daemon = Daemon(config, clean_env(**env), ui=ui)
        try:
            daemon.wait_for(
                lambda log: log.count("CRM answered") >= 2 and log.count("item") >= 2,
                timeout=30,
                what="a few failures and items",
            )
            assert daemon.stop() == 0, tail(daemon.log)
        finally:
            daemon.kill()
        log = daemon.log
        if ui == "json":
            assert "\x1b" not in log and not re.search(r"[\x80-\x9f\u202e]", log)
            errors = [
                json.loads(line).get("error") for line in log.splitlines() if line.startswith("{")
            ]
            assert "CRM answered: " + BODY in errors
        else:
            assert_clean(log, f"qtasks run --ui plain {env}")


@case(
    "escapes_in_state_file",
    group=GROUP,
    title="the state file holds a run whose job name and error carry escape sequences (written "
    "by an older qtasks, or by hand)",
    checks="`history` and `history --stats` show them cleaned; `history --json` keeps them exact",
)
def test_escapes_in_state_file(tmp_path: Path) -> None:
    config = write_project(tmp_path, "", {}, tick=True)
    assert qtasks("history", "-c", str(config), cwd=tmp_path).returncode == 0  # creates the file
    db = sqlite3.connect(tmp_path / ".qtasks" / "state.db")
    with db:
        db.execute(
            "INSERT INTO runs (run_id, job, trigger, created, ended, status, error)"
            " VALUES ('r1', ?, 'manual', 1, 2, 'failed', ?)",
            ("tick" + BODY, "bad " + BODY),
        )
    db.close()
    for args in (["history"], ["history", "--stats"]):
        result = qtasks(*args, "-c", str(config), cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert_clean(result.stdout, " ".join(args))
    rows = [
        json.loads(line)
        for line in qtasks("history", "--json", "-c", str(config), cwd=tmp_path).stdout.splitlines()
    ]
    assert rows[0]["job"] == "tick" + BODY and rows[0]["error"] == "bad " + BODY


CHILD_MODULE = f"""
import os
import sys

BODY = {BODY!r}


def chatty(token):
    print("out " + BODY + " " + token, flush=True)
    sys.stderr.write("err " + token[:6] + "\x1b[0m")
    sys.stderr.flush()
    os.write(2, (token[6:] + "\\n").encode())  # the rest, straight to descriptor 2
"""
CHILD_JOBS = """\
chatty:
  entrypoint: rel_child:chatty
  kwargs: {token: "${TOKEN}"}
  isolation: process
  schedule: "* * * * * *"
"""
CHILD_TOKEN = "Zq7-child-token-Xw9"


@case(
    "escapes_and_secrets_from_a_child_process",
    group=GROUP,
    title="an `isolation: process` job prints OSC 0/52, CSI 2J, C1, DCS and a bidi override "
    "with its `${TOKEN}` value to stdout, and to stderr the value's start, an ANSI reset and "
    "(straight to descriptor 2) the rest",
    checks="what `qtasks trigger` and `qtasks run` pass on from the child's pipes holds none "
    "of the sequences and no part of the value (`${TOKEN}` instead), as for an inline job",
)
def test_escapes_and_secrets_from_a_child_process(tmp_path: Path) -> None:
    config = write_project(tmp_path, CHILD_JOBS, {"rel_child": CHILD_MODULE}, tick=False)
    env = {"TOKEN": CHILD_TOKEN}
    result = qtasks("trigger", "chatty", "-c", str(config), cwd=tmp_path, **env)
    assert result.returncode == 0, result.stderr
    daemon = Daemon(config, clean_env(**env))
    try:
        daemon.wait_for(lambda log: log.count("chatty") >= 6, 30, "a few runs")
        assert daemon.stop() == 0, tail(daemon.log)
    finally:
        daemon.kill()
    for where, text in {
        "trigger (stdout)": result.stdout,
        "trigger (stderr)": result.stderr,
        "run (stdout)": daemon.out_path.read_text(errors="replace"),
        "run (stderr)": daemon.log,
    }.items():
        assert_clean(text, where)
        for part in ("Zq7", "Xw9", "child-token"):
            assert part not in text, f"{where}: {part!r} shows:\n{text[-2000:]}"
        assert "${TOKEN}" in text, (where, text[-2000:])


def _read_pty(fd: int, until: float, done: Callable[[bytes], bool], buffer: bytearray) -> None:
    while time.monotonic() < until and not done(bytes(buffer)):
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                return
            if not chunk:
                return
            buffer += chunk


@case(
    "escapes_in_live_table",
    group=GROUP,
    title="`qtasks run --ui live` on a terminal (a pty) while jobs fail, yield and print with "
    "OSC 0/52, CSI 2J, C1 and DCS sequences",
    checks="the terminal never receives the jobs' sequences (no OSC, no clear screen, no C1 "
    "bytes, no payloads); the event lines show the cleaned text",
)
def test_escapes_in_live_table(tmp_path: Path) -> None:
    config = write_project(tmp_path, JOBS, {"rel_term": MODULE}, tick=False)
    pid, fd = pty.fork()
    if pid == 0:  # the child: qtasks on the pty
        os.chdir(tmp_path)
        env = clean_env(TERM="xterm-256color", COLUMNS="200", LINES="50")
        os.execve(QTASKS, [QTASKS, "run", "--ui", "live", str(config)], env)
    import fcntl
    import struct
    import termios

    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 60, 300, 0, 0))
    buffer = bytearray()
    try:
        _read_pty(
            fd,
            time.monotonic() + 30,
            lambda data: b"CRM answered" in data and b"output:" in data,
            buffer,
        )
    finally:
        os.kill(pid, signal.SIGTERM)
        _read_pty(fd, time.monotonic() + 15, lambda data: False, buffer)
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    screen = bytes(buffer)
    assert b"CRM answered" in screen, screen[-3000:]
    for bad in (b"\x1b]", b"\x1b[2J", b"\x1bP", b"\xc2\x9b", b"\xc2\x9d", "\u202e".encode()):
        assert bad not in screen, (bad, screen[-3000:])
    for line in screen.split(b"\n"):
        if b"CRM answered" in line:
            assert not any(payload.encode() in line for payload in PAYLOADS), line
    assert os.waitstatus_to_exitcode(status) == 0


@pytest.mark.parametrize("text", [BODY, "x" * 10 + BODY])
def test_live_event_lines_are_cleaned(text: str) -> None:
    from qtasks_cli.ui.live import LiveView

    view = LiveView()
    view.add_text("error: " + text)
    for line in view.lines:
        assert_clean(line.text, "live event line")
