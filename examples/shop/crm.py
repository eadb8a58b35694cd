"""A CRM stub that fails now and then, the sync job that retries it, and the order export."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

from shop.db import connect


class CRMUnavailable(ConnectionError):
    """The CRM did not answer (a ConnectionError, so ``retry_on: [ConnectionError]`` retries it)."""


def _crm_push(orders: list[dict[str, Any]]) -> None:
    """Send one batch; the stub CRM times out on about one call in three."""
    if random.random() < 0.35:
        raise CRMUnavailable("CRM timed out")


def sync_with_crm() -> int:
    """Push unsynced orders to the CRM; raises CRMUnavailable now and then."""
    with connect() as conn:
        rows = conn.execute("SELECT id, customer, total FROM orders WHERE synced = 0").fetchall()
        _crm_push([{"id": i, "customer": c, "total": t} for i, c, t in rows])
        conn.executemany("UPDATE orders SET synced = 1 WHERE id = ?", [(r[0],) for r in rows])
        # New orders keep arriving in this demo, so the next sync has work too.
        conn.execute("UPDATE orders SET synced = 0 WHERE id = ?", (random.randint(1, 50),))
    return len(rows)


async def export_orders(batch: int = 5) -> AsyncIterator[dict[str, Any]]:
    """Yield the latest orders one by one (an async generator)."""
    with connect() as conn:
        rows = conn.execute(
            "SELECT id, status, total FROM orders ORDER BY random() LIMIT ?", (batch,)
        ).fetchall()
    for order_id, status, total in rows:
        await asyncio.sleep(0)
        yield {"id": order_id, "status": status, "total": total}


def log_crm(order: dict[str, Any]) -> str:
    """The export's handler, called with every yielded order."""
    return f"order #{order['id']} ({order['status']}, {order['total']:.2f}) exported"
