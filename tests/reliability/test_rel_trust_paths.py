"""Trust boundaries of the state files, attacked by another local user: a planted folder or
file, a planted symbolic link, a hard link, and one state file spelt several ways."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import QTASKS, clean_env

from reliability.harness import TICK_MODULE, Daemon, tail
from reliability.registry import case

GROUP = "trust boundaries"
OTHER = "qtasks-other"


def _other_user() -> tuple[int, int]:
    """The uid and gid of a second local user, created with useradd; skip where impossible."""
    import pwd

    if os.geteuid() != 0:
        pytest.skip("needs root to create a second local user")
    try:
        entry = pwd.getpwnam(OTHER)
    except KeyError:
        if shutil.which("useradd") is None:
            pytest.skip("no useradd on this machine to create a second local user")
        made = subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", OTHER],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if made.returncode not in (0, 9):  # 9: made meanwhile by a parallel test
            pytest.skip(f"useradd failed: {made.stderr.strip()}")
        entry = pwd.getpwnam(OTHER)
    return entry.pw_uid, entry.pw_gid


def as_other(uid: int, gid: int, *command: str) -> None:
    """Run ``command`` as the other user (setpriv), as that user would on the machine."""
    subprocess.run(
        ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", *command],
        check=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin"},
    )


@pytest.fixture
def shared() -> Iterator[Path]:
    """A shared sticky folder every user may write, like /srv/shared (pytest's own temporary
    folders are closed to other users)."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="qtasks-shared-", dir="/tmp"))
    folder.chmod(0o1777)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def project(folder: Path, state: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "rel_tick.py").write_text(
        TICK_MODULE + "\n\ndef record(path):\n    open('recorded', 'w').write(path)\n"
    )
    config = folder / "jobs.yaml"
    config.write_text(
        "settings:\n"
        f"  state: {state!r}\n"
        "  shutdown_grace: 2s\n"
        "jobs:\n"
        "  tick:\n"
        "    entrypoint: rel_tick:tick\n"
        '    schedule: "* * * * * *"\n'
        "  record:\n"
        "    entrypoint: rel_tick:record\n"
    )
    return config


def qtasks(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [QTASKS, *args], cwd=cwd, capture_output=True, text=True, timeout=30, env=clean_env()
    )


def assert_refused(result: subprocess.CompletedProcess[str], path: Path, why: str) -> None:
    message = result.stderr.strip()
    assert result.returncode == 2, (result.returncode, result.stdout, message)
    assert "Traceback" not in message, message
    assert str(path) in message and why in message, message


@case(
    "state_planted_by_another_user",
    group=GROUP,
    title="another local user creates the state folder and file first in a shared sticky "
    "folder (mode 0755/0644, theirs), with a `queued` row; root runs `qtasks run` and "
    "`qtasks history` on it",
    checks="both exit 2 naming the path and its owner; the file is not changed (no schema), "
    "so the planted request never runs as root",
)
def test_state_planted_by_another_user(shared: Path, tmp_path: Path) -> None:
    uid, gid = _other_user()
    planted = shared / "qtasks"
    as_other(uid, gid, "mkdir", "-m", "0755", str(planted))
    # A real state file with a queued request for `record` (made by qtasks elsewhere), in the
    # other user's folder, theirs, mode 0644: what they would make with sqlite3 themselves.
    config = project(tmp_path / "proj", str(planted / "state.db"))
    made = tmp_path / "made" / "state.db"
    assert (
        qtasks("history", "-c", str(config), "--state", str(made), cwd=config.parent).returncode
        == 0
    )
    with sqlite3.connect(made) as db:
        db.execute(
            "INSERT INTO runs (run_id, job, trigger, created, status, args_json, kwargs_json)"
            " VALUES ('planted', 'record', 'queued', 1, 'queued', '[\"/tmp/chosen\"]', '{}')"
        )
    shutil.copy(made, planted / "state.db")
    os.chown(planted / "state.db", uid, gid)  # as if the other user had written it
    (planted / "state.db").chmod(0o644)
    before = (planted / "state.db").read_bytes()
    for args in (["run", "--ui", "plain", str(config)], ["history", "-c", str(config)]):
        assert_refused(qtasks(*args, cwd=config.parent), planted, f"owned by {OTHER}")
    assert (planted / "state.db").read_bytes() == before
    assert not (planted / "state.db.lock").exists()
    assert not (config.parent / "recorded").exists()

    # The folder is root's own now, but the file in it still belongs to the other user.
    planted.chmod(0o700)
    os.chown(planted, 0, 0)
    assert_refused(
        qtasks("history", "-c", str(config), cwd=config.parent),
        planted / "state.db",
        f"owned by {OTHER}",
    )
    # A folder of our own that the group may write is refused too.
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o770)
    mine.chmod(0o770)
    config = project(tmp_path / "proj2", str(mine / "state.db"))
    assert_refused(
        qtasks("history", "-c", str(config), cwd=config.parent), mine, "writable by other users"
    )


