"""The metrics endpoint computes on scrape and sleeps between scrapes: its thread does not wake
while nobody scrapes (``prometheus_client.start_http_server`` polled twice a second), serves
IPv4 and IPv6 addresses, and stops at once. Each final status is counted once, by the daemon
that recorded it, and every kept pause is counted."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from qtasks_cli.events import EventBus
from qtasks_cli.models import Config, Settings


def _wakeups(thread: threading.Thread) -> int:
    """How many times the kernel woke ``thread`` from a sleep (proc(5), Linux only)."""
    status = Path(f"/proc/self/task/{thread.native_id}/status").read_text()
    line = next(x for x in status.splitlines() if x.startswith("voluntary_ctxt_switches"))
    return int(line.split()[1])


def _settled(thread: threading.Thread) -> int:
    """The wake-up count once the thread has gone to sleep after starting (bounded)."""
    count = _wakeups(thread)
    for _ in range(50):
        time.sleep(0.1)
        now = _wakeups(thread)
        if now == count:
            return now
        count = now
    return count


def _free_port(family: socket.AddressFamily, host: str) -> int:
    with socket.socket(family) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _serve(tmp_path: Path, host: str, port: int):  # type: ignore[no-untyped-def]
    from qtasks_cli.metrics import start_metrics

    config = Config(path=tmp_path / "jobs.yaml", settings=Settings(metrics=(host, port)), jobs={})
    return start_metrics(config, bus=EventBus())


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs /proc (Linux)")
def test_the_endpoint_thread_sleeps_until_a_scrape(tmp_path: Path) -> None:
    port = _free_port(socket.AF_INET, "127.0.0.1")
    server = _serve(tmp_path, "127.0.0.1", port)
    try:
        thread = server.thread
        assert thread.name == "qtasks-metrics"
        before = _settled(thread)
        time.sleep(2.0)  # four polls of serve_forever's; zero here
        assert _wakeups(thread) == before
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            body = answer.read().decode()
        assert "qtasks_store_errors_total" in body
        assert _wakeups(thread) > before  # it did wake for the scrape
    finally:
        server.close()
    assert not server.thread.is_alive()


def test_an_ipv6_address_is_served(tmp_path: Path) -> None:
    try:
        port = _free_port(socket.AF_INET6, "::1")
    except OSError:
        pytest.skip("no IPv6 loopback here")
    server = _serve(tmp_path, "::1", port)
    try:
        with urllib.request.urlopen(f"http://[::1]:{port}/metrics", timeout=10) as answer:
            assert answer.status == 200
    finally:
        server.close()
    assert not server.thread.is_alive()


def test_a_port_in_use_is_a_located_error_and_leaves_nothing_running(tmp_path: Path) -> None:
    from qtasks_cli.errors import ConfigError

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        before = {t.name for t in threading.enumerate()}
        with pytest.raises(ConfigError, match="already in use"):
            _serve(tmp_path, "127.0.0.1", port)
        assert "qtasks-metrics" not in {t.name for t in threading.enumerate()} - before


def test_each_final_status_is_counted_once_by_the_daemon_that_recorded_it() -> None:
    from datetime import datetime, timezone

    from qtasks_cli.events import KINDS, Event, EventKind
    from qtasks_cli.metrics import Metrics
    from qtasks_cli.models import RunStatus

    now = datetime.now(timezone.utc)
    metrics = Metrics()

    def finished(job: str, status: RunStatus, **more: object) -> Event:
        return KINDS[EventKind.FINISHED](time=now, job=job, run_id="r", status=status,
                     **more)  # type: ignore[arg-type]  # fmt: skip

    metrics.sink(finished("a", RunStatus.SUCCEEDED))
    metrics.sink(finished("a", RunStatus.CANCELLED))
    # A run another node concluded while this one did not answer: that node counts it.
    metrics.sink(finished("a", RunStatus.INTERRUPTED, recorded=False))
    # A dead daemon's run this one concluded.
    metrics.sink(KINDS[EventKind.INTERRUPTED](time=now, job="b", run_id="x",
                       status=RunStatus.INTERRUPTED))  # fmt: skip
    metrics.fold()
    assert dict(metrics.runs) == {
        ("a", "succeeded"): 1,
        ("a", "cancelled"): 1,
        ("b", "interrupted"): 1,
    }


def test_the_paused_gauges_count_every_kept_pause() -> None:
    from datetime import datetime, timezone
    from typing import Any

    from prometheus_client.core import GaugeMetricFamily

    from qtasks_cli.metrics import Metrics
    from qtasks_cli.models import JobView, Snapshot

    now = datetime.now(timezone.utc)
    view = JobView(name="in_file", schedule="s", enabled=True, next_fire=None, running=0,
                   pending=0, max_attempts=1, paused=True)  # fmt: skip
    snapshot = Snapshot(now=now, started_at=now, jobs=(view,), running=0, queued=0, state="s",
                        paused_jobs=("in_file", "removed"))  # fmt: skip

    class Controller:
        def fresh_snapshot(self) -> Snapshot:
            return snapshot

    metrics = Metrics(Controller())  # type: ignore[arg-type]
    families: dict[str, Any] = {f.name: f for f in metrics._gauges(GaugeMetricFamily)}
    assert [s.value for s in families["qtasks_paused_jobs"].samples] == [2]
    per_job = {s.labels["job"]: s.value for s in families["qtasks_job_paused"].samples}
    assert per_job == {"in_file": 1.0, "removed": 1.0}
