"""Which values a run's arguments may hold (qtasks_cli.request's "Types" and "Keys"): the
accepted types, taken exactly, nested at most ``MAX_DEPTH`` levels, with text keys; text that is
not Unicode (a lone surrogate, a byte that was not UTF-8) refused; and why a refused value is
refused, naming where inside it."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any

from qtasks_cli.text import path_part

MAX_DEPTH = 100
ACCEPTED = (
    "text, numbers, true/false, null, dates, date-times, binary data, lists and mappings "
    "with text keys"
)


def check_value(value: Any, where: str = "") -> str | None:
    """None if ``value`` is one of the accepted types (see the module docstring), else why
    not, naming where inside it (``kwargs.when[0]``). Types are taken exactly: what the store
    would hand back as another type (a tuple as a list, an IntEnum or a str subclass as the
    plain type, a datetime in a named zone with a fixed offset) is refused, not changed."""
    stack: list[tuple[Any, str, int]] = [(value, where, 0)]
    while stack:
        item, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            return f"{path or 'the value'} is nested deeper than {MAX_DEPTH} levels"
        kind = type(item)
        if kind is str:
            if _SURROGATE.search(item):
                return f"{path or 'the value'} is {_not_text(item)}"
            continue
        if item is None or kind in _PLAIN:
            continue
        if kind is int:
            if not -_INT_LIMIT < item < _INT_LIMIT:
                return f"{path or 'the value'} is an integer of more than {_INT_DIGITS:,} digits"
            continue
        if kind is datetime:
            back = datetime.fromisoformat(item.isoformat())
            if repr(back) != repr(item):
                lost = "its fold" if item.fold else "its zone (a fixed UTC offset only)"
                return (
                    f"{path or 'the value'} is the datetime {item!r:.80}, which the store would "
                    f"hand back without {lost}; pass it naive, in UTC or with a "
                    "datetime.timezone offset, and fold=0"
                )
            continue
        if kind is list:
            stack.extend((v, f"{path}[{i}]", depth + 1) for i, v in enumerate(item))
        elif kind is dict:
            for key, v in item.items():
                if type(key) is not str:
                    return f"{path or 'a mapping'} has a key {key!r:.60} that is not text"
                if _SURROGATE.search(key):
                    return f"{path or 'a mapping'} has a key that is {_not_text(key)}"
                shown = path_part(key)
                stack.append((v, f"{path}.{shown}" if path else shown, depth + 1))
        else:
            return f"{path or 'the value'} is {_why_not(item)}"
    return None


_PLAIN = frozenset((bool, float, bytes, date))
_SURROGATE = re.compile("[\ud800-\udfff]")


def not_text(text: str) -> str | None:
    """None if ``text`` is Unicode text (it can be written as UTF-8), else why not: a lone
    UTF-16 surrogate such as ``"\\ud800"``, or a byte that was not UTF-8 kept by Python as
    U+DC80..U+DCFF (``surrogateescape``: a command-line argument or environment value in
    another encoding). Such a string cannot be stored, logged or shown: every path (the job
    file, ``--arg``, ``--kwarg``, ``--json-kwargs``, ``enqueue()``) refuses it the same way."""
    return _not_text(text) if _SURROGATE.search(text) else None


def _not_text(text: str) -> str:
    found = _SURROGATE.search(text)
    code = ord(found.group()) if found else 0xFFFD
    at = found.start() if found else 0
    if 0xDC80 <= code <= 0xDCFF:
        return (
            f"not UTF-8 text: the byte 0x{code - 0xDC00:02x} at character {at} "
            f"({text[:at][-20:]!r} comes before it); give the text in UTF-8"
        )
    return (
        f"not text: a lone UTF-16 surrogate \\u{code:04x} at character {at}; "
        "give the character itself"
    )


_INT_DIGITS = 4300  # Python's own limit for an int read from or written as text
_INT_LIMIT = 10**_INT_DIGITS
_PLAIN_OF = ((bool, "bool"), (int, "int"), (float, "float"), (str, "str"), (bytes, "bytes"))


def _why_not(item: Any) -> str:
    """What ``item`` is and what to pass instead, for an ArgumentsError."""
    shown = f"{type(item).__name__} {item!r:.60}"
    if isinstance(item, tuple):
        return f"a tuple {item!r:.60}, which the store would hand back as a list; pass a list"
    for base, name in _PLAIN_OF:
        if isinstance(item, base):
            return (
                f"a {shown} (a subclass of {name}), which the store would hand back as a plain "
                f"{name}; pass {name}(value)"
            )
    if isinstance(item, (list, Mapping, date)):
        plain = "list" if isinstance(item, list) else "dict" if isinstance(item, Mapping) else ""
        if plain:
            return f"a {shown}, which the store would hand back as a {plain}; pass {plain}(value)"
        return f"a {shown} (a subclass of date), which the store would not hand back as it is"
    return f"a {shown}; expected {ACCEPTED}"
