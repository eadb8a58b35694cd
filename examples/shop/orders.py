"""Order notifications: triggered once per order by the shop (``qtasks trigger`` or enqueue)."""

from __future__ import annotations

from shop.db import connect


def notify_status(order_id: int) -> str:
    """Tell the customer the order's status (here: return the message that would be mailed)."""
    with connect() as conn:
        row = conn.execute(
            "SELECT customer, status FROM orders WHERE id = ?", (order_id,)
        ).fetchone()
    if row is None:
        raise LookupError(f"no order {order_id}")
    customer, status = row
    message = f"to {customer}: your order #{order_id} is {status}"
    print(message)
    return message
