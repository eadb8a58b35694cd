"""store.paths: which state files are trusted, checked on the files themselves (the attacks by
another local user are in tests/reliability/test_rel_trust_paths.py)."""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

import pytest

from qtasks_cli.errors import StoreError
from qtasks_cli.store import paths
from qtasks_cli.store.sqlite import SqliteStore


def test_a_new_state_is_owner_only_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        paths.prepare_state_file(tmp_path / "deep" / "state" / "state.db")
    finally:
        os.umask(old)
    assert (tmp_path / "deep" / "state").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "deep" / "state" / "state.db").stat().st_mode & 0o777 == 0o600


def test_a_state_file_straight_in_a_shared_sticky_folder_is_refused_with_advice() -> None:
    shared = Path(tempfile.mkdtemp(prefix="qtasks-sticky-"))
    try:
        shared.chmod(0o1777)
        with pytest.raises(StoreError, match="give the state a folder of its own"):
            paths.prepare_state_file(shared / "state.db")
        assert not (shared / "state.db").exists()
    finally:
        shared.chmod(0o700)
        os.rmdir(shared)


@pytest.mark.parametrize("name", ["state.db", "state.db-wal", "state.db-shm", "state.db.lock"])
def test_a_fifo_is_refused_without_blocking(tmp_path: Path, name: str) -> None:
    folder = tmp_path / "s"
    folder.mkdir(mode=0o700)
    os.mkfifo(folder / name, 0o600)
    with pytest.raises(StoreError, match="not a regular file"):
        paths.prepare_state_file(folder / "state.db")


@pytest.mark.parametrize("name", ["state.db", "state.db-wal", "state.db-shm", "state.db.lock"])
def test_a_file_others_may_write_is_refused(tmp_path: Path, name: str) -> None:
    folder = tmp_path / "s"
    folder.mkdir(mode=0o700)
    (folder / name).touch()
    (folder / name).chmod(0o620)
    with pytest.raises(StoreError, match=r"writable by other users \(group, mode 0620\)"):
        paths.prepare_state_file(folder / "state.db")


def test_the_lock_file_is_checked_too(tmp_path: Path) -> None:
    state = tmp_path / "s" / "state.db"
    paths.prepare_state_file(state)
    lock = Path(f"{state}.lock")
    lock.touch()
    lock.chmod(0o666)

    async def lock_it() -> None:
        store = SqliteStore(state)
        try:
            await store.lock_daemon()
        finally:
            await store.close()

    with pytest.raises(StoreError, match=r"state.db.lock: refusing the lock file"):
        asyncio.run(lock_it())


def test_a_link_we_made_to_our_folder_is_followed(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(real)
    paths.prepare_state_file(tmp_path / "link" / "state.db")
    assert (real / "state.db").is_file()


def test_distrust_names_owner_and_mode() -> None:
    st = os.stat_result((0o100644, 0, 0, 1, 12345, 0, 0, 0, 0, 0))
    assert paths.distrust(st) is not None and "owned by" in (paths.distrust(st) or "")
    mine = os.stat_result((0o100600, 0, 0, 1, os.geteuid(), 0, 0, 0, 0, 0))
    assert paths.distrust(mine) is None


def test_checking_the_state_file_keeps_sqlites_locks(tmp_path: Path) -> None:
    """A second connection in the daemon's process (the control thread's) must not drop the
    first one's POSIX locks: if it did, another process closing its connection would take
    the WAL away and later commits would be invisible to every other process."""
    import sqlite3
    import subprocess
    import sys

    from qtasks_cli.store.sqlite_file import connect as _connect

    db = tmp_path / "state" / "state.db"
    first = _connect(db, 5.0)
    first.execute("CREATE TABLE t (x)")
    first.execute("INSERT INTO t VALUES (1)")
    second = _connect(db, 5.0)  # as the control thread opens its own
    second.close()
    reader = (
        "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]);"
        " print(c.execute('SELECT count(*) FROM t').fetchone()[0]); c.close()"
    )
    seen = subprocess.run(
        [sys.executable, "-c", reader, str(db)], capture_output=True, text=True, timeout=30
    )
    assert seen.stdout.strip() == "1", seen.stderr
    first.execute("INSERT INTO t VALUES (2)")
    assert (tmp_path / "state" / "state.db-wal").exists()  # nobody took the WAL away
    seen = subprocess.run(
        [sys.executable, "-c", reader, str(db)], capture_output=True, text=True, timeout=30
    )
    assert seen.stdout.strip() == "2", seen.stderr
    first.close()
    assert sqlite3.connect(db).execute("SELECT count(*) FROM t").fetchone()[0] == 2


def test_a_folder_on_the_way_that_others_may_write_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # not sticky: anyone may rename what is in it
    with pytest.raises(StoreError) as caught:
        paths.prepare_state_file(shared / "app" / "qtasks" / "state.db")
    assert str(caught.value).startswith(
        f"{shared}: refusing the folder on the way to the state file: it is writable by "
        "other users (group and others, mode 0777), who could swap 'app' in it"
    )
    assert not (shared / "app").exists()  # nothing made in there


def test_a_folder_of_ours_in_a_sticky_folder_is_fine(tmp_path: Path) -> None:
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    paths.prepare_state_file(sticky / "ours" / "state.db")
    assert (sticky / "ours").stat().st_mode & 0o777 == 0o700


def test_our_link_in_a_folder_others_may_write_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "link").symlink_to(real)
    shared.chmod(0o777)
    with pytest.raises(StoreError, match=r"could swap 'link' in it"):
        paths.prepare_state_file(shared / "link" / "state.db")


def test_relative_and_dotted_spellings_reach_the_same_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "real").mkdir(mode=0o700)
    (tmp_path / "link").symlink_to("real")  # relative target
    monkeypatch.chdir(tmp_path)
    paths.prepare_state_file(Path("a/../link/./state.db"))
    assert (tmp_path / "real" / "state.db").is_file()
    os.close(paths.open_folder("link/../real"))


def test_the_installed_command_refuses_such_a_state_with_one_line(tmp_path: Path) -> None:
    from conftest import clean_env, run_qtasks

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    config = tmp_path / "jobs.yaml"
    config.write_text(
        f"settings:\n  state: {shared}/qtasks/state.db\njobs:\n  a:\n    entrypoint: os:getpid\n"
    )
    for args in (["history", "-c", str(config)], ["run", "--ui", "plain", str(config)]):
        result = run_qtasks(*args, cwd=tmp_path, env=clean_env(), timeout=60)
        assert result.returncode == 2, (result.stdout, result.stderr)
        assert "Traceback" not in result.stderr
        assert f"{shared}: refusing the folder on the way to the state file" in result.stderr
