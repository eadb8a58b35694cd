"""A YAML value with where it was written (``Located``), and how values are named in messages.

No YAML here: the model that ``yamlload`` builds and every reader of the job file uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class _Invalid:
    """Stands in for a value already reported as a problem, so it is not reported twice."""

    def __repr__(self) -> str:
        return "<invalid>"


INVALID: Any = _Invalid()


@dataclass(slots=True, eq=False)
class Located:
    """One YAML value with where it was written (1-based) and its dotted key path.

    ``value`` is a Python scalar, a list of Located, or for a mapping a dict from the key's
    text to a (key, value) pair of Located.
    """

    kind: str  # "scalar", "seq" or "map"
    value: Any
    line: int
    column: int
    path: str
    # For a plain scalar whose YAML 1.1 reading is a surprise: what kind ("base-60",
    # "octal", "boolean", "date"), or a number not in plain decimal digits ("binary", "hex",
    # "underscore"); ``source`` is then the text as written.
    trap: str | None = None
    source: str = ""

    def trap_note(self) -> str:
        """``'1:30' is read by YAML as 90 (a base-60 number)`` for a trapped scalar."""
        return f"{self.source!r} is read by YAML as {show_value(self.value)} ({self.reading()})"

    def trap_reason(self) -> str:
        """``YAML 1.1 reads no as a boolean`` for a trapped scalar."""
        return f"YAML 1.1 reads {self.source} as {self.reading()}"

    def reading(self) -> str:
        """What YAML 1.1 reads a trapped scalar as: ``a base-60 number``, ``a boolean``..."""
        return {
            "base-60": "a base-60 number",
            "octal": "an octal number",
            "boolean": "a boolean",
            "date": "a date",
            "binary": "a binary number",
            "hex": "a hexadecimal number",
            "underscore": "a number whose _ are dropped",
            "integer": "an integer",
            "float": "a number",
            "null": "null",
        }.get(self.trap or "", "")

    @property
    def is_null(self) -> bool:
        return self.kind == "scalar" and self.value is None

    @property
    def invalid(self) -> bool:
        return self.value is INVALID

    def type_name(self) -> str:
        """What the value is, for messages such as ``expected a mapping, got a list``."""
        if self.kind == "map":
            return "a mapping"
        if self.kind == "seq":
            return "a list"
        return scalar_type_name(self.value)


def scalar_type_name(value: Any) -> str:
    if value is None:
        return "null"
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    for kind, name in names.items():
        if type(value) is kind:
            return name
    if isinstance(value, bytes):
        return "binary data"
    return f"a {type(value).__name__}"


def show_value(value: Any) -> str:
    """A value as YAML shows it: ``false``, ``90``, ``2024-01-01``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return repr(value)
    return str(value)
