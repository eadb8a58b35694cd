"""What to say about YAML 1.1's silent readings (``yamlwalk`` marks them as ``Located.trap``).

In a duration or a schedule such a value is refused with what YAML made of it and what was
probably meant; a clock-like text (``"1:30"``, ``0:30``) is refused the same way, quoted or
not, since it has no one meaning. In arguments the value is kept and ``validate`` says what it
became.
"""

from __future__ import annotations

import re

from qtasks_cli.located import Located, show_value

__all__ = ["MAPPING_FIELDS", "NUMBER_TRAPS", "notes", "refusal"]

# The fields of a schedule mapping (``{hour: 23, minute: 59}``).
MAPPING_FIELDS = ("month", "day", "day_of_week", "hour", "minute", "second")
# Numbers YAML 1.1 reads from other than plain decimal digits: refused wherever a number is
# a setting (a count, a duration, a schedule); in arguments only the first two are surprises
# (YAML 1.2 reads 0x10 as 16 too, and 1_000 is what its writer meant).
NUMBER_TRAPS = ("base-60", "octal", "binary", "hex", "underscore")
_ARGUMENT_TRAPS = ("base-60", "octal", "boolean", "date")
_CLOCK_LIKE = re.compile(r"\s*[-+]?\d+(:\d+)+(\.\d*)?\s*")
_CLOCK_MAX = 64  # longer texts are not taken for a clock (and the pattern backtracks on them)


def refusal(node: Located, what: str) -> str | None:
    """Why ``node`` cannot be ``what`` ("a duration", "a schedule", "a valid value") because
    of how YAML 1.1 reads it, with what to write instead; None when that is not the case."""
    text = node.source if node.trap else node.value
    if node.trap == "base-60" or (
        isinstance(text, str) and len(text) <= _CLOCK_MAX and _CLOCK_LIKE.fullmatch(text)
    ):
        read = node.trap_note() if node.trap else f"{text!r} is not {what}"
        return f"{read}; {_clock_hint(text, what)}"
    if node.trap in NUMBER_TRAPS and (node.trap == "octal" or what != "a schedule"):
        # A leading zero is more likely a typo than octal; the other forms mean their value.
        digits = node.source.lstrip("+-0_") if node.trap == "octal" else show_value(node.value)
        if what != "a duration":
            return f"{node.trap_note()}; write {digits or 0} in plain digits"
        return f"{node.trap_note()}, not {what}; write '{digits}s' for {digits} seconds"
    if node.trap == "boolean":
        if what == "a duration":
            return (
                f"{node.trap_note()}, not {what}; write a value such as 30s (for none, leave "
                "the key out or write null where that is allowed)"
            )
        return f"{node.trap_note()}, not {what}; quote it if you meant the text"
    if node.trap == "date":
        return f"{node.trap_note()}, not {what}"
    return None


def _clock_hint(text: str, what: str) -> str:
    parts = text.strip().lstrip("+").split(":")
    if what == "a schedule":
        if len(parts) == 2 and all(p.isdigit() for p in parts):
            at = f"'{int(parts[1])} {int(parts[0])} * * *'"
            return f"for {int(parts[0]):02}:{int(parts[1]):02} every day write {at}"
        return "write a cron expression such as '30 1 * * *'"
    if what == "a number":
        return "write the number you meant in plain digits"
    if what != "a duration":
        return "write the number you meant, or quote the text"
    if len(parts) == 2:
        return f"write '{parts[0]}m{parts[1]}s' or '{parts[0]}h{parts[1]}m'"
    if len(parts) == 3:
        return f"write '{parts[0]}h{parts[1]}m{parts[2]}s'"
    return "write it with units, such as '1h30m' or '2m30s'"


def notes(node: Located) -> list[tuple[Located, str]]:
    """For args or kwargs: each surprising scalar inside ``node`` and what to say about it
    (``'country: no' became False (YAML 1.1 reads no as a boolean); ...``)."""
    found: list[tuple[Located, str]] = []
    stack: list[tuple[str | None, Located]] = [(None, node)]
    while stack:
        key, item = stack.pop()
        if item.trap in _ARGUMENT_TRAPS:
            written = f"{key}: {item.source}" if key is not None else item.source
            found.append(
                (
                    item,
                    f"'{written}' became {item.value!r} ({item.trap_reason()}); "
                    "quote it to pass the text",
                )
            )
        elif item.kind == "map":
            for k, (key_node, _) in item.value.items():
                if key_node.trap:
                    found.append(
                        (
                            key_node,
                            f"key '{k}' is kept as the text '{k}' (YAML 1.1 reads {k} as "
                            f"{key_node.reading()}); keys in arguments are always text",
                        )
                    )
            stack.extend((k, value) for k, (_, value) in reversed(item.value.items()))
        elif item.kind == "seq":
            stack.extend((None, value) for value in reversed(item.value))
    return found
