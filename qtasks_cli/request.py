"""The one builder of a run's arguments, used by every path that starts a run.

Schedule, catch-up, ``trigger``, ``trigger --enqueue``, ``qtasks_cli.enqueue()``, the queued run
of ``overlap: queue`` and the re-run of an interrupted run all go through ``build_call`` (or
``stored_call`` for what the store kept, which ends in the same steps). The rules:

* **Merging.** Positional arguments given by the caller replace the job file's ``args``; keyword
  arguments given by the caller are laid over the job file's ``kwargs`` key by key.
* **Placeholders.** ``${NAME}`` and ``${NAME:-default}`` in the job file's strings are kept as
  written in the *stored* form and resolved only when the run starts (``$${`` is a literal
  ``${``), so a job file's ``${NAME}`` value never reaches the state file. Values given by a
  caller are literal and stored as given (their ``${`` escaped as ``$${``), even when they
  hold a ``${NAME}`` value of the caller's environment: they are the caller's data, and the
  function receives exactly them. Displays hide such values (``qtasks_cli.show``).
* **Types.** A run's arguments are text, numbers, true/false, null, dates, date-times, binary
  data, lists and mappings with text keys, nested at most ``MAX_DEPTH`` levels: what the job
  file can express and the store hands back exactly, of exactly those types (``str``, ``int``
  of at most 4,300 digits, ``float``, ``bool``, ``None``, ``date``, ``datetime`` naive or with
  a fixed offset, ``bytes``, ``list``, ``dict``). Anything else is refused up front, never
  converted: a tuple, an IntEnum, a str subclass, a datetime in a named zone.
* **Keys.** A mapping's keys are text. In YAML (the job file, ``--arg``, ``--kwarg``) a key is
  the text as written (``1:`` is ``"1"``, ``no:`` is ``"no"``; ``validate`` says so) and a key
  given twice is refused; in JSON (``--json-kwargs``) a key given twice is refused too; from
  Python a key that is not a ``str`` is refused.
* **Binding.** The resolved arguments must fit the entry point's signature
  (``inspect.Signature.bind``).

Errors are ``ArgumentsError`` (exit 2) with the job's name and the reason.
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from qtasks_cli.errors import QtasksError
from qtasks_cli.models import JobSpec

__all__ = [
    "MAX_DEPTH",
    "ArgumentsError",
    "RunCall",
    "build_call",
    "call_for_start",
    "check_value",
    "escape",
    "expand",
    "not_text",
    "stored_call",
    "unsupported_placeholder",
]

MAX_DEPTH = 100
PLACEHOLDER = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
ACCEPTED = (
    "text, numbers, true/false, null, dates, date-times, binary data, lists and mappings "
    "with text keys"
)
# Values JSON cannot hold are kept in the store as {_TAG: kind, "value": text}; a mapping of
# the caller's own that has a key _TAG is wrapped as kind "dict", so decoding is exact.
_TAG = "__qtasks__"


class ArgumentsError(QtasksError):
    """A run's arguments are refused: wrong type, missing variable or a signature misfit."""


