"""Bounded, contained text from what a job hands back: its exception, and the pieces every
such text is made of (types read without the job's code, strings cut and redacted); the
previews of its result and items are made of them in ``qtasks_cli.previews``.

A job's value is hostile input to the daemon: ``__str__``/``__repr__`` may raise ``SystemExit``
or ``KeyboardInterrupt``, loop forever, or return 100 MB; a result may be a list of ten million
items. Everything here is bounded in size (``limit`` characters), contained against every
``BaseException``, and, where the job's own code could run or the value is large, done in a
helper thread with a deadline (``offloop.off_loop``) so the event loop that fires jobs never
waits on it.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import threading
import traceback
from collections.abc import Callable
from typing import Any

from qtasks_cli import offloop

PREVIEW_CHARS = 200  # a result or item preview
ERROR_CHARS = 2_000  # an error message
TRACEBACK_CHARS = 16 * 1024  # a traceback (its end is kept)
# Secrets are redacted before clipping; this much beyond the limit is kept for that, so a
# secret that straddles the limit is replaced whole rather than shown in part.
_REDACT_MARGIN = 64 * 1024
SHIPPED_CHARS = 8 * _REDACT_MARGIN  # what a child process sends, redacted and clipped here


# --- types, read without running a job's code ----------------------------------------------------
#
# ``isinstance(x, C)`` reads ``x.__class__`` (a property of the job's class may run there), ``kind
# in (int, float)`` and sets of classes call a metaclass's ``__eq__``/``__hash__``, and ``cls.attr``
# goes through a metaclass's ``__getattribute__``. On the event loop, a job's value is only ever
# looked at through ``type(x)`` (the C type slot), identity, and these slot readers of ``type``.

_MRO = type.__dict__["__mro__"].__get__
_NAME = type.__dict__["__name__"].__get__
_QUALNAME = type.__dict__["__qualname__"].__get__
_MODULE = type.__dict__["__module__"].__get__
_CLASS_DICT = type.__dict__["__dict__"].__get__


def is_one_of(kind: type, kinds: tuple[type, ...]) -> bool:
    """``kind`` is one of ``kinds``, by identity."""
    return any(kind is candidate for candidate in kinds)


def is_subclass(cls: type, bases: tuple[type, ...]) -> bool:
    """``cls`` derives from one of ``bases`` through its MRO, as ``except`` matches exceptions
    (no ``__subclasscheck__``, no ``__class__``, no ``__eq__`` of the job's classes run)."""
    return any(klass is base for klass in _MRO(cls) for base in bases)


def has_method(cls: type, name: str) -> bool:
    """``name`` is defined in the class dict of ``cls`` or of a class of its MRO."""
    return any(name in _CLASS_DICT(klass) for klass in _MRO(cls))


def class_name(cls: type) -> str:
    """``cls.__name__`` without running a metaclass's code."""
    return plain_str(_NAME(cls), 300) or "?"


# --- strings -------------------------------------------------------------------------------------


def plain_str(text: Any, limit: int) -> str:
    """An exact ``str`` of at most ``limit`` characters from a str (or str subclass) value,
    without calling any method the subclass may override."""
    return str.__getitem__(text, slice(0, limit)) if is_subclass(type(text), (str,)) else ""


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, the cut marked with ``…``."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def clip_start(text: str, limit: int) -> str:
    """``text`` cut to its last ``limit`` characters (a traceback's end is where the error is)."""
    return text if len(text) <= limit else "…" + text[-(limit - 1) :]


def redacted(text: str, limit: int, redact: Callable[[str], str], *, keep_end: bool = False) -> str:
    """``text`` with secrets redacted, then clipped to ``limit``; the work is bounded by the
    limit, not by the text's length."""
    span = limit + _REDACT_MARGIN
    if len(text) > span:
        text = text[-span:] if keep_end else text[:span]
    text = redact(text)
    return clip_start(text, limit) if keep_end else clip(text, limit)


def type_name(obj: BaseException | type) -> str:
    """``ValueError`` for builtins, else ``module.Qualified.Name``; never raises."""
    cls: type = obj if is_subclass(type(obj), (type,)) else type(obj)  # type: ignore[assignment]
    try:
        module, qualname = _MODULE(cls), _QUALNAME(cls)
        if type(module) is not str or type(qualname) is not str:
            raise TypeError
        return plain_str(qualname if module == "builtins" else f"{module}.{qualname}", 300)
    except Exception:
        return class_name(cls)


def safe_str(exc: BaseException, limit: int = ERROR_CHARS + _REDACT_MARGIN) -> str:
    """``str(exc)`` cut to ``limit``; a placeholder if it raises anything (SystemExit too), or
    without calling it when that class's ``__str__`` once outlived its deadline."""
    cls = type(exc)
    if offloop.hung_before(cls):
        return f"<{class_name(cls)}: its str() hung before; not called again>"
    try:
        return plain_str(str(exc), limit)
    except offloop.GaveUp:
        raise
    except BaseException as inner:
        return f"<{class_name(cls)} whose str() raised {class_name(type(inner))}>"


def safe_repr(value: Any, limit: int = PREVIEW_CHARS + _REDACT_MARGIN) -> str:
    """``repr(value)`` cut to ``limit``; a placeholder if it raises anything, or without
    calling it when that class's ``__repr__`` once outlived its deadline."""
    cls = type(value)
    if offloop.hung_before(cls):
        return f"<{class_name(cls)} object: its repr() hung before; not called again>"
    try:
        return plain_str(repr(value), limit)
    except offloop.GaveUp:
        raise
    except BaseException as inner:
        return f"<{class_name(cls)} object whose repr() raised {class_name(type(inner))}>"


# --- exceptions ----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _internal_prefixes() -> tuple[str, ...]:
    dirs = [os.path.dirname(os.path.abspath(__file__))]
    for name in ("asyncio", "concurrent.futures", "tenacity", "importlib"):
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin:
            dirs.append(os.path.dirname(os.path.abspath(spec.origin)))
    files = [os.path.abspath(threading.__file__)]
    runpy = importlib.util.find_spec("runpy")  # it starts a process job's child
    if runpy is not None and runpy.origin and os.path.isfile(runpy.origin):
        files.append(os.path.abspath(runpy.origin))
    return (*(d + os.sep for d in dirs), *files)


def _is_internal(filename: str) -> bool:
    if filename.startswith(("<frozen importlib", "<frozen runpy")):  # frozen since 3.11
        return True
    return os.path.abspath(filename).startswith(_internal_prefixes())


def user_frames(stack: traceback.StackSummary) -> traceback.StackSummary:
    """``stack`` without the frames of qtasks, asyncio, tenacity, importlib and threading."""
    return traceback.StackSummary.from_list([f for f in stack if not _is_internal(f.filename)])


def format_user_traceback(exc: BaseException) -> str:
    """The formatted traceback of ``exc`` and its chained causes, without the frames of qtasks,
    asyncio, concurrent.futures, tenacity, importlib and threading. May run the job's code
    (``__str__``, ``__notes__``): call it through ``describe_exception``."""
    te = traceback.TracebackException(type(exc), exc, exc.__traceback__)
    pending, seen = [te], set()
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        current.stack = user_frames(current.stack)
        nested = [
            current.__cause__,
            current.__context__,
            *(getattr(current, "exceptions", None) or ()),
        ]
        pending.extend(n for n in nested if n is not None)
    return "".join(te.format())


def _bare_traceback(exc: BaseException, message: str) -> str | None:
    """The frames of ``exc`` alone, when its full formatting failed."""
    try:
        frames = user_frames(traceback.extract_tb(exc.__traceback__))
        body = "".join(frames.format())
    except BaseException:
        return None
    return f"Traceback (most recent call last):\n{body}{type_name(exc)}: {message}\n"


def describe_exception(
    exc: BaseException,
    redact: Callable[[str], str],
    prefix: str = "",
    *,
    error_chars: int = ERROR_CHARS,
    traceback_chars: int = TRACEBACK_CHARS,
    message_read: Callable[[str], None] | None = None,
) -> tuple[str, str, str | None]:
    """(type name, message, traceback) of ``exc``, secrets redacted, clipped to ERROR_CHARS
    and TRACEBACK_CHARS. Never raises: a ``__str__`` raising SystemExit gives a placeholder.
    May run the job's code; the daemon calls it through ``describe_exception_off_loop``.
    ``message_read`` is given the message (redacted, clipped) as soon as it is made, before the
    traceback, which may take longer (a chain of 200,000 exceptions)."""
    error_type = type_name(exc)
    message = safe_str(exc)
    if message_read is not None:
        message_read(redacted(prefix + message, error_chars, redact))
    try:
        if offloop.hung_before(type(exc)):
            raise LookupError  # formatting would call its __str__ again
        text: str | None = format_user_traceback(exc)
    except offloop.GaveUp:
        raise
    except BaseException:
        text = _bare_traceback(exc, message)
    return (
        redact(error_type),  # a class a job made may be named after its secret
        redacted(prefix + message, error_chars, redact),
        None if text is None else redacted(text, traceback_chars, redact, keep_end=True),
    )


async def describe_exception_off_loop(
    exc: BaseException, redact: Callable[[str], str], prefix: str = ""
) -> tuple[str, str, str | None]:
    """``describe_exception`` in a helper thread with a deadline (the job's ``__str__`` and
    the source lines of its traceback are read there, never on the loop)."""
    name, timeout = redact(type_name(exc)), offloop.TEXT_TIMEOUT

    def placeholder(why: str) -> tuple[str, str, str | None]:
        return name, redacted(f"{prefix}<{name}: {why}>", ERROR_CHARS, redact), None

    read: list[str] = []  # the message, once made: kept if only the traceback is late
    late = placeholder(f"its text could not be read within {timeout:g}s")
    found = await offloop.off_loop(
        lambda: describe_exception(exc, redact, prefix, message_read=read.append),
        timeout=timeout,
        fallback=late,
        refused=placeholder(f"its text is not read while {offloop.HUNG_TEXTS}"),
        unstarted=placeholder(f"its text is not read: {offloop.NO_THREAD}"),
    )
    if found is late and read:
        return name, read[0], f"(its traceback could not be formatted within {timeout:g}s)"
    return found
