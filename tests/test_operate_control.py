"""The operator's tables over both stores (``ControlStore``): runs cancelled without a daemon
are reported once, by one daemon of a cluster."""

from __future__ import annotations

import threading
from datetime import timedelta

from test_operate_units import T0, _enqueue, control  # noqa: F401  (the fixture)

from qtasks_cli.models import RunStatus
from qtasks_cli.store import open_control


def _open_again(state: str):  # type: ignore[no-untyped-def]
    if "#" in state:
        url, schema = state.split("#")
        return open_control(url, schema=schema)
    return open_control(state)


def test_a_run_cancelled_before_any_daemon_took_it_is_reported_once(control) -> None:  # noqa: F811
    store, state = control
    assert store.take_unreported_cancels("reported by node a") == []
    cancelled = [_enqueue(state, "notify") for _ in range(20)]
    kept = _enqueue(state, "notify")
    for run_id in cancelled:
        assert store.request_cancel(run_id, "me", T0 + timedelta(seconds=1)) == "cancelled"
    # Several daemons look at once: each run is reported by exactly one of them.
    others = [_open_again(state) for _ in range(3)]
    found: list[list[str]] = [[] for _ in others]
    start = threading.Barrier(len(others))

    def take(index: int) -> None:
        start.wait(timeout=10)
        rows = others[index].take_unreported_cancels(f"reported by node {index}")
        found[index] = [r.run_id for r in rows]

    threads = [threading.Thread(target=take, args=(i,)) for i in range(len(others))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    for other in others:
        other.close()
    reported = [run_id for part in found for run_id in part]
    assert sorted(reported) == sorted(cancelled)
    assert store.take_unreported_cancels("reported by node a") == []
    row = store.run(kept)
    assert row is not None and row.status is RunStatus.QUEUED
    # Those requests are settled: no daemon looks at them as requests to stop a run.
    assert store.cancel_requests() == []
