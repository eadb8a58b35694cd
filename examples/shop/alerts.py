"""Hooks: what the owner hears when a job fails for good."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("shop.alerts")


def notify_owner(result: Any) -> None:
    log.warning(
        "ALERT to owner: %s failed after %d attempt(s): %s",
        result.job,
        result.attempts,
        result.error,
    )
