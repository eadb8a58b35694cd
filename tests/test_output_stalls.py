"""Output that nobody reads, in process: writes never block, lines are dropped and counted, a
notice says how many once the reader is back, and the exit waits a bounded time. The installed
``qtasks run`` behind a stalled pipe or a stopped terminal: reliability/test_rel_output_stalls.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from qtasks_cli.ui import output

# --- in process ------------------------------------------------------------------------------


def test_a_full_pipe_drops_counts_and_tells_once_read_again() -> None:
    read_end, write_end = os.pipe()
    drain = output._TextDrain(write_end, "test", "utf-8", "strict")
    notices: list[int] = []
    drain.notice = notices.append  # type: ignore[method-assign]
    try:
        started = time.monotonic()
        for i in range(output.MAX_QUEUED * 3):
            drain.put(f"line {i} " + "z" * 100 + "\n", 1, 110)
        # Every write returned at once although nobody reads the pipe.
        assert time.monotonic() - started < 30
        assert drain.dropped.total > 0
        # The reader comes back: everything queued is written, then the notice.
        got = b""
        deadline = time.monotonic() + 30
        while not notices and time.monotonic() < deadline:
            os.set_blocking(read_end, False)
            try:
                got += os.read(read_end, 1 << 20)
            except BlockingIOError:
                time.sleep(0.01)
        assert notices == [drain.dropped.total]
        assert got.startswith(b"line 0 ")
    finally:
        os.close(read_end)
        os.close(write_end)


def test_the_exit_does_not_wait_for_a_reader_that_never_reads() -> None:
    read_end, write_end = os.pipe()
    drain = output._TextDrain(write_end, "test", "utf-8", "strict")
    try:
        for _ in range(2000):
            drain.put("w" * 1000 + "\n", 1, 1001)
        started = time.monotonic()
        drain.settle(time.monotonic() + 30)
        waited = time.monotonic() - started
        # It gives up after STALL_WAIT without progress, long before the 30 s deadline.
        assert waited < 15, waited
        assert drain.queue.unfinished_tasks > 0
    finally:
        os.close(read_end)
        os.close(write_end)


def test_a_normal_exit_writes_what_is_queued(tmp_path: Path) -> None:
    """An error printed just before ``sys.exit`` reaches the reader (atexit drains the queue)."""
    script = (
        "import logging, sys\n"
        "from qtasks_cli.ui import log\n"
        "log.configure('plain')\n"
        "for i in range(2000):\n"
        "    print(f'out {i}')\n"
        "logging.getLogger('x').warning('a warning')\n"
        "print('the last error', file=sys.stderr)\n"
        "sys.exit(3)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert done.returncode == 3
    assert done.stdout.splitlines()[-1] == "out 1999"
    assert "the last error" in done.stderr
    assert "a warning" in done.stderr
