"""Pruning a PostgreSQL history in short transactions.

The runs to delete are chosen once into a temporary table, then deleted ``PRUNE_CHUNK`` at a
time, each chunk its own transaction, on a connection of the prune's own: claims on the store's
connection never wait for the prune. Dead rows are left to autovacuum, which makes their space
reusable (the table files do not shrink).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import psycopg

from qtasks_cli.store import sql
from qtasks_cli.store.postgres_schema import aware

_ACTIVE = ("queued", "claimed", "running")
PRUNE_CHUNK = 5000  # runs deleted per transaction


async def prune(
    conn: psycopg.AsyncConnection[Any],
    quoted: str,
    *,
    keep_runs: int | None,
    keep_days: float | None,
    now: datetime,
) -> int:
    """Delete the finished runs of schema ``quoted`` beyond the ``keep_runs`` newest per job
    (missed and skipped rows counted apart) or older than ``keep_days`` (either limit deletes;
    None disables it); return how many. psycopg errors are the caller's to translate."""
    conditions = []
    params: dict[str, Any] = {"now": aware(now)}
    if keep_runs is not None:
        conditions.append("rank > %(keep)s")
        params["keep"] = max(keep_runs, 0)
    if keep_days is not None:
        conditions.append("coalesce(ended, started, scheduled, created) < %(cutoff)s")
        params["cutoff"] = aware(now) - timedelta(days=keep_days)
    active = ", ".join(f"'{status}'" for status in _ACTIVE)
    select = (
        "SELECT run_id FROM (SELECT run_id, ended, started, scheduled,"
        f" created, row_number() OVER (PARTITION BY job, status IN ('missed', 'skipped')"
        f" {sql.ORDER_NEWEST}) AS rank"
        f" FROM {quoted}.runs WHERE status NOT IN ({active})) AS ranked"
        # A row scheduled after now (the clock went back) still guards its (job, time).
        f" WHERE ({' OR '.join(conditions)})"
        " AND (scheduled IS NULL OR scheduled < %(now)s)"
    )
    chunk = "SELECT run_id FROM qtasks_doomed WHERE n > %s AND n <= %s"
    await conn.execute("CREATE TEMP TABLE qtasks_doomed (n bigserial PRIMARY KEY, run_id text)")
    await conn.execute(f"INSERT INTO qtasks_doomed (run_id) {select}", params)
    cur = await conn.execute("SELECT count(*) FROM qtasks_doomed")
    row = await cur.fetchone()
    total = int(row[0]) if row else 0
    deleted = 0
    for start in range(0, total, PRUNE_CHUNK):
        bounds = (start, start + PRUNE_CHUNK)
        async with conn.transaction():
            await conn.execute(f"DELETE FROM {quoted}.attempts WHERE run_id IN ({chunk})", bounds)
            cur = await conn.execute(f"DELETE FROM {quoted}.runs WHERE run_id IN ({chunk})", bounds)
            deleted += max(cur.rowcount, 0)
    return deleted
