"""Whether a daemon's process is still there, as another shell on the same machine can tell.

A pid means something only within one kernel boot and one pid namespace: a daemon started with
``unshare --pid --fork`` or in a container that shares the host name publishes the pid it has
in its own namespace (often 1), which names another process here, or none. So a pid is looked
up only where the reader's and the daemon's ``local_key`` (boot id and pid namespace) agree.
Where only the namespace differs, the process is searched for by its namespace: a parent
namespace sees the processes of its children, each with its pid in every namespace it belongs
to (``NSpid`` in /proc/PID/status, proc(5)). Not found from the initial namespace, which sees
every process, means gone; not found from anywhere else tells nothing, and the caller falls
back on the daemon's heartbeat.
"""

from __future__ import annotations

import os
from datetime import datetime

from qtasks_cli.store.base import local_key, pid_alive
from qtasks_cli.store.control import DaemonInfo, process_start

INIT_PID_NS = 0xEFFFFFFC  # the inode of the initial pid namespace (PROC_PID_INIT_INO, Linux)


def _split(key: str | None) -> tuple[str, int] | None:
    if not key or ":" not in key:
        return None
    boot, _, inode = key.rpartition(":")
    try:
        return boot, int(inode)
    except ValueError:
        return None


def pid_visible(info: DaemonInfo, here: str, key: str | None = None) -> bool:
    """Whether ``info``'s pid names a process this reader can look up: same host and, when
    both tell it, the same kernel boot and pid namespace."""
    if info.host != here:
        return False
    key = local_key() if key is None else key
    return info.local_key is None or not key or info.local_key == key


def _inner_pid(pid: int) -> int | None:
    """Process ``pid``'s pid in its own (innermost) namespace, from ``NSpid``."""
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"NSpid:"):
                    return int(line.split()[-1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def find_in_namespace(pid: int, namespace: int, start: int | None) -> bool | None:
    """Whether the process with pid ``pid`` in pid namespace ``namespace`` (an inode) exists:
    True when found here (and, given ``start``, started then: not a reused pid), False when it
    certainly is gone (this reader sees every process: it is in the initial namespace), None
    when this reader cannot tell."""
    try:
        names = os.listdir("/proc")
    except OSError:
        return None
    seen_namespace = False
    for name in names:
        if not name.isdigit():
            continue
        try:
            if os.stat(f"/proc/{name}/ns/pid").st_ino != namespace:
                continue
        except OSError:
            continue
        seen_namespace = True
        if _inner_pid(int(name)) != pid:
            continue
        actual = process_start(int(name))
        return start is None or actual is None or actual == start
    try:
        mine = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None
    return False if mine == INIT_PID_NS or seen_namespace else None


def judge(info: DaemonInfo, now: datetime, here: str, key: str | None = None) -> tuple[bool, str]:
    """Whether a daemon is up, and what told: ``process`` (its pid, this reader can look it
    up: ``pid_visible``; the same process, as a reused pid has another start time),
    ``namespace`` (this machine, another pid namespace: ``find_in_namespace``), else
    ``heartbeat`` (another host, or nothing here can tell): fresh within three cadences."""
    key = local_key() if key is None else key
    if not pid_visible(info, here, key):
        theirs, mine = _split(info.local_key), _split(key)
        if info.host == here and theirs and mine and theirs[0] == mine[0]:
            found = find_in_namespace(info.pid, theirs[1], info.pid_start)
            if found is not None:
                return found, "namespace"
        return info.alive(now), "heartbeat"
    if not pid_alive(info.pid):
        return False, "process"
    if info.pid_start is not None:
        actual = process_start(info.pid)
        if actual is not None and actual != info.pid_start:
            return False, "process"
    return True, "process"


def is_alive(info: DaemonInfo, now: datetime, here: str, key: str | None = None) -> bool:
    """Whether a daemon is up (see ``judge``)."""
    return judge(info, now, here, key)[0]
