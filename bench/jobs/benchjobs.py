"""Job functions the benchmarks schedule; shared by qtasks and the anchors, so every scheduler
pays the same cost per call. Standard library only: the anchors' venv imports this too."""

from __future__ import annotations

import os
import time

_fd: int | None = None


def _out() -> int:
    global _fd
    if _fd is None:
        # O_APPEND and one write per line: lines from concurrent runs never interleave, and
        # nothing sits in a buffer when the scheduler is killed or leaves through os._exit.
        _fd = os.open(os.environ["QTBENCH_OUT"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    return _fd


async def tick(name: str) -> None:
    """Record the moment this run started: ``name time.time()``."""
    started = time.time()
    os.write(_out(), f"{name} {started:.6f}\n".encode())


async def handed(n: int) -> None:
    """A handed-over job that only records which request ran: ``h<n> time.time()``."""
    os.write(_out(), f"h{n} {time.time():.6f}\n".encode())


async def stamp(n: int, sent: float) -> None:
    """A handed-over job that records when it started against when it was sent:
    ``s<n> sent time.time()``."""
    started = time.time()
    os.write(_out(), f"s{n} {sent:.6f} {started:.6f}\n".encode())
