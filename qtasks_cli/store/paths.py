"""Which state files qtasks trusts: the folder, the file, its ``-wal``/``-shm`` companions and
the lock file must be owned by the running user (or root) and writable by nobody else.

The rules, in the spirit of OpenSSH's ``StrictModes``:

- a path another user can write, or that another user owns, is refused (``StoreError``, exit 2),
  with the path, the reason and the command that fixes it;
- a symbolic link on the way to the state folder must itself belong to the running user or root
  (another user's link in a shared folder could point anywhere), and the state file, its
  companions and the lock file are opened with ``O_NOFOLLOW``: qtasks never writes through a
  link it did not make;
- a state file with more than one hard link is refused: SQLite names the ``-wal`` file after
  the name it was given, so two names would mean two write-ahead logs for one database, and two
  lock files, so two daemons. With one name per file, ``<file>.lock`` is the same inode however
  the path is spelt (``..``, a linked folder, a bind mount): the lock follows the file's
  identity, not its spelling.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from qtasks_cli.errors import StoreError

COMPANIONS = ("-wal", "-shm", "-journal", ".lock")  # files SQLite and qtasks keep beside the file
_MAX_LINKS = 40  # symbolic links followed while checking, as the kernel's ELOOP limit


def _user_name(uid: int) -> str:
    import pwd

    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _trusted_uids() -> tuple[int, int]:
    return (os.geteuid(), 0)


def distrust(st: os.stat_result) -> str | None:
    """Why a file with status ``st`` cannot be trusted, or None when it can: its owner must be
    the running user or root, and neither its group nor others may write it."""
    if st.st_uid not in _trusted_uids():
        me = os.geteuid()
        allowed = (
            "by root, who runs qtasks"
            if me == 0
            else f"by {_user_name(me)}, who runs qtasks, or by root"
        )
        return f"it is owned by {_user_name(st.st_uid)}, not {allowed}"
    writable = [
        who for who, bit in (("group", stat.S_IWGRP), ("others", stat.S_IWOTH)) if st.st_mode & bit
    ]
    if writable:
        return (
            f"it is writable by other users ({' and '.join(writable)}, "
            f"mode {stat.S_IMODE(st.st_mode):04o})"
        )
    return None


def _fix(st: os.stat_result, path: str, mode: str) -> str:
    import shlex

    quoted = shlex.quote(path)
    if stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX:
        # /tmp and the like: shared on purpose; the state needs a folder of its own in there.
        inner = shlex.quote(os.path.join(path, "qtasks", "state.db"))
        return f"it is a shared folder; give the state a folder of its own, such as {inner}"
    if st.st_uid not in _trusted_uids():
        return f"use a path you own, or take it over with: chown -h $(id -u) {quoted}"
    return f"fix it with: chmod {mode} {quoted}"


def _refuse(path: str | os.PathLike[str], what: str, why: str, fix: str) -> StoreError:
    return StoreError(f"{os.fspath(path)}: refusing the {what}: {why}; {fix}")


def check_links(path: str | os.PathLike[str]) -> None:
    """Refuse ``path`` if a symbolic link on the way to it belongs to another user.

    Links the running user or root made are followed (an operator may link
    ``/var/lib/qtasks`` elsewhere); a missing component ends the walk."""
    _check_links(os.path.join(os.getcwd(), os.fspath(path)), 0)


def _check_links(path: str, depth: int) -> None:
    current = os.sep
    for part in path.split(os.sep):
        if not part:
            continue
        current = os.path.join(current, part)
        try:
            st = os.lstat(current)
        except OSError:
            return  # missing: nothing more to follow
        if not stat.S_ISLNK(st.st_mode):
            continue
        if st.st_uid not in _trusted_uids():
            raise _refuse(
                current,
                "symbolic link on the way to the state file",
                f"it is owned by {_user_name(st.st_uid)}",
                "point settings.state at a folder you own",
            )
        if depth >= _MAX_LINKS:
            raise StoreError(f"{current}: too many levels of symbolic links")
        target = os.readlink(current)
        _check_links(os.path.join(os.path.dirname(current), target), depth + 1)


def ensure_folder(folder: Path) -> None:
    """Create the state folder 0700 if it is missing, then check the folder: a folder of
    another user, or one that others may write, is refused with StoreError."""
    check_links(folder)
    if not os.path.lexists(folder):
        try:
            folder.mkdir(parents=True, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"{folder}: cannot create the state folder: {exc.strerror or exc}"
            ) from None
        with contextlib.suppress(OSError):
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                if os.fstat(fd).st_uid == os.geteuid():
                    os.fchmod(fd, 0o700)  # mkdir's mode passes through the umask
            finally:
                os.close(fd)
    try:
        st = os.stat(folder)
    except OSError as exc:
        raise StoreError(f"{folder}: cannot use the state folder: {exc.strerror or exc}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise StoreError(f"{folder}: the state folder is not a folder")
    why = distrust(st)
    if why is not None:
        raise _refuse(folder, "state folder", why, _fix(st, os.fspath(folder), "700"))


def open_checked(path: str | os.PathLike[str], what: str, *, create: bool = True) -> int:
    """Open (creating 0600 if ``create``) the regular file ``path`` without following a link,
    check it with ``distrust`` and its link count, and return the descriptor (read-write, or
    read-only when only reading is allowed). Raises StoreError naming the path and the reason."""
    flags = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        fd = os.open(path, flags | os.O_RDWR | (os.O_CREAT if create else 0), 0o600)
    except PermissionError:
        try:
            fd = os.open(path, flags | os.O_RDONLY)
        except OSError as exc:
            raise StoreError(f"{os.fspath(path)}: cannot open the {what}: {exc.strerror}") from None
    except OSError as exc:
        if os.path.islink(path):
            raise _refuse(
                path,
                what,
                "it is a symbolic link, and qtasks never follows a link it did not make",
                "point settings.state at the file itself",
            ) from None
        raise StoreError(
            f"{os.fspath(path)}: cannot open the {what}: {exc.strerror or exc}"
        ) from None
    try:
        _check_open_file(fd, path, what)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_open_file(fd: int, path: str | os.PathLike[str], what: str) -> None:
    _check_file(os.fstat(fd), path, what)


def _check_file(st: os.stat_result, path: str | os.PathLike[str], what: str) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise StoreError(f"{os.fspath(path)}: the {what} is not a regular file")
    why = distrust(st)
    if why is not None:
        raise _refuse(path, what, why, _fix(st, os.fspath(path), "600"))
    if st.st_nlink > 1:
        raise _refuse(
            path,
            what,
            f"it has {st.st_nlink} hard links, so its lock and write-ahead log "
            "would differ by name",
            "keep one name per state file (copy it instead of linking)",
        )


def check_companions(path: Path) -> None:
    """Check the files beside the state file (``-wal``, ``-shm``, ``-journal``, ``.lock``)
    that exist: each must be a regular file, not a link, trusted by ``distrust``."""
    for suffix in COMPANIONS:
        companion = f"{path}{suffix}"
        try:
            st = os.lstat(companion)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise StoreError(f"{companion}: cannot check the file: {exc.strerror}") from None
        if stat.S_ISLNK(st.st_mode):
            raise _refuse(
                companion,
                "file beside the state file",
                "it is a symbolic link, and qtasks never follows a link it did not make",
                f"remove it: rm {companion}",
            )
        if not stat.S_ISREG(st.st_mode):
            raise StoreError(f"{companion}: the file beside the state file is not a regular file")
        why = distrust(st)
        if why is not None:
            raise _refuse(
                companion, "file beside the state file", why, f"remove it: rm {companion}"
            )


def prepare_state_file(path: Path) -> None:
    """Make ``path`` ready for SQLite: the folder checked (or made 0700), the file created 0600
    or checked, and its companions checked. Raises StoreError on anything untrusted."""
    ensure_folder(path.parent)
    # An existing state file is checked with lstat, never opened: closing any descriptor of
    # the file drops every POSIX lock this process holds on it, SQLite's included, and
    # another process may then take the WAL away under a live connection ("How To Corrupt
    # An SQLite Database File", 2.2). The trusted folder (no one else can write it) keeps
    # the file from being swapped between this check and SQLite's open.
    try:
        fd = os.open(
            path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
    except FileExistsError:
        try:
            st = os.lstat(path)
        except OSError as exc:
            raise StoreError(f"{path}: cannot check the state file: {exc.strerror}") from None
        if stat.S_ISLNK(st.st_mode):
            raise _refuse(
                path,
                "state file",
                "it is a symbolic link, and qtasks never follows a link it did not make",
                "point settings.state at the file itself",
            ) from None
        _check_file(st, path, "state file")
    except OSError as exc:
        raise StoreError(f"{path}: cannot create the state file: {exc.strerror or exc}") from None
    else:
        os.close(fd)  # a new, empty file: nobody holds a lock on it yet
    check_companions(path)


def same_file(path: str | os.PathLike[str], fd: int) -> bool:
    """True when ``path`` (not followed if a link) is the file open as ``fd``."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)