@case(
    "state_symlink_planted",
    group=GROUP,
    title="another user plants a symbolic link where the state folder will be (to a folder of "
    "root's); a link as the state file; a link as `state.db-wal` and as `state.db.lock`",
    checks="each is refused with exit 2 naming the link; nothing is written through a link "
    "qtasks did not make",
)
def test_state_symlink_planted(shared: Path, tmp_path: Path) -> None:
    uid, gid = _other_user()
    target = tmp_path / "roots-folder"
    target.mkdir(mode=0o700)
    as_other(uid, gid, "ln", "-s", str(target), str(shared / "qtasks"))
    config = project(tmp_path / "proj", str(shared / "qtasks" / "state.db"))
    result = qtasks("run", "--ui", "plain", str(config), cwd=config.parent)
    assert_refused(result, shared / "qtasks", "symbolic link")
    assert list(target.iterdir()) == []

    folder = tmp_path / "state"
    folder.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    config = project(tmp_path / "proj2", str(folder / "state.db"))
    for name in ("state.db", "state.db-wal", "state.db.lock"):
        link = folder / name
        if name != "state.db":
            assert qtasks("history", "-c", str(config), cwd=config.parent).returncode == 0
        link.unlink(missing_ok=True)
        link.symlink_to(victim)
        result = qtasks("run", "--ui", "plain", str(config), cwd=config.parent)
        assert_refused(result, link, "symbolic link")
        assert victim.read_text() == "keep me"
        link.unlink()


@case(
    "one_daemon_per_state_file_any_spelling",
    group=GROUP,
    title="a second `qtasks run` on the same state file spelt through a linked folder and "
    "through `..`; a hard link to the state file",
    checks="the second daemon exits 2 (`another qtasks daemon`) while the first runs on; a "
    "state file with two hard links is refused with exit 2",
)
def test_one_daemon_per_state_file_any_spelling(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (tmp_path / "linked").symlink_to(state)
    first = Daemon(project(tmp_path / "a", str(state / "state.db")), clean_env())
    try:
        first.wait_ready()
        for spelling in (tmp_path / "linked" / "state.db", state / ".." / "state" / "state.db"):
            config = project(tmp_path / "b", str(spelling))
            result = qtasks("run", "--ui", "plain", str(config), cwd=config.parent)
            assert result.returncode == 2, (spelling, result.stderr)
            assert "another qtasks daemon" in result.stderr, result.stderr
        assert first.proc.poll() is None, tail(first.log)
    finally:
        assert first.stop() == 0, tail(first.log)
    os.link(state / "state.db", state / "again.db")
    config = project(tmp_path / "c", str(state / "again.db"))
    assert_refused(
        qtasks("run", "--ui", "plain", str(config), cwd=config.parent),
        state / "again.db",
        "2 hard links",
    )
    sqlite3.connect(state / "state.db").close()


@case(
    "state_folder_swapped_while_opening",
    group=GROUP,
    title="another local user may write the folder that holds the state folder, and swaps the "
    "state folder with one of theirs (`renameat2(RENAME_EXCHANGE)`, in a loop) while "
    "`qtasks history` and `qtasks run` open it again and again; the same folder made sticky",
    checks="every command exits 2 naming the writable folder, and the other user's database is "
    "never opened or written; in the sticky folder the swap fails and every command works",
)
def test_state_folder_swapped_while_opening(tmp_path: Path) -> None:
    import tempfile

    from test_store_paths_race import swapping_as

    uid, gid = _other_user()
    parent = Path(tempfile.mkdtemp(prefix="qtasks-swap-", dir="/tmp"))
    try:
        config = project(tmp_path / "proj", str(parent / "state" / "state.db"))
        assert qtasks("history", "-c", str(config), cwd=config.parent).returncode == 0
        theirs = parent / "theirs"
        theirs.mkdir()
        with sqlite3.connect(theirs / "state.db") as db:
            db.execute("CREATE TABLE planted (x)")
        for path in (theirs, theirs / "state.db"):
            os.chown(path, uid, gid)
        planted = (theirs / "state.db").read_bytes()
        parent.chmod(0o777)
        with swapping_as(uid, gid, parent / "state", theirs) as counts:
            for args in [["history", "-c", str(config)]] * 8 + [
                ["run", "--ui", "plain", str(config)]
            ]:
                assert_refused(qtasks(*args, cwd=config.parent), parent, "writable by other users")
        assert counts["swaps"] > 0
        assert sorted(p.name for p in theirs.iterdir()) == ["state.db"]
        assert (theirs / "state.db").read_bytes() == planted
        parent.chmod(0o1777)
        with swapping_as(uid, gid, parent / "state", theirs) as counts:
            for _ in range(5):
                result = qtasks("history", "-c", str(config), cwd=config.parent)
                assert result.returncode == 0, result.stderr
        assert counts["swaps"] == 0 and counts["refused"] > 0
        assert (theirs / "state.db").read_bytes() == planted
    finally:
        parent.chmod(0o700)
        shutil.rmtree(parent, ignore_errors=True)
