"""Text from jobs, job files and the state file, made safe for a terminal or a log line.

A job's error message, traceback, result or output, and a job name read back from the state
file, may hold bytes a terminal obeys: ECMA-48 escape sequences (CSI such as ``ESC[2J``, OSC
such as ``ESC]0;title BEL`` and ``ESC]52;c;... BEL`` which writes the clipboard, DCS, APC, PM
and SOS strings, and their one-byte C1 forms ``0x9b``, ``0x9d`` ...), other C0 and C1 controls,
and Unicode bidirectional overrides that make text read differently from what it is. Everything
shown to a person goes through ``clean_line`` (one line) or ``clean_text`` (lines kept); the JSON
outputs keep the exact text, escaped by ``json_safe``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator

# A search of a job's output holds the GIL for its whole length (``re`` never lets it go): a
# class of characters over a line of 8 MB took 240 ms, in which the event loop could not fire.
# ``found`` searches it in pieces of this many characters, between which the loop can run.
PIECE = 64 * 1024

# ECMA-48: CSI = ESC [ (or 0x9b), parameters 0x30-0x3f, intermediates 0x20-0x2f, a final
# 0x40-0x7e; the string commands (OSC, DCS, SOS, PM, APC) run to ST = ESC \ (or 0x9c) or BEL
# and go with their payload; any other escape is ESC, intermediates, one final byte. Of a
# string never ended only the introducer goes: the text after it stays readable (and inert).
# A string's payload stops at any C1 control, CAN, SUB or ESC, as in a terminal's parser
# (vt100.net's DEC parser: these leave a control string from any state): a string is then
# ended there or not at all. That also keeps the scan linear: a payload that ran to the next
# terminator over other introducers made each of them scan to the end of the text, and a line
# of 30,000 OSC introducers (0x9d) took the output thread 2 s with the GIL held.
_SEQUENCE = re.compile(
    r"(?:\x1b\[|\x9b)[\x30-\x3f]*[\x20-\x2f]*[\x40-\x7e]?"
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])"
    r"(?:[^\x07\x18\x1a\x1b\x80-\x9f]*(?:\x07|\x1b\\|\x9c))?"
    r"|\x1b[\x20-\x2f]*[\x30-\x7e]?"
)
# C0 but tab and line feed, DEL, C1, the bidi embeddings, overrides, isolates and marks,
# and the Unicode line and paragraph separators.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_INTRODUCER = re.compile(r"[\x1b\x90-\x9f]")
# Anything clean_text changes: every C0 control but the line feed, DEL, C1, bidi, separators,
# surrogates.
_UNSAFE = re.compile(
    r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2028\u2029"
    r"\u2066-\u2069\ud800-\udfff]"
)
_BREAKS = re.compile(r"\r\n|[\n\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")
# What an operator never sees of a text: the escape sequences and controls ``clean_text``
# removes (not the line breaks and tabs it turns into visible space), and what a terminal draws
# as nothing: Unicode's Default_Ignorable_Code_Point and format (Cf) characters (zero-width
# space and joiners, soft hyphen, U+FEFF, word joiner, variation selectors, tags, Hangul
# fillers). Redaction reads text without these too (``visible``), so a secret split by them
# is still found: the same rule as the one that joins it on the screen.
_DRAWN_AS_NOTHING = (
    "\xad\u034f\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u115f\u1160\u17b4\u17b5"
    "\u180b-\u180f\u200b-\u200f\u202a-\u202e\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0"
    "\ufff0-\ufffb\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3"
    "\U0001d173-\U0001d17a\U000e0000-\U000e0fff"
)
# A carriage return, vertical tab and form feed count too: a raw terminal (``sqlite3`` or
# ``jq -r`` on the stored text) draws what follows them where the secret's start stands.
INVISIBLE = re.compile(
    _SEQUENCE.pattern
    + "|[\x00-\x08\x0b-\x0d\x0e-\x1b\x1f\x7f-\x84\x86-\x9f"
    + _DRAWN_AS_NOTHING
    + "]"
)
# A quick test: every INVISIBLE part starts with one of these (ESC and the C1 introducers too).
ANY_INVISIBLE = re.compile(
    "[\x00-\x08\x0b-\x0d\x0e-\x1b\x1f\x7f-\x84\x86-\x9f" + _DRAWN_AS_NOTHING + "]"
)
# In JSON (which may escape only C0): the characters a terminal would still obey.
_JSON_UNSAFE = re.compile(r"[\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]")


def found(chars: re.Pattern[str], text: str) -> bool:
    """Whether ``text`` holds a character of ``chars`` (a pattern of one character class).

    Searched ``PIECE`` characters at a time, so no single call holds the GIL for long. An ASCII
    ``text`` (``str.isascii`` is O(1)) is tested as bytes by ``bytes.translate``, about 40 times
    faster than ``re``: an 8 MB line then costs about 15 ms of CPU, not 240 ms."""
    if len(text) <= PIECE:
        return chars.search(text) is not None
    if text.isascii():
        others = _ascii_others(chars)
        return any(
            text[at : at + PIECE].encode("ascii").translate(None, others)
            for at in range(0, len(text), PIECE)
        )
    return any(chars.search(text, at, at + PIECE) for at in range(0, len(text), PIECE))


@functools.lru_cache(maxsize=32)
def _ascii_others(chars: re.Pattern[str]) -> bytes:
    """The ASCII bytes ``chars`` does not match (what ``translate`` deletes)."""
    return bytes(code for code in range(128) if not chars.match(chr(code)))


def matches(
    pattern: re.Pattern[str], starts: re.Pattern[str], text: str
) -> Iterator[re.Match[str]]:
    """As ``pattern.finditer(text)``, for a pattern whose every match is not empty and starts
    with a character of ``starts`` (one character class), with no call that scans more than
    ``PIECE`` characters for the next start: the GIL is let go between calls."""
    at, end = 0, len(text)
    while at < end:
        start = starts.search(text, at, min(end, at + PIECE))
        if start is None:
            at += PIECE
            continue
        hit = pattern.match(text, start.start())
        if hit is None:
            at = start.start() + 1
            continue
        yield hit
        at = hit.end()


def _sub(pattern: re.Pattern[str], starts: re.Pattern[str], text: str) -> str:
    """``pattern.sub("", text)`` as ``matches`` finds them (short text: in one call)."""
    if len(text) <= PIECE:
        return pattern.sub("", text)
    pieces, pos = [], 0
    for hit in matches(pattern, starts, text):
        pieces.append(text[pos : hit.start()])
        pos = hit.end()
    pieces.append(text[pos:])
    return "".join(pieces)


def _sub_each(
    pattern: re.Pattern[str], repl: str | Callable[[re.Match[str]], str], text: str
) -> str:
    """``pattern.sub(repl, text)`` for a pattern of single characters (or ``\\r\\n``), made
    ``PIECE`` characters at a time (a ``\\r\\n`` is never cut)."""
    if len(text) <= PIECE:
        return pattern.sub(repl, text)
    pieces, at = [], 0
    while at < len(text):
        end = at + PIECE
        if text[end - 1 : end + 1] == "\r\n":
            end += 1
        pieces.append(pattern.sub(repl, text[at:end]))
        at = end
    return "".join(pieces)


def strip_sequences(text: str) -> str:
    """``text`` without ECMA-48 escape sequences and control strings (the bytes they hold too)."""
    return _sub(_SEQUENCE, _INTRODUCER, text) if found(_INTRODUCER, text) else text


def visible(text: str) -> tuple[str, list[tuple[int, int]]]:
    """``text`` without what the operator never sees of it (``INVISIBLE``), and where each
    piece of that view starts: ``(view, [(view offset, text offset), ...])``, offsets rising."""
    pieces: list[str] = []
    starts: list[tuple[int, int]] = []
    pos = shown = 0
    if not found(ANY_INVISIBLE, text):
        return text, [(0, 0)] if text else []
    # Each match starts at a character that can start one (ANY_INVISIBLE).
    for hit in matches(INVISIBLE, ANY_INVISIBLE, text):
        start, end = hit.span()
        if start > pos:
            starts.append((shown, pos))
            pieces.append(text[pos:start])
            shown += start - pos
        pos = end
    if pos < len(text):
        starts.append((shown, pos))
        pieces.append(text[pos:])
    return "".join(pieces), starts


def clean_text(text: str) -> str:
    """``text`` safe for a terminal, lines kept: escape sequences, controls (but ``\\n``) and
    bidi overrides removed, tabs as four spaces, every line break as ``\\n``; a lone surrogate
    (an undecodable byte of a file name or argument) shown as ``\\xNN`` or ``\\uNNNN``.
    Long text is worked on in pieces (``PIECE``), so the GIL is never held for long."""
    if not found(_UNSAFE, text):
        return text  # the common case: one scan
    text = _sub_each(_BREAKS, "\n", strip_sequences(text)).replace("\t", "    ")
    text = _sub_each(_CONTROL, "", text)
    return _sub_each(_SURROGATE, _show_surrogate, text) if found(_SURROGATE, text) else text


def _show_surrogate(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}"


def clean_line(text: str) -> str:
    """``text`` safe for a terminal, on one line: as ``clean_text``, with each line break shown
    as the two characters ``\\n`` so a value can never forge a log line of its own."""
    return clean_text(text).replace("\n", "\\n")


def json_safe(dumped: str) -> str:
    """JSON text (from ``json.dumps(..., ensure_ascii=False)``) with the characters a terminal
    still obeys (DEL, C1, bidi controls, U+2028/9) written as ``\\uXXXX``: the same JSON value,
    the exact text, but nothing a terminal acts on. Such characters only occur inside strings."""
    return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", dumped)


def path_part(key: str) -> str:
    """A mapping key as a part of a key path (``jobs.<key>``): as written when it is plain
    (printable, no ``.``, ``:``, quote, backslash or bracket, no space at either end), else
    quoted and escaped as Python writes it (``'t\\tt'``, ``'a.b'``, ``'a: b'``), so a path names
    one key, cannot be read as nesting or end a ``FILE:LINE:COL: key: message`` line early,
    and a terminal never gets to expand or run it."""
    if key and key.isprintable() and not _UNPLAIN.search(key) and key == key.strip():
        return key
    return repr(key)


_UNPLAIN = re.compile(r"[.:'\"\\\[\]]")
