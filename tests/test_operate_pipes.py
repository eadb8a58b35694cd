"""A reader that stops reading (``qtasks status | head -1``) never changes a command's exit
code and never shows a traceback: every command, through the installed ``qtasks``, exits the
same with its stdout (or stdout and stderr) closed as with them read to the end."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from conftest import QTASKS, clean_env, run_qtasks

WORK = """
async def tick():
    for i in range(2000):
        print(f"tick line {i}")

def fails():
    print("about to fail")
    raise RuntimeError("boom")
"""

JOBS = """
jobs:
  tick:
    entrypoint: work:tick
    schedule: '0 0 1 1 *'
  fails:
    entrypoint: work:fails
"""


def _closed_pipe() -> int:
    """The write end of a pipe whose reader has already gone."""
    read, write = os.pipe()
    os.close(read)
    return write


def _run(args: list[str], cwd: Path, *, stdout: int | None, stderr: int | None) -> tuple[int, str]:
    proc = subprocess.run(
        [QTASKS, *args],
        cwd=cwd,
        stdout=stdout if stdout is not None else subprocess.PIPE,
        stderr=stderr if stderr is not None else subprocess.PIPE,
        env=clean_env(),
        timeout=60,
        text=True,
    )
    return proc.returncode, proc.stderr or ""


@pytest.fixture
def history_dir(project) -> Path:
    path = project(JOBS, work=WORK)
    for job in ("tick", "fails", "tick"):
        run_qtasks("trigger", job, "-c", str(path), cwd=path.parent, timeout=60)
    return path


# 21 commands, each run three times, one after the other: 60 s beside two busy loops, and past
# the default 120 s in a whole loaded run (4 workers, load average 7).
@pytest.mark.timeout(600)
def test_every_command_exits_the_same_when_its_reader_has_gone(history_dir: Path) -> None:
    path = history_dir
    cwd = path.parent
    listed = run_qtasks("history", "--json", "-c", str(path), cwd=cwd)
    run_id = re.search(r'"run_id": "(\w+)"', listed.stdout)
    assert run_id is not None, listed.stdout
    commands = [
        ["validate", str(path)],
        ["list", str(path)],
        ["list", str(path), "--json", "--next", "50"],
        ["history", "-c", str(path)],
        ["history", "-c", str(path), "--json"],
        ["history", "-c", str(path), "--stats"],
        ["status", "-c", str(path)],  # no daemon: 3
        ["status", "-c", str(path), "--json"],
        ["show", run_id.group(1), "-c", str(path)],
        ["show", run_id.group(1), "-c", str(path), "--json"],
        ["show", "nosuchrun", "-c", str(path)],  # 2
        ["systemd-unit", str(path)],
        ["--help"],
        ["status", "--help"],
        ["--version"],
        ["trigger", "tick", "-c", str(path)],  # prints 2000 lines through the daemon's tees
        ["trigger", "fails", "-c", str(path)],  # 1: the job failed
        ["trigger", "tick", "-c", str(path), "--enqueue"],
        ["pause", "tick", "-c", str(path)],
        ["resume", "tick", "-c", str(path)],
        ["cancel", run_id.group(1), "-c", str(path)],  # 1: it has ended
    ]
    for args in commands:
        expected, _ = _run(args, cwd, stdout=None, stderr=None)
        for both in (False, True):
            closed = _closed_pipe()
            try:
                code, err = _run(args, cwd, stdout=closed, stderr=closed if both else None)
            finally:
                os.close(closed)
            assert code == expected, (args, both, code, expected, err)
            assert "Traceback" not in err and "BrokenPipe" not in err, (args, err)


def test_a_daemon_whose_reader_has_gone_runs_on_and_stops_cleanly(project) -> None:
    path = project(JOBS.replace("'0 0 1 1 *'", "'* * * * * *'"), work=WORK)
    closed = _closed_pipe()
    try:
        daemon = subprocess.Popen(
            [QTASKS, "run", "--ui", "plain", str(path)],
            cwd=path.parent,
            stdout=closed,
            stderr=closed,
            env=clean_env(),
        )
    finally:
        os.close(closed)
    try:
        import time

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            shown = run_qtasks("history", "tick", "--json", "-c", str(path), cwd=path.parent)
            if '"succeeded"' in shown.stdout:
                break
            time.sleep(0.2)
        assert '"succeeded"' in shown.stdout, shown
        assert daemon.poll() is None
        daemon.terminate()
        assert daemon.wait(timeout=30) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait(timeout=10)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_full_disk_is_one_line_and_ex_ioerr_never_a_traceback(history_dir: Path) -> None:
    # `qtasks status > /dev/full`: ENOSPC on every write. The command's work is done (a pause is
    # stored) but what it printed is lost, which a script must learn: EX_IOERR (sysexits(3)).
    path = history_dir
    cwd = path.parent
    commands = [
        ["--version"],
        ["validate", str(path)],
        ["list", str(path), "--json"],
        ["history", "-c", str(path), "--json"],
        ["status", "-c", str(path)],
        ["pause", "tick", "-c", str(path)],
        ["resume", "tick", "-c", str(path)],
    ]
    with open("/dev/full", "w") as full:
        for args in commands:
            code, err = _run(args, cwd, stdout=full.fileno(), stderr=None)
            assert code == 74, (args, code, err)
            assert "Traceback" not in err, (args, err)
            assert err.strip().splitlines() == [
                "qtasks: cannot write to stdout: No space left on device"
            ], (args, err)
    shown = run_qtasks("status", "-c", str(path), "--json", cwd=cwd)
    assert '"paused": null' in shown.stdout, shown.stdout  # paused, then resumed: both stored
