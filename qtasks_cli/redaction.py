"""Hiding ``${NAME}`` values: every spelling a secret can take on its way out becomes ``${NAME}``.

What is a secret (the rule the README's Security section states): the value an environment
variable gave a ``${NAME}`` placeholder, by its length, because hiding a short value would
rewrite unrelated text (``REGION=eu`` inside "neutral") while its placeholder shows it anyway:

- ``MIN_SECRET_CHARS`` (4) characters or more: hidden. Shorter values (``eu``, ``3``) are not
  secrets; ``validate`` warns about each, and the stored arguments keep the placeholder anyway;
- fewer than ``ANYWHERE_CHARS`` (8): hidden where it stands as a whole word, not inside a
  longer word or number (``hunter2`` in "login hunter2 failed", not "1234" in "order 12345");
- ``ANYWHERE_CHARS`` or more: hidden wherever it occurs, inside other text too;
- a value of several lines is also hidden line by line (each line by the same rules), since
  output is captured and shown one line at a time.

Where: only inside text. Callers redact the *leaves* of a value (each ``str``, the text of an
error, a traceback, one printed line) before they quote, encode or join it, never a document
qtasks made (a JSON preview, a repr), so redaction cannot rewrite JSON syntax, quotes or
another value.

How: a secret may leave a job as it is, inside ``repr()`` or ``ascii()`` (quoted either way),
as ``bytes``, JSON-escaped (with or without ``ensure_ascii``), and any of these nested in each
other (JSON of a repr of JSON ...). Each layer only adds backslashes before ``\\``, ``'``, ``"``
and ``/`` and writes other characters as escapes (``\\n``, ``\\xe9``, ``\\u00e9``, ``\\U0001f600``,
a UTF-16 surrogate pair, UTF-8 bytes). So each secret is compiled into one pattern that accepts,
for every character, the character itself or any run of backslashes followed by one of its
escapes: every spelling at every depth, in one pass. A secret may also leave percent-encoded
in a URL (an HTTP client's error, any ``safe`` characters): one more pattern per secret
(``_quoted_matcher``). Pure functions, no I/O.
"""

from __future__ import annotations

import functools
import re
import string
from collections.abc import Callable, Iterable, Mapping
from typing import Any

MIN_SECRET_CHARS = 4  # shorter values are not secrets (see the module's docstring)
ANYWHERE_CHARS = 8  # shorter secrets are hidden only as whole words

