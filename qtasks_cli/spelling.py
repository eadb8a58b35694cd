"""Where a secret stands in a text: every spelling of it, and the edges of each spelling.

A secret may leave a job as it is, inside ``repr()`` or ``ascii()`` (quoted either way), as
``bytes``, JSON-escaped (with or without ``ensure_ascii``), and any of these nested in each
other (JSON of a repr of JSON ...). Each layer only adds backslashes before ``\\``, ``'``, ``"``
and ``/`` and writes other characters as escapes (``\\n``, ``\\xe9``, ``\\u00e9``,
``\\U0001f600``, a UTF-16 surrogate pair, UTF-8 bytes). So each secret is compiled into one
pattern that accepts, for every character, the character itself or a run of backslashes and
one of its escapes: every spelling at every depth, in one pass. A secret may also leave
percent-encoded in a URL (an HTTP client's error, any ``safe`` characters): a second pattern.

A match of that pattern is then read exactly (``_exact``): at one depth d of escaping for all
its characters (each own backslash ``2**d`` backslashes, an escape made at layer j
``2**(d-j)`` more), or it is not the secret (a JSON ``\\n`` beside a raw ``\\`` is not);
backslashes its first character does not need belong to the text before it, and those its
closing backslashes do not need (the escape of what follows, say), to the text after it.

Edges (the README's Security section says the same). The text around a spelling is read as a
person reads one layer of escaping: an odd run of backslashes ends in an *escape unit* (``\\n``,
``\\x41``, ``\\u00e9``; the UTF-8 bytes ``\\xc3\\xa9`` together) that stands for the
character it decodes to, an even run is escaped backslashes, and a ``%XX`` of a URL is the
character it encodes (bytes that are no UTF-8 stay a "%"). Then:

- a secret shorter than ``ANYWHERE_CHARS`` is hidden only where it stands as a whole word:
  its spelling does not start inside an escape unit (``'\\tabs'`` holds a tab and "abs", not
  "tabs"), and the character before it and the one after it (a unit counts as the character
  it stands for) are not word characters when the secret's first or last is;
- a longer secret is hidden wherever its spelling stands, inside words and escapes too.

What that reading costs, where a text reads two ways: a raw backslash right before a short
secret that starts with an escape's letter reads as that escape (``C:\\tabs`` keeps the
secret "tabs"); two layers deep, ``\\\\n`` reads as a backslash and an "n" (a short secret
right after it is inside a word); backslashes next to a secret's own, or before its first
quote, are its own where a deeper reading fits exactly (``\\\\\\\\aaa``: ``\\aaa`` escaped twice).

Pure functions, no I/O.
"""

from __future__ import annotations

import functools
import re
import string
from collections.abc import Iterator
from dataclasses import dataclass

from qtasks_cli.spelling_edges import _ends_clear, _is_word, _starts_clear
from qtasks_cli.spelling_escapes import _LITERAL, _QUOTES, _escapes, _hex
from qtasks_cli.spelling_exact import _exact, _units

ANYWHERE_CHARS = 8  # shorter secrets are hidden only as whole words


def _body(part: str) -> str:
    """The pattern of every spelling of ``part`` (and more: ``_exact`` checks the counts of
    backslashes), free of catastrophic backtracking.

    Each character becomes ``\\{k,}`` (the backslashes that may come before it: k of the
    value's own, doubled or added by each layer of escaping) and then the character itself or,
    right after a backslash, one of its escapes; runs of the value's own backslashes fold into
    the next character's count. So no two backslash quantifiers are ever next to each other,
    and a match never starts inside a run of backslashes: the work stays linear in the text,
    whatever the job printed (a million backslashes, say)."""
    pieces = []
    run = 0  # the value's own backslashes waiting for the next character
    for char in part:
        if char == "\\":
            run += 1
            continue
        before = "" if char in _LITERAL and not run else rf"\\{{{run},}}"
        if char in _LITERAL or char in _QUOTES:
            pieces.append(before + re.escape(char))
        else:
            escapes = "|".join(_escapes(char))
            pieces.append(rf"{before}(?:{re.escape(char)}|(?<=\\)(?:{escapes}))")
        run = 0
    if run:
        pieces.append(rf"\\{{{run},}}")
    body = "".join(pieces)
    return body if part[:1] in _LITERAL else r"(?<!\\)" + body


