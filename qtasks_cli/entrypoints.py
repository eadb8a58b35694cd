"""``module:attribute`` references: resolve them, tell what kind of callable they are, and
check arguments against their signature, with messages a user can act on."""

from __future__ import annotations

import builtins
import difflib
import enum
import functools
import importlib
import inspect
import logging
import pkgutil
import re
import sys
import sysconfig
import traceback
import types
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from qtasks_cli.errors import EntryPointError

log = logging.getLogger(__name__)

_DOTTED = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"
REF_PATTERN = re.compile(rf"^({_DOTTED}):({_DOTTED})$")
_EXAMPLE = "'module:attribute' such as 'shop.reports:daily_report'"
_QTASKS_DIR = str(Path(__file__).resolve().parent)

_cache: dict[str, Any] = {}


class CallableKind(enum.Enum):
    ASYNC = "async"
    SYNC = "sync"
    GENERATOR = "generator"
    ASYNC_GENERATOR = "async generator"

    @property
    def is_generator(self) -> bool:
        return self in (CallableKind.GENERATOR, CallableKind.ASYNC_GENERATOR)


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest candidate, or "" when none is close."""
    options = list(candidates)
    by_lower = {c.lower(): c for c in options}
    close = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=0.6)
    return f" (did you mean {by_lower[close[0]]!r}?)" if close else ""


def split_ref(ref: str) -> tuple[str, str]:
    """``("pkg.mod", "attr.sub")`` from ``"pkg.mod:attr.sub"``; EntryPointError if malformed."""
    match = REF_PATTERN.match(ref) if isinstance(ref, str) else None
    if match is None:
        raise EntryPointError(f"{ref!r} is not an entry point; expected {_EXAMPLE}")
    return match.group(1), match.group(2)


def add_to_sys_path(folders: Sequence[Path]) -> None:
    """Put ``folders`` at the front of sys.path in order; calling it again changes nothing."""
    wanted = [str(folder) for folder in folders]
    sys.path[:] = wanted + [entry for entry in sys.path if entry not in wanted]
    importlib.invalidate_caches()


def clear_cache() -> None:
    """Forget resolved references, so the next resolve imports again (tests, reloads)."""
    _cache.clear()


def resolve(ref: str) -> Any:
    """The object ``ref`` ("pkg.mod:attr.sub") names, importing its module; cached."""
    if ref in _cache:
        return _cache[ref]
    module_name, attr = split_ref(ref)
    obj: Any = _import(module_name)
    parts = attr.split(".")
    for i, part in enumerate(parts):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            owner = (
                f"module {module_name!r}"
                if i == 0
                else repr(f"{module_name}:{'.'.join(parts[:i])}")
            )
            public = [name for name in dir(obj) if not name.startswith("_")]
            raise EntryPointError(
                f"{owner} has no attribute {part!r}{did_you_mean(part, public)}"
            ) from None
        except BaseException as exc:  # a module __getattr__'s SystemExit as well
            raise EntryPointError(
                f"reading {ref!r} failed: {describe_import_error(exc, module_name)}"
            ) from None
    _cache[ref] = obj
    return obj


def _import(module_name: str) -> Any:
    try:
        if module_name in sys.modules:
            return importlib.import_module(module_name)
        from qtasks_cli import gcpause

        with gcpause.released():  # the module sees the collector as it is
            return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing == module_name or module_name.startswith(missing + "."):
            raise EntryPointError(_not_found(module_name, missing)) from None
        raise EntryPointError(
            f"importing {module_name!r} failed: {describe_import_error(exc, module_name)}"
        ) from None
    except BaseException as exc:  # SystemExit, KeyboardInterrupt and the like too: a module
        # that raises one at import is the job file's error, never the command's end
        raise EntryPointError(
            f"importing {module_name!r} failed: {describe_import_error(exc, module_name)}"
        ) from None


def _not_found(module_name: str, missing: str) -> str:
    parent_name, _, leaf = missing.rpartition(".")
    parent = sys.modules.get(parent_name) if parent_name else None
    search = getattr(parent, "__path__", None)
    if parent is not None and search is not None:
        siblings = [info.name for info in pkgutil.iter_modules(search)]
        where = ", ".join(repr(p) for p in search)
        return (
            f"module {module_name!r} not found: package {parent_name!r} ({where}) has no "
            f"module {leaf!r}{did_you_mean(leaf, siblings)}"
        )
    shown = [entry or "." for entry in sys.path[:4]]
    more = f" and {len(sys.path) - 4} more" if len(sys.path) > 4 else ""
    which = "" if missing == module_name else f" (no module named {missing!r})"
    return (
        f"module {module_name!r} not found{which}; searched sys.path: "
        f"{', '.join(repr(p) for p in shown)}{more}"
    )


def describe_import_error(exc: BaseException, module: str) -> str:
    """One line for an exception raised by user code: its type, message and where in the
    user's files it happened, such as ``ValueError: boom (at /path/shop/x.py:12)``."""
    from qtasks_cli import failures, offloop

    if isinstance(exc, SyntaxError):
        text = f"SyntaxError: {exc.msg}"
        where = f"{exc.filename}:{exc.lineno}" if exc.filename and exc.lineno else None
    else:
        # The module's own exception: its str() may raise (SystemExit too) or never return,
        # so it is asked in a helper thread with a deadline, as a run's error is.
        name = failures.class_name(type(exc))
        message = offloop.in_helper(
            lambda: failures.safe_str(exc, 2000),
            fallback=f"<its str() did not return in {offloop.TEXT_TIMEOUT:g} s>",
        )
        text = f"{name}: {message}" if message else name
        try:
            where = _user_frame(exc)
        except Exception:
            where = None
    return f"{text} (at {where})" if where else text


