"""The sections of BENCHMARKS.md for work that grows with the file and the history: start-up
and memory with 10,000 jobs (``scale``), and ``history --stats`` and pruning over 1,000,000 runs
(``history``), each with its targets (issue 16). ``python bench/run.py --only scale,history``
measures them and rewrites these sections alone."""

from __future__ import annotations

from typing import Any

SCALE_INTRO = """\
10,000 jobs `benchjobs:tick` on an hourly cron at a minute half an hour away (nothing fires),
in one file; APScheduler 3 (`AsyncIOScheduler`, `bench/anchors/aps_lateness.py`) adds the
same 10,000 jobs with `add_job`. The commands take turns, and each figure is the median of the
rounds (`bench/scale.py`): `validate` is the whole command's wall time (it also imports every
entry point); *ready* is from launch to the `ready` line (qtasks: `qtasks run FILE --ui plain`,
SQLite history); RSS is the resident set (VmRSS) 3 s after ready."""

HISTORY_INTRO = """\
A history of 1,000,000 finished runs (50 jobs × 20,000, one attempt each). `history --stats`
(`bench/history_stats.py`): `store.stats()` in the bench process and the whole command, median
of 3, on SQLite and on a PostgreSQL schema (filled with one `INSERT ... SELECT`, then
`VACUUM ANALYZE`, as autovacuum leaves a table that grew by inserts). Pruning
(`bench/prune.py`): 900,000 of the runs deleted (`keep_runs: 2000`) through the store API, and
by a running daemon whose 50 jobs fire every second meanwhile: its lateness, missed fires and
fires without a history row are scored over the prune."""


def _median(values: list[float] | None) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def _num(value: float | None, unit: str) -> str:
    return "–" if value is None else f"{value:g} {unit}"


def _table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def scale_targets(s: dict[str, Any] | None) -> list[tuple[str, str, str, str]]:
    """Issue 16: ``validate`` and start-up with 10,000 jobs no slower than APScheduler 3
    starts them; RSS at most 1.2 × APScheduler 3's."""
    if not s:
        return []
    jobs = f"{s['jobs']:,}"
    aps_ready, aps_rss = _median(s.get("aps_ready_s")), _median(s.get("aps_rss_mb"))
    rows = []
    for what, key in (("`qtasks validate`", "validate_s"), ("start-up to ready", "qtasks_ready_s")):
        mine = _median(s.get(key))
        ok = mine is not None and aps_ready is not None and mine <= aps_ready
        rows.append(
            (
                f"{what}, {jobs} jobs",
                f"≤ APScheduler 3 ready ({_num(aps_ready, 's')})",
                _num(mine, "s"),
                "met" if ok else "**missed**",
            )
        )
    rss = _median(s.get("qtasks_rss_mb"))
    ok = rss is not None and aps_rss is not None and rss <= 1.2 * aps_rss
    bound = "–" if aps_rss is None else f"{1.2 * aps_rss:.1f} MB"
    rows.append((f"RSS, {jobs} jobs", f"≤ 1.2× APScheduler 3 ({bound})", _num(rss, "MB"), _met(ok)))
    return rows


def _met(ok: bool) -> str:
    return "met" if ok else "**missed**"


def scale_section(results: dict[str, Any]) -> str:
    s = results.get("scale")
    if not s:
        return "Not measured in this run."
    rounds = len(s.get("validate_s", []))
    head = f"Measured on {results.get('finished', '?')} (UTC), {rounds} rounds.\n\n"
    rows = [
        ("qtasks", _join(s.get("validate_s")), _join(s.get("qtasks_ready_s")),
         _join(s.get("qtasks_rss_mb"))),
        ("APScheduler 3", "–", _join(s.get("aps_ready_s")), _join(s.get("aps_rss_mb"))),
    ]  # fmt: skip
    table = _table(("program", "validate s", "ready s", "RSS MB"), rows)
    targets = _table(("target", "bound", "measured (median)", ""), scale_targets(s))
    return f"{SCALE_INTRO}\n\n{head}{table}\n\n{targets}"


