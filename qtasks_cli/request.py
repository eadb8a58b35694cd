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

Errors are ``ArgumentsError`` (exit 2) with the job's name and the reason. The steps are
placeholders.py (``${NAME}``), argvalues.py (the accepted values) and argforms.py (the store's
form of them); this module merges, resolves and binds.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from qtasks_cli.argforms import live_form, store_form, unwrap_dict
from qtasks_cli.argvalues import check_value
from qtasks_cli.errors import QtasksError
from qtasks_cli.models import JobSpec
from qtasks_cli.placeholders import escape, expand

__all__ = [
    "ArgumentsError",
    "RunCall",
    "build_call",
    "call_for_start",
    "stored_call",
]


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
        stored_args = store_form(list(template_args), _keep)
    else:
        stored_args = store_form(given, escape)
    stored_kwargs = unwrap_dict(store_form(dict(template_kwargs), _keep))
    stored_kwargs.update(unwrap_dict(store_form(extra, escape)))
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
    args = tuple(live_form(stored_args, resolve_text))
    # Decoded key by key: the top level is a plain mapping of names, never a tagged value.
    kwargs = {key: live_form(value, resolve_text) for key, value in stored_kwargs.items()}
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
