"""The drain of what ``print`` writes to the process's stdout or stderr (``_TextDrain``): whole
lines dropped when full, a partial line held for its end, and each line shown with terminal
control stripped and the loaded job files' secrets hidden, on the drain thread."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from qtasks_cli import redaction
from qtasks_cli.text import clean_text, strip_sequences
from qtasks_cli.ui.drain import _Drain

HOLD_CHARS = 64 * 1024  # a partial line longer than this goes out without waiting
SECRET_WAIT = 5.0  # seconds the possible start of a secret waits for the rest of its line

_notices = logging.getLogger("qtasks.output")


def _shown(text: str) -> str:
    """Job output made safe to show: secrets hidden, then each line stripped of terminal
    control (a job's ``\r`` progress redraws keep their last part), then secrets hidden again
    (an escape sequence or invisible character inside a secret must not hide it)."""
    lines = redaction.redact_known(text).split("\n")
    shown = "\n".join(
        clean_text(strip_sequences(line).rstrip("\r").rsplit("\r", 1)[-1]) for line in lines
    )
    return redaction.redact_known(shown) if shown != text else shown


class _TextDrain(_Drain):
    """What ``print`` writes to the process's stdout or stderr.

    Dropping works on whole lines: ``print`` writes a line in pieces (the text, then ``\n``),
    and once a piece of a line is dropped the rest of that line is dropped too, so the output
    holds no line with its middle missing, and a line counts once however many writes made it.
    A line whose first part was already written when the queue filled is ended with a ``\n``
    of its own, before the next line."""

    def __init__(self, fd: int, name: str, encoding: str, errors: str) -> None:
        self.encoding, self.errors = encoding, errors
        self._line_lock = threading.Lock()
        self._at_start = True  # the next text starts a line
        self._dropping = False  # the rest of the current line is being dropped
        self._owe_newline = False  # a line's first part went out without its end
        self._held = ""  # the start of a line, waiting for its end (drain thread only)
        self._held_since: float | None = None  # when a possible secret's start was first held
        super().__init__(fd, name)

    def offer(self, text: str) -> None:
        """Queue ``text`` (one ``write``), dropping whole lines when the queue is full."""
        with self._line_lock:
            if self._dropping:
                end = text.find("\n")
                if end < 0:
                    return  # still the line being dropped
                text, self._dropping, self._at_start = text[end + 1 :], False, True
                if not text:
                    return
            lines = text.count("\n") + (0 if text.endswith("\n") else 1)
            if not self._at_start and text.startswith("\n"):
                lines -= 1  # only the end of a line already out: the newline is owed, not lost
            queued = "\n" + text if self._owe_newline else text
            if self.put(queued, lines, len(queued)):
                self._owe_newline = False
                self._at_start = text.endswith("\n")
                return
            if not self._at_start:
                self._owe_newline = True  # the line's first part is queued or written
            self._dropping = not text.endswith("\n")
            self._at_start = not self._dropping

    def render(self, item: Any) -> bytes:
        return self._encode(item)

    def _encode(self, text: str) -> bytes:
        try:
            return str.encode(text, self.encoding, "surrogateescape")  # bytes from .buffer
        except UnicodeEncodeError:  # a lone surrogate, or a character the encoding lacks
            return str.encode(text, self.encoding, "backslashreplace")

    def held(self) -> bool:
        return bool(self._held)

    def join(self, batch: list[Any]) -> bytes:
        """Job output is shown the way the README promises: whole lines, each with terminal
        control stripped (``clean_output``'s rules, line breaks kept) and the loaded job
        files' ``${NAME}`` values hidden (``redaction.redact_known``), here on the drain
        thread, never on the writer's (the event loop's). A line is held until its end comes,
        for ``HOLD_WAIT`` seconds at most (``HOLD_CHARS`` at most), and lines that end with
        the first lines of a multi-line secret until the rest comes."""
        text = self._held + "".join(self._take_text(entry) for entry in batch)
        cut = text.rfind("\n") + 1
        if cut:
            cut = redaction.hold_back(text[:cut])
        if len(text) - cut > HOLD_CHARS:  # out without its end, but an end that may start a
            cut = len(text) - redaction.secret_start(text)  # secret: it waits for the rest
        self._held = text[cut:]
        if cut:
            self._held_since = None
        return self._encode(_shown(text[:cut])) if cut else b""

    def release(self) -> bytes:
        """The held partial line, but for an end that may be the start of a secret (a job
        writing ``"Bearer " + token[:6]``, flushing, then the rest): that waits for more, up to
        ``SECRET_WAIT`` seconds in all."""
        held, now = self._held, time.monotonic()
        if self._held_since is None:
            self._held_since = now
        keep = 0 if now - self._held_since > SECRET_WAIT else redaction.secret_start(held)
        self._held = held[len(held) - keep :] if keep else ""
        if not self._held:
            self._held_since = None
        out = held[: len(held) - keep]
        return self._encode(_shown(out)) if out else b""

    def _take_text(self, entry: tuple[Any, int]) -> str:
        self._release(entry[1])
        return str(entry[0])

    def notice(self, lines: int) -> None:
        _notices.warning(
            "%d line(s) written to fd %d were dropped: its reader was not keeping up",
            lines,
            self.fd,
        )
