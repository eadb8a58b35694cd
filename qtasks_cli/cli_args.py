"""Turning command-line option text into values: ``list --after`` as a time, ``history
--status`` as a status, ``systemd-unit --name`` checked as a unit name, and ``trigger``'s
``--arg``, ``--kwarg`` and ``--json-kwargs`` as a run's arguments. Bad text is one clean line
on stderr and exit 2 (``cli_common.fail``)."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

from qtasks_cli.cli_common import fail as _fail

if TYPE_CHECKING:
    from qtasks_cli.models import RunStatus

MAX_DEPTH = 100  # levels of nesting in --arg, --kwarg and --json-kwargs values
MAX_VALUES = 100_000  # values in one --arg/--kwarg/--json-kwargs, aliases expanded


def parse_after(text: str) -> Any:
    from datetime import datetime, timezone

    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        _fail(f"--after: {text!r} is not an ISO-8601 date and time (e.g. 2026-03-29T00:00+01:00)")
    try:
        if when.tzinfo is None:
            when = when.astimezone()  # a naive time is the machine's local time
        return when.astimezone(timezone.utc)
    except (OverflowError, ValueError):
        _fail(f"--after: {text!r} is outside the dates qtasks can compute with")


def parse_status(status: str) -> RunStatus:
    """``history --status`` as a ``RunStatus``; an unknown one is exit 2 naming them all."""
    from qtasks_cli.models import RunStatus

    try:
        return RunStatus(status)
    except ValueError:
        _fail(
            f"--status: {status!r} is not a status "
            f"(expected one of {', '.join(s.value for s in RunStatus)})"
        )


def check_unit_name(name: str) -> None:
    """``systemd-unit --name``: exit 2 unless ``name`` can name a systemd service."""
    from qtasks_cli import systemd_unit as systemd

    if not systemd.valid_unit_name(name):
        _fail(
            f"--name: {name!r} is not a unit name (expected letters, digits and :_.@- "
            "without the .service suffix, such as 'qtasks' or 'shop-jobs')"
        )


def parse_call_args(
    arg: list[str] | None, kwarg: list[str] | None, json_kwargs: str | None
) -> tuple[Any, Any]:
    """--arg, --kwarg and --json-kwargs as a run's arguments. A VALUE is read by the job
    file's own YAML reader (keys are the text written, a key given twice is refused, tags and
    YAML 1.1's surprises as in the job file, which are said on stderr); --json-kwargs refuses
    a key given twice; so does giving a keyword twice across the options. Bad input: exit 2;
    so is an argument that is not UTF-8 text (``argvalues.not_text``)."""
    from qtasks_cli.argvalues import not_text

    given = (("--arg", arg or []), ("--kwarg", kwarg or []), ("--json-kwargs", [json_kwargs or ""]))
    for option, texts in given:
        for text in texts:
            reason = not_text(text)
            if reason:
                _fail(f"{option} {_shown(text)}: {reason}")
    args = [yaml_value(a, "--arg", a) for a in arg] if arg else None
    kwargs: dict[str, Any] | None = None
    if kwarg:
        kwargs = {}
        for item in kwarg:
            key, sep, value = item.partition("=")
            if not sep or not key:
                _fail(f"--kwarg {_shown(item)}: expected KEY=VALUE")
            if key in kwargs:
                _fail(f"--kwarg {_shown(item)}: keyword {key!r} is given twice")
            kwargs[key] = yaml_value(value, "--kwarg", item)
    if json_kwargs:
        extra = json_object(json_kwargs)
        twice = sorted(set(extra) & set(kwargs or {}))
        if twice:
            _fail(f"--json-kwargs: keyword {twice[0]!r} is given by --kwarg too")
        kwargs = {**(kwargs or {}), **extra}
    return args, kwargs


def yaml_value(text: str, option: str, shown: str) -> Any:
    from qtasks_cli import yamlload, yamltraps
    from qtasks_cli.errors import ConfigError

    if not text.strip():
        return text
    where = f"{option} {_shown(shown)}"
    try:
        tree, problems = yamlload.load(text, option)
    except ConfigError as exc:
        first = exc.problems[0]
        unreadable = "nesting" in first.message or "is not a character" in first.message
        if first.message.startswith("invalid YAML") and not unreadable:
            return text  # not YAML at all: the text as given
        _fail(f"{where}: {first.message}")
    except RecursionError:
        _fail(f"{where}: nested deeper than {MAX_DEPTH} levels")
    if problems:
        _fail(f"{where}: {problems[0].message}")
    if _cut_by_yaml(text, tree is None or (tree.kind == "scalar" and tree.value is None)):
        # A command line has no comments: `note=fix bug #42` means the whole text.
        from qtasks_cli.text import clean_line

        print(
            clean_line(
                f"{where}: warning: YAML would read what follows '#' (or the whole '---') as "
                "a comment; passed as the text given, quote it to say so"
            ),
            file=sys.stderr,
        )
        return text
    if tree is None:
        return None
    for _, note in yamltraps.notes(tree):
        from qtasks_cli.text import clean_line

        print(clean_line(f"{where}: warning: {note}"), file=sys.stderr)
    return yamlload.plain(tree)


def _cut_by_yaml(text: str, empty: bool) -> bool:
    """Whether YAML drops part of ``text`` (a comment after `` #``, or a document marker
    such as ``---`` that leaves no value), which on a command line is never meant."""
    if empty:
        return text.strip() not in ("~", "null", "Null", "NULL")
    if "#" not in text:
        return False
    import yaml

    try:
        node = yaml.compose(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError:
        return False
    return node is not None and text[node.end_mark.index :].strip().startswith("#")


class _TwiceInJSON(Exception):
    pass


def json_object(text: str) -> dict[str, Any]:
    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for key, value in pairs:
            if key in found:
                raise _TwiceInJSON(key)
            found[key] = value
        return found

    try:
        extra = json.loads(text, object_pairs_hook=unique)
    except _TwiceInJSON as exc:
        _fail(f"--json-kwargs: key {exc.args[0]!r} is given twice in one object")
    except json.JSONDecodeError as exc:
        _fail(f"--json-kwargs: not valid JSON: {exc}")
    except RecursionError:
        _fail(f"--json-kwargs: nested deeper than {MAX_DEPTH} levels")
    except ValueError as exc:  # an integer of more than 4,300 digits, say
        _fail(f"--json-kwargs: {exc}")
    try:
        _check_depth(extra, "--json-kwargs", text)
    except RecursionError:
        _fail(f"--json-kwargs: nested deeper than {MAX_DEPTH} levels")
    if not isinstance(extra, dict):
        _fail(f"--json-kwargs: expected a JSON object, got {type(extra).__name__}")
    return extra


def _shown(text: str) -> str:
    return repr(text if len(text) <= 60 else text[:59] + "…")


def _check_depth(value: Any, option: str, text: str) -> None:
    """Refuse (exit 2) a value nested deeper than MAX_DEPTH: it could not be stored or shown."""
    level = [value]
    seen = 0
    for _ in range(MAX_DEPTH + 1):
        level = [
            item
            for node in level
            if isinstance(node, (dict, list))
            for item in (node.values() if isinstance(node, dict) else node)
        ]
        seen += len(level)
        if seen > MAX_VALUES:  # YAML aliases can make a few bytes expand without end
            _fail(f"{option} {_shown(text)}: more than {MAX_VALUES:,} values")
        if not level:
            return
    _fail(f"{option} {_shown(text)}: nested deeper than {MAX_DEPTH} levels")
