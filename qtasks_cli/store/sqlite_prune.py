"""Pruning a SQLite history without holding up the daemon, and giving the space back.

The runs to delete are chosen once, on a connection of the prune's own (in its own thread),
into a temporary table: a read that takes no write lock. They are then deleted in chunks of
``CHUNK`` rows, each chunk one short write transaction taken under the store's write lock, so
a claim (written half a second before its fire) waits at most one chunk, never the whole
prune. Afterwards the free pages go back to the filesystem: at once, a few thousand pages per
transaction, in a file made with ``auto_vacuum = INCREMENTAL`` (every file this version
creates); an older file is converted (one ``VACUUM``) the next time a daemon starts on it, if
a quarter of it is free (``compact_on_start``).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

# Runs deleted per write transaction: tens of milliseconds of the write lock, which a claim
# (written half a second before its fire) can wait out.
CHUNK = 10_000
PAUSE = 0.001  # seconds between chunks, so that a waiting claim takes the write lock
VACUUM_PAGES = 4000  # pages given back per incremental_vacuum transaction
# An old file (auto_vacuum off) is rewritten at a daemon's start when this share of its pages
# is free, and at least FREE_MIN of them.
FREE_SHARE = 0.25
FREE_MIN = 1000

_ACTIVE = "'queued', 'claimed', 'running'"
_ORDER_NEWEST = "ORDER BY coalesce(started, scheduled, created) DESC, run_id DESC"


def doomed_sql(keep: int, cutoff: int | None) -> str:
    """The SELECT of run ids beyond the ``keep`` newest per job (and kind: missed and skipped
    rows are counted apart) or older than ``cutoff``; parameters ``:keep``, ``:cutoff``,
    ``:now``. A row scheduled after now (the clock went back) still guards its (job, time)."""
    conditions = []
    if keep >= 0:
        conditions.append("rank > :keep")
    if cutoff is not None:
        conditions.append("coalesce(ended, started, scheduled, created) < :cutoff")
    return (
        "SELECT run_id FROM (SELECT run_id, ended, started, scheduled, created,"
        " row_number() OVER (PARTITION BY job, status IN ('missed', 'skipped')"
        f" {_ORDER_NEWEST}) AS rank"
        f" FROM runs WHERE status NOT IN ({_ACTIVE}))"
        f" WHERE ({' OR '.join(conditions)}) AND (scheduled IS NULL OR scheduled < :now)"
    )


def prune(
    connect: Callable[[], sqlite3.Connection],
    write_lock: threading.Lock,
    *,
    keep: int,
    cutoff: int | None,
    now: int,
    location: str,
) -> int:
    """Delete the runs ``doomed_sql`` selects, in chunks (see the module docstring), then give
    free pages back; return how many runs were deleted. Runs in a thread of its own."""
    conn = connect()
    try:
        conn.execute("CREATE TEMP TABLE doomed (n INTEGER PRIMARY KEY, run_id TEXT NOT NULL)")
        conn.execute(
            f"INSERT INTO temp.doomed (run_id) {doomed_sql(keep, cutoff)}",
            {"keep": keep, "cutoff": cutoff, "now": now},
        )
        total = int(conn.execute("SELECT count(*) FROM temp.doomed").fetchone()[0])
        chunk = "SELECT run_id FROM temp.doomed WHERE n > ? AND n <= ?"
        deleted = 0
        for start in range(0, total, CHUNK):
            bounds = (start, start + CHUNK)
            with write_lock:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.execute(f"DELETE FROM attempts WHERE run_id IN ({chunk})", bounds)
                    deleted += conn.execute(
                        f"DELETE FROM runs WHERE run_id IN ({chunk})", bounds
                    ).rowcount
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            time.sleep(PAUSE)
        conn.execute("DROP TABLE temp.doomed")
        if deleted:
            give_back(conn, write_lock, location)
        return deleted
    finally:
        conn.close()


def give_back(conn: sqlite3.Connection, write_lock: threading.Lock, location: str) -> None:
    """Return free pages to the filesystem where the file allows it without a rewrite."""
    mode = int(conn.execute("PRAGMA auto_vacuum").fetchone()[0])
    free = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
    page = int(conn.execute("PRAGMA page_size").fetchone()[0])
    if mode != 2:  # not INCREMENTAL: reused by new rows; compact_on_start rewrites it
        if free >= FREE_MIN:
            log.info(
                "%s: %.1f MB free inside the file after pruning; new runs reuse it, and the "
                "next daemon start gives it back to the filesystem",
                location,
                free * page / 1e6,
            )
        return
    while free > 0:
        with write_lock:
            # The pragma gives back one page per step, and ``execute`` takes one step only:
            # ``executescript`` runs it to its end.
            conn.executescript(f"PRAGMA incremental_vacuum({VACUUM_PAGES});")
        left = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
        if left >= free:
            break  # nothing more could be given back now
        free = left
        time.sleep(PAUSE)
    with write_lock:
        # The file shrinks once the WAL holding the truncation is checkpointed.
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def compact_on_start(conn: sqlite3.Connection, location: str) -> None:
    """Convert a file without incremental auto-vacuum (made by an older version) when much of
    it is free: one ``VACUUM``, at a daemon's start, before anything fires."""
    if int(conn.execute("PRAGMA auto_vacuum").fetchone()[0]) == 2:
        return
    free = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
    pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
    if free < FREE_MIN or free < FREE_SHARE * pages:
        return
    began = time.monotonic()
    try:
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        conn.execute("VACUUM")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except sqlite3.Error as exc:
        log.warning("%s: cannot compact the state file (%s); carrying on", location, exc)
        return
    after = int(conn.execute("PRAGMA page_count").fetchone()[0])
    log.info(
        "%s: compacted from %d to %d pages in %.1fs (free space of pruned runs given back)",
        location,
        pages,
        after,
        time.monotonic() - began,
    )
