"""The installed ``qtasks run`` behind a pipe nobody reads and in a terminal stopped with Ctrl-S
(XOFF): jobs keep firing every second, lines are dropped and counted, a notice says how many once
the reader is back, and the exit stays bounded."""

from __future__ import annotations

import fcntl
import itertools
import os
import re
import shutil
import signal
import subprocess
import termios
import time
from collections import defaultdict
from pathlib import Path

import pytest
from conftest import QTASKS, clean_env

from reliability.registry import case

GROUP = "output readers"

CHATTY = """
import os
import sys
import time
from pathlib import Path


def stamp(name):
    Path("daemon.pid").write_text(str(os.getpid()))
    with open("stamps.txt", "a") as fh:
        fh.write(f"{name} {time.time():.6f}\\n")
    print(f"{name} says hello " + "x" * 4000)
    sys.stderr.write("and to stderr " + "y" * 2000 + "\\n")
    if name == "job0":  # enough lines to fill the bounded queue within a second or two
        for i in range(6000):
            print(f"flood line {i}")
"""


def jobs_yaml(folder: Path, count: int) -> Path:
    (folder / "chatty.py").write_text(CHATTY)
    lines = ["settings:", "  shutdown_grace: 2s", "jobs:"]
    for i in range(count):
        lines += [
            f"  job{i}:",
            "    entrypoint: chatty:stamp",
            "    schedule: '* * * * * *'",
            f"    kwargs: {{name: job{i}}}",
        ]
    path = folder / "jobs.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def stamps(folder: Path) -> dict[str, list[float]]:
    found: dict[str, list[float]] = defaultdict(list)
    path = folder / "stamps.txt"
    if path.exists():
        for line in path.read_text().splitlines():
            name, _, when = line.partition(" ")
            found[name].append(float(when))
    return found


def seconds_of(times: list[float]) -> set[int]:
    return {int(t) for t in times}


def wait_until(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.05)


def queued(fd: int) -> int:
    buf = bytearray(4)
    fcntl.ioctl(fd, termios.FIONREAD, buf)
    return int.from_bytes(buf, "little")


# --- the installed command ---------------------------------------------------------------------


@case(
    "stalled_pipe_reader",
    group=GROUP,
    title="`qtasks run --ui plain` writes into a pipe nobody reads (`... | sleep`); 10 per-second "
    "jobs print 6 KB a second, one prints 6,000 lines",
    checks="every job fires every second while the pipe stays full; once the reader is back a "
    "warning says how many lines were dropped; SIGTERM then exits 0",
)
def test_run_behind_a_pipe_nobody_reads_keeps_firing(tmp_path: Path) -> None:
    config = jobs_yaml(tmp_path, 10)
    read_end, write_end = os.pipe()
    proc = subprocess.Popen(
        [QTASKS, "run", "--ui", "plain", str(config)],
        cwd=tmp_path,
        stdout=write_end,
        stderr=write_end,
        stdin=subprocess.DEVNULL,
        env=clean_env(),
        start_new_session=True,
    )
    os.close(write_end)
    try:
        # ~60 KB a second: the 64 KiB pipe is full within a few seconds.
        wait_until(lambda: queued(read_end) >= 48_000, 60, "the pipe filled up")
        full_at = time.time()
        wait_until(
            lambda: (
                all(
                    len({s for s in seconds_of(t) if s > full_at}) >= 6
                    for t in stamps(tmp_path).values()
                )
                and len(stamps(tmp_path)) == 10
            ),
            60,
            "six more seconds of fires of every job while nobody reads",
        )
        assert proc.poll() is None
        # The reader comes back; the daemon says how many lines it dropped.
        os.set_blocking(read_end, False)
        got = b""
        deadline = time.monotonic() + 30
        while b"were dropped" not in got and time.monotonic() < deadline:
            try:
                got += os.read(read_end, 1 << 20)
            except BlockingIOError:
                time.sleep(0.02)
        assert re.search(rb"\d+ (log )?line\(s\).* were dropped", got), got[-2000:]
        proc.send_signal(signal.SIGTERM)
        while proc.poll() is None and time.monotonic() < deadline + 30:
            try:
                got += os.read(read_end, 1 << 20)
            except BlockingIOError:
                time.sleep(0.02)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        os.close(read_end)
    for name, times in stamps(tmp_path).items():
        got_seconds = sorted(seconds_of(times))
        gaps = [b for a, b in itertools.pairwise(got_seconds) if b - a != 1]
        assert not gaps, f"{name} missed seconds before {gaps}"


