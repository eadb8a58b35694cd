"""Hiding ``${NAME}`` values: every spelling a secret can take on its way out becomes ``${NAME}``.

What is a secret (the rule the README's Security section states): the value an environment
variable gave a ``${NAME}`` placeholder, by its length, because hiding a short value would
rewrite unrelated text (``REGION=eu`` inside "neutral") while its placeholder shows it anyway:

- ``MIN_SECRET_CHARS`` (4) characters or more: hidden. Shorter values (``eu``, ``3``) are not
  secrets; ``validate`` warns about each, and the stored arguments keep the placeholder anyway;
- fewer than ``spelling.ANYWHERE_CHARS`` (8): hidden where it stands as a whole word, not inside a
  longer word or number (``hunter2`` in "login hunter2 failed", not "1234" in "order 12345");
- ``ANYWHERE_CHARS`` or more: hidden wherever it occurs, inside other text too;
- a value of several lines is also hidden line by line (each line by the same rules), since
  output is captured and shown one line at a time.

Where: only inside text. Callers redact the *leaves* of a value (each ``str``, the text of an
error, a traceback, one printed line) before they quote, encode or join it, never a document
qtasks made (a JSON preview, a repr), so redaction cannot rewrite JSON syntax, quotes or
another value.

How: ``qtasks_cli.spelling`` compiles each secret into the patterns of every spelling it can
take on its way out (repr, ascii, bytes, JSON, nested; percent-encoded) and says where a
spelling's edges may stand (escape units read as the characters they stand for).

Whatever separates its characters: a secret split by what the operator never sees (escape
sequences, the controls the terminal cleaning removes, zero-width and other characters drawn
as nothing: ``text.INVISIBLE``) is hidden too, with what splits it: after the pass over the
text as it is, a second pass reads the text without those characters (``text.visible``,
the same rule that cleans it for the screen) and hides each secret it finds there (the
secret without such characters of its own) in the text itself. Not hidden: a secret a job
changed (another case, fullwidth or other lookalike letters, base64, a hash): qtasks trusts
the job's code, and no rule could name every change. Pure functions, no I/O.
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from qtasks_cli.spelling import Spelling, escaped, quoted, substitute
from qtasks_cli.text import ANY_INVISIBLE, INVISIBLE, clean_line, found, strip_sequences, visible

MIN_SECRET_CHARS = 4  # shorter values are not secrets (see the module's docstring)


def hidden_parts(value: str) -> tuple[str, ...]:
    """The texts hidden for a ``${NAME}`` value, longest first: the value itself and, for a
    value of several lines, each line; only those of at least ``MIN_SECRET_CHARS``."""
    parts = {value, *value.splitlines()} if value else set()
    return tuple(
        sorted((p for p in parts if len(p) >= MIN_SECRET_CHARS), key=lambda p: (-len(p), p))
    )


def _spellings(pairs: list[tuple[str, str]]) -> tuple[Spelling, ...]:
    pairs.sort(key=lambda pair: -len(pair[0]))  # a secret that holds another goes first, whole
    # Of each, the percent-encoded form first: its pattern takes "%25" whole where a plain
    # spelling would take its "%" alone, and it never matches inside a backslash-escaped one.
    plan = [
        spelling
        for part, placeholder in pairs
        for spelling in (quoted(part, placeholder), escaped(part, placeholder))
        if spelling is not None
    ]
    return tuple(plan)


@functools.lru_cache(maxsize=256)
def _plan(
    secrets: tuple[tuple[str, str], ...],
) -> tuple[tuple[Spelling, ...], tuple[Spelling, ...]]:
    """The spellings to hide in the text as it is (each hidden part, and each as it is seen),
    and in the text as it is seen (each hidden part without its own invisible characters,
    when that is still long enough to be a secret)."""
    pairs = {(part, shown) for value, shown in secrets for part in hidden_parts(value)}
    seen = {(_seen(part), shown) for part, shown in pairs}
    seen = {(part, shown) for part, shown in seen if len(part) >= MIN_SECRET_CHARS}
    # A secret as the operator sees it is hidden in any text, invisible characters or not.
    return _spellings(sorted(pairs | seen)), _spellings(sorted(seen))


def _hide_unseen(text: str, plan: tuple[Spelling, ...]) -> str:
    """``text`` with each spelling found in its visible view replaced, with the invisible
    characters between its characters (those around it stay)."""
    view = visible(text)[0]
    if not any(spelling.anchor in view for spelling in plan):
        return text  # the common case: text with colours, and no secret in it
    view, to_text, _ = list(_readings(text))[-1]
    for spelling in plan:
        found = list(spelling.find(view))
        if found:
            pieces, pos = [], 0
            for start, end, shown in found:
                pieces += [text[pos : to_text(start)], shown]
                pos = to_text(end - 1) + 1
            text = "".join(pieces) + text[pos:]
            view, to_text, _ = list(_readings(text))[-1]
    return text


def redact(text: str, secrets: Iterable[tuple[str, str]]) -> str:
    """``text`` with every spelling of each secret replaced by its placeholder.

    ``secrets`` holds ``(value, placeholder)`` pairs; which values count, and how their
    spellings are found, is the module's rule. ``text`` is one piece of text (a string of a
    value, an error message, a traceback, a printed line): pass the leaves of a structure,
    never a JSON or repr document built from several values."""
    if not text:
        return text
    plain, seen = _plan(tuple(secrets))
    for spelling in plain:
        if spelling.anchor in text:
            text = substitute(text, spelling)
    if seen and found(ANY_INVISIBLE, text):
        text = _hide_unseen(text, seen)
    return text


def redact_lines(lines: list[str], secrets: Iterable[tuple[str, str]]) -> list[str]:
    """Lines a run printed, redacted as the one text they were (a secret may span lines)."""
    return redact("\n".join(lines), secrets).split("\n") if lines else lines


def is_secret(value: str) -> bool:
    """Whether ``value`` (a ``${NAME}`` value) is hidden in text: see ``MIN_SECRET_CHARS``."""
    return bool(hidden_parts(value))


class _Known:
    """Every secret of the job files this process loaded (a tuple: read from any thread)."""

    pairs: tuple[tuple[str, str], ...] = ()


def remember(secrets: Iterable[tuple[str, str]]) -> None:
    """Note ``(value, placeholder)`` pairs of a loaded job file, for text that belongs to no
    job in particular: the lines jobs print while the live table captures the terminal, and
    log records that are not a run's events. Called by ``config.load_config``."""
    known = dict(_Known.pairs)
    for value, placeholder in secrets:
        if value:
            known.setdefault(value, placeholder)
    if len(known) != len(_Known.pairs):
        _Known.pairs = tuple(known.items())


