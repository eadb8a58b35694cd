"""Firing under stress: 50 jobs firing every second beside one stressor at a time, with p99
lateness and missed fires per stressor (target: no missed fire, p99 < 50 ms).

Stressors: a pipe nobody reads (``qtasks run ... | sleep``), a pseudo-terminal stopped with
Ctrl-S (XOFF) while the live table runs, a job returning 100 MB, a job returning a list of ten
million items, a job flooding stdout, and jobs raising exceptions whose ``__str__`` raises
SystemExit or KeyboardInterrupt (or returning objects whose ``__repr__`` does).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import struct
import termios
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import common
import configs
import lateness

JOBS = 50

STRESSORS: dict[str, tuple[str, str]] = {
    # name: (what, extra YAML jobs)
    # The anchor of the same run: what this machine's timers give the 50 jobs with nothing
    # else going on (a virtual machine's timer overshoot varies from hour to hour).
    "none (baseline)": ("the 50 per-second jobs alone, `--ui plain` to a file", ""),
    "stalled pipe reader": (
        "stdout and stderr go to a pipe nobody reads; a job prints 2,000 lines a second",
        "  chatty: {entrypoint: 'stressjobs:chatty', schedule: '* * * * * *'}\n",
    ),
    "XOFF'd terminal, live table": (
        "`--ui live` in a pseudo-terminal stopped with Ctrl-S once firing began, until the end",
        "  chatty: {entrypoint: 'stressjobs:chatty', schedule: '* * * * * *'}\n",
    ),
    "job returning 100 MB": (
        "a job returns 100 MB of bytes every second",
        "  big: {entrypoint: 'stressjobs:hundred_mb', schedule: '* * * * * *'}\n",
    ),
    "job returning 10M items": (
        "a job returns a list of ten million ints every 3 s",
        "  many: {entrypoint: 'stressjobs:ten_million', schedule: '*/3 * * * * *'}\n",
    ),
    "process job, 3M tuples": (
        "an `isolation: process` job returns a list of three million tuples every 3 s",
        "  tuples: {entrypoint: 'stressjobs:three_million_tuples', schedule: '*/3 * * * * *', "
        "isolation: process}\n",
    ),
    "job flooding stdout": (
        "a job prints 10,000 lines and one 8 MB line every second (stdout read)",
        "  floods: {entrypoint: 'stressjobs:floods', schedule: '* * * * * *'}\n",
    ),
    "odd exceptions": (
        "4 jobs every second: `__str__` raising SystemExit / KeyboardInterrupt, sync and async; "
        "`__repr__` of the result raising SystemExit",
        "  exit_str: {entrypoint: 'stressjobs:raises_exit_str', schedule: '* * * * * *'}\n"
        "  interrupt_str: {entrypoint: 'stressjobs:araises_interrupt_str', "
        "schedule: '* * * * * *'}\n"
        "  exit_repr: {entrypoint: 'stressjobs:returns_exit_repr', schedule: '* * * * * *'}\n"
        "  aexit_repr: {entrypoint: 'stressjobs:areturns_exit_repr', schedule: '* * * * * *'}\n",
    ),
    "spinning __str__, stolen signals": (
        "every second: an exception whose `__str__` loops forever and swallows every "
        "BaseException; an async job setting SIGTERM to SIG_IGN and clearing the wake-up fd",
        "  spins: {entrypoint: 'stressjobs:raises_spins_str', schedule: '* * * * * *'}\n"
        "  signals: {entrypoint: 'stressjobs:takes_signals', schedule: '* * * * * *'}\n",
    ),
}


@dataclass(kw_only=True)
class Stress(lateness.Lateness):
    stressor: str = ""
    what: str = ""
    exit_code: int | None = None


def measure_all(*, quick: bool) -> list[dict[str, object]]:
    window = 4.0 if quick else 15.0
    warmup = 0.0 if quick else 2.0
    rows: list[dict[str, object]] = []
    for name in STRESSORS:
        try:
            rows.append(measure(name, window=window, warmup=warmup).as_dict())
        except Exception as exc:  # a scheduler that never fires: say so, measure the rest
            print(f"  {name:<28} failed: {exc}")
            rows.append({"stressor": name, "what": STRESSORS[name][0], "note": str(exc)})
    return rows


def measure(name: str, *, window: float, warmup: float) -> Stress:
    what, extra = STRESSORS[name]
    result = Stress(scheduler="qtasks", jobs=JOBS, stressor=name, what=what)
    slug = name.replace(" ", "-").replace("'", "")
    with common.workdir(f"stress-{slug}") as work:
        config = configs.qtasks_ticking(work / "jobs.yaml", JOBS, schedule="* * * * * *")
        config.write_text(config.read_text() + extra)
        out = work / "starts.txt"
        env = common.bench_env(QTBENCH_OUT=str(out))
        ui = "live" if "live" in name else "plain"
        result.ui = ui
        cmd = [common.QTASKS, "run", str(config), "--ui", ui]
        launch: Callable[[], lateness._Running]
        if name == "stalled pipe reader":
            launch = lambda: _StalledPipe(cmd, work, env)  # noqa: E731
        elif ui == "live":
            launch = lambda: _StoppedTerminal(cmd, work, env, out)  # noqa: E731
        else:
            launch = lambda: lateness._PipeRunning(cmd, work, env)  # noqa: E731
        lateness._observe(result, launch, out, JOBS, window=window, warmup=warmup)
        result.history = lateness._qtasks_history(work / "state.db")
    print(
        f"  {name:<28} p50 {result.p50_ms} ms  p99 {result.p99_ms} ms  max {result.max_ms} ms  "
        f"missed {result.missed}/{result.expected}  doubled {result.doubled}  "
        f"other load {result.other_load}"
    )
    return result


class _StalledPipe(lateness._Running):
    """stdout and stderr into a pipe that is never read (until the daemon is stopped)."""

    def __init__(self, cmd: list[str], work: Path, env: dict[str, str]) -> None:
        self._read, write = os.pipe()
        self.proc = common.spawn(cmd, cwd=work, env=env, stdout=write, stderr=write)
        os.close(write)

    def close(self) -> None:
        os.set_blocking(self._read, False)
        with contextlib.suppress(OSError):
            while os.read(self._read, 1 << 20):  # the reader comes back, so the exit can end
                pass
        super().close()
        os.close(self._read)


class _StoppedTerminal(lateness._Running):
    """A pseudo-terminal read as fast as it writes (like a terminal emulator), stopped with
    Ctrl-S (IXON) once the jobs have started firing and kept stopped until the end."""

    def __init__(self, cmd: list[str], work: Path, env: dict[str, str], out: Path) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
        attrs = termios.tcgetattr(slave)
        attrs[0] |= termios.IXON
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
        env = {**env, "TERM": "xterm-256color", "COLUMNS": "160", "LINES": "50"}
        self.proc = common.spawn(cmd, cwd=work, env=env, stdout=slave, stderr=slave, stdin=slave)
        os.close(slave)
        self._master = master
        self._out = out
        self._done = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._stopper = threading.Thread(target=self._stop_output, daemon=True)
        self._stopper.start()

    def _read(self) -> None:
        while not self._done.is_set():
            try:
                if not os.read(self._master, 65536):
                    return
            except OSError:
                return

    def _stop_output(self) -> None:
        while not self._done.is_set():
            if self._out.exists() and self._out.stat().st_size > 0:
                os.write(self._master, b"\x13")  # Ctrl-S: the terminal stops taking output
                return
            time.sleep(0.01)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._master, b"\x11")  # Ctrl-Q
        super().close()
        self._done.set()
        with contextlib.suppress(OSError):
            os.close(self._master)


def render(rows: Sequence[dict[str, object]]) -> str:
    """The BENCHMARKS.md table."""
    lines = [
        "| stressor | what it does | p50 | p99 | max | missed fires | other load | target met |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        if r.get("p99_ms") is None:
            why = str(r.get("note") or "no start in the window")
            lines.append(f"| {r['stressor']} | {r['what']} | – | – | – | {why} | – | **no** |")
            continue
        p99 = r.get("p99_ms")
        ok = r.get("missed") == 0 and isinstance(p99, (int, float)) and p99 < 50
        lines.append(
            f"| {r['stressor']} | {r['what']} | {r.get('p50_ms')} ms | {p99} ms | "
            f"{r.get('max_ms')} ms | {r.get('missed')} of {r.get('expected')} | "
            f"{r.get('other_load')} cores | {'yes' if ok else '**no**'} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    quick = "--quick" in sys.argv
    rows = measure_all(quick=quick)
    print(render(rows))
