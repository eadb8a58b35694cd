"""The escapes a secret's characters may be written as (``\\n``, ``\\xe9``, ``\\u00e9``,
``\\U0001f600``, surrogate pairs, UTF-8 bytes), as regex pieces, and what an escape's body
stands for. Pure functions, no I/O."""

from __future__ import annotations

import re
import string

# Characters that no encoding qtasks produces ever escapes: each spelling holds them as they are.
_LITERAL = frozenset(string.ascii_letters + string.digits + " !#$%&()*+,-.:;<=>?@[]^_`{|}~")
_SHORT_ESCAPES = {"\n": "n", "\t": "t", "\r": "r", "\b": "b", "\f": "f", "\x0b": "v", "\x07": "a"}
_BACKSLASHES = r"\\+"
# The body of an escape after its backslash, and what it stands for (``_decode``).
_ESCAPE_BODY = re.compile(r"[nrtbfva'\"/]|x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}")
_NAMED = {"n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f", "v": "\x0b", "a": "\x07"}
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


def _decode(body: str) -> str:
    """The character an escape's body stands for (a lone surrogate half for half a pair)."""
    if body[0] in "xuU":
        return chr(int(body[1:], 16))
    return _NAMED.get(body, body)
