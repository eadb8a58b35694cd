"""``qtasks history --stats`` over 1,000,000 runs, on SQLite and on PostgreSQL.

The runs are 50 jobs x 20,000 finished runs with one attempt each (as in prune.py). Timed,
the median of 3: ``store.stats()`` in this process, and the whole ``qtasks history --stats``
command. PostgreSQL: a fresh schema on $QTASKS_BENCH_POSTGRES or the local server, dropped
afterwards.

    python bench/history_stats.py
"""

from __future__ import annotations

import asyncio
import json
import secrets
import statistics
import time
from pathlib import Path
from typing import Any

import cluster
import common
import configs
import lateness
import prune

RUNS_PER_JOB = 20_000


def measure(*, quick: bool = False) -> dict[str, Any]:
    per_job = 2_000 if quick else RUNS_PER_JOB
    found: dict[str, Any] = {"runs": prune.JOBS * per_job}
    with common.workdir("history-stats") as work:
        config = configs.qtasks_ticking(work / "jobs.yaml", prune.JOBS, schedule="0 0 1 1 *")
        state = work / "state.db"
        prune._fill(state, per_job)
        found["sqlite"] = _time(config, str(state), None)
        url = lateness.postgres_url()
        reason = cluster._unreachable(url)
        if reason:
            found["postgres"] = {"available": False, "note": reason}
        else:
            schema = f"qtbench_{secrets.token_hex(6)}"
            text = config.read_text().replace("jobs:\n", f"  schema: {schema}\njobs:\n", 1)
            pg_config = work / "jobs-pg.yaml"
            pg_config.write_text(text)
            with cluster._schema_dropped(url, schema):
                asyncio.run(_fill_pg(url, schema, per_job))
                found["postgres"] = _time(pg_config, url, schema)
    print(f"  history --stats over {found['runs']:,} runs: {json.dumps(found)}")
    return found


async def _fill_pg(url: str, schema: str, per_job: int) -> None:
    from qtasks_cli.store.postgres import PostgresStore

    store = PostgresStore(url, schema=schema)
    await store.open()
    await store.close()
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            f'INSERT INTO "{schema}".runs (run_id, job, trigger, scheduled, created, started,'
            " ended, status, attempts, result)"
            " SELECT 'r' || j || '-' || i, 'j' || lpad(j::text, 4, '0'), 'schedule',"
            " t, t, t, t + interval '2 ms', 'succeeded', 1, '\"ok\"'"
            " FROM generate_series(0, %s) AS j, generate_series(0, %s) AS i,"
            " LATERAL (SELECT timestamptz '2026-01-01' + i * interval '1 minute' AS t) AS w",
            (prune.JOBS - 1, per_job - 1),
        )
        # As autovacuum leaves a table grown by inserts: statistics and the visibility map
        # (without it an index-only scan reads the table too).
        conn.execute(f'VACUUM ANALYZE "{schema}".runs')


def _time(config: Path, state: str, schema: str | None) -> dict[str, Any]:
    api_s: list[float] = []
    cli_s: list[float] = []
    for _ in range(3):
        began = time.perf_counter()
        rows = asyncio.run(_stats(state, schema))
        api_s.append(time.perf_counter() - began)
        began = time.perf_counter()
        common.run(
            [common.QTASKS, "history", "--stats", "-c", str(config), "--state", state],
            timeout=600,
        )
        cli_s.append(time.perf_counter() - began)
    return {
        "jobs": rows,
        "store_stats_s": round(statistics.median(api_s), 3),
        "cli_s": round(statistics.median(cli_s), 3),
    }


async def _stats(state: str, schema: str | None) -> int:
    from qtasks_cli.store import open_store

    store = open_store(state, schema=schema or "qtasks")
    await store.open()
    try:
        return len(await store.stats())
    finally:
        await store.close()


if __name__ == "__main__":
    common.install_cleanup()
    common.OUT.mkdir(parents=True, exist_ok=True)
    result = measure()
    (common.OUT / "history-stats.json").write_text(json.dumps(result, indent=2) + "\n")
