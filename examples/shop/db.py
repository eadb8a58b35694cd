"""The shop's "database": a SQLite file under examples/data/, created with a few orders."""

from __future__ import annotations

import random
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "data"
STATUSES = ("new", "paid", "shipped", "delivered")


def connect() -> sqlite3.Connection:
    DATA.mkdir(exist_ok=True)
    conn = sqlite3.connect(DATA / "shop.db", timeout=10)
    conn.execute(
        "CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, customer TEXT, "
        "total REAL, status TEXT, created TEXT, synced INTEGER DEFAULT 0)"
    )
    if conn.execute("SELECT count(*) FROM orders").fetchone()[0] == 0:
        now = datetime.now(timezone.utc).isoformat()
        rng = random.Random(7)
        rows = [
            (
                i,
                f"customer{i}@example.com",
                round(rng.uniform(5, 200), 2),
                rng.choice(STATUSES),
                now,
            )
            for i in range(1, 51)
        ]
        conn.executemany(
            "INSERT INTO orders (id, customer, total, status, created) VALUES (?, ?, ?, ?, ?)", rows
        )
        conn.commit()
    return conn
