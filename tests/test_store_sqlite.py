"""SQLite-only behaviour: files and modes, WAL, the daemon lock, migrations, buffered
writes while another process holds the file, the synchronous enqueue path, and the
store factory helpers in ``qtasks_cli.store``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import qtasks_cli.store as store_package
from qtasks_cli.errors import StoreError
from qtasks_cli.models import RunResult, RunStatus, TriggerKind
from qtasks_cli.store import enqueue_now, new_run_id, open_store, redact_url, sqlite_file
from qtasks_cli.store import sqlite as sqlite_module
from qtasks_cli.store.base import Fire
from qtasks_cli.store.sqlite import SqliteStore, close_cached_connections

T = TypeVar("T")
T0 = datetime(2024, 3, 1, 12, 0, tzinfo=timezone.utc)
SECOND = timedelta(seconds=1)
PYTHON = sys.executable


@pytest.fixture(autouse=True)
def _close_enqueue_connections() -> Iterator[None]:
    yield
    close_cached_connections()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "state.db"


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def fire(job: str, scheduled: datetime) -> Fire:
    return Fire(
        job=job,
        scheduled=scheduled,
        trigger=TriggerKind.SCHEDULE,
        run_id=new_run_id(),
        schedule_key="k",
    )


def succeeded(f: Fire, seconds: float = 1.0) -> RunResult:
    return RunResult(
        job=f.job,
        run_id=f.run_id,
        trigger=f.trigger,
        scheduled=f.scheduled,
        started=f.scheduled,
        ended=f.scheduled + timedelta(seconds=seconds),
        attempts=1,
        status=RunStatus.SUCCEEDED,
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def status_of(path: Path, run_id: str) -> str | None:
    """The status another process would read right now."""
    with sqlite3.connect(path) as conn:
        row = conn.execute("SELECT status FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    conn.close()
    return None if row is None else str(row[0])


async def forever(_delay: float) -> None:
    """A sleeper for stores whose timed flushes a test does not want."""
    await asyncio.Event().wait()


async def until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Let the store's worker thread make progress until ``condition`` holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.002)


class Exclusive:
    """Another connection holding the write lock, as a busy process would."""

    def __init__(self, path: Path) -> None:
        self.conn: sqlite3.Connection | None = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("BEGIN EXCLUSIVE")

    def release(self) -> None:
        if self.conn is not None:
            self.conn.execute("ROLLBACK")
            self.conn.close()
            self.conn = None


# -- files and modes ------------------------------------------------------------------


def test_new_folder_is_0700_and_file_0600(tmp_path: Path) -> None:
    path = tmp_path / "parent" / "state" / "state.db"

    async def body() -> None:
        store = SqliteStore(path)
        await store.open()
        try:
            await store.claim([fire("a", T0)])
            assert mode(path.parent) == 0o700
            assert mode(path) == 0o600
            wal = Path(f"{path}-wal")
            assert wal.exists() and mode(wal) == 0o600
            assert store.location == str(path)
        finally:
            await store.close()

    old_umask = os.umask(0o002)  # a permissive umask must not widen the modes
    try:
        run(body())
    finally:
        os.umask(old_umask)


def test_an_existing_folder_keeps_its_mode(tmp_path: Path) -> None:
    folder = tmp_path / "shared"
    folder.mkdir()
    folder.chmod(0o755)

    async def body() -> None:
        store = SqliteStore(folder / "state.db")
        await store.open()
        await store.close()

    run(body())
    assert mode(folder) == 0o755
    assert mode(folder / "state.db") == 0o600


@pytest.mark.parametrize("bad_mode", [0o620, 0o602, 0o666])
def test_refuses_a_state_file_others_can_write(tmp_path: Path, bad_mode: int) -> None:
    path = tmp_path / "state.db"
    path.touch()
    path.chmod(bad_mode)

    async def body() -> None:
        await SqliteStore(path).open()

    with pytest.raises(StoreError) as caught:
        run(body())
    message = str(caught.value)
    assert str(path) in message
    assert f"chmod 600 {path}" in message
    assert f"{bad_mode:04o}" in message


def test_a_group_readable_file_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.touch()
    path.chmod(0o640)

    async def body() -> None:
        store = SqliteStore(path)
        await store.open()
        await store.close()

    run(body())


def test_refuses_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(b"this is a text file, not SQLite\n" * 200)
    path.chmod(0o600)

    async def body() -> None:
        await SqliteStore(path).open()

    with pytest.raises(StoreError, match="not a usable qtasks state file"):
        run(body())


def test_wal_mode_and_connection_settings(db: Path) -> None:
    async def body() -> None:
        store = SqliteStore(db)
        await store.open()
        try:

            def pragmas() -> tuple[Any, ...]:
                conn = store._db
                return tuple(
                    conn.execute(f"PRAGMA {name}").fetchone()[0]
                    for name in ("journal_mode", "synchronous", "busy_timeout")
                )

            assert await store._run("test", pragmas) == ("wal", 1, 5000)  # 1 = NORMAL
        finally:
            await store.close()

    run(body())
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # persistent
    conn.close()


def test_reads_use_the_indexes(db: Path) -> None:
    async def body() -> None:
        store = SqliteStore(db)
        await store.open()
        await store.close()

    run(body())
    conn = sqlite3.connect(db)
    try:

        def plan(sql: str) -> str:
            return " ".join(row[-1] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}"))

        by_job = plan(
            f"SELECT run_id FROM runs WHERE job = 'a' {sqlite_module._ORDER_NEWEST} LIMIT 50"
        )
        assert "runs_job_time" in by_job and "TEMP B-TREE" not in by_job
        everything = plan(f"SELECT run_id FROM runs {sqlite_module._ORDER_NEWEST} LIMIT 50")
        assert "runs_time" in everything and "TEMP B-TREE" not in everything
        queued = plan(
            "SELECT run_id FROM runs WHERE status = 'queued' ORDER BY created, run_id LIMIT 9"
        )
        assert "runs_queued" in queued and "TEMP B-TREE" not in queued
    finally:
        conn.close()


def test_naive_datetimes_are_refused(db: Path) -> None:
    async def body() -> None:
        store = SqliteStore(db)
        await store.open()
        try:
            with pytest.raises(ValueError, match="naive datetime"):
                await store.start("x", datetime(2024, 1, 1))
            with pytest.raises(ValueError, match="naive datetime"):
                await store.claim([fire("a", datetime(2024, 1, 1))])
        finally:
            await store.close()

    run(body())


# -- migrations ---------------------------------------------------------------------


def test_a_new_file_gets_the_current_schema(db: Path) -> None:
    async def body() -> None:
        store = SqliteStore(db)
        await store.open()
        await store.close()

    run(body())
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(sqlite_module.MIGRATIONS)
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        assert {"runs", "attempts", "jobs", "runs_job_time", "runs_queued"} <= tables
    finally:
        conn.close()


def test_an_older_file_is_migrated_on_open(
    db: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    kept = fire("a", T0)

    async def make_version_1() -> None:
        store = SqliteStore(db)
        await store.open()
        await store.claim([kept])
        await store.close()

    run(make_version_1())
    step_2 = (
        "ALTER TABLE runs ADD COLUMN note TEXT",
        "UPDATE runs SET note = 'migrated'",
    )
    base = len(sqlite_module.MIGRATIONS)  # the schema version make_version_1 wrote
    monkeypatch.setattr(sqlite_file, "MIGRATIONS", [*sqlite_module.MIGRATIONS, step_2])
    caplog.set_level(logging.INFO, logger="qtasks_cli.store.sqlite")

    async def reopen() -> None:
        store = SqliteStore(db)
        await store.open()
        try:
            row = await store.get_run(kept.run_id)
            assert row is not None and row.status is RunStatus.CLAIMED
        finally:
            await store.close()

    run(reopen())
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == base + 1
        assert conn.execute("SELECT note FROM runs").fetchall() == [("migrated",)]
    finally:
        conn.close()
    assert f"migrated from version {base} to {base + 1}" in caplog.text
    run(reopen())  # already current: the step must not run twice


def test_an_empty_file_is_migrated_from_version_0(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.touch()
    path.chmod(0o600)

    async def body() -> None:
        store = SqliteStore(path)
        await store.open()
        try:
            assert await store.claim([fire("a", T0)]) == [True]
        finally:
            await store.close()

    run(body())


def test_a_file_from_a_newer_qtasks_is_refused(db: Path) -> None:
    async def make() -> None:
        store = SqliteStore(db)
        await store.open()
        await store.close()

    run(make())
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA user_version = 99")
    conn.close()

    async def body() -> None:
        await SqliteStore(db).open()

    with pytest.raises(StoreError, match="created by a newer qtasks") as caught:
        run(body())
    assert str(db) in str(caught.value) and "99" in str(caught.value)
    with pytest.raises(StoreError, match="created by a newer qtasks"):
        enqueue_now(str(db), "a")


# -- the daemon lock ------------------------------------------------------------------

_HOLD_LOCK = """
import asyncio, sys
from qtasks_cli.store.sqlite import SqliteStore