def _library_dirs() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    names = ("stdlib", "platstdlib", "purelib", "platlib")
    return tuple(str(Path(paths[name]).resolve()) for name in names if name in paths)


def _user_frame(exc: BaseException) -> str | None:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith("<")]
    if not frames:
        return None
    libraries = _library_dirs()

    def is_user(filename: str) -> bool:
        resolved = str(Path(filename).resolve())
        return not resolved.startswith((_QTASKS_DIR, *libraries))

    # The innermost frame in the user's own files; if the code lives among the libraries
    # (an installed package), the innermost frame outside qtasks will have to do.
    ours = [f for f in frames if is_user(f.filename)] or [
        f for f in frames if not str(Path(f.filename).resolve()).startswith(_QTASKS_DIR)
    ]
    chosen = (ours or frames)[-1]
    return f"{chosen.filename}:{chosen.lineno}"


def _unwrap(fn: Any) -> Any:
    while True:
        if isinstance(fn, functools.partial):
            fn = fn.func
        elif inspect.ismethod(fn):
            fn = fn.__func__
        else:
            return fn


def kind_of(fn: Any) -> CallableKind:
    """How calling ``fn`` behaves; looks through partials, bound methods and ``__call__``."""
    if type(fn) is types.FunctionType:  # remembered with its code, which decides the kind
        key = (fn, fn.__code__)
        kind = _KINDS.get(key)
        if kind is None:
            if len(_KINDS) >= _SIGNATURES_MAX:
                _KINDS.clear()
            kind = _KINDS[key] = _kind_of(fn)
        return kind
    return _kind_of(fn)


_KINDS: dict[tuple[Any, Any], CallableKind] = {}


def _kind_of(fn: Any) -> CallableKind:
    target = _unwrap(fn)
    if inspect.isasyncgenfunction(target):
        return CallableKind.ASYNC_GENERATOR
    if inspect.isgeneratorfunction(target):
        return CallableKind.GENERATOR
    if inspect.iscoroutinefunction(target):
        return CallableKind.ASYNC
    plain = inspect.isfunction(target) or inspect.isbuiltin(target) or inspect.isclass(target)
    call = inspect.getattr_static(type(target), "__call__", None)
    if not plain and call is not None and inspect.isfunction(call):
        return kind_of(call)
    return CallableKind.SYNC


