"""The returning daemon's side of fencing (qtasks_cli.store.fence): honour what the others
concluded while it did not answer.

A PostgreSQL node that was frozen (SIGSTOP, a paused VM) or cut off for longer than
``node_timeout`` is presumed dead: another node concludes its runs (``interrupted``, or
``cancelled`` when an operator had asked) and forgets it. Its next heartbeat finds its row gone
(``Store.heartbeat`` says False); it registers again and then, here, looks up every run it still
holds: its run tasks, the claims waiting for their instant and the runs queued behind their
job's previous run. Each one the store no longer counts as this node's unfinished run is
let go: a claim or a queued run is dropped (it must not start), a running body is stopped as a
cancel stops it (an async task is cancelled, a process job killed, a thread abandoned), and
its end is not recorded (the store would refuse it anyway). The FINISHED event says the
status the store holds, marked ``recorded=False`` so the metrics of this node do not count a
run another node recorded. A body that ended before the heartbeat came is caught by the fence
alone: its end is refused and logged.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol

from qtasks_cli.models import RunStatus

if TYPE_CHECKING:
    from qtasks_cli.models import RunResult
    from qtasks_cli.store.base import Store

log = logging.getLogger(__name__)


class Holder(Protocol):
    """What this needs of the daemon (the Supervisor): its store and the runs it holds."""

    @property
    def store(self) -> Store: ...

    def runs_in_hand(self) -> dict[str, str]: ...

    def let_go(self, run_id: str, status: RunStatus, why: str) -> None: ...


def _gone(row: RunResult | None, node: str) -> bool:
    """Whether ``row`` is no longer this node's unfinished run."""
    if row is None or row.status.finished or row.status is RunStatus.QUEUED:
        return True  # concluded, or given back to the queue
    return row.node is not None and row.node != node


async def honour_conclusions(supervisor: Holder) -> list[str]:
    """After this node learnt it had been presumed dead: let go of every run the store no
    longer counts as its own (see the module); the run ids let go of."""
    store = supervisor.store
    held = supervisor.runs_in_hand()
    let_go: list[str] = []
    for run_id, job in sorted(held.items()):
        row = await store.get_run(run_id)
        if not _gone(row, store.node_id):
            continue
        status = row.status if row is not None else RunStatus.INTERRUPTED
        why = (row.error if row is not None else None) or "no reason given"
        log.warning(
            "run %s of %s is %s in the store, written by another node while this one did not "
            "answer (%s); stopping it here, and its end here is not recorded",
            run_id, job, status, why,
        )  # fmt: skip
        reason = f"{status} by another node while this one did not answer: {why}"
        supervisor.let_go(run_id, status, reason)
        let_go.append(run_id)
    return let_go
