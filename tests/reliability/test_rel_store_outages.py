"""Store outages under the real daemon, each combined with a SIGKILL during the outage.

The invariant is the crash fuzzer's (see crashfuzz.check): no body twice, every body with a
true history row, nothing recorded that did not run. A fire that cannot be claimed waits
for the store (late but once); the daemon never exits because the store is busy.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from crashfuzz import Outcome, _env, _history, _wait_ready, check, prepare
from crashfuzz import _start as _start_daemon

from reliability.registry import case

_STARTED: list[subprocess.Popen[bytes]] = []


def _start(path: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    proc = _start_daemon(path, env, log)
    _STARTED.append(proc)
    return proc


@pytest.fixture(autouse=True)
def _no_daemon_left() -> Iterator[None]:
    """Whatever a case asserted, no daemon it started outlives it."""
    yield
    while _STARTED:
        proc = _STARTED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


HOLD_LOCK = """
import sqlite3, sys, time, pathlib
conn = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
pathlib.Path(sys.argv[2]).write_text("held")
time.sleep(float(sys.argv[3]))
conn.execute("ROLLBACK")
"""


@contextmanager
def exclusive_lock(db: Path, seconds: float) -> Iterator[subprocess.Popen[bytes]]:
    """Another process holds BEGIN EXCLUSIVE on ``db`` for ``seconds``."""
    flag = db.parent / f"held-{time.monotonic_ns()}"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(db), str(flag), str(seconds)])
    try:
        deadline = time.monotonic() + 30
        while not flag.exists():
            assert holder.poll() is None and time.monotonic() < deadline, "no lock taken"
            time.sleep(0.02)
        yield holder
    finally:
        holder.kill()
        holder.wait(timeout=10)


def _stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
        raise


def _finish_and_check(folder: Path, path: Path, env: dict[str, str]) -> Outcome:
    outcome = Outcome()
    check(folder, path, env, {}, outcome)
    assert outcome.problems == []
    assert outcome.bodies > 0
    return outcome


def _state(path: Path) -> Path:
    return path.parent / ".qtasks" / "state.db"


def _bodies(folder: Path) -> int:
    file = folder / "bodies.jsonl"
    return len(file.read_text().splitlines()) if file.exists() else 0


def _wait(predicate: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout}s")


GROUP = "exactly once"


@case(
    "locked_at_start",
    group=GROUP,
    title="another process holds `BEGIN EXCLUSIVE` on the state file while `qtasks run` starts; "
    "the daemon is SIGKILLed while it waits, then started again",
    checks="the daemon waits for the store with backoff and says so (it does not exit 2, so "
    "systemd's `RestartPreventExitStatus=2` never strands it); once the lock is gone it fires; "
    "the crash-fuzz invariant holds",
)
def test_a_locked_store_at_start_up_is_waited_for_not_fatal(tmp_path: Path) -> None:
    path = prepare(tmp_path)
    env = _env(tmp_path, {})
    log = tmp_path / "daemon.log"
    first = _start(path, env, log)  # creates the state file
    seen = _wait_ready(log, 0, first, timeout=60)
    assert _stop(first) == 0
    with exclusive_lock(_state(path), seconds=20):
        proc = _start(path, env, log)
        _wait(lambda: b"waiting for the store" in log.read_bytes()[seen:], timeout=30)
        assert proc.poll() is None  # still there, waiting, not exited 2
        # killed during the outage, then started again once it is over
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        proc = _start(path, env, log)
        _wait(lambda: log.read_bytes()[seen:].count(b"waiting for the store") >= 2, timeout=30)
    seen = _wait_ready(log, seen, proc, timeout=60)
    _wait(lambda: _bodies(tmp_path) >= 3, timeout=30)
    assert _stop(proc) == 0
    _finish_and_check(tmp_path, path, env)


@case(
    "locked_while_running_then_sigkill",
    group=GROUP,
    title="the state file is locked for 9 s under a running daemon, which is SIGKILLed during "
    "the lock and restarted",
    checks="no fire starts unclaimed during the lock (late but once); the log says the claims "
    "wait; the crash-fuzz invariant holds across the kill",
)
def test_a_store_locked_while_running_delays_fires_and_runs_none_twice(tmp_path: Path) -> None:
    path = prepare(tmp_path)
    env = _env(tmp_path, {})
    log = tmp_path / "daemon.log"
    proc = _start(path, env, log)
    seen = _wait_ready(log, 0, proc, timeout=60)
    _wait(lambda: _bodies(tmp_path) >= 3, timeout=30)
    with exclusive_lock(_state(path), seconds=9):
        _wait(lambda: b"wait for the store and run late" in log.read_bytes()[seen:], timeout=30)
        during = _bodies(tmp_path)
        time.sleep(1.5)  # the outage goes on: nothing may start unclaimed meanwhile
        # bodies of runs claimed before the lock may still start; no new claims can
        assert _bodies(tmp_path) - during <= 6
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    proc = _start(path, env, log)
    _wait_ready(log, seen, proc, timeout=60)
    before = _bodies(tmp_path)
    _wait(lambda: _bodies(tmp_path) >= before + 3, timeout=30)
    assert _stop(proc) == 0
    _finish_and_check(tmp_path, path, env)


def _mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)],
        capture_output=True,
        timeout=30,
    )
    return done.returncode == 0


@case(
    "disk_full_then_sigkill",
    group=GROUP,
    title="the state file's file system (a 4 MB tmpfs) fills up under a running daemon, which "
    "is SIGKILLed meanwhile and restarted while the disk is still full (needs root and mount; "
    "skipped elsewhere; a read-only file is `state_read_only`: Linux refuses to remount a file "
    "system read-only while the daemon holds files open for writing)",
    checks="claims fail and are said once; the restarted daemon waits for the store instead of "
    "exiting; after the fault every body has a true row and none ran twice",
)
@pytest.mark.parametrize("fault", ["full"])
def test_a_full_or_read_only_store_delays_fires_and_runs_none_twice(
    tmp_path: Path, fault: str
) -> None:
    mount = tmp_path / "disk"
    if not _mount_tmpfs(mount, "4m"):
        pytest.skip("needs root and mount(8) to make a small tmpfs")
    try:
        path = prepare(tmp_path, settings=f"  state: {mount}/state.db\n")
        env = _env(tmp_path, {})
        log = tmp_path / "daemon.log"
        proc = _start(path, env, log)
        seen = _wait_ready(log, 0, proc, timeout=60)
        _wait(lambda: _bodies(tmp_path) >= 3, timeout=30)
        if fault == "full":
            fd = os.open(mount / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                while True:
                    os.write(fd, b"\0" * 65536)
            except OSError:
                pass  # full
            finally:
                os.close(fd)
        else:
            subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True, timeout=30)
        _wait(lambda: b"wait for the store and run late" in log.read_bytes()[seen:], timeout=30)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        proc = _start(path, env, log)
        _wait(lambda: b"waiting for the store" in log.read_bytes()[seen:], timeout=30)
        assert proc.poll() is None
        if fault == "full":
            (mount / "filler").unlink()
        else:
            subprocess.run(["mount", "-o", "remount,rw", str(mount)], check=True, timeout=30)
        _wait_ready(log, seen, proc, timeout=60)
        before = _bodies(tmp_path)
        _wait(lambda: _bodies(tmp_path) >= before + 3, timeout=30)
        assert _stop(proc) == 0
        _finish_and_check(tmp_path, path, env)
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=30)


@case(
    "postgres_connections_killed",
    group=GROUP,
    title="`pg_terminate_backend` on every connection of a running PostgreSQL node, twice, "
    "the second time followed by a SIGKILL",
    checks="the node reconnects and keeps firing; after the restart every body has a true row "
    "and none ran twice",
)
def test_postgres_connections_killed_under_the_daemon(tmp_path: Path) -> None:
    import psycopg
    from pg import fresh_schema, postgres_url

    url = postgres_url()
    name = f"qtasks-outage-{os.getpid()}-{time.monotonic_ns()}"
    mark = "&" if "?" in url else "?"
    with fresh_schema(url) as schema:
        path = prepare(tmp_path, settings=f"  schema: {schema}\n")
        env = _env(tmp_path, {"QTASKS_STATE": f"{url}{mark}application_name={name}"})
        log = tmp_path / "daemon.log"
        proc = _start(path, env, log)
        seen = _wait_ready(log, 0, proc, timeout=60)
        _wait(lambda: _bodies(tmp_path) >= 3, timeout=30)

        def terminate() -> int:
            with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
                rows = conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE application_name = %s",
                    (name,),
                ).fetchall()
            return len(rows)

        assert terminate() >= 1  # the daemon's own connections, no one else's
        before = _bodies(tmp_path)
        _wait(lambda: _bodies(tmp_path) >= before + 3, timeout=30)  # it reconnects
        terminate()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        proc = _start(path, env, log)
        _wait_ready(log, seen, proc, timeout=60)
        before = _bodies(tmp_path)
        _wait(lambda: _bodies(tmp_path) >= before + 3, timeout=30)
        assert _stop(proc) == 0
        _finish_and_check(tmp_path, path, env)


SLOW = """
import time