def check_binding(
    fn: Any, args: Sequence[Any], kwargs: Mapping[str, Any], *, partial: bool = False
) -> str | None:
    """None if ``fn(*args, **kwargs)`` fits the signature, else why not (for example
    ``missing a required argument: 'day'``). With ``partial``, missing arguments are fine
    (they come with each trigger). Callables without a signature pass."""
    try:
        signature = _signature(fn)
    except (TypeError, ValueError):
        return None
    # The answer depends on the number of arguments and the keywords' names only, not on
    # the values: 10,000 jobs calling one function with the same keywords bind once.
    key = (fn, len(args), tuple(kwargs), partial) if inspect.isfunction(fn) else None
    if key is not None and key in _BOUND:
        return _BOUND[key]
    found: str | None = None
    try:
        (signature.bind_partial if partial else signature.bind)(*args, **kwargs)
    except TypeError as exc:
        found = str(exc)
    if key is not None:
        if len(_BOUND) >= _SIGNATURES_MAX:
            _BOUND.clear()
        _BOUND[key] = found
    return found


_BOUND: dict[tuple[Any, int, tuple[Any, ...], bool], str | None] = {}  # plain functions


# Signatures of the functions checked, by identity: a job file of 10,000 jobs over a few
# functions inspects each once (inspect.signature costs tens of µs).
_SIGNATURES: dict[int, tuple[Any, inspect.Signature]] = {}
_SIGNATURES_MAX = 16_384


def _signature(fn: Any) -> inspect.Signature:
    """``inspect.signature(fn)``, remembered for plain functions."""
    if not inspect.isfunction(fn):
        return inspect.signature(fn)
    found = _SIGNATURES.get(id(fn))
    if found is not None and found[0] is fn:
        return found[1]
    signature = inspect.signature(fn)
    if len(_SIGNATURES) >= _SIGNATURES_MAX:
        _SIGNATURES.clear()
    _SIGNATURES[id(fn)] = (fn, signature)
    return signature


def describe_signature(fn: Any) -> str:
    """``name(a, b=1)`` for messages; just the name when there is no signature."""
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
    try:
        return f"{name}{inspect.signature(fn)}"
    except (TypeError, ValueError):
        return str(name)


def _builtin_exceptions() -> list[str]:
    return [
        name
        for name, obj in vars(builtins).items()
        if isinstance(obj, type) and issubclass(obj, BaseException)
    ]


def resolve_exception(name: str) -> type[BaseException]:
    """The exception class ``name`` means: a builtin by bare name (``ConnectionError``) or
    ``module:Name`` for anything else (imported)."""
    if not isinstance(name, str):
        raise EntryPointError(f"{name!r} is not an exception name; expected a string")
    if ":" in name:
        obj = resolve(name)
    elif name.isidentifier():
        obj = getattr(builtins, name, None)
        if obj is None:
            hint = did_you_mean(name, _builtin_exceptions())
            raise EntryPointError(
                f"{name!r} is not a builtin exception{hint}; "
                "name other exceptions as 'module:Name', such as 'httpx:TransportError'"
            )
    else:
        module, _, attr = name.rpartition(".")
        hint = f"; write {module + ':' + attr!r}" if module and attr.isidentifier() else ""
        raise EntryPointError(
            f"{name!r} is not an exception name; expected a builtin name such as "
            f"'ConnectionError' or 'module:Name'{hint}"
        )
    if not (isinstance(obj, type) and issubclass(obj, BaseException)):
        raise EntryPointError(
            f"{name!r} is not an exception class (it is {type(obj).__name__} {obj!r:.60})"
        )
    return obj
