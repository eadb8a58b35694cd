"""Cutting captured output into lines for the live table, in linear time and bounded memory.

Bytes come in chunks; complete lines are let go as soon as they are whole (except the first lines
of a known multi-line secret, held until the rest comes: ``redaction.hold_back``). A partial line
is held up to MAX_HELD bytes; a line longer than that is let go at that point, marked cut, and the
rest of it, up to its newline, is dropped without being kept. Each byte is looked at a bounded
number of times, so one 30 MB line costs as little as 30 MB of short lines.
"""

from __future__ import annotations

from collections.abc import Callable

MAX_HELD = 64 * 1024  # bytes of a partial line held until its newline comes


class LineCutter:
    """``feed`` it chunks; it returns the blocks ready to show, each with ``True`` when the
    block ends with a line that was cut (the rest of that line is dropped)."""

    def __init__(self, hold_back: Callable[[str], int]) -> None:
        self._hold_back = hold_back
        self._pending = bytearray()
        self._skipping = False  # dropping the rest of a cut line, up to its newline

    def feed(self, chunk: bytes) -> list[tuple[bytes, bool]]:
        if self._skipping:
            newline = chunk.find(b"\n")
            if newline < 0:
                return []
            chunk = chunk[newline + 1 :]
            self._skipping = False
        ready: list[tuple[bytes, bool]] = []
        start = len(self._pending)
        self._pending += chunk
        last = chunk.rfind(b"\n")
        if last >= 0:
            self._let_go(start + last + 1, ready)
        if len(self._pending) > MAX_HELD:
            newline = self._pending.rfind(b"\n") + 1
            if newline:  # held first lines of a secret whose rest never came: let them go
                ready.append((bytes(self._pending[:newline]), False))
                del self._pending[:newline]
            if len(self._pending) > MAX_HELD:  # one line longer than MAX_HELD: cut it
                ready.append((bytes(self._pending), True))
                self._pending.clear()
                self._skipping = True
        return ready

    def _let_go(self, cut: int, ready: list[tuple[bytes, bool]]) -> None:
        block = bytes(self._pending[:cut])
        text = block.decode("utf-8", "replace")
        stop = self._hold_back(text)
        if stop < len(text):
            tail = text[stop:].encode("utf-8")
            cut -= len(tail) if block.endswith(tail) else 0
        if cut:
            ready.append((bytes(self._pending[:cut]), False))
            del self._pending[:cut]

    def finish(self) -> list[tuple[bytes, bool]]:
        """What is left at the end of the stream."""
        if self._skipping or not self._pending:
            return []
        rest = bytes(self._pending)
        self._pending.clear()
        return [(rest, False)]
