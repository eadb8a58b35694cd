"""The ``${NAME}`` placeholders of a job file's strings: expanding them (``${NAME:-default}``,
``$${`` for a literal ``${``), refusing the forms qtasks does not read, and escaping a literal
value into the stored form (qtasks_cli.request keeps placeholders in the store and resolves them
when a run starts)."""

from __future__ import annotations

import re
from collections.abc import Callable

PLACEHOLDER = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand(text: str, lookup: Callable[[str], str | None]) -> tuple[str, list[str]]:
    """``text`` with each ``${NAME}`` / ``${NAME:-default}`` replaced by ``lookup(NAME)``
    (the default when unset or empty) and ``$${`` by ``${``; plus the names that were unset
    and had no default. The rule of the job file's strings (README, "The job file")."""
    if "${" not in text:
        return text, []
    missing: list[str] = []

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$${":
            return "${"
        name, default = match.group(1), match.group(2)
        value = lookup(name)
        if value is None or (value == "" and default is not None):
            if default is None:
                missing.append(name)
            return default or ""
        return value

    return PLACEHOLDER.sub(substitute, text), missing


_ANY_DOLLAR_BRACE = re.compile(r"\$\$\{|\$\{")


def unsupported_placeholder(text: str) -> str | None:
    """None if every ``${`` in ``text`` (a job file's string) is a supported placeholder,
    ``${NAME}`` or ``${NAME:-default}``, or escaped as ``$${``; else why not, naming it. The
    other forms of sh(1)'s parameter expansion (``${NAME-x}``, ``${NAME:?msg}``,
    ``${NAME:=x}``, ``${NAME:+x}``, a placeholder inside a default) are refused rather than
    passed on as text the function would take for a value (POSIX XCU 2.6.2)."""
    for found in _ANY_DOLLAR_BRACE.finditer(text):
        if found.group() == "$${" or (found.start() and text[found.start() - 1] == "$"):
            continue
        match = PLACEHOLDER.match(text, found.start())
        if match is None or (match.group(2) is not None and "${" in match.group(2)):
            end = text.find("}", found.start())
            shown = text[found.start() : end + 1 if end != -1 else found.start() + 30]
            return (
                f"{shown!r:.60} is not a placeholder qtasks reads: only ${{NAME}} and "
                "${NAME:-default} (not nested) are; write $${ for a literal ${"
            )
    return None


def escape(text: str) -> str:
    """``text`` in the stored form of a literal value: ``expand(escape(t)) == t``."""
    return text.replace("${", "$${")