def _join(values: list[float] | None) -> str:
    return ", ".join(f"{v:g}" for v in values) if values else "–"


def history_targets(h: dict[str, Any] | None) -> list[tuple[str, str, str, str]]:
    """Issue 16: ``history --stats`` at 1,000,000 rows under 0.5 s; a prune in the running
    daemon as fast as through the store API (within 10%), with no fire missed, late past
    50 ms or unrecorded, and the file smaller afterwards."""
    if not h:
        return []
    rows = []
    stats = h.get("stats") or {}
    for store, name in (("sqlite", "SQLite"), ("postgres", "PostgreSQL")):
        found = stats.get(store) or {}
        if not found or found.get("available") is False:
            continue
        cli = found.get("cli_s")
        rows.append(
            (
                f"`history --stats`, {stats.get('runs', 0):,} runs, {name}",
                "< 0.5 s",
                _num(cli, "s"),
                _met(cli is not None and cli < 0.5),
            )
        )
    p = h.get("prune")
    if p:
        api, daemon = p.get("api_s"), p.get("daemon_s")
        ok = api is not None and daemon is not None and daemon <= 1.1 * api
        rows.append(
            (
                f"prune {p['deleted_expected']:,} of {p['rows']:,} runs in the daemon",
                f"≤ store API ({_num(api, 's')}) + 10%",
                _num(daemon, "s"),
                _met(ok),
            )
        )
        calm = (
            p.get("missed") == 0
            and p.get("unrecorded") == 0
            and p.get("max_ms") is not None
            and p["max_ms"] < 50
        )
        rows.append(
            (
                "fires while the daemon prunes",
                "0 missed, 0 unrecorded, max < 50 ms",
                f"{p.get('missed')} missed, {p.get('unrecorded')} unrecorded, max "
                f"{_num(p.get('max_ms'), 'ms')}",
                _met(calm),
            )
        )
        before, after = p.get("size_before_mb"), p.get("size_after_restart_mb")
        rows.append(
            (
                "file after the prune and a restart",
                f"smaller than before ({_num(before, 'MB')})",
                _num(after, "MB"),
                _met(before is not None and after is not None and after < before),
            )
        )
    return rows


def history_section(results: dict[str, Any]) -> str:
    h = results.get("history")
    if not h:
        return "Not measured in this run."
    head = f"Measured on {results.get('finished', '?')} (UTC).\n\n"
    rows = []
    stats = h.get("stats") or {}
    for store, name in (("sqlite", "SQLite"), ("postgres", "PostgreSQL")):
        found = stats.get(store) or {}
        if found.get("available") is False:
            rows.append((name, "–", f"not measured: {found.get('note', '')}"))
        elif found:
            rows.append(
                (name, _num(found.get("store_stats_s"), "s"), _num(found.get("cli_s"), "s"))
            )
    table = _table(("store", "`store.stats()`", "`qtasks history --stats`"), rows)
    p = h.get("prune") or {}
    prune = _table(
        ("", ""),
        [
            ("runs / deleted", f"{p.get('rows', 0):,} / {p.get('deleted_expected', 0):,}"),
            ("store API", _num(p.get("api_s"), "s")),
            ("running daemon (ready to `pruned` line)", _num(p.get("daemon_s"), "s")),
            ("fires meanwhile (missed / doubled / unrecorded)",
             f"{p.get('fires')} ({p.get('missed')} / {p.get('doubled')} / {p.get('unrecorded')})"),
            ("lateness meanwhile p50 / p99 / max",
             f"{p.get('p50_ms')} / {p.get('p99_ms')} / {p.get('max_ms')} ms"),
            ("file before / after API / after daemon / after restart",
             f"{p.get('size_before_mb')} / {p.get('size_after_api_mb')} / "
             f"{p.get('size_after_daemon_mb')} / {p.get('size_after_restart_mb')} MB"),
            ("other load (cores)", p.get("other_load")),
        ],
    )  # fmt: skip
    targets = _table(("target", "bound", "measured", ""), history_targets(h))
    return f"{HISTORY_INTRO}\n\n{head}{table}\n\n{prune}\n\n{targets}"
