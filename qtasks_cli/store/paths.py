"""Reaching and opening the state files safely: the folder is walked one name at a time from
``/`` and the file, its ``-wal``/``-shm`` companions and the lock file are opened in it, each
checked (by ``store.trust``) to be owned by the running user (or root) and writable by nobody
else.

The rules, in the spirit of OpenSSH's ``StrictModes``:

- a path another user can write, or that another user owns, is refused (``StoreError``, exit 2),
  with the path, the reason and the command that fixes it;
- nobody else may be able to change what the path leads to, between qtasks' checks and
  SQLite's open of the same path. So the state folder is opened one name at a time from ``/``
  (``O_NOFOLLOW``, ``O_DIRECTORY``, each name relative to the descriptor of the folder before
  it) and every folder on the way is checked on its descriptor (``fstat``): it must belong to
  the running user or root and be writable by nobody else, unless it is sticky (``/tmp``) and
  the next name in it belongs to the running user or root (then nobody else may rename or
  remove it). Another user who can write a parent could otherwise swap the state folder for
  one of theirs (``renameat2(RENAME_EXCHANGE)``) after the check;
- a symbolic link on the way must itself belong to the running user or root, in a folder that
  passes the same check, and the state file, its companions and the lock file are opened
  relative to the checked folder's descriptor with ``O_NOFOLLOW``: qtasks never writes through
  a link it did not make;
- a state file with more than one hard link is refused: SQLite names the ``-wal`` file after
  the name it was given, so two names would mean two write-ahead logs for one database, and two
  lock files, so two daemons. With one name per file, ``<file>.lock`` is the same inode however
  the path is spelt (``..``, a linked folder, a bind mount): the lock follows the file's
  identity, not its spelling.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from qtasks_cli.errors import StoreError
from qtasks_cli.store.trust import check_entry, check_file, check_link, distrust, fix_hint, refuse

COMPANIONS = ("-wal", "-shm", "-journal", ".lock")  # files SQLite and qtasks keep beside the file
_MAX_LINKS = 40  # symbolic links followed while checking, as the kernel's ELOOP limit
_DIR_FLAGS = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class _Walk:
    """The descriptors of the folders from ``/`` to the one reached, each checked."""

    def __init__(self) -> None:
        fd = os.open("/", _DIR_FLAGS)
        self.stack: list[tuple[int, str, os.stat_result]] = [(fd, "/", os.fstat(fd))]

    def close(self, keep: int | None = None) -> None:
        for fd, _, _ in self.stack:
            if fd != keep:
                os.close(fd)
        self.stack = []

    def up(self) -> None:
        if len(self.stack) > 1:
            os.close(self.stack.pop()[0])

    def to_root(self) -> None:
        while len(self.stack) > 1:
            self.up()


def open_folder(folder: str | os.PathLike[str]) -> int:
    """A descriptor (``O_PATH`` where there is one) of the state folder, created 0700 if it
    is missing (missing parents 0755), reached one name at a time from ``/`` without
    following a link unchecked, every folder on the way checked on its own descriptor (see
    the module's rules). Raises StoreError naming the path and the reason; the caller closes
    the descriptor."""
    given = os.fspath(folder)
    pending = [p for p in os.path.join(os.getcwd(), given).split(os.sep) if p and p != "."]
    try:
        walk = _Walk()
    except OSError as exc:
        raise StoreError(f"{given}: cannot use the state folder: {exc.strerror}") from None
    links = 0
    try:
        root_why = distrust(walk.stack[0][2])
        if root_why is not None:
            raise refuse("/", "folder on the way to the state file", root_why, "fix it")
        while pending:
            name = pending.pop(0)
            if name == "..":
                walk.up()
                continue
            parent_fd, parent_path, parent_st = walk.stack[-1]
            path = os.path.join(parent_path, name)
            st = _entry(parent_fd, name, path, parent_st, create=True, last=not pending)
            if stat.S_ISLNK(st.st_mode):
                check_link(st, path, parent_st, parent_path)
                links += 1
                if links > _MAX_LINKS:
                    raise StoreError(f"{path}: too many levels of symbolic links")
                target = os.readlink(name, dir_fd=parent_fd)
                if target.startswith(os.sep):
                    walk.to_root()
                pending[:0] = [p for p in target.split(os.sep) if p and p != "."]
                continue
            if not stat.S_ISDIR(st.st_mode):
                shown = given if not pending else path
                raise StoreError(f"{shown}: the state folder is not a folder")
            what = "folder on the way to the state file" if pending else "state folder"
            check_entry(parent_st, parent_path, st.st_uid, path, what)
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
            opened = os.fstat(fd)
            walk.stack.append((fd, path, opened))
            if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino):
                raise StoreError(f"{path}: the folder changed while qtasks checked it")
        fd, _, st = walk.stack[-1]
        why = distrust(st)
        if why is not None:
            raise refuse(given, "state folder", why, fix_hint(st, given, "700"))
    except OSError as exc:
        walk.close()
        raise StoreError(f"{given}: cannot use the state folder: {exc.strerror or exc}") from None
    except BaseException:
        walk.close()
        raise
    walk.close(keep=fd)
    return fd


def _entry(
    parent_fd: int, name: str, path: str, parent_st: os.stat_result, *, create: bool, last: bool
) -> os.stat_result:
    """The status of ``name`` in the folder ``parent_fd`` (not followed); a missing folder is
    made first (0700 for the state folder itself, 0755 for a parent) where that is safe."""
    try:
        return os.lstat(name, dir_fd=parent_fd)
    except FileNotFoundError:
        if not create:
            raise
    check_entry(parent_st, os.path.dirname(path), os.geteuid(), path)
    mode = 0o700 if last else 0o755
    try:
        os.mkdir(name, mode, dir_fd=parent_fd)
    except FileExistsError:
        pass  # made meanwhile (by ourselves, or by whoever may: checked below)
    except OSError as exc:
        raise StoreError(f"{path}: cannot create the state folder: {exc.strerror}") from None
    else:
        # mkdir's mode passes through the umask; nobody else can replace the new folder
        # (its parent passed _check_entry), so setting the mode by name is safe.
        os.chmod(name, mode, dir_fd=parent_fd)
    return os.lstat(name, dir_fd=parent_fd)


def ensure_folder(folder: Path) -> None:
    """Create the state folder 0700 if it is missing, then check it and every folder on the
    way to it (``open_folder``): anything another user could change is refused with
    StoreError."""
    os.close(open_folder(folder))


def open_checked(
    path: str | os.PathLike[str], what: str, *, create: bool = True, folder: int | None = None
) -> int:
    """Open (creating 0600 if ``create``) the regular file ``path`` without following a link,
    check it with ``distrust`` and its link count, and return the descriptor (read-write, or
    read-only when only reading is allowed). With ``folder`` (a descriptor from
    ``open_folder``) the file's name is opened in that folder. Raises StoreError naming the
    path and the reason."""
    flags = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    name = os.path.basename(os.fspath(path)) if folder is not None else path
    try:
        fd = os.open(name, flags | os.O_RDWR | (os.O_CREAT if create else 0), 0o600, dir_fd=folder)
    except PermissionError:
        try:
            fd = os.open(name, flags | os.O_RDONLY, dir_fd=folder)
        except OSError as exc:
            raise StoreError(f"{os.fspath(path)}: cannot open the {what}: {exc.strerror}") from None
    except OSError as exc:
        if _is_link(name, folder):
            raise refuse(
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


def _is_link(name: str | os.PathLike[str], folder: int | None) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(name, dir_fd=folder).st_mode)
    except OSError:
        return False


def _check_open_file(fd: int, path: str | os.PathLike[str], what: str) -> None:
    check_file(os.fstat(fd), path, what)


def check_companions(path: Path, folder: int | None = None) -> None:
    """Check the files beside the state file (``-wal``, ``-shm``, ``-journal``, ``.lock``)
    that exist: each must be a regular file, not a link, trusted by ``distrust``. With
    ``folder`` (from ``open_folder``) they are looked up in that folder."""
    for suffix in COMPANIONS:
        companion = f"{path}{suffix}"
        name = f"{path.name}{suffix}" if folder is not None else companion
        try:
            st = os.lstat(name, dir_fd=folder)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise StoreError(f"{companion}: cannot check the file: {exc.strerror}") from None
        if stat.S_ISLNK(st.st_mode):
            raise refuse(
                companion,
                "file beside the state file",
                "it is a symbolic link, and qtasks never follows a link it did not make",
                f"remove it: rm {companion}",
            )
        if not stat.S_ISREG(st.st_mode):
            raise StoreError(f"{companion}: the file beside the state file is not a regular file")
        why = distrust(st)
        if why is not None:
            raise refuse(companion, "file beside the state file", why, f"remove it: rm {companion}")


def prepare_state_file(path: Path) -> None:
    """Make ``path`` ready for SQLite: the folder and the way to it checked (the folder made
    0700 if missing), the file created 0600 or checked, and its companions checked, all in
    the folder's checked descriptor. Raises StoreError on anything untrusted.

    SQLite then opens ``path`` by name: every folder on the way passed ``open_folder``, so
    nobody but the running user and root can change what the name leads to meanwhile."""
    folder = open_folder(path.parent)
    try:
        _prepare_in(folder, path)
    finally:
        os.close(folder)


def _prepare_in(folder: int, path: Path) -> None:
    # An existing state file is checked with lstat, never opened: closing any descriptor of
    # the file drops every POSIX lock this process holds on it, SQLite's included, and
    # another process may then take the WAL away under a live connection ("How To Corrupt
    # An SQLite Database File", 2.2).
    try:
        fd = os.open(
            path.name,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=folder,
        )
    except FileExistsError:
        try:
            st = os.lstat(path.name, dir_fd=folder)
        except OSError as exc:
            raise StoreError(f"{path}: cannot check the state file: {exc.strerror}") from None
        if stat.S_ISLNK(st.st_mode):
            raise refuse(
                path,
                "state file",
                "it is a symbolic link, and qtasks never follows a link it did not make",
                "point settings.state at the file itself",
            ) from None
        check_file(st, path, "state file")
    except OSError as exc:
        raise StoreError(f"{path}: cannot create the state file: {exc.strerror or exc}") from None
    else:
        os.close(fd)  # a new, empty file: nobody holds a lock on it yet
    check_companions(path, folder)


def same_file(path: str | os.PathLike[str], fd: int) -> bool:
    """True when ``path`` (not followed if a link) is the file open as ``fd``."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)