async def main():
    store = SqliteStore(sys.argv[1])
    await store.open()
    await store.lock_daemon()
    print("locked", flush=True)
    sys.stdin.readline()  # hold the lock until killed

asyncio.run(main())
"""


def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise AssertionError(f"no output from pid {proc.pid} within {timeout}s")
    return proc.stdout.readline()


def _read_lines(proc: subprocess.Popen[str], count: int, timeout: float) -> list[str]:
    """``count`` lines from the process's stdout, read from the descriptor (two writers may
    land in one read), within ``timeout`` seconds."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    data = b""
    deadline = time.monotonic() + timeout
    while data.count(b"\n") < count:
        left = deadline - time.monotonic()
        ready, _, _ = select.select([fd], [], [], max(left, 0))
        if not ready:
            raise AssertionError(
                f"no {count} lines from pid {proc.pid} within {timeout}s: {data!r}"
            )
        chunk = os.read(fd, 4096)
        if not chunk:
            raise AssertionError(f"pid {proc.pid} closed its output: {data!r}")
        data += chunk
    return data.decode().splitlines()[:count]


def test_lock_daemon_across_processes(db: Path) -> None:
    proc = subprocess.Popen(
        [PYTHON, "-c", _HOLD_LOCK, str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert _read_line(proc, timeout=30).strip() == "locked"

        async def try_lock() -> None:
            store = SqliteStore(db)
            await store.open()
            try:
                await store.lock_daemon()
            finally:
                await store.close()

        with pytest.raises(StoreError) as caught:
            run(try_lock())
        assert str(caught.value) == (
            f"{db}: another qtasks daemon (pid {proc.pid}) is using this state file"
        )
    finally:
        proc.kill()  # SIGKILL: no cleanup code runs, the kernel drops the lock
        proc.wait(timeout=30)
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()
        proc.stdout.close()

    async def lock_now() -> None:
        store = SqliteStore(db)
        await store.open()
        await store.lock_daemon()
        lock_file = Path(f"{db}.lock")
        assert lock_file.read_text().strip() == str(os.getpid())
        assert mode(lock_file) == 0o600
        await store.close()

    run(lock_now())


_LOCK_AND_FORK = """
import asyncio, os, sys, time
from qtasks_cli.store.sqlite import SqliteStore

asyncio.run(SqliteStore(sys.argv[1]).lock_daemon())
child = os.fork()
if child == 0:  # a job process started with fork()
    # os.fork() returns here after the at-fork hooks ran: the child's copy of the lock is
    # closed. Say so: on a busy machine the child may run long after the parent went on.
    os.write(1, b"child up\\n")  # one write each: the two lines never interleave
    time.sleep(60)
    os._exit(0)
os.write(1, f"{child}\\n".encode())
sys.stdin.readline()
"""


def test_a_forked_child_does_not_keep_the_lock(db: Path) -> None:
    daemon = subprocess.Popen(
        [PYTHON, "-c", _LOCK_AND_FORK, str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    child = 0
    try:
        lines = set(_read_lines(daemon, 2, timeout=60))
        lines.discard("child up")
        child = int(lines.pop())
        daemon.kill()
        daemon.wait(timeout=30)
        os.kill(child, 0)  # the job process outlives the daemon

        async def lock_now() -> None:
            store = SqliteStore(db)
            await store.lock_daemon()
            await store.close()

        run(lock_now())
    finally:
        daemon.kill()
        daemon.wait(timeout=30)
        assert daemon.stdin is not None and daemon.stdout is not None
        daemon.stdin.close()
        daemon.stdout.close()
        if child:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)


def test_lock_daemon_within_one_process_and_release_on_close(db: Path) -> None:
    async def body() -> None:
        first, second = SqliteStore(db), SqliteStore(db)
        await first.open()
        await second.open()
        await first.lock_daemon()
        await first.lock_daemon()  # again: already ours
        with pytest.raises(StoreError, match=f"pid {os.getpid()}"):
            await second.lock_daemon()
        await first.close()
        await second.lock_daemon()
        await second.close()

    run(body())


# -- buffered writes ------------------------------------------------------------------


def test_buffered_writes_wait_for_a_flush(db: Path) -> None:
    async def body() -> None:
        store = SqliteStore(db, sleep=forever)
        await store.open()
        try:
            f = fire("a", T0)
            await store.claim([f])
            await store.start(f.run_id, T0)
            assert status_of(db, f.run_id) == "claimed"  # not written yet
            await store.flush()
            assert status_of(db, f.run_id) == "running"
            await store.finish(succeeded(f))
            assert status_of(db, f.run_id) == "running"
            await store.history()  # a read writes the buffer first
            assert status_of(db, f.run_id) == "succeeded"
        finally:
            await store.close()

    run(body())


def test_the_timer_writes_the_buffer(db: Path) -> None:
    delays: list[float] = []

    async def body() -> None:
        go = asyncio.Event()

        async def sleep(delay: float) -> None:
            delays.append(delay)
            await go.wait()

        store = SqliteStore(db, sleep=sleep, flush_interval=0.25)
        await store.open()
        try:
            f = fire("a", T0)
            await store.claim([f])
            await store.start(f.run_id, T0)
            await store.finish(succeeded(f))
            await until(lambda: delays == [0.25], "the writer to wait")
            assert status_of(db, f.run_id) == "claimed"
            go.set()
            await until(lambda: status_of(db, f.run_id) == "succeeded", "the timed write")
        finally:
            await store.close()

    run(body())


def test_a_full_buffer_is_written_at_once(db: Path) -> None:
    async def body() -> None:
        store = SqliteStore(db, sleep=forever, batch_size=3)
        await store.open()
        try:
            fires = [fire("a", T0 + i * SECOND) for i in range(4)]
            await store.claim(fires)
            for f in fires[:3]:
                await store.start(f.run_id, f.scheduled)
            await asyncio.sleep(0.05)  # room for a write that must not happen
            assert status_of(db, fires[0].run_id) == "claimed"
            await store.start(fires[3].run_id, fires[3].scheduled)  # 4 > batch_size
            await until(
                lambda: all(status_of(db, f.run_id) == "running" for f in fires),
                "the early write",
            )
        finally:
            await store.close()

    run(body())


def test_flush_keeps_rows_while_the_file_is_locked(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="qtasks_cli.store.sqlite")

    async def body() -> None:
        store = SqliteStore(db, busy_timeout=0.05, sleep=forever)
        await store.open()
        f = fire("a", T0)
        await store.claim([f])
        blocker = Exclusive(db)
        try:
            await store.start(f.run_id, T0)
            await store.finish(succeeded(f))
            with pytest.raises(StoreError, match="2 run updates are not written yet"):
                await store.flush()
            with pytest.raises(StoreError, match="kept and retried"):
                await store.flush()
            warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
            assert len(warnings) == 1, "one warning per outage"
            assert "cannot write 2 run updates" in warnings[0].getMessage()
            assert "database is locked" in warnings[0].getMessage()

            # reads still work (WAL) and do not wait out another busy timeout
            row = await store.get_run(f.run_id)
            assert row is not None and row.status is RunStatus.CLAIMED
            # the claim path reports the lock instead of blocking
            with pytest.raises(StoreError, match="claiming fires failed: database is locked"):
                await store.claim([fire("a", T0 + SECOND)])

            blocker.release()
            await store.flush()
            assert status_of(db, f.run_id) == "succeeded"
            infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
            assert any("wrote 2 run updates that had waited" in m for m in infos)
            assert await store.attempts(f.run_id) == []
        finally:
            blocker.release()  # before close(), which would wait for the lock
            await store.close()

    run(body())


def test_the_writer_retries_until_the_lock_is_gone(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="qtasks_cli.store.sqlite")
    delays: list[float] = []

    async def body() -> None:
        tick = asyncio.Queue[None]()

        async def sleep(delay: float) -> None:
            delays.append(delay)
            await tick.get()

        store = SqliteStore(
            db, busy_timeout=0.05, flush_interval=0.2, retry_interval=3.0, sleep=sleep
        )
        await store.open()
        f = fire("a", T0)
        await store.claim([f])
        blocker = Exclusive(db)
        try:
            await store.start(f.run_id, T0)
            await until(lambda: delays == [0.2], "the first wait")
            tick.put_nowait(None)
            await until(lambda: delays == [0.2, 3.0], "a failed write and the retry wait")
            assert "cannot write 1 run updates" in caplog.text
            tick.put_nowait(None)
            await until(lambda: len(delays) == 3, "a second failed write")
            assert caplog.text.count("cannot write") == 1
            blocker.release()
            tick.put_nowait(None)
            # The line is logged just after the commit that the status shows: wait for both.
            await until(
                lambda: (
                    status_of(db, f.run_id) == "running"
                    and "wrote 1 run updates that had waited" in caplog.text
                ),
                "the retried write",
            )
        finally:
            blocker.release()
            await store.close()

    run(body())
    assert delays == [0.2, 3.0, 3.0]


def test_close_gives_up_loudly_when_the_file_stays_locked(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def no_wait(_delay: float) -> None:
        return None

    async def body() -> None:
        store = SqliteStore(db, busy_timeout=0.05, sleep=no_wait)
        await store.open()
        f = fire("a", T0)
        await store.claim([f])
        blocker = Exclusive(db)
        try:
            await store.start(f.run_id, T0)
            await store.finish(succeeded(f))
            with pytest.raises(StoreError, match="2 run updates could not be written"):
                await store.close()
        finally:
            blocker.release()
        await store.close()  # closed already: nothing to do

    run(body())
    assert "2 run updates were never written" in caplog.text


def test_a_write_sqlite_rejects_does_not_block_the_others(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def body() -> None:
        store = SqliteStore(db, sleep=forever)
        await store.open()
        try:
            good, bad = fire("a", T0), fire("a", T0 + SECOND)
            await store.claim([good, bad])

            def add_trap() -> None:
                store._db.execute(
                    "CREATE TRIGGER trap BEFORE UPDATE ON runs WHEN new.run_id = "
                    f"'{bad.run_id}' BEGIN SELECT RAISE(ABORT, 'rejected'); END"
                )

            await store._run("test", add_trap)
            await store.finish(succeeded(bad))
            await store.finish(succeeded(good))
            await store.flush()
            assert status_of(db, good.run_id) == "succeeded"
            assert status_of(db, bad.run_id) == "claimed"
            assert f"dropped the finish of run {bad.run_id!r}" in caplog.text
        finally:
            await store.close()

    run(body())


def test_claims_and_finishes_a_thousand_runs(db: Path) -> None:
    async def body() -> None:
        store = SqliteStore(db)
        await store.open()
        try:
            fires = [fire(f"job{i % 10}", T0 + i * SECOND) for i in range(1000)]
            began = time.perf_counter()
            assert await store.claim(fires) == [True] * 1000
            claimed = time.perf_counter()
            for f in fires:
                await store.start(f.run_id, f.scheduled)
                await store.finish(succeeded(f))
            await store.flush()
            done = time.perf_counter()
            print(
                f"claim 1000 fires: {claimed - began:.3f}s; "
                f"start+finish 1000 runs: {done - claimed:.3f}s"
            )
            assert sum(s.succeeded for s in await store.stats()) == 1000
        finally:
            await store.close()

    run(body())


# -- recover and live manual runs ---------------------------------------------------------


def test_recover_leaves_a_manual_run_of_a_live_process_alone(db: Path) -> None:
    other = subprocess.Popen([PYTHON, "-c", "import time; time.sleep(60)"])
    try:

        async def setup() -> str:
            store = SqliteStore(db)
            await store.open()
            run_id = new_run_id()
            manual = RunResult(
                job="m",
                run_id=run_id,
                trigger=TriggerKind.MANUAL,
                scheduled=None,
                started=T0,
                ended=None,
                attempts=0,
                status=RunStatus.RUNNING,
            )
            await store.add_run(manual)
            await store.close()
            return run_id

        run_id = run(setup())
        conn = sqlite3.connect(db)
        conn.execute("UPDATE runs SET pid = ? WHERE run_id = ?", (other.pid, run_id))
        conn.commit()
        conn.close()

        async def recover() -> list[str]:
            store = SqliteStore(db)
            await store.open()
            try:
                return [row.run_id for row in await store.recover(T0 + SECOND)]
            finally:
                await store.close()

        assert run(recover()) == []  # `qtasks trigger` in pid `other` is still at it
        other.kill()
        other.wait(timeout=30)
        assert run(recover()) == [run_id]
    finally:
        other.kill()
        other.wait(timeout=30)


# -- enqueue without an event loop ----------------------------------------------------------

_ENQUEUE_MANY = """
import sys
from qtasks_cli.store import enqueue_now
for i in range(int(sys.argv[2])):
    enqueue_now(sys.argv[1], "from_child", [i])
"""


def test_enqueue_sync_throughput(db: Path) -> None:
    store = SqliteStore(db)
    count = 10_000
    began = time.perf_counter()
    ids = [store.enqueue_sync("a", [i], {"n": i}) for i in range(count)]
    elapsed = time.perf_counter() - began
    print(f"enqueue_sync: {count / elapsed:,.0f} requests/s ({count} in {elapsed:.2f}s)")
    assert len(set(ids)) == count
    assert ids == sorted(ids)  # one process: ids sort in creation order
    assert mode(db) == 0o600

    async def take_all() -> list[Any]:
        await store.open()
        try:
            return await store.take_queued(T0, limit=count + 1)
        finally:
            await store.close()

    taken = run(take_all())
    assert [q.run_id for q in taken] == ids
    assert taken[-1].args == (count - 1,) and dict(taken[-1].kwargs) == {"n": count - 1}


def test_enqueue_from_two_processes_while_a_daemon_takes(db: Path) -> None:
    per_process = 300
    enqueue_now(str(db), "warmup")  # create the file before the child races us to it
    child = subprocess.Popen([PYTHON, "-c", _ENQUEUE_MANY, str(db), str(per_process)])
    try:

        async def body() -> tuple[list[str], list[str]]:
            store = SqliteStore(db)
            await store.open()
            taken: list[str] = []
            try:
                mine = []
                for i in range(per_process):
                    mine.append(await asyncio.to_thread(enqueue_now, str(db), "from_parent", [i]))
                    if i % 50 == 0:
                        taken += [q.run_id for q in await store.take_queued(T0, limit=40)]
                await asyncio.to_thread(child.wait, 60)
                while batch := await store.take_queued(T0, limit=100):
                    taken += [q.run_id for q in batch]
                return mine, taken
            finally:
                await store.close()

        mine, taken = run(body())
    finally:
        child.kill()
        child.wait(timeout=30)
    assert child.returncode == 0
    assert len(taken) == len(set(taken)) == 2 * per_process + 1
    assert set(mine) <= set(taken)


def test_enqueue_now_checks_arguments_and_the_factory_path(db: Path) -> None:
    with pytest.raises(StoreError, match="JSON values"):
        enqueue_now(str(db), "a", [{1, 2}])
    with pytest.raises(StoreError, match="keyword names must be strings"):
        enqueue_now(str(db), "a", [], {1: "x"})
    run_id = store_package.enqueue_now(str(db), "a", ["x"], {"k": 1})

    async def body() -> None:
        store = SqliteStore(db)
        await store.open()
        try:
            (queued,) = await store.take_queued(T0)
            assert (queued.run_id, queued.args, dict(queued.kwargs)) == (run_id, ("x",), {"k": 1})
        finally:
            await store.close()

    run(body())


# -- the factory and helpers in qtasks_cli.store --------------------------------------------


def test_new_run_ids_are_short_unique_and_time_ordered() -> None:
    before = time.time_ns() // 1_000_000
    ids = [new_run_id() for _ in range(20_000)]
    after = time.time_ns() // 1_000_000
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    for run_id in (ids[0], ids[-1]):
        assert len(run_id) == 20 and int(run_id, 16) >= 0
    assert before <= int(ids[0][:12], 16) <= int(ids[-1][:12], 16) <= after + 1


def test_redact_url_drops_passwords() -> None:
    assert (
        redact_url("postgresql://app:s3cret@db.example:5432/jobs?sslmode=require")
        == "postgresql://app@db.example:5432/jobs?sslmode=require"
    )
    assert (
        redact_url("postgres://db.example/jobs?password=s3cret&application_name=qtasks")
        == "postgres://db.example/jobs?application_name=qtasks"
    )
    assert redact_url("postgresql://:s3cret@db/jobs") == "postgresql://db/jobs"
    assert redact_url("postgresql://app@db/jobs") == "postgresql://app@db/jobs"
    assert redact_url(".qtasks/state.db") == ".qtasks/state.db"


def test_open_store_gives_an_unopened_sqlite_store(db: Path) -> None:
    store = open_store(str(db))
    assert isinstance(store, SqliteStore)
    assert store.location == str(db)
    assert not db.exists()


def test_open_store_without_psycopg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "postgres.py").write_text("import psycopg_that_is_not_installed\n")
    monkeypatch.setattr(store_package, "__path__", [str(fake), *store_package.__path__])
    monkeypatch.delitem(sys.modules, "qtasks_cli.store.postgres", raising=False)
    with pytest.raises(StoreError) as caught:
        open_store("postgres://app:s3cret@db/jobs")
    message = str(caught.value)
    assert "pip install 'qtasks-cli[postgres]'" in message
    assert "s3cret" not in message and "postgres://app@db/jobs" in message
    assert "qtasks_cli.store.postgres" not in sys.modules


def test_the_store_package_does_not_import_sqlite3() -> None:
    code = "import sys, qtasks_cli.store; print('sqlite3' in sys.modules)"
    out = subprocess.run(
        [PYTHON, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "False"


def test_the_sqlite_store_satisfies_the_protocol() -> None:
    from qtasks_cli.store.base import Store

    # Store is the union of the narrow seams (LedgerStore, HistoryStore ...): every one's.
    seams = [k for k in Store.__mro__ if k.__module__ == Store.__module__]
    members = [
        name
        for seam in seams
        for name, value in vars(seam).items()
        if callable(value) and not name.startswith("_")
    ]
    assert members
    for name in members:
        ours: Callable[..., Awaitable[Any]] = getattr(SqliteStore, name)
        assert asyncio.iscoroutinefunction(ours), name


@settings(max_examples=300, deadline=None)
@given(
    password=st.text(min_size=4, max_size=30).filter(lambda p: "\x00" not in p),
    host=st.sampled_from(["db.example:5432", "[::1]", "[::1", "127.0.0.1"]),
    query=st.sampled_from(["", "?sslmode=require", "?password=zz9&x=1"]),
)
def test_redact_url_hides_any_password_and_never_raises(
    password: str, host: str, query: str
) -> None:
    # Written raw, as people do (libpq itself takes '#' and '?' in a password).
    url = f"postgresql://app:{password}@{host}/jobs{query}"
    shown = redact_url(url)
    assert f":{password}@" not in shown and "zz9" not in shown
    assert shown.startswith("postgresql://app@")
