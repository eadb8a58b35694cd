"""A match of a secret's pattern read exactly: the span of its spelling at one depth of
escaping for all its characters, or None when the match mixes depths (so it is not the
secret). The counts are in ``spelling``'s docstring. Pure functions, no I/O."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator

from qtasks_cli.spelling_escapes import _ESCAPE_BODY, _QUOTES, _escapes


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