def known_pairs() -> tuple[tuple[str, str], ...]:
    """Every ``(value, placeholder)`` pair passed to ``remember`` (for a child process)."""
    return _Known.pairs


def known_secrets() -> bool:
    """Whether any loaded job file has a secret (see ``remember``)."""
    return bool(_Known.pairs)


@functools.lru_cache(maxsize=256)
def _seen(value: str) -> str:
    """``value`` as the operator sees it (without ``INVISIBLE`` characters)."""
    return INVISIBLE.sub("", value)


def _readings(text: str) -> Iterator[tuple[str, Callable[[int], int], bool]]:
    """``text`` as it is, then (if it holds any) without its invisible characters: each with
    the map from its offsets to ``text``'s (the view's end to the text's end), and whether it
    is the view (to be matched with the secrets as they are seen)."""
    yield text, lambda position: position, False
    if not found(ANY_INVISIBLE, text):
        return
    view, starts = visible(text)
    offsets = [shown for shown, _ in starts]

    def to_text(position: int) -> int:
        if position >= len(view):
            return len(text)
        piece = bisect.bisect_right(offsets, position) - 1
        return starts[piece][1] + position - starts[piece][0]

    yield view, to_text, True


def hold_back(text: str) -> int:
    """Where to stop writing ``text`` (complete lines, to go out line by line) so that no
    known secret of several lines is cut: the start of the line where ``text`` ends with the
    first line(s) of such a secret (invisible characters read as the operator sees them), or
    ``len(text)``. The caller keeps the rest until more text comes (or its stream ends) and
    redacts it with that text."""
    stop = len(text)
    if not any("\n" in value for value, _ in _Known.pairs):
        return stop  # no secret of several lines: nothing to read
    for reading, to_text, seen in _readings(text):
        for value, _ in _Known.pairs:
            value = _seen(value) if seen else value
            end = value.find("\n")
            while end != -1:
                head = value[: end + 1]
                if reading.endswith(head):
                    line = reading.rfind("\n", 0, len(reading) - len(head))
                    stop = min(stop, to_text(line) + 1 if line >= 0 else 0)
                end = value.find("\n", end + 1)
    return stop


def secret_start(text: str) -> int:
    """The length of the longest end of ``text`` that is the start of a known secret (0 if
    none; invisible characters read as the operator sees them): text a writer should keep back
    a moment, since the rest may follow."""
    best = 0
    if not _Known.pairs:
        return best
    for reading, to_text, seen in _readings(text):
        for value, _ in _Known.pairs:
            value = _seen(value) if seen else value
            for k in range(min(len(reading), len(value) - 1), 0, -1):
                if reading.endswith(value[:k]):
                    best = max(best, len(text) - to_text(len(reading) - k))
                    break
    return best


def redact_known(text: str) -> str:
    """``text`` with every secret passed to ``remember`` hidden (see ``redact``)."""
    pairs = _Known.pairs
    return redact(text, pairs) if pairs and text else text


def redact_known_value(value: Any) -> Any:
    """``value`` with every secret passed to ``remember`` hidden in its strings (see
    ``redact_value``): for a JSON log record's fields, before they are encoded."""
    pairs = _Known.pairs
    return redact_value(value, pairs) if pairs else value


def redact_value(value: Any, secrets: tuple[tuple[str, str], ...], depth: int = 0) -> Any:
    """``value`` with secrets hidden in its strings and bytes, through lists, tuples, sets and
    mappings (a copy; other objects are returned as they are). For payloads handed to hooks
    and for structures stored as JSON: only the leaves change, never the structure."""
    if not secrets or depth > 100:
        return value
    if isinstance(value, str):
        return redact(value, secrets)
    if isinstance(value, (bytes, bytearray)):
        text = bytes(value).decode("utf-8", "surrogateescape")
        hidden = redact(text, secrets)
        if hidden == text:
            return value
        return type(value)(hidden.encode("utf-8", "surrogateescape"))
    if isinstance(value, Mapping):  # a plain dict: what a hook reads, whatever the mapping was
        return {
            redact_value(k, secrets, depth + 1): redact_value(v, secrets, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [redact_value(item, secrets, depth + 1) for item in value]
        try:
            return type(value)(items)
        except Exception:
            return items
    return value


def clean_output(text: str) -> str:
    """A line a job printed, safe to show: escape sequences and control characters removed,
    only the last ``\\r``-separated part kept (progress bars redraw with ``\\r``), and the
    ``${NAME}`` values of the loaded job file hidden (``redaction.remember``)."""
    text = strip_sequences(redact_known(text)).rstrip("\r")
    text = text.rsplit("\r", 1)[-1]
    return clean_line(text)
