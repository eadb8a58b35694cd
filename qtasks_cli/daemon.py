"""The daemon: open and lock the store, wire the supervisor to its operator channel, wake-ups,
metrics and systemd, take the signals, run until stopped and close (``qtasks run``)."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtasks_cli.api import load, open_state, state_location
from qtasks_cli.errors import EXIT_FORCED, EXIT_OK
from qtasks_cli.models import Config
from qtasks_cli.store.base import Announcer

if TYPE_CHECKING:
    from qtasks_cli.control import Controller
    from qtasks_cli.events import EventBus
    from qtasks_cli.metrics import MetricsServer
    from qtasks_cli.supervisor import Supervisor
    from qtasks_cli.systemd import SystemdAgent

# With the wake-up socket, the store is still polled this often, in case a wake-up is lost
# (the only way known: an enqueue from another network namespace, which does not share the
# socket's abstract name). Each look wakes the idle daemon, so it is rare (issue 16).
WOKEN_QUEUE_POLL = 60.0


async def serve(
    config_path: Path,
    config: Config,
    *,
    bus: EventBus,
    state: str | None = None,
    on_ready: Callable[[Any], None] | None = None,
) -> int:
    """Run the daemon until SIGTERM/SIGINT; return the exit code."""
    # The metrics port first: a port another program holds is the job file's error (exit 2,
    # at the setting), found before anything else is opened.
    metrics = None
    if config.settings.metrics is not None:
        from qtasks_cli.metrics import start_metrics

        metrics = start_metrics(config, bus=bus)
    try:
        return await _serve(config_path, config, bus=bus, state=state, on_ready=on_ready,
                            metrics=metrics)  # fmt: skip
    finally:
        if metrics is not None:
            metrics.close()


async def _serve(
    config_path: Path,
    config: Config,
    *,
    bus: EventBus,
    state: str | None,
    on_ready: Callable[[Any], None] | None,
    metrics: MetricsServer | None,
) -> int:
    import asyncio

    from qtasks_cli import keepstate, offthread, sigguard
    from qtasks_cli.ledger import until_stored
    from qtasks_cli.supervisor import Supervisor

    store = open_state(config, state)
    loop = asyncio.get_running_loop()
    # Jobs' to_thread calls that hang must never hold up the daemon's own (offthread.py).
    loop.set_default_executor(offthread.DaemonExecutor())
    # A store that is locked, full, read-only or unreachable at start-up is waited for,
    # with backoff and a log line; only a configuration error exits 2 (see ledger.py).
    early_stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, early_stop.set)

    async def nap(seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(early_stop.wait(), seconds)

    async def open_and_lock() -> bool:
        await store.open()
        await store.lock_daemon()
        return True

    if (
        not await until_stored(
            f"opening the state store {store.location}",
            open_and_lock,
            stopping=early_stop.is_set,
            sleep=nap,
        )
        or early_stop.is_set()
    ):
        with contextlib.suppress(Exception):
            await store.close()
        return EXIT_OK

    last_text, last_config = _file_digest(config_path), config

    async def reload() -> Config:
        # An unchanged file needs no new parse (modules are not re-imported anyway), so
        # repeated SIGHUPs cost almost nothing.
        nonlocal last_text, last_config
        text = await offthread.run(_file_digest, config_path, name="qtasks-reload")
        if text is None or text != last_text:
            last_config = await offthread.run(load, config_path, name="qtasks-reload")
            last_text = text
        return last_config

    supervisor = Supervisor(config, store=store, bus=bus, reload=reload)
    controller = await _operator_channel(supervisor, bus, state_location(config, state), metrics)
    listener = None
    if isinstance(store, Announcer):  # commands arrive as NOTIFY (work too: Intake.listen)
        store.on_control = controller.poke
        controller.woken = True
    else:
        from qtasks_cli.wake import Listener

        listener = Listener(state_location(config, state), supervisor.nudge, controller.poke)
        if listener.start():
            supervisor.intake.poll_every = WOKEN_QUEUE_POLL
            controller.woken = True  # commands arrive as datagrams: no need to look for them
    agent = _systemd_agent(supervisor, bus)
    forced = asyncio.Event()
    interrupts = 0

    def on_interrupt() -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts > 1:
            forced.set()
        supervisor.request_stop()

    loop.add_signal_handler(signal.SIGTERM, supervisor.request_stop)
    loop.add_signal_handler(signal.SIGINT, on_interrupt)
    loop.add_signal_handler(signal.SIGHUP, supervisor.request_reload)
    # From here on, job code in this process cannot take these signals (sigguard.py).
    with sigguard.guarded(loop=loop):
        keepstate.capture(loop)  # and put back what inline jobs change (keepstate.py)
        main = asyncio.create_task(supervisor.run())
        # Everything loaded so far (config, schedules, modules) lives as long as the daemon:
        # keep it out of the garbage collector's full passes, which otherwise stall the loop for
        # tens of milliseconds now and then once a thousand jobs are firing.
        gc.collect()
        gc.freeze()
        watchdog = asyncio.create_task(agent.run()) if agent is not None else None
        if on_ready is not None:
            ready = asyncio.create_task(supervisor.ready.wait())
            await asyncio.wait({ready, main}, return_when=asyncio.FIRST_COMPLETED)
            if supervisor.ready.is_set():
                on_ready(supervisor)
        force = asyncio.create_task(forced.wait())
        await asyncio.wait({main, force}, return_when=asyncio.FIRST_COMPLETED)
        if watchdog is not None:
            watchdog.cancel()
        if listener is not None:
            listener.close()
        await controller.stop(wait=0.5 if forced.is_set() else None)
        if forced.is_set() and not main.done():
            _emit_notice(bus, "second interrupt: exiting now", logging.WARNING)
            with contextlib.suppress(Exception):  # exiting now: the next start recovers the rest
                await asyncio.wait_for(asyncio.shield(store.flush()), timeout=2)
            return EXIT_FORCED
        force.cancel()
        keepstate.release()
        main.result()
        await store.close()
        return EXIT_OK


async def _operator_channel(
    supervisor: Supervisor, bus: EventBus, location: str, metrics: MetricsServer | None
) -> Controller:
    """The thread behind ``status``/``pause``/``cancel``, the capture of each run's output
    (recorded with its end), and the gauges of the Prometheus endpoint if there is one."""
    from qtasks_cli.control import Controller
    from qtasks_cli.output import Capture

    settings = supervisor.config.settings
    controller = Controller(supervisor, state=location, schema=settings.schema)
    await controller.start()
    supervisor.on_config = controller.poke  # publish the new fingerprint at once
    capture = Capture()
    capture.install()
    bus.subscribe(capture.sink)
    supervisor.runs.output_of = capture.take
    if metrics is not None:
        metrics.attach(controller)
    return controller


def _systemd_agent(supervisor: Supervisor, bus: EventBus) -> SystemdAgent | None:
    """sd_notify for a daemon started by systemd (``Type=notify``); None otherwise."""
    if not os.environ.get("NOTIFY_SOCKET"):
        return None
    from qtasks_cli.systemd import agent_from_env

    agent = agent_from_env(os.environ)
    if agent is not None:
        agent.snapshot = supervisor.snapshot
        bus.subscribe(agent.on_event)
    return agent


def _file_digest(path: Path) -> bytes | None:
    """sha256 of the file's bytes (kept instead of the bytes: 0.9 MB for 10,000 jobs), or
    None when it cannot be read (``load`` then says why)."""
    import hashlib

    try:
        return hashlib.sha256(path.read_bytes()).digest()
    except OSError:
        return None


def _emit_notice(bus: EventBus, message: str, level: int = logging.INFO) -> None:
    from qtasks_cli.events import Notice

    bus.emit(Notice(time=datetime.now(timezone.utc), message=message, level=level))
