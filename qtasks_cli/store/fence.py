"""Fencing: a run's row is written only by whoever owns it, and only while it is unfinished.

A daemon that stops answering (SIGSTOP, a VM paused, a network partition) for longer than
``node_timeout`` is presumed dead by the others, which conclude its runs (``interrupted``, or
``cancelled`` when an operator had asked) and forget it. When it comes back it still holds
those runs in memory and would finish them: without a fence its ``succeeded`` would overwrite
the ``interrupted`` that another node wrote (and a ``retry_interrupted`` re-run would make it
two runs), or undo a cancel. So every write of a run's progress is conditional, in SQL, on the
row being this daemon's (``node`` for PostgreSQL; ``pid`` and ``host`` for SQLite, which
admits one daemon per file) and still ``claimed`` or ``running`` (``OWNED``): the start mark,
and the finish with its attempts and output lines, all or nothing. A final status is final.
``begin`` and ``release`` were already conditional in the same way.

A refused write is logged with what the store says instead (``refused``); the daemon also
learns it was presumed dead from its heartbeat, and then stops the bodies of the runs
concluded elsewhere (qtasks_cli.fencing).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

# The statuses in which a run's owner may still write it.
OWNED = "status IN ('claimed', 'running')"

# Who asked to cancel a run no daemon has settled yet, as a column of a recovery query over
# ``runs AS r`` (None when nobody asked): recovery then concludes it cancelled.
CANCEL_BY = (
    "(SELECT c.by_whom FROM {s}cancel_requests AS c"
    " WHERE c.run_id = r.run_id AND c.outcome IS NULL) AS cancel_by"
)


def cancel_by(schema_prefix: str) -> str:
    """``CANCEL_BY`` for tables named ``{schema_prefix}cancel_requests``."""
    return CANCEL_BY.replace("{s}", schema_prefix)


def refused(
    log: logging.Logger,
    location: str,
    kind: str,
    run_id: str,
    wanted: str,
    row: Sequence[Any] | None,
) -> None:
    """Log a ``kind`` write (start or finish) of ``run_id`` the fence refused, with what the
    store holds instead (``row``: job, status, error, owner; None when the run is gone)."""
    if row is None:
        log.warning("%s: %s of unknown run %r ignored (pruned?)", location, kind, run_id)
        return
    job, status, error, owner = row
    if kind == "finish" and status == wanted:
        # Written already (a batch retried after its commit was not acknowledged).
        log.debug("%s: finish of run %s already recorded", location, run_id)
        return
    if status in ("claimed", "running"):
        log.warning(
            "%s: the %s of run %s of %s is not recorded: the run is now %s on %s (it was "
            "given back while this daemon did not answer)",
            location, kind, run_id, job, status, owner or "another daemon",
        )  # fmt: skip
        return
    did = f"ended here as {wanted}" if kind == "finish" else "started here"
    log.warning(
        "%s: run %s of %s %s, but the store already says %s (%s); that record stands: a "
        "final status is final (this daemon was presumed dead while it did not answer, or "
        "the run was concluded without it)",
        location, run_id, job, did, status, error or "no reason given",
    )  # fmt: skip
