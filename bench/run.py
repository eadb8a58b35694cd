"""Benchmarks of qtasks against APScheduler 3 and yacron; one command, one run, one machine.

    python bench/run.py                  # everything (about 10 minutes), rewrites BENCHMARKS.md
    python bench/run.py --quick          # a smoke run in under 2 minutes; bench/out/ only
    python bench/run.py --only lateness,startup
    python bench/run.py --only lateness  # also rewrites the lateness section of BENCHMARKS.md
    python bench/run.py --render         # BENCHMARKS.md again from bench/out/results.json

Parts: lateness (fire lateness and peak memory), idle, startup, throughput, yacron,
cluster (three nodes sharing a PostgreSQL schema; $QTASKS_BENCH_POSTGRES or the local server),
stress (50 per-second jobs beside a stalled reader, a stopped terminal, huge results, floods,
hostile exceptions).
The qtasks measured is the one installed in the Python running this script; the anchors are
installed into bench/.venv-anchors. Raw results go to bench/out/: results.json for a full run
(results-quick.json or results-partial.json otherwise) and a timestamped copy. BENCHMARKS.md is
written from bench/BENCHMARKS.md.in only by a full run of every part, unless --write-md says
otherwise. Not a test: nothing fails on a missed target.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
import venv
from datetime import datetime, timezone
from typing import Any

import common

PARTS = (
    "lateness",
    "idle",
    "startup",
    "throughput",
    "yacron",
    "cluster",
    "stress",
    "scale",
    "history",
)
ALONE = ("lateness", "scale", "history")  # parts that rewrite their own section alone
PINS = ("APScheduler==3.11.3", "yacron==0.19.0")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Benchmark qtasks against APScheduler 3 and yacron."
    )
    parser.add_argument("--quick", action="store_true", help="short smoke run (< 2 minutes)")
    parser.add_argument(
        "--only", default=",".join(PARTS), help=f"comma-separated parts: {', '.join(PARTS)}"
    )
    parser.add_argument(
        "--write-md",
        choices=("auto", "yes", "no"),
        default="auto",
        help="write BENCHMARKS.md (auto: only after a full run of every part)",
    )
    parser.add_argument(
        "--render",
        action="store_true",
        help="only rewrite BENCHMARKS.md from bench/out/results.json (no measuring)",
    )
    options = parser.parse_args(argv)
    if options.render:
        import report

        saved = json.loads((common.OUT / "results.json").read_text())
        (common.ROOT / "BENCHMARKS.md").write_text(report.render(saved))
        print(f"wrote {common.ROOT / 'BENCHMARKS.md'} from {common.OUT / 'results.json'}")
        return 0
    parts = [p.strip() for p in options.only.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        parser.error(f"--only: unknown part(s) {unknown!r}; expected some of {', '.join(PARTS)}")

    common.install_cleanup()
    common.OUT.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    command = "python bench/run.py" + (" " + shlex.join(argv or sys.argv[1:])).rstrip()
    print(f"qtasks benchmarks: {command}")
    print(f"qtasks from {common.QTASKS}; anchors in {common.ANCHOR_VENV}")
    if set(parts) <= set(ALONE) and common.has_apscheduler(common.anchor_python()):
        print(f"APScheduler 3 from {common.anchor_python()} (the bench extra)")
    else:
        ensure_anchors()

    import machine

    results: dict[str, Any] = {
        "command": command,
        "quick": options.quick,
        "parts": parts,
        "pins": list(PINS),
        "started": _now(),
        "machine": machine.describe(),
    }
    m = results["machine"]
    print(
        f"machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB, {m['os']}, "
        f"Python {m['python']}; load average {' '.join(m['load_average_at_start'])}"
    )
    yacron_pending = None
    if options.quick and "yacron" in parts and len(parts) > 1:
        import yacron_bench

        # A smoke run cannot afford a minute of waiting alone: yacron waits for its minute
        # boundary while the other parts run, and its figure is marked as taken that way.
        print("\n== yacron (started now, collected last) ==", flush=True)
        yacron_pending = yacron_bench.Pending(quick=True, alongside=True)
    for part in PARTS:
        if part not in parts:
            continue
        print(f"\n== {part} ==", flush=True)
        part_began = time.monotonic()
        if part == "yacron" and yacron_pending is not None:
            results[part] = yacron_pending.finish().as_dict()
        else:
            results[part] = _run_part(part, options.quick)
        print(f"  ({time.monotonic() - part_began:.0f} s)")
    results["finished"] = _now()
    results["seconds"] = round(time.monotonic() - began, 1)
    results["raw_file"] = _save(results, full=not options.quick and set(parts) == set(PARTS))

    import report

    print("\n== targets ==")
    for what, bound, shown, verdict in report.target_rows(results):
        print(f"  {what}: {shown} (bound {bound}) -> {verdict.strip('*')}")
    full = not options.quick and set(parts) == set(PARTS)
    alone = not options.quick and set(parts) <= set(ALONE) and options.write_md != "no"
    if options.write_md == "yes" or (options.write_md == "auto" and full):
        target = common.ROOT / "BENCHMARKS.md"
        target.write_text(report.render(results))
        print(f"\nwrote {target}")
    elif alone and all(_replace_section(p, report.section(p, results)) for p in parts):
        print(f"\nwrote the {', '.join(parts)} section(s) of {common.ROOT / 'BENCHMARKS.md'}")
    else:
        print("\nBENCHMARKS.md left as it is (only a full run of every part rewrites it)")
    print(f"total {results['seconds']:.0f} s")
    return 0


def _run_part(part: str, quick: bool) -> Any:
    if part == "lateness":
        import lateness

        return [r.as_dict() for r in lateness.measure_all(quick=quick)]
    if part == "idle":
        import idle

        return [r.as_dict() for r in idle.measure_all(quick=quick)]
    if part == "startup":
        import startup

        return [r.as_dict() for r in startup.measure_all(quick=quick)]
    if part == "throughput":
        import throughput

        return throughput.measure(quick=quick).as_dict()
    if part == "yacron":
        import yacron_bench

        return yacron_bench.measure(quick=quick).as_dict()
    if part == "cluster":
        import cluster

        return cluster.measure(quick=quick).as_dict()
    if part == "stress":
        import stress

        return stress.measure_all(quick=quick)
    if part == "scale":
        import scale

        return scale.measure(jobs=1000 if quick else 10_000, rounds=1 if quick else 3).as_dict()
    if part == "history":
        import history_stats
        import prune

        return {
            "stats": history_stats.measure(quick=quick),
            "prune": prune.measure(quick=quick).as_dict(),
        }
    raise AssertionError(part)


def ensure_anchors() -> None:
    """Create bench/.venv-anchors with the pinned anchors unless it already has them."""
    python = common.anchor_python()
    check = "import importlib.metadata as m; print(m.version('APScheduler'), m.version('yacron'))"
    wanted = " ".join(pin.split("==")[1] for pin in PINS)
    try:
        have = common.run([python, "-c", check], timeout=60).stdout.strip()
    except (OSError, RuntimeError):
        have = ""
    if have == wanted:
        return
    print(f"installing the anchors into {common.ANCHOR_VENV}: {', '.join(PINS)}", flush=True)
    if not common.ANCHOR_VENV.exists():
        venv.EnvBuilder(with_pip=True, clear=True).create(common.ANCHOR_VENV)
    done = subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *PINS],
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"installing {', '.join(PINS)} into {common.ANCHOR_VENV} failed")


def _replace_section(part: str, text: str) -> bool:
    """Put ``text`` between the ``part`` markers of BENCHMARKS.md; False without markers."""
    target = common.ROOT / "BENCHMARKS.md"
    begin, end = f"<!-- {part}:start -->\n", f"\n<!-- {part}:end -->"
    current = target.read_text()
    if begin not in current or end not in current:
        return False
    head, rest = current.split(begin, 1)
    _, tail = rest.split(end, 1)
    target.write_text(f"{head}{begin}{text}{end}{tail}")
    return True


def _save(results: dict[str, Any], *, full: bool) -> str:
    """Write the raw results; return the timestamped file's name."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    kind = "" if full else "-quick" if results["quick"] else "-partial"
    latest = common.OUT / f"results{kind}.json"
    stamped = f"results-{stamp}{kind}.json"
    results["raw_file"] = stamped
    text = json.dumps(results, indent=2, default=str) + "\n"
    latest.write_text(text)
    (common.OUT / stamped).write_text(text)
    print(f"\nraw results: {latest} (and {stamped})")
    return stamped


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


if __name__ == "__main__":
    raise SystemExit(main())
