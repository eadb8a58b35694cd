"""Hiding ``${NAME}`` values: every form a secret can take on its way out becomes ``${NAME}``.

A value interpolated from the environment can leave a job in many spellings: as it is, inside
``repr()`` (``str(KeyError(value))``, ``{value!r}``, a list's repr; quoted with ``'`` or ``"``,
so the matching quote may or may not be escaped), inside ``ascii()``, as ``bytes`` repr, and
JSON-escaped (``json.dumps`` with or without ``ensure_ascii``), including JSON of a repr. Each
spelling is replaced, longest first, so a secret with quotes, backslashes, non-ASCII or control
characters is hidden in all of them. Pure functions, no I/O.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping
from typing import Any


def _bodies(quoted: str) -> list[str]:
    """The inside of a single-quoted repr, as it reads inside ``'...'`` and inside ``"..."``."""
    return [quoted, quoted.replace("\\'", "'")]


def _repr_forms(value: str) -> list[str]:
    # A trailing ' and " make repr() pick single quotes and escape every ' of the value.
    forms = _bodies(repr(value + "'\"")[1:-4])
    forms += _bodies(ascii(value + "'\"")[1:-4])
    forms += _bodies(repr(value.encode("utf-8", "surrogatepass") + b"'\"")[2:-4])
    return forms


def _json_forms(value: str) -> list[str]:
    return [json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1]]


@functools.lru_cache(maxsize=256)
def spellings(value: str) -> tuple[str, ...]:
    """Every spelling of ``value`` that redaction replaces, longest first, without repeats."""
    forms = [value, *_repr_forms(value), *_json_forms(value)]
    for form in _repr_forms(value):
        forms += _json_forms(form)  # a repr inside a JSON document
    unique = {form for form in forms if form}
    return tuple(sorted(unique, key=lambda form: (-len(form), form)))


def redact(text: str, secrets: Iterable[tuple[str, str]]) -> str:
    """``text`` with every spelling of each secret value replaced by its placeholder.

    ``secrets`` holds ``(value, placeholder)`` pairs; longer values go first so a secret that
    contains another is replaced whole."""
    pairs = sorted(((v, p) for v, p in secrets if v), key=lambda pair: -len(pair[0]))
    for value, placeholder in pairs:
        if not text:
            break
        for form in spellings(value):
            if form in text:
                text = text.replace(form, placeholder)
    return text


_known: dict[str, str] = {}  # every secret of the job files this process loaded


def remember(secrets: Iterable[tuple[str, str]]) -> None:
    """Note ``(value, placeholder)`` pairs of a loaded job file, for text that belongs to no
    job in particular: the lines jobs print while the live table captures the terminal."""
    for value, placeholder in secrets:
        if value:
            _known.setdefault(value, placeholder)


def redact_known(text: str) -> str:
    """``text`` with every secret passed to ``remember`` hidden (see ``redact``)."""
    return redact(text, _known.items()) if _known and text else text


def redact_value(value: Any, secrets: tuple[tuple[str, str], ...], depth: int = 0) -> Any:
    """``value`` with secrets hidden in its strings and bytes, through lists, tuples, sets and
    mappings (a copy; other objects are returned as they are). For payloads handed to hooks."""
    if not secrets or depth > 100:
        return value
    if isinstance(value, str):
        return redact(value, secrets)
    if isinstance(value, bytes):
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            return value
        hidden = redact(text, secrets)
        return value if hidden == text else hidden.encode("utf-8")
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
