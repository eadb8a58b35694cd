"""Several nodes on PostgreSQL: three ``qtasks run`` processes sharing one schema.

The nodes run the same file: N jobs ``benchjobs.tick`` firing every second, and ``stamp``, a job
with no schedule. Each node writes its starts to its own file, so the files say which node ran
what. Fire lateness is scored as in lateness.py over the starts of every node together: a (job,
second) with no start on any node is a miss, a second start anywhere is a double. Then the bench
process hands ``stamp`` runs to the cluster through ``qtasks_cli.enqueue(...)``, each carrying
its send time, and the job records its start: enqueue-to-start latency is start minus send.
The schema is a fresh one per run and is dropped afterwards.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import subprocess
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import common
import configs

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"
NODES = 3


@dataclass(kw_only=True)
class Cluster:
    nodes: int
    jobs: int
    available: bool = True
    note: str = ""
    schema: str = ""
    # Fire lateness over every node's starts.
    window_s: float = 0.0
    starts: int = 0
    expected: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    missed: int = 0
    doubled: int = 0
    first_fire_after_s: float | None = None  # from launching the nodes to the first start
    starts_per_node: list[int] = field(default_factory=list)  # within the window
    cpu_s_per_s: list[float] = field(default_factory=list)  # per node, while firing
    other_load: float | None = None
    # Enqueue-to-start latency of handed-over runs.
    enqueued: int = 0
    enqueue_call_p50_ms: float | None = None
    enqueue_p50_ms: float | None = None
    enqueue_p99_ms: float | None = None
    enqueue_max_ms: float | None = None
    enqueue_ran_once: int = 0
    enqueue_ran_twice_or_more: int = 0
    enqueue_never_ran: int = 0
    enqueue_per_node: list[int] = field(default_factory=list)
    exactly_once: bool = False
    history: dict[str, int] = field(default_factory=dict)  # "job kind: status" -> runs

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def state_url() -> str:
    return os.environ.get("QTASKS_BENCH_POSTGRES") or DEFAULT_URL


def measure(*, quick: bool, jobs: int = 100) -> Cluster:
    window = 3.0 if quick else 20.0
    warmup = 1.0 if quick else 3.0
    count = 100 if quick else 200
    url = state_url()
    result = Cluster(nodes=NODES, jobs=jobs)
    reason = _unreachable(url)
    if reason:
        result.available = False
        result.note = f"not available: PostgreSQL at {_redact(url)} cannot be reached ({reason})"
        print(f"  cluster: {result.note}")
        return result
    result.schema = f"qtbench_{secrets.token_hex(6)}"
    with common.workdir("cluster") as work, _schema_dropped(url, result.schema):
        config = configs.qtasks_cluster(work / "jobs.yaml", jobs, schema=result.schema)
        outs = [work / f"starts-{i}.txt" for i in range(NODES)]
        logs = [(work / f"output-{i}.log").open("wb") for i in range(NODES)]
        launched = time.time()
        procs = [
            common.spawn(
                [common.QTASKS, "run", str(config), "--ui", "plain"],
                cwd=work,
                env=common.bench_env(QTASKS_STATE=url, QTBENCH_OUT=str(outs[i])),
                stdout=logs[i],
                stderr=subprocess.STDOUT,
            )
            for i in range(NODES)
        ]
        try:
            _fire(result, procs, outs, launched, window=window, warmup=warmup)
            _enqueue(result, procs, outs, config, url, count)
            result.history = _history(url, result.schema)
        finally:
            for proc in procs:
                common.stop(proc, timeout=30)
            for log_file in logs:
                log_file.close()
    result.exactly_once = (
        result.enqueue_ran_once == count
        and result.history.get("stamp: succeeded", 0) == count
        and not any(k.startswith("stamp:") and k != "stamp: succeeded" for k in result.history)
    )
    _print(result)
    return result


def _unreachable(url: str) -> str:
    """Why PostgreSQL at ``url`` cannot be used, or "" if it can."""
    try:
        import psycopg
    except ImportError as exc:
        return f"psycopg is not installed: {exc}"
    try:
        with psycopg.connect(url, connect_timeout=1) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ""


def _redact(url: str) -> str:
    from qtasks_cli.store import redact_url

    return redact_url(url)


@contextlib.contextmanager
def _schema_dropped(url: str, schema: str) -> Iterator[None]:
    try:
        yield
    finally:
        import psycopg

        with psycopg.connect(url, connect_timeout=5, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _alive(procs: list[subprocess.Popen[bytes]]) -> None:
    for i, proc in enumerate(procs):
        if proc.poll() is not None:
            raise RuntimeError(f"cluster node {i} exited early with {proc.returncode}")


def _lines(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def _fire(
    result: Cluster,
    procs: list[subprocess.Popen[bytes]],
    outs: list[Path],
    launched: float,
    *,
    window: float,
    warmup: float,
) -> None:
    common.wait_until(
        lambda: (
            any(o.exists() and o.stat().st_size > 0 for o in outs)
            or any(p.poll() is not None for p in procs)
        ),
        timeout=180,
        what="the first start on any cluster node",
    )
    _alive(procs)
    result.first_fire_after_s = round(
        min(float(f[1]) for o in outs for f in _lines(o)[:1]) - launched, 3
    )
    start = math.floor(time.time()) + 1 + math.ceil(warmup)
    end = start + int(window)
    common.sleep_until(start)
    cpu_before = [common.cpu_seconds(p.pid) for p in procs]
    other = common.OtherLoad(procs[0].pid)
    common.sleep_until(end)
    cpu_after = [common.cpu_seconds(p.pid) for p in procs]
    # OtherLoad leaves out one process; the other nodes are this part's own load.
    own_others = sum(a - b for a, b in zip(cpu_after[1:], cpu_before[1:], strict=True))
    result.other_load = round(max(other.cores() - own_others / (end - start), 0.0), 2)
    result.cpu_s_per_s = [
        round((a - b) / (end - start), 3) for a, b in zip(cpu_after, cpu_before, strict=True)
    ]
    # Let the last second's starts land before reading them.
    common.sleep_until(end + 1.0)
    _alive(procs)
    _score(result, outs, start, end)


def _score(result: Cluster, outs: list[Path], start: int, end: int) -> None:
    per_job: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    per_node = []
    for out in outs:
        mine = 0
        for fields in _lines(out):
            if not fields[0].startswith("j"):
                continue
            t = float(fields[1])
            second = math.floor(t)
            if start <= second < end:
                per_job[fields[0]][second].append(t - second)
                mine += 1
        per_node.append(mine)
    lateness: list[float] = []
    missed = doubled = 0
    for i in range(result.jobs):
        seconds = per_job.get(configs.job_name(i), {})
        for second in range(start, end):
            starts = seconds.get(second, [])
            if not starts:
                missed += 1
                continue
            doubled += len(starts) - 1
            lateness.extend(starts)
    result.window_s = end - start
    result.expected = result.jobs * (end - start)
    result.starts = len(lateness)
    result.missed = missed
    result.doubled = doubled
    result.starts_per_node = per_node
    if lateness:
        result.p50_ms = common.rounded(common.percentile(lateness, 0.5) * 1000)
        result.p99_ms = common.rounded(common.percentile(lateness, 0.99) * 1000)
        result.max_ms = common.rounded(max(lateness) * 1000)


@contextlib.contextmanager
def _environ(**values: str) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _stamps(outs: list[Path]) -> tuple[dict[int, list[float]], list[int]]:
    """Latencies (s) per request number, and how many requests each node ran."""
    latency: dict[int, list[float]] = defaultdict(list)
    per_node = []
    for out in outs:
        mine = 0
        for fields in _lines(out):
            if fields[0].startswith("s"):
                latency[int(fields[0][1:])].append(float(fields[2]) - float(fields[1]))
                mine += 1
        per_node.append(mine)
    return latency, per_node


def _enqueue(
    result: Cluster,
    procs: list[subprocess.Popen[bytes]],
    outs: list[Path],
    config: Path,
    url: str,
    count: int,
) -> None:
    import qtasks_cli
    from qtasks_cli.store.postgres import close_cached_connections

    calls: list[float] = []
    spacing = 0.020
    with _environ(QTASKS_STATE=url):
        try:
            began = time.perf_counter()
            for n in range(count):
                sent = time.time()
                qtasks_cli.enqueue("stamp", n=n, sent=sent, config=config)
                calls.append(time.time() - sent)
                # Evenly spaced sends, whatever each call cost.
                left = began + (n + 1) * spacing - time.perf_counter()
                if left > 0:
                    time.sleep(left)
        finally:
            close_cached_connections()
    result.enqueued = count
    result.enqueue_call_p50_ms = common.rounded(common.percentile(calls, 0.5) * 1000)
    with contextlib.suppress(RuntimeError):
        common.wait_until(
            lambda: len(_stamps(outs)[0]) >= count,
            timeout=60,
            interval=0.1,
            what="every handed-over run to start",
        )
    _alive(procs)
    time.sleep(0.5)  # a second start of a request, if any, would land now
    latency, per_node = _stamps(outs)
    firsts = [runs[0] for runs in latency.values()]
    result.enqueue_per_node = per_node
    result.enqueue_ran_once = sum(1 for n in range(count) if len(latency.get(n, [])) == 1)
    result.enqueue_ran_twice_or_more = sum(1 for n in range(count) if len(latency.get(n, [])) > 1)
    result.enqueue_never_ran = sum(1 for n in range(count) if n not in latency)
    if firsts:
        result.enqueue_p50_ms = common.rounded(common.percentile(firsts, 0.5) * 1000)
        result.enqueue_p99_ms = common.rounded(common.percentile(firsts, 0.99) * 1000)
        result.enqueue_max_ms = common.rounded(max(firsts) * 1000)


def _history(url: str, schema: str) -> dict[str, int]:
    import psycopg

    with psycopg.connect(url, connect_timeout=5) as conn:
        rows = conn.execute(
            "SELECT CASE WHEN job = 'stamp' THEN 'stamp' ELSE 'tick' END AS kind, status, "
            f'count(*) FROM "{schema}".runs GROUP BY kind, status ORDER BY kind, status'
        ).fetchall()
    counts: Counter[str] = Counter()
    for kind, status, n in rows:
        counts[f"{kind}: {status}"] += n
    return dict(counts)


def _print(r: Cluster) -> None:
    print(
        f"  qtasks x{r.nodes} nodes N={r.jobs}  p50 {r.p50_ms} ms  p99 {r.p99_ms} ms  "
        f"max {r.max_ms} ms  starts {r.starts}/{r.expected}  missed {r.missed}  "
        f"doubled {r.doubled}  per node {r.starts_per_node}  cpu {r.cpu_s_per_s} s/s  "
        f"first fire {r.first_fire_after_s} s  other load {r.other_load}"
    )
    print(
        f"  enqueue x{r.enqueued} to start: p50 {r.enqueue_p50_ms} ms  p99 {r.enqueue_p99_ms} ms  "
        f"max {r.enqueue_max_ms} ms  (call p50 {r.enqueue_call_p50_ms} ms)  ran once "
        f"{r.enqueue_ran_once}, twice+ {r.enqueue_ran_twice_or_more}, never "
        f"{r.enqueue_never_ran}  per node {r.enqueue_per_node}  exactly once {r.exactly_once}  "
        f"history {r.history}"
    )