@dataclass(frozen=True, slots=True)
class Spelling:
    """One compiled pattern for one text to hide, and what stands in its place."""

    pattern: re.Pattern[str]
    anchor: str  # characters every spelling holds in a row: a quick test before the pattern
    placeholder: str
    word: tuple[bool, bool]  # whether its start / end must stand clear of word characters
    units: tuple[tuple[int, str | None], ...] = ()  # ``_units``; empty: no escapes to check

    def find(self, text: str) -> Iterator[tuple[int, int, str]]:
        """(start, end, replacement) of each spelling in ``text``, left to right, apart."""
        if self.anchor not in text:
            return
        starts, ends = self.word
        pos = 0
        while pos <= len(text):
            match = self.pattern.search(text, pos)
            if match is None:
                return
            span = _exact(self.units, text, *match.span()) if self.units else match.span()
            if (
                span is None
                or (starts and not _starts_clear(text, span[0]))
                or (ends and not _ends_clear(text, span[1]))
            ):
                pos = match.start() + 1
                continue
            yield span[0], span[1], self.placeholder
            pos = span[1]


def substitute(text: str, spelling: Spelling) -> str:
    """``text`` with each spelling found replaced."""
    pieces, pos = [], 0
    for start, end, shown in spelling.find(text):
        pieces += [text[pos:start], shown]
        pos = end
    return "".join(pieces) + text[pos:] if pieces else text


_UNRESERVED = frozenset(string.ascii_letters + string.digits + "_.-~")  # RFC 3986 section 2.3


def _percent(char: str) -> str:
    """The pattern of ``char`` as it is or percent-encoded (its UTF-8 bytes, hex digits in
    either case; a space also as ``+``, as ``quote_plus`` writes it)."""
    encoded = "".join("%" + _hex(byte, 2) for byte in char.encode("utf-8", "surrogatepass"))
    plus = r"|\+" if char == " " else ""
    return f"(?:{encoded}{plus}|{re.escape(char)})"  # the longer first: "%25" is one "%"


@functools.lru_cache(maxsize=512)
def quoted(part: str, placeholder: str) -> Spelling | None:
    """``part`` percent-encoded as a URL carries it (an HTTP client's error): what
    ``urllib.parse.quote`` or ``quote_plus`` make of it with any ``safe`` characters, i.e.
    each character that is not unreserved (RFC 3986 section 2.3) as it is or as ``%XX`` of its
    UTF-8 bytes (either case). None when no character of ``part`` would be encoded."""
    if all(char in _UNRESERVED for char in part):
        return None
    # Never the end of a run of backslashes, nor its start: that is a backslash-escaped spelling.
    body = r"(?<!\\)" + "".join(re.escape(c) if c in _UNRESERVED else _percent(c) for c in part)
    body += r"(?!\\)"
    word = (False, False)
    if len(part) < ANYWHERE_CHARS:
        word = (_is_word(part[0]), _is_word(part[-1]))
        body += r"(?!\w)" if word[1] else ""  # a quick filter; ``_ends_clear`` decides
    runs = re.findall("[" + re.escape("".join(sorted(_UNRESERVED))) + "]+", part)
    return Spelling(re.compile(body), max(runs, key=len, default=""), placeholder, word)


@functools.lru_cache(maxsize=512)
def escaped(part: str, placeholder: str) -> Spelling:
    """Every spelling of ``part`` (raw, repr, ascii, bytes, JSON, nested), with its edges
    checked as the module says."""
    body = _body(part)
    word = (False, False)
    if len(part) < ANYWHERE_CHARS:
        word = (_is_word(part[0]), _is_word(part[-1]))
        if word[0]:  # a quick filter; ``_starts_clear`` decides
            body = r"(?:(?<!\w)|(?<=\\[nrtbfva])|(?<=[0-9a-fA-F])|(?=\\))" + body
        if word[1]:
            body += r"(?!\w)"
    runs = re.findall("[" + re.escape("".join(sorted(_LITERAL))) + "]+", part)
    units = _units(part) if any(c not in _LITERAL for c in part) else ()
    return Spelling(re.compile(body), max(runs, key=len, default=""), placeholder, word, units)