@dataclass(frozen=True, slots=True)
class RunCall:
    """A run's arguments twice: as the function receives them (``args``, ``kwargs``) and as
    the store keeps them (``stored_args``, ``stored_kwargs``: JSON values, ``${NAME}`` kept)."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    stored_args: list[Any]
    stored_kwargs: dict[str, Any]


# --- placeholders ---------------------------------------------------------------------


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


# --- value types ----------------------------------------------------------------------


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
                stack.append((v, f"{path}.{key}" if path else key, depth + 1))
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


def _store_form(value: Any, text: Callable[[str], str]) -> Any:
    """``value`` as JSON values, strings passed through ``text``."""
    if isinstance(value, str):
        return text(value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, datetime):
        return {_TAG: "datetime", "value": value.isoformat()}
    if isinstance(value, date):
        return {_TAG: "date", "value": value.isoformat()}
    if isinstance(value, bytes):
        return {_TAG: "bytes", "value": base64.b64encode(value).decode("ascii")}
    if isinstance(value, (list, tuple)):
        return [_store_form(v, text) for v in value]
    mapping = {key: _store_form(v, text) for key, v in value.items()}
    return {_TAG: "dict", "value": mapping} if _TAG in mapping else mapping


def _live_form(value: Any, text: Callable[[str], str]) -> Any:
    """The inverse of ``_store_form``; strings passed through ``text``."""
    if isinstance(value, str):
        return text(value)
    if isinstance(value, list):
        return [_live_form(v, text) for v in value]
    if not isinstance(value, Mapping):
        return value
    kind = value.get(_TAG)
    if isinstance(kind, str) and set(value) == {_TAG, "value"}:
        inner = value["value"]
        if kind == "dict" and isinstance(inner, Mapping):
            return {key: _live_form(v, text) for key, v in inner.items()}
        if isinstance(inner, str):
            try:
                if kind == "datetime":
                    return datetime.fromisoformat(inner)
                if kind == "date":
                    return date.fromisoformat(inner)
                if kind == "bytes":
                    return base64.b64decode(inner.encode("ascii"), validate=True)
            except ValueError:
                pass
    return {key: _live_form(v, text) for key, v in value.items()}


# --- the builder ----------------------------------------------------------------------


def build_call(
    job: JobSpec,
    args: Sequence[Any] | None = None,
    kwargs: Mapping[str, Any] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    bind: bool = True,
    unset_ok: bool = False,
) -> RunCall:
    """The arguments of a run of ``job`` started with the caller's ``args`` / ``kwargs``
    (None: the job file's own). Caller values are literal; merged with the job file's by
    the module's rule, checked, resolved against ``job.variables`` then ``env`` (default
    ``os.environ``) and, with ``bind``, checked against the signature. Caller strings are
    stored literally (escaped), never rewritten into placeholders. With ``unset_ok`` (a process that
    only stores the call) an unset variable is no error: the values are then only bound.
    Raises ArgumentsError (or EntryPointError if the entry point cannot be imported)."""
    given = [] if args is None else list(args)
    extra = {} if kwargs is None else dict(kwargs)
    for what, value in (("argument", given), ("keyword argument", extra)):
        problem = check_value(value, "args" if what == "argument" else "kwargs")
        if problem:
            raise ArgumentsError(f"job {job.name!r}: {what}s refused: {problem}")
    template_args = job.args if job.raw_args is None else job.raw_args
    template_kwargs = job.kwargs if job.raw_kwargs is None else job.raw_kwargs
    if args is None:
        stored_args = _store_form(list(template_args), _keep)
    else:
        stored_args = _store_form(given, escape)
    stored_kwargs = _unwrap_dict(_store_form(dict(template_kwargs), _keep))
    stored_kwargs.update(_unwrap_dict(_store_form(extra, escape)))
    return _finish(job, stored_args, stored_kwargs, env, bind, unset_ok)


def stored_call(
    job: JobSpec,
    stored_args: Sequence[Any],
    stored_kwargs: Mapping[str, Any],
    *,
    env: Mapping[str, str] | None = None,
    bind: bool = True,
) -> RunCall:
    """The arguments of a run rebuilt from what the store kept (``RunCall.stored_args`` and
    ``stored_kwargs`` of an earlier ``build_call``, read back from JSON): for a handed-over
    run, its queued re-start, or the re-run of an interrupted run. Same checks and errors as
    ``build_call``."""
    if not isinstance(stored_args, Sequence) or isinstance(stored_args, (str, bytes)):
        raise ArgumentsError(f"job {job.name!r}: stored arguments are not a list")
    if not isinstance(stored_kwargs, Mapping):
        raise ArgumentsError(f"job {job.name!r}: stored keyword arguments are not a mapping")
    return _finish(job, list(stored_args), dict(stored_kwargs), env, bind)


def call_for_start(job: JobSpec, args: Any = None, kwargs: Any = None) -> RunCall:
    """What the daemon calls as a run starts: ``args`` / ``kwargs`` are what the store kept
    for the run (``RunCall.stored_args`` / ``stored_kwargs``), or both None for a run with
    the job file's own arguments (schedule, catch-up, startup, a re-run without a record)."""
    if args is None and kwargs is None:
        if job.raw_args is not None or job.raw_kwargs is not None:
            return build_call(job)  # placeholders: resolved at each start
        # Without placeholders the call depends on the job alone: build it once per JobSpec
        # (a reload makes new ones), not on every fire of a thousand jobs.
        cached = _OWN_CALLS.get(id(job))
        if cached is None or cached[0] is not job:
            if len(_OWN_CALLS) >= _OWN_CALLS_MAX:
                _OWN_CALLS.clear()
            cached = _OWN_CALLS[id(job)] = (job, build_call(job))
        return cached[1]
    return stored_call(job, [] if args is None else args, {} if kwargs is None else kwargs)


_OWN_CALLS: dict[int, tuple[JobSpec, RunCall]] = {}
_OWN_CALLS_MAX = 16_384


def _keep(text: str) -> str:
    return text


def _unwrap_dict(value: Any) -> dict[str, Any]:
    if set(value) == {_TAG, "value"} and value[_TAG] == "dict":
        return dict(value["value"])  # kwargs names are identifiers, never the tag
    return dict(value)


def _finish(
    job: JobSpec,
    stored_args: list[Any],
    stored_kwargs: dict[str, Any],
    env: Mapping[str, str] | None,
    bind: bool,
    unset_ok: bool = False,
) -> RunCall:
    environ = os.environ if env is None else env
    variables = job.variables
    missing: list[str] = []

    def lookup(name: str) -> str | None:
        return variables[name] if name in variables else environ.get(name)

    def resolve_text(text: str) -> str:
        value, unset = expand(text, lookup)
        missing.extend(unset)
        return value

    problem = check_value(stored_args, "args") or check_value(stored_kwargs, "kwargs")
    if problem:
        raise ArgumentsError(f"job {job.name!r}: arguments refused: {problem}")
    args = tuple(_live_form(stored_args, resolve_text))
    # Decoded key by key: the top level is a plain mapping of names, never a tagged value.
    kwargs = {key: _live_form(value, resolve_text) for key, value in stored_kwargs.items()}
    if missing and not unset_ok:
        names = ", ".join(repr(name) for name in dict.fromkeys(missing))
        raise ArgumentsError(
            f"job {job.name!r}: environment variable(s) {names} not set when the run started "
            f"(give a default with ${{{missing[0]}:-value}})"
        )
    if bind:
        from qtasks_cli.entrypoints import check_binding, describe_signature, resolve

        fn = resolve(job.entrypoint)
        reason = check_binding(fn, args, kwargs)
        if reason:
            raise ArgumentsError(
                f"job {job.name!r}: arguments do not fit {describe_signature(fn)}: {reason}"
            )
    return RunCall(args=args, kwargs=kwargs, stored_args=stored_args, stored_kwargs=stored_kwargs)
