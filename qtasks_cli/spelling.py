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

ANYWHERE_CHARS = 8  # shorter secrets are hidden only as whole words

# Characters that no encoding qtasks produces ever escapes: each spelling holds them as they are.
_LITERAL = frozenset(string.ascii_letters + string.digits + " !#$%&()*+,-.:;<=>?@[]^_`{|}~")
_SHORT_ESCAPES = {"\n": "n", "\t": "t", "\r": "r", "\b": "b", "\f": "f", "\x0b": "v", "\x07": "a"}
_BACKSLASHES = r"\\+"
# The body of an escape after its backslash, and what it stands for (``_decode``).
_ESCAPE_BODY = re.compile(r"[nrtbfva'\"/]|x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}")
_NAMED = {"n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f", "v": "\x0b", "a": "\x07"}
_WORD = re.compile(r"\w")
_QUOTES = "'\"/"  # escaped by adding a backslash, at some layers only


def _hex(number: int, width: int) -> str:
    """``number`` as ``width`` hex digits, matched in either case."""
    return "".join(
        f"[{digit}{digit.upper()}]" if digit.isalpha() else digit for digit in f"{number:0{width}x}"
    )


def _escapes(char: str) -> list[str]:
    """Patterns of the bodies that may follow the backslashes of an escaped ``char``."""
    code = ord(char)
    bodies = [f"[{letters}]" for letters in _SHORT_ESCAPES.get(char, "")]
    if code < 0x100:
        bodies.append("x" + _hex(code, 2))
    if code < 0x10000:
        bodies.append("u" + _hex(code, 4))
    else:
        high, low = 0xD800 + ((code - 0x10000) >> 10), 0xDC00 + ((code - 0x10000) & 0x3FF)
        bodies.append("U" + _hex(code, 8))
        bodies.append("u" + _hex(high, 4) + _BACKSLASHES + "u" + _hex(low, 4))
    if code >= 0x80:  # the UTF-8 bytes, as a bytes repr shows them
        encoded = char.encode("utf-8", "surrogatepass")
        bodies.append(_BACKSLASHES.join("x" + _hex(byte, 2) for byte in encoded))
        if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte of the environment (surrogateescape)
            bodies.append("x" + _hex(code - 0xDC00, 2))
    return bodies


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


def _run_before(text: str, end: int) -> int:
    """How many backslashes stand right before ``end``."""
    start = end
    while start and text[start - 1] == "\\":
        start -= 1
    return end - start


def _decode(body: str) -> str:
    """The character an escape's body stands for (a lone surrogate half for half a pair)."""
    if body[0] in "xuU":
        return chr(int(body[1:], 16))
    return _NAMED.get(body, body)


def _is_word(char: str) -> bool:
    if "\ud800" <= char <= "\udfff":  # half of a pair: the character it is part of is unknown
        return False
    return bool(_WORD.match(char))


_BYTE_BEFORE = re.compile(r"(?:\\x|%)([0-9a-fA-F]{2})$")


def _utf8(units: list[int]) -> str | None:
    """The one character UTF-8 bytes ``units`` make, or None."""
    try:
        decoded = bytes(units).decode("utf-8")
    except UnicodeDecodeError:
        return None
    return decoded if len(decoded) == 1 else None


def _bytes_before(text: str, end: int, first: re.Match[str]) -> str:
    """The character that ``\\xNN`` or ``%XX`` units ending at ``end`` stand for: read as
    UTF-8 (a bytes repr, a URL) when the units before make a valid sequence with it."""
    found, pos = [int(first.group(1), 16)], end - len(first.group())
    while len(found) < 4 and found[0] >= 0x80:
        match = _BYTE_BEFORE.search(text, max(0, pos - 4), pos)
        if match is None or match.group()[0] != first.group()[0]:
            break
        found.insert(0, int(match.group(1), 16))
        pos -= len(match.group())
        char = _utf8(found)
        if char is not None:
            return char
    if first.group()[0] == "%" and found[-1] >= 0x80:
        return text[end - 1]  # a URL's bytes that are no UTF-8: a "%" and two hex digits
    return chr(found[-1])


def _bytes_after(text: str, start: int, lead: str) -> str:
    """The character that ``\\xNN`` or ``%XX`` units starting at ``start`` stand for (UTF-8
    when they make a valid sequence, as in ``_bytes_before``)."""
    unit = re.compile(re.escape(lead) + r"([0-9a-fA-F]{2})")
    found: list[int] = []
    pos = start
    while len(found) < 4:
        match = unit.match(text, pos)
        if match is None:
            break
        found.append(int(match.group(1), 16))
        pos = match.end()
        if found[0] < 0x80:
            return chr(found[0])
        char = _utf8(found)
        if char is not None:
            return char
    return chr(found[0]) if lead != "%" else "%"  # a URL's bytes that are no UTF-8: a "%"


def _starts_clear(text: str, start: int) -> bool:
    """Whether a spelling of a secret whose first character is a word character may start at
    ``start``: not inside an escape unit, and after no word character (an escape unit, or a
    ``%XX`` of a URL, counts as the character it stands for; an even run of backslashes is
    read both ways)."""
    run = _run_before(text, start)
    if run:  # right after backslashes: inside an escape if they are an odd run
        return run % 2 == 0 or not _ESCAPE_BODY.match(text, start)
    if start == 0 or not _is_word(text[start - 1]):
        return True
    byte = _BYTE_BEFORE.search(text, max(0, start - 4), start)
    if byte is not None and (byte.group()[0] == "%" or _run_before(text, byte.start() + 1) % 2):
        return not _is_word(_bytes_before(text, start, byte))
    for width in (1, 5, 9):  # \n, \u00e9, \U0001f600 ending right here
        body_start = start - width
        if body_start < 1 or text[body_start - 1] != "\\":
            continue
        body = _ESCAPE_BODY.fullmatch(text, body_start, start)
        if body is not None and _run_before(text, body_start) % 2:
            return not _is_word(_decode(body.group()))
    return False


