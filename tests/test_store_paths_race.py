"""The state folder under attack while it is opened: another local user who may write a folder
on the way swaps the state folder for one of theirs (``renameat2(RENAME_EXCHANGE)``) in a loop,
while qtasks opens the state again and again. qtasks must never open, or write, the other
user's database: it refuses such a path outright (exit 2), and where the folder on the way is
sticky (``/tmp``) the swap itself is impossible and the state opens normally.

The attacker is a forked child that drops to another uid (root only; skipped elsewhere)."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qtasks_cli.errors import StoreError
from qtasks_cli.store.sqlite_file import connect

pytestmark = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to act as another user"
)

ATTACKER = 54_321  # any uid but ours and root's: setuid needs no account
AT_FDCWD, RENAME_EXCHANGE = -100, 2
ATTEMPTS = 500  # the unchecked code of before opened the planted state within ~3,000


def _renameat2() -> Any:
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        return libc.renameat2
    except AttributeError:
        pytest.skip("this C library has no renameat2")


def swapping(one: Path, other: Path) -> contextlib.AbstractContextManager[dict[str, int]]:
    """``swapping_as`` the uid ATTACKER."""
    return swapping_as(ATTACKER, ATTACKER, one, other)


@contextlib.contextmanager
def swapping_as(uid: int, gid: int, one: Path, other: Path) -> Iterator[dict[str, int]]:
    """A child, as ``uid``/``gid``, exchanging ``one`` and ``other`` as fast as it can until
    the block ends; yields the counts of swaps done and refused (filled in at the end)."""
    renameat2 = _renameat2()
    ready_r, ready_w = os.pipe()
    stop_r, stop_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the attacker
        code = 1
        try:
            os.close(stop_w)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            os.set_blocking(stop_r, False)
            a, b = os.fsencode(one), os.fsencode(other)
            swaps = refused = 0
            deadline = time.monotonic() + 60  # never outlive a broken test
            os.write(ready_w, b"1")
            while time.monotonic() < deadline:
                if renameat2(AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE) == 0:
                    swaps += 1
                elif ctypes.get_errno() in (errno.EPERM, errno.EACCES):
                    refused += 1
                try:
                    if os.read(stop_r, 1) == b"":
                        break
                except BlockingIOError:
                    pass
            if swaps % 2:  # leave the folders where they were
                renameat2(AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE)
            os.write(done_w, f"{swaps} {refused}".encode())
            code = 0
        finally:
            os._exit(code)
    counts = {"swaps": 0, "refused": 0}
    os.close(ready_w)
    os.close(done_w)
    os.close(stop_r)
    try:
        assert os.read(ready_r, 1) == b"1", "the attacker did not start"
        yield counts
    finally:
        os.close(stop_w)  # EOF: the attacker stops
        _, status = os.waitpid(pid, 0)
        report = os.read(done_r, 100).decode()
        for fd in (ready_r, done_r):
            os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0, report
    counts["swaps"], counts["refused"] = map(int, report.split())


def _plant(folder: Path) -> dict[str, bytes]:
    """The attacker's own state folder with a database in it; returns its files' bytes."""
    folder.mkdir()
    with contextlib.closing(sqlite3.connect(folder / "state.db")) as db:
        db.execute("CREATE TABLE planted (x)")
        db.commit()
    for path in (folder, *folder.iterdir()):
        os.chown(path, ATTACKER, ATTACKER)
    return _files(folder)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _attempts(db: Path) -> tuple[int, int, list[str]]:
    """Open the state ATTEMPTS times: (opened ours, refused, the refusals' messages)."""
    opened = refused = 0
    messages = []
    for _ in range(ATTEMPTS):
        try:
            conn = connect(db, 1.0)
        except StoreError as exc:
            refused += 1
            messages.append(str(exc))
            continue
        try:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        finally:
            conn.close()
        assert "planted" not in tables, "qtasks opened the other user's database"
        opened += 1
    return opened, refused, messages


@pytest.fixture
def parent() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="qtasks-race-", dir="/tmp"))
    try:
        yield folder
    finally:
        folder.chmod(0o700)
        shutil.rmtree(folder, ignore_errors=True)


def test_a_folder_others_may_write_is_refused_while_they_swap_the_state_in_it(
    parent: Path,
) -> None:
    ours = parent / "state"
    connect(ours / "state.db", 1.0).close()  # a real state of ours, made while it was safe
    planted = _plant(parent / "theirs")
    parent.chmod(0o777)  # another user may now rename what is in it
    with swapping(ours, parent / "theirs") as counts:
        opened, refused, messages = _attempts(ours / "state.db")
    assert counts["swaps"] > 0, "the attack never ran"
    assert opened == 0 and refused == ATTEMPTS
    assert all(
        m.startswith(
            f"{parent}: refusing the folder on the way to the state file: it is "
            "writable by other users (group and others, mode 0777)"
        )
        for m in messages
    ), messages[:3]
    assert _files(parent / "theirs") == planted  # never opened, never written


def test_a_folder_of_another_user_on_the_way_is_refused_while_they_swap(parent: Path) -> None:
    """The state folder's grandparent is writable by others: they could swap the parent."""
    middle = parent / "apps"
    ours = middle / "state"
    connect(ours / "state.db", 1.0).close()
    decoy = parent / "decoy"
    decoy.mkdir()
    planted = _plant(decoy / "state")
    os.chown(decoy, ATTACKER, ATTACKER)
    parent.chmod(0o777)
    with swapping(middle, decoy) as counts:
        opened, refused, messages = _attempts(ours / "state.db")
    assert counts["swaps"] > 0
    assert opened == 0 and refused == ATTEMPTS
    assert all(m.startswith(f"{parent}: refusing the folder on the way") for m in messages)
    assert _files(decoy / "state") == planted


def test_in_a_sticky_folder_the_swap_is_impossible_and_the_state_opens(parent: Path) -> None:
    ours = parent / "state"
    connect(ours / "state.db", 1.0).close()
    planted = _plant(parent / "theirs")
    parent.chmod(0o1777)  # like /tmp: others may add names, not rename ours
    with swapping(ours, parent / "theirs") as counts:
        opened, _, messages = _attempts(ours / "state.db")
    assert counts["swaps"] == 0 and counts["refused"] > 0
    assert opened == ATTEMPTS, messages[:3]
    assert _files(parent / "theirs") == planted


def test_a_state_folder_of_another_user_in_a_sticky_folder_is_refused(parent: Path) -> None:
    planted = _plant(parent / "state")
    parent.chmod(0o1777)
    opened, refused, messages = _attempts(parent / "state" / "state.db")
    assert opened == 0 and refused == ATTEMPTS
    assert f"owned by uid {ATTACKER}" in messages[0] and str(parent / "state") in messages[0]
    assert _files(parent / "state") == planted
