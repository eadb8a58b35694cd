"""Where a spelling of a short secret may start and end: the text around it read as a person
reads one layer of escaping (an escape unit, or a ``%XX`` of a URL, counts as the character it
stands for), so a secret is hidden only as a whole word. The rules are in ``spelling``'s
docstring. Pure functions, no I/O."""

from __future__ import annotations

import re

from qtasks_cli.spelling_escapes import _ESCAPE_BODY, _decode

_WORD = re.compile(r"\w")


def _run_before(text: str, end: int) -> int:
    """How many backslashes stand right before ``end``."""
    start = end
    while start and text[start - 1] == "\\":
        start -= 1
    return end - start


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
