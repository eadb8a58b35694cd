"""Connections kept open for the synchronous ``enqueue_now`` path, one per key and process."""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

_C = TypeVar("_C")


class ConnectionCache(Generic[_C]):
    """One connection (and the lock that takes turns on it) per key and process, closed at
    exit: ``enqueue_now`` is called many times a second and must not connect each time."""

    def __init__(self, close: Callable[[_C], None], usable: Callable[[_C], bool]) -> None:
        self._close = close
        self._usable = usable
        self._entries: dict[tuple[int, Hashable], tuple[_C, threading.Lock]] = {}
        self._lock = threading.Lock()
        self._at_exit = False

    def get(self, key: Hashable, connect: Callable[[], _C]) -> tuple[_C, threading.Lock]:
        """The connection for ``key``, made by ``connect`` (under the cache's lock) when
        there is none or it is no longer usable."""
        # Keyed by pid too: a forked child must not share its parent's connection.
        full = (os.getpid(), key)
        with self._lock:
            entry = self._entries.get(full)
            if entry is not None and self._usable(entry[0]):
                return entry
            entry = (connect(), threading.Lock())
            self._entries[full] = entry
            if not self._at_exit:
                atexit.register(self.close_all)
                self._at_exit = True
            return entry

    def close_all(self) -> None:
        """Close every connection kept (tests; process exit)."""
        with self._lock:
            entries = list(self._entries.values())
            self._entries.clear()
        for conn, lock in entries:
            with lock:
                self._close(conn)