def _ends_clear(text: str, end: int) -> bool:
    """Whether a spelling of a secret whose last character is a word character may end at
    ``end``: the next character (an escape unit, or a ``%XX``, counts as the one it stands
    for) is not a word character."""
    if end == len(text):
        return True
    if text[end] == "%" and re.match(r"%[0-9a-fA-F]{2}", text[end : end + 3]):
        return not _is_word(_bytes_after(text, end, "%"))
    if text[end] != "\\":
        return not _is_word(text[end])
    stop = end
    while stop < len(text) and text[stop] == "\\":
        stop += 1
    body = _ESCAPE_BODY.match(text, stop)
    if body is None or stop - end > 1:  # a backslash (escaped, or not an escape) comes next
        return True
    if body.group()[0] == "x":
        return not _is_word(_bytes_after(text, stop - 1, "\\x"))
    return not _is_word(_decode(body.group()))


@functools.lru_cache(maxsize=1024)
def _escape_of(char: str) -> tuple[re.Pattern[str], ...]:
    """Each escape of ``char`` (as ``_escapes``), longest first."""
    return tuple(re.compile(body) for body in reversed(_escapes(char)))


def _units(part: str) -> tuple[tuple[int, str | None], ...]:
    """``part`` as (own backslashes before it, character) pairs; a run of backslashes that
    ends ``part`` is the last pair, with None for its character."""
    units: list[tuple[int, str | None]] = []
    run = 0
    for char in part:
        if char == "\\":
            run += 1
        else:
            units.append((run, char))
            run = 0
    if run:
        units.append((run, None))
    return tuple(units)


def _backslashes(text: str, pos: int, end: int) -> int:
    stop = pos
    while stop < end and text[stop] == "\\":
        stop += 1
    return stop - pos


def _parse(
    units: tuple[tuple[int, str | None], ...], text: str, start: int, end: int, depth: int
) -> tuple[int, int, bool] | None:
    """The exact (start, end) of the spelling ``depth`` layers of escaping deep that the
    pattern matched in ``text[start:end]``, and whether it takes exactly what is its own
    (the backslashes left before it and after it are whole escaped backslashes of that
    depth, and after it maybe the escape of the next character), or None when no such
    spelling is there.

    ``depth`` layers deep, each of the value's own backslashes is ``2**depth`` backslashes; a
    character escaped at layer j has ``2**(depth-j)`` more before its body (and inside it,
    between UTF-8 bytes or surrogate halves); a quote may be escaped at any set of layers
    (``[0, 2**depth)`` more). Backslashes the first character does not need belong to the
    text before; those the last run does not need, to the text after."""
    whole = 1 << depth
    failed: set[tuple[int, int, int]] = set()  # (unit, position, first): no spelling from there
    stack = [(0, start, start)]
    while stack:
        index, pos, first = stack.pop()
        if (index, pos, first) in failed:
            continue
        failed.add((index, pos, first))
        if index == len(units):
            return first, pos, (first - start) % whole == 0
        own, char = units[index]
        run = _backslashes(text, pos, end)
        base = own * whole
        if char is None:  # the value's closing backslashes
            if run < base:
                continue
            after = pos + base
            rest = run - base  # the text's own (whole) and an escape's (whole / 2)
            clean = rest % whole == 0 or (
                rest % whole == whole >> 1 and bool(_ESCAPE_BODY.match(text, after + rest))
            )
            return first, after, clean and (first - start) % whole == 0
        at = pos + run
        for low, high, size in _ways(char, text, at, end, run - base, whole):
            if index == 0 and run > base + high:
                stack.append((1, at + size, pos + run - base - high))  # the text's own before
            elif low <= run - base <= high:
                stack.append((index + 1, at + size, first))
    return None


def _ways(
    char: str, text: str, at: int, end: int, extra: int, whole: int
) -> Iterator[tuple[int, int, int]]:
    """How ``char`` may be spelled at ``text[at:end]`` with ``extra`` backslashes before it
    beyond the value's own, ``whole`` (2**depth) per backslash: (fewest, most backslashes
    beyond the value's own, characters taken)."""
    if at < end and text[at] == char:
        yield 0, (whole - 1 if char in _QUOTES else 0), 1
        return
    if whole == 1:
        return
    for escape in _escape_of(char):
        body = escape.match(text, at, end)
        if body is None:
            continue
        inner = {len(r) for r in re.findall(r"\\+", body.group())}
        if len(inner) > 1:
            continue
        top = min(whole >> 1, max(extra, 0))
        step = inner.pop() if inner else (1 << (top.bit_length() - 1) if top else 0)
        if step and not step & (step - 1) and step <= whole >> 1:
            yield step, step, body.end() - at


def _exact(
    units: tuple[tuple[int, str | None], ...], text: str, start: int, end: int
) -> tuple[int, int] | None:
    """The span of the value's spelling inside a match of its pattern, at one depth of
    escaping for every character (``_parse``), or None: the match mixed depths, so the value
    is not there. Of several depths, one that takes exactly what is the value's, the deepest."""
    deepest = max((len(r) for r in re.findall(r"\\+", text[start:end])), default=0)
    best: tuple[int, int] | None = None
    for depth in range(deepest.bit_length(), -1, -1):
        found = _parse(units, text, start, end, depth)
        if found is not None:
            if found[2]:
                return found[0], found[1]
            best = best or (found[0], found[1])
    return best


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
