"""The Prometheus endpoint (``settings.metrics``), served with ``prometheus_client`` in a
thread that sleeps until a scrape comes (qtasks_cli.scrape); only imported when metrics are
on, since the library costs import time.

The loop's only part is the event sink, which appends the few events that count to a deque
(tens of nanoseconds). Everything else happens off the loop: the events are folded into
counters and histograms by the control thread each round and at each scrape, the gauges
come from the control thread's latest snapshot, and the last successes are read from the
store at scrape time, so they hold for every node of a cluster.
"""

from __future__ import annotations

import bisect
import collections
import logging
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from qtasks_cli.errors import ConfigError, QtasksError
from qtasks_cli.events import Event, EventBus, EventKind, Finished, Started

if TYPE_CHECKING:
    from qtasks_cli.control import Controller
    from qtasks_cli.models import Config, RunStatus

log = logging.getLogger(__name__)

# Seconds; the last bucket (+Inf) is added by the exposition.
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
LATENESS_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 60.0)
# Every final status is counted once, by the daemon that recorded it: runs that ended here,
# fires skipped or missed, and runs of a dead daemon this one concluded interrupted.
_COUNTED = frozenset(
    {EventKind.FINISHED, EventKind.SKIPPED, EventKind.MISSED, EventKind.STARTED,
     EventKind.INTERRUPTED}
)  # fmt: skip
_BACKLOG = 1_000_000  # events kept between two folds


class _Histogram:
    """Cumulative bucket counts and a sum, as the exposition format wants them."""

    __slots__ = ("buckets", "count", "counts", "total")

    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.count += 1

    def exposition(self) -> list[tuple[str, float]]:
        cumulative, running = [], 0
        for bound, count in zip([*map(_bound, self.buckets), "+Inf"], self.counts):
            running += count
            cumulative.append((bound, float(running)))
        return cumulative


def _bound(value: float) -> str:
    return repr(float(value))


class StoreErrorCounter(logging.Handler):
    """Counts the store errors the daemon logs (``cannot ...`` warnings and errors of the
    supervisor, the stores and the control thread)."""

    _SOURCES = ("qtasks_cli.store", "qtasks_cli.supervisor", "qtasks_cli.control")

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(self._SOURCES) and str(record.msg).startswith(
            ("cannot", "%s: dropped")
        ):
            self.count += 1