def slow():
    time.sleep(1.6)

def tick():
    pass
"""


@case(
    "graceful_stop_gives_claims_back",
    group=GROUP,
    title="SIGTERM while fires are claimed but not started: a fire waiting behind its job's "
    "run (`overlap: queue`) and a `catch_up: all` backlog waiting for each other",
    checks="the stop exits 0 and leaves no `claimed` row; the next start reports nothing "
    "`interrupted`, and nothing ran twice",
)
def test_a_graceful_stop_leaves_nothing_claimed(tmp_path: Path) -> None:
    (tmp_path / "slowjobs.py").write_text(SLOW)
    path = tmp_path / "jobs.yaml"
    path.write_text(
        "settings:\n  shutdown_grace: 0s\njobs:\n"
        "  q:\n    entrypoint: slowjobs:slow\n    schedule: '* * * * * *'\n    overlap: queue\n"
        "  t:\n    entrypoint: slowjobs:tick\n    schedule: '* * * * * *'\n"
    )
    env = _env(tmp_path, {})
    log = tmp_path / "daemon.log"
    for _ in range(2):
        proc = _start(path, env, log)
        try:
            start = _wait_ready(log, len(log.read_bytes()) if log.exists() else 0, proc, 60)
            _wait(lambda start=start: b" queued" in log.read_bytes()[start:], timeout=30)
        finally:
            assert _stop(proc) == 0
        rows = _history(path, env)
        assert not [r for r in rows if r["status"] in ("claimed", "queued", "running")], rows
    assert not [r for r in rows if r["status"] == "interrupted"], rows
    fires = [(r["job"], r["scheduled"]) for r in rows]
    assert len(fires) == len(set(fires))
