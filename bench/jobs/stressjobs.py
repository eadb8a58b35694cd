"""Jobs that stress the daemon beside the ticking jobs of ``bench/stress.py``."""

from __future__ import annotations

import sys

MB = 1024 * 1024


class ExitsOnStr(Exception):
    def __str__(self) -> str:
        raise SystemExit(7)


class InterruptsOnStr(Exception):
    def __str__(self) -> str:
        raise KeyboardInterrupt


class ExitsOnRepr:
    def __repr__(self) -> str:
        raise SystemExit(7)


def chatty() -> None:
    """Enough output to fill a pipe in a second: 2,000 lines."""
    for i in range(2000):
        print(f"chatty line {i} " + "c" * 60)


def floods() -> None:
    """10,000 lines and 8 MB in one write, every second."""
    for i in range(10_000):
        print(f"flood line {i}")
    sys.stdout.write("f" * (8 * MB) + "\n")


def hundred_mb() -> bytes:
    return b"x" * (100 * MB)


def ten_million() -> list[int]:
    return [i for i in range(10_000_000)]


def three_million_tuples() -> list[tuple[int, int]]:
    return [(i, i) for i in range(3_000_000)]


def raises_exit_str() -> None:
    raise ExitsOnStr("never shown")


async def araises_interrupt_str() -> None:
    raise InterruptsOnStr("never shown")


def returns_exit_repr() -> ExitsOnRepr:
    return ExitsOnRepr()


async def areturns_exit_repr() -> list[object]:
    return [ExitsOnRepr()]


class SpinsOnStr(Exception):
    def __str__(self) -> str:
        while True:
            try:
                while True:
                    pass
            except BaseException:  # swallows even the request to stop
                pass


def raises_spins_str() -> None:
    raise SpinsOnStr("never shown")


async def takes_signals() -> None:
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.set_wakeup_fd(-1)
