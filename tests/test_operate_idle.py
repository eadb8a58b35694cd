"""The metrics endpoint computes on scrape and sleeps between scrapes: its thread does not wake
while nobody scrapes (``prometheus_client.start_http_server`` polled twice a second), serves
IPv4 and IPv6 addresses, and stops at once."""

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