@case(
    "stalled_pipe_at_exit",
    group=GROUP,
    title="SIGTERM while the pipe of stdout and stderr is full and nobody reads it",
    checks="the daemon exits 0 within `shutdown_grace` plus a bounded flush (it stops waiting "
    "after 1 s without progress), not when the reader comes back",
)
def test_stop_while_nobody_reads_exits_in_bounded_time(tmp_path: Path) -> None:
    config = jobs_yaml(tmp_path, 10)
    read_end, write_end = os.pipe()
    proc = subprocess.Popen(
        [QTASKS, "run", "--ui", "plain", str(config)],
        cwd=tmp_path,
        stdout=write_end,
        stderr=write_end,
        stdin=subprocess.DEVNULL,
        env=clean_env(),
        start_new_session=True,
    )
    os.close(write_end)
    try:
        wait_until(lambda: queued(read_end) >= 48_000, 60, "the pipe filled up")
        proc.send_signal(signal.SIGTERM)
        # shutdown_grace 2 s + the bounded flush (at most 5 s) + slack for a loaded machine.
        assert proc.wait(timeout=40) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        os.close(read_end)


needs_tmux = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


@case(
    "xoff_live_table",
    group=GROUP,
    title="Ctrl-S (XOFF) in the tmux terminal showing the live table, for at least 8 s, with 5 "
    "per-second jobs printing",
    checks="every job fires every second while the terminal takes no output; after Ctrl-Q the "
    "table is drawn again; SIGINT then exits 0",
)
@needs_tmux
def test_live_table_in_a_terminal_stopped_with_ctrl_s_keeps_firing(tmp_path: Path) -> None:
    from test_live import Terminal

    config = jobs_yaml(tmp_path, 5)
    term = Terminal(tmp_path)
    try:
        term.type(f"{QTASKS} run --ui live {config.name}; echo EXIT=$?")
        term.wait_for(lambda text: re.search(r"^job +schedule", text, re.M) is not None, 60)
        term.tmux("send-keys", "-t", "qt", "C-s")  # XOFF: the terminal stops taking output
        stopped_at = time.time()
        wait_until(
            lambda: (
                len(stamps(tmp_path)) == 5
                and all(
                    len({s for s in seconds_of(t) if s > stopped_at + 1}) >= 8
                    for t in stamps(tmp_path).values()
                )
            ),
            60,
            "eight more seconds of fires of every job while the terminal is stopped",
        )
        term.tmux("send-keys", "-t", "qt", "C-q")  # XON: the table is drawn again
        term.wait_for(lambda text: re.search(r"^job +schedule", text, re.M) is not None, 60)
        # SIGINT as Ctrl-C sends it (test_live.py covers the key itself). Under load this
        # signal was lost while a job printed thousands of lines a second: each line woke the
        # loop through its self-pipe, which filled, and the signal's byte shares that pipe.
        os.kill(int((tmp_path / "daemon.pid").read_text()), signal.SIGINT)
        # The typed command line holds "EXIT=" too: wait for the line echo prints.
        text = term.wait_for(lambda text: re.search(r"^EXIT=\d+", text, re.M) is not None, 90)
        assert re.search(r"^EXIT=0$", text, re.M), text
    finally:
        term.close()
    found = stamps(tmp_path)
    assert len(found) == 5
    for name, times in found.items():
        got_seconds = sorted(seconds_of(times))
        gaps = [b for a, b in itertools.pairwise(got_seconds) if b - a != 1]
        assert not gaps, f"{name} missed seconds before {gaps}"