class Metrics:
    """What the endpoint shows; ``sink`` goes on the event bus. Until a controller is
    attached (the daemon is still opening its store), only the counters are shown."""

    def __init__(self, controller: Controller | None = None) -> None:
        self.controller = controller
        self._events: collections.deque[Event] = collections.deque(maxlen=_BACKLOG)
        self._lock = threading.Lock()
        self.runs: collections.Counter[tuple[str, str]] = collections.Counter()
        self.durations: dict[str, _Histogram] = {}
        self.lateness: dict[str, _Histogram] = {}
        self.last_success: dict[str, float] = {}
        self.store_errors = StoreErrorCounter()

    def sink(self, event: Event) -> None:
        """Bus sink, on the loop: keep the events that count, nothing more."""
        recorded = event.recorded if isinstance(event, Finished) else True
        if event.kind in _COUNTED and event.job is not None and recorded:
            self._events.append(event)

    def fold(self) -> None:
        """Fold the kept events into the counters; any thread."""
        with self._lock:
            while self._events:
                self._fold(self._events.popleft())

    def _fold(self, event: Event) -> None:
        job = event.job or ""
        if isinstance(event, Started):
            if event.scheduled is not None:
                late = max(0.0, (event.time - event.scheduled).total_seconds())
                self.lateness.setdefault(job, _Histogram(LATENESS_BUCKETS)).observe(late)
            return
        given: RunStatus | None = getattr(event, "status", None)  # skipped, missed, interrupted
        status = given.value if given is not None else str(event.kind)
        self.runs[(job, status)] += 1
        if isinstance(event, Finished) and event.duration is not None:
            self.durations.setdefault(job, _Histogram(DURATION_BUCKETS)).observe(event.duration)
        if status == "succeeded":
            stamp = event.time.timestamp()
            self.last_success[job] = max(stamp, self.last_success.get(job, 0.0))

    def _read_last_successes(self) -> None:
        """Merge the store's last successes (every node's runs) into ours."""
        if self.controller is None:
            return
        try:
            found = self.controller.read(lambda store: store.last_successes())
        except (QtasksError, RuntimeError) as exc:
            log.warning("cannot read last successes for the metrics: %s", exc)
            return
        with self._lock:
            for job, when in found.items():
                stamp = when.timestamp()
                self.last_success[job] = max(stamp, self.last_success.get(job, 0.0))

    def collect(self) -> Iterator[Any]:
        """prometheus_client's collector protocol: every metric family, at scrape time."""
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        self.fold()
        self._read_last_successes()
        with self._lock:
            runs = CounterMetricFamily(
                "qtasks_runs", "Runs and fires recorded by this daemon, by final status.",
                labels=["job", "status"],
            )  # fmt: skip
            for (job, status), count in sorted(self.runs.items()):
                runs.add_metric([job, status], count)
            yield runs
            yield self._histograms(
                HistogramMetricFamily,
                "qtasks_run_duration_seconds",
                "How long runs took, first attempt start to end.",
                self.durations,
            )
            yield self._histograms(
                HistogramMetricFamily,
                "qtasks_fire_lateness_seconds",
                "How late scheduled runs started after their scheduled time.",
                self.lateness,
            )
            success = GaugeMetricFamily(
                "qtasks_job_last_success_timestamp_seconds",
                "Unix time of the job's last successful run (any node).",
                labels=["job"],
            )
            for job, stamp in sorted(self.last_success.items()):
                success.add_metric([job], stamp)
            yield success
        yield from self._gauges(GaugeMetricFamily)
        dropped = CounterMetricFamily(
            "qtasks_log_lines_dropped", "Log and output lines dropped because their reader stalled."
        )
        dropped.add_metric([], float(_dropped_log_lines()))
        yield dropped
        errors = CounterMetricFamily(
            "qtasks_store_errors", "Errors reading or writing the state store."
        )
        errors.add_metric([], float(self.store_errors.count))
        yield errors

    @staticmethod
    def _histograms(family: Any, name: str, help_text: str, data: dict[str, _Histogram]) -> Any:
        metric = family(name, help_text, labels=["job"])
        for job, hist in sorted(data.items()):
            metric.add_metric([job], hist.exposition(), hist.total)
        return metric

    def _gauges(self, family: Any) -> Iterator[Any]:
        # Once per scrape.
        snapshot = self.controller.fresh_snapshot() if self.controller is not None else None
        running = family(
            "qtasks_running_runs", "Runs whose body runs on this daemon (each holds a slot)."
        )
        waiting = family("qtasks_slot_waiting_runs", "Runs waiting for a free max_concurrent slot.")
        queued = family(
            "qtasks_queued_runs",
            "Runs queued behind their job's previous run (overlap: queue, catch-up).",
        )
        abandoned = family(
            "qtasks_abandoned_runs",
            "Runs given up on (timeout, cancel) whose thread or task still runs; each holds "
            "a slot until it returns.",
        )
        paused = family(
            "qtasks_paused_jobs",
            "Jobs paused with qtasks pause (kept by name until resumed, in the job file or not).",
        )
        next_fire = family(
            "qtasks_job_next_fire_timestamp_seconds",
            "Unix time of the job's next scheduled fire.",
            labels=["job"],
        )
        job_paused = family(
            "qtasks_job_paused", "1 while the job is paused (qtasks pause).", labels=["job"]
        )
        if snapshot is not None:
            running.add_metric([], snapshot.running)
            waiting.add_metric([], snapshot.waiting)
            queued.add_metric([], snapshot.queued)
            abandoned.add_metric([], snapshot.abandoned)
            paused.add_metric([], len(snapshot.paused_jobs))
            for view in snapshot.jobs:
                job_paused.add_metric([view.name], 1.0 if view.paused else 0.0)
                if view.next_fire is not None and view.enabled and not view.paused:
                    next_fire.add_metric([view.name], view.next_fire.timestamp())
            in_file = {view.name for view in snapshot.jobs}
            for name in snapshot.paused_jobs:  # removed from the file, still paused
                if name not in in_file:
                    job_paused.add_metric([name], 1.0)
        yield from (running, waiting, queued, abandoned, paused, next_fire, job_paused)


def _dropped_log_lines() -> int:
    """Lines dropped because their reader stalled (log records and job output), as
    ``qtasks_cli.ui.output.dropped_total()`` counts them (0 before output is set up)."""
    import sys

    module = sys.modules.get("qtasks_cli.ui.output")
    counter = getattr(module, "dropped_total", None)
    try:
        return int(counter()) if callable(counter) else 0
    except Exception:
        return 0


class MetricsServer:
    """The running endpoint; ``close`` stops it."""

    def __init__(self, server: Any, thread: threading.Thread, metrics: Metrics) -> None:
        self.server = server
        self.thread = thread
        self.metrics = metrics

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def attach(self, controller: Controller) -> None:
        """Show the gauges and last successes of ``controller``'s daemon from now on."""
        self.metrics.controller = controller
        controller.on_round.append(self.metrics.fold)

    def close(self) -> None:
        logging.getLogger("qtasks_cli").removeHandler(self.metrics.store_errors)
        self.server.stop()
        self.thread.join(5)
        self.server.server_close()


def start_metrics(config: Config, *, bus: EventBus) -> MetricsServer:
    """Serve the metrics on ``config.settings.metrics`` (host, port) in a thread, before the
    daemon does anything else; QtasksError (exit 2) when prometheus_client is missing, and
    a ConfigError located at the setting when the address cannot be bound."""
    from qtasks_cli.listen import MISSING_LIBRARY, bind_failure

    address = config.settings.metrics
    assert address is not None
    try:
        from prometheus_client.core import CollectorRegistry

        from qtasks_cli.scrape import serve
    except ImportError as exc:
        message = MISSING_LIBRARY.format(why=f" ({exc})")
        raise ConfigError([config.problem("settings.metrics", message)]) from None
    metrics = Metrics()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics)
    host, port = address
    try:
        server, thread = serve(host, port, registry)
    except OSError as exc:
        raise ConfigError(
            [config.problem("settings.metrics", bind_failure(host, port, exc))]
        ) from None
    logging.getLogger("qtasks_cli").addHandler(metrics.store_errors)
    bus.subscribe(metrics.sink)
    log.info("metrics on http://%s:%d/metrics", host if ":" not in host else f"[{host}]", port)
    return MetricsServer(server, thread, metrics)