# Characters that no encoding qtasks produces ever escapes: each spelling holds them as they are.
_LITERAL = frozenset(string.ascii_letters + string.digits + " !#$%&()*+,-.:;<=>?@[]^_`{|}~")
_SHORT_ESCAPES = {"\n": "n", "\t": "t", "\r": "r", "\b": "b", "\f": "f", "\x0b": "v", "\x07": "a"}
_BACKSLASHES = r"\\+"


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
    """The pattern of every spelling of ``part``, free of catastrophic backtracking.

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
        if char in _LITERAL or char in "'\"/":
            pieces.append(before + re.escape(char))
        else:
            escapes = "|".join(_escapes(char))
            pieces.append(rf"{before}(?:{re.escape(char)}|(?<=\\)(?:{escapes}))")
        run = 0
    if run:
        pieces.append(rf"\\{{{run},}}")
    body = "".join(pieces)
    return body if part[:1] in _LITERAL else r"(?<!\\)" + body


def hidden_parts(value: str) -> tuple[str, ...]:
    """The texts hidden for a ``${NAME}`` value, longest first: the value itself and, for a
    value of several lines, each line; only those of at least ``MIN_SECRET_CHARS``."""
    parts = {value, *value.splitlines()} if value else set()
    return tuple(
        sorted((p for p in parts if len(p) >= MIN_SECRET_CHARS), key=lambda p: (-len(p), p))
    )


# Before a whole word: no word character, unless it ends an escape (``\\n``, ``\\xe9`` ...).
_WORD_START = (
    r"(?:(?<!\w)|(?<=\\[nrtbfva])|(?<=\\x[0-9a-fA-F]{2})"
    r"|(?<=\\u[0-9a-fA-F]{4})|(?<=\\U[0-9a-fA-F]{8}))"
)
_WORD_END = r"(?!\w)"


_UNRESERVED = frozenset(string.ascii_letters + string.digits + "_.-~")  # RFC 3986 section 2.3


def _percent(char: str) -> str:
    """The pattern of ``char`` as it is or percent-encoded (its UTF-8 bytes, hex digits in
    either case; a space also as ``+``, as ``quote_plus`` writes it)."""
    encoded = "".join("%" + _hex(byte, 2) for byte in char.encode("utf-8", "surrogatepass"))
    plus = r"|\+" if char == " " else ""
    return f"(?:{re.escape(char)}|{encoded}{plus})"


@functools.lru_cache(maxsize=512)
def _quoted_matcher(part: str) -> tuple[re.Pattern[str], str] | None:
    """The pattern of ``part`` percent-encoded as a URL carries it (an HTTP client's error):
    what ``urllib.parse.quote`` or ``quote_plus`` make of it with any ``safe`` characters,
    i.e. each character that is not unreserved (RFC 3986 section 2.3) as it is or as ``%XX``
    of its UTF-8 bytes (either case); and its longest unreserved run, for the quick test.
    None when no character of ``part`` would be encoded."""
    if all(char in _UNRESERVED for char in part):
        return None
    body = "".join(re.escape(c) if c in _UNRESERVED else _percent(c) for c in part)
    if len(part) < ANYWHERE_CHARS:
        body = (r"(?<![\w%])" if re.match(r"\w", part) else "") + body
        body += r"(?!\w)" if re.match(r"\w", part[-1]) else ""
    runs = re.findall("[" + re.escape("".join(sorted(_UNRESERVED))) + "]+", part)
    return re.compile(body), max(runs, key=len, default="")


@functools.lru_cache(maxsize=512)
def _matcher(part: str) -> tuple[re.Pattern[str], str]:
    """The pattern of every spelling of ``part`` (as a whole word when it is shorter than
    ANYWHERE_CHARS), and its longest run of characters that every spelling holds as they are
    (a quick test before the pattern runs)."""
    body = _body(part)
    if len(part) < ANYWHERE_CHARS:
        start = _WORD_START if re.match(r"\w", part) else ""
        end = _WORD_END if re.match(r"\w", part[-1]) else ""
        body = start + body + end
    pattern = re.compile(body)
    runs = re.findall("[" + re.escape("".join(sorted(_LITERAL))) + "]+", part)
    return pattern, max(runs, key=len, default="")


def _constant(text: str) -> Callable[[re.Match[str]], str]:
    return lambda _match: text  # a function, so a backslash in the placeholder stays as it is


@functools.lru_cache(maxsize=256)
def _plan(
    secrets: tuple[tuple[str, str], ...],
) -> tuple[tuple[re.Pattern[str], str, Callable[[re.Match[str]], str]], ...]:
    pairs = [(part, placeholder) for value, placeholder in secrets for part in hidden_parts(value)]
    pairs.sort(key=lambda pair: -len(pair[0]))  # a secret that holds another goes first, whole
    plan = []
    for part, placeholder in pairs:
        pattern, anchor = _matcher(part)
        plan.append((pattern, anchor, _constant(placeholder)))
    for part, placeholder in pairs:  # after every plain spelling: a quoted form holds none
        quoted = _quoted_matcher(part)
        if quoted is not None:
            plan.append((quoted[0], quoted[1], _constant(placeholder)))
    return tuple(plan)


def redact(text: str, secrets: Iterable[tuple[str, str]]) -> str:
    """``text`` with every spelling of each secret replaced by its placeholder.

    ``secrets`` holds ``(value, placeholder)`` pairs; which values count, and how their
    spellings are found, is the module's rule. ``text`` is one piece of text (a string of a
    value, an error message, a traceback, a printed line): pass the leaves of a structure,
    never a JSON or repr document built from several values."""
    if not text:
        return text
    for pattern, anchor, shown in _plan(tuple(secrets)):
        if anchor not in text:
            continue
        text = pattern.sub(shown, text)
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


def hold_back(text: str) -> int:
    """Where to stop writing ``text`` (complete lines, to go out line by line) so that no
    known secret of several lines is cut: the start of the line where ``text`` ends with the
    first line(s) of such a secret, or ``len(text)``. The caller keeps the rest until more
    text comes (or its stream ends) and redacts it with that text."""
    stop = len(text)
    for value, _ in _Known.pairs:
        end = value.find("\n")
        while end != -1:
            head = value[: end + 1]
            if text.endswith(head):
                stop = min(stop, text.rfind("\n", 0, len(text) - len(head)) + 1)
            end = value.find("\n", end + 1)
    return stop


def secret_start(text: str) -> int:
    """The length of the longest end of ``text`` that is the start of a known secret (0 if
    none): text a writer should keep back a moment, since the rest may follow."""
    best = 0
    for value, _ in _Known.pairs:
        for k in range(min(len(text), len(value) - 1), best, -1):
            if text.endswith(value[:k]):
                best = k
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
