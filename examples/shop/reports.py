"""The owner's daily sales report, written to examples/data/report-YYYY-MM-DD.txt."""

from __future__ import annotations

from datetime import date

from shop.db import DATA, connect


def daily_report() -> dict[str, float]:
    with connect() as conn:
        count, total = conn.execute(
            "SELECT count(*), coalesce(sum(total), 0) FROM orders"
        ).fetchone()
    report = {"orders": count, "revenue": round(total, 2)}
    path = DATA / f"report-{date.today().isoformat()}.txt"
    path.write_text(f"Sales report {date.today()}: {count} orders, {total:.2f} total\n")
    return report
