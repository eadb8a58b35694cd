"""Whom qtasks trusts with its state, judged on a file's status (``stat``): the owner must be
the running user or root and nobody else may write it, a folder must not let anyone else swap
an entry in it, and every refusal is a ``StoreError`` naming the path, the reason and the
command that fixes it. ``store.paths`` applies these checks while it walks to and opens the
state files."""

from __future__ import annotations

import os
import stat

from qtasks_cli.errors import StoreError


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


def fix_hint(st: os.stat_result, path: str, mode: str) -> str:
    """The command (or advice) that makes ``path``, with status ``st``, trusted."""
    import shlex

    quoted = shlex.quote(path)
    if stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX:
        # /tmp and the like: shared on purpose; the state needs a folder of its own in there.
        inner = shlex.quote(os.path.join(path, "qtasks", "state.db"))
        return f"it is a shared folder; give the state a folder of its own, such as {inner}"
    if st.st_uid not in _trusted_uids():
        return f"use a path you own, or take it over with: chown -h $(id -u) {quoted}"
    return f"fix it with: chmod {mode} {quoted}"


def refuse(path: str | os.PathLike[str], what: str, why: str, fix: str) -> StoreError:
    """The error that refuses ``path`` (the ``what``): the reason ``why`` and the ``fix``."""
    return StoreError(f"{os.fspath(path)}: refusing the {what}: {why}; {fix}")


def _others_may_write(st: os.stat_result) -> str:
    bits = [
        who for who, bit in (("group", stat.S_IWGRP), ("others", stat.S_IWOTH)) if st.st_mode & bit
    ]
    return " and ".join(bits)


def check_entry(
    parent: os.stat_result,
    parent_path: str,
    child_uid: int,
    child_path: str,
    what: str = "folder on the way to the state file",
) -> None:
    """Refuse when someone but the running user and root could replace ``child_path`` (owned
    by ``child_uid``) in the folder ``parent_path``: the folder is another user's, or others
    may write it and it is not sticky, or it is sticky and the entry is another user's."""
    why = None
    if parent.st_uid not in _trusted_uids():
        why = f"it is owned by {_user_name(parent.st_uid)}"
    elif _others_may_write(parent) and not parent.st_mode & stat.S_ISVTX:
        why = (
            f"it is writable by other users ({_others_may_write(parent)}, "
            f"mode {stat.S_IMODE(parent.st_mode):04o})"
        )
    if why is not None:
        raise refuse(
            parent_path,
            "folder on the way to the state file",
            f"{why}, who could swap {os.path.basename(child_path)!r} in it for their own",
            "keep the state in a folder whose parents belong to you or root and only you "
            "(or root) may write",
        )
    if _others_may_write(parent) and child_uid not in _trusted_uids():
        # A sticky folder others may write (/tmp): only an entry of ours is safe in it.
        raise refuse(
            child_path,
            what,
            f"it is owned by {_user_name(child_uid)}, in a folder other users may write",
            "use a path you own, or take it over with: chown -h $(id -u) " + _quoted(child_path),
        )


def _quoted(path: str) -> str:
    import shlex

    return shlex.quote(path)


def check_link(st: os.stat_result, path: str, parent_st: os.stat_result, parent: str) -> None:
    """Refuse a symbolic link (status ``st``) that is not the running user's or root's, or that
    someone else could replace in its folder ``parent`` (status ``parent_st``)."""
    if st.st_uid not in _trusted_uids():
        raise refuse(
            path,
            "symbolic link on the way to the state file",
            f"it is owned by {_user_name(st.st_uid)}",
            "point settings.state at a folder you own",
        )
    check_entry(parent_st, parent, st.st_uid, path)


def check_file(st: os.stat_result, path: str | os.PathLike[str], what: str) -> None:
    """Refuse a state file (status ``st``) that is not a regular file, is not trusted by
    ``distrust``, or has more than one hard link."""
    if not stat.S_ISREG(st.st_mode):
        raise StoreError(f"{os.fspath(path)}: the {what} is not a regular file")
    why = distrust(st)
    if why is not None:
        raise refuse(path, what, why, fix_hint(st, os.fspath(path), "600"))
    if st.st_nlink > 1:
        raise refuse(
            path,
            what,
            f"it has {st.st_nlink} hard links, so its lock and write-ahead log "
            "would differ by name",
            "keep one name per state file (copy it instead of linking)",
        )
