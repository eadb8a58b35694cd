"""A log record's text, made so that no job code can stall the log or the event loop.

A record's message is ``msg % args``, and its traceback reads the exception's ``__str__`` and
source lines: with a job's object among them (``log.info("processing %s", order)`` from a job's
module, a thread the job left running) that runs the job's code, which may be slow, hang or
raise SystemExit. ``settle`` turns a record into plain text in place, once, before any handler
lock or writer thread sees it:

- a record whose ``msg`` is a ``str`` and whose arguments are all of exact builtin plain types
  (what the daemon's own records carry) is formatted where it is, cheaply;
- any other is formatted by the thread that logged it (``here``): a job's thread pays for its
  own objects, and holds no handler lock meanwhile, so nobody else waits. Only the daemon's
  and its libraries' records logged on the event loop are not: they go to the writer thread
  as they are, which formats them in a helper thread with a deadline (``offloop.in_helper``):
  a text that does not come within ``offloop.TEXT_TIMEOUT`` seconds is given up (the thread
  asked to stop, its class's text not called again), and the record says so instead.

Messages are cut to ``MAX_CHARS`` (the end of a traceback is kept) before anything else reads
them: redacting or cleaning 16 MB of text holds the GIL for a second.
"""

from __future__ import annotations

import logging
import traceback
from typing import Any

from qtasks_cli import offloop

MAX_CHARS = 64 * 1024  # of a record's message, and of its traceback
# Kept beyond MAX_CHARS until secrets are hidden, so that the cut never halves a secret.
_MARGIN = 4 * 1024
_PLAIN = (str, int, float, bool, type(None), bytes)
_SETTLED = "qtasks_settled"  # set on a record once its text is final


def is_plain(record: logging.LogRecord) -> bool:
    """Whether formatting ``record`` runs no code but the standard library's: judged by exact
    types (``type(x) is str``), never by ``isinstance``, which may run a job's code."""
    if type(record.msg) is not str or record.exc_info:
        return False
    args: Any = record.args
    if not args:
        return True
    values = args.values() if type(args) is dict else args if type(args) is tuple else None
    if values is None:
        return False
    return all(any(type(v) is kind for kind in _PLAIN) for v in values)


def cut(text: str, limit: int = MAX_CHARS, *, keep_end: bool = False) -> str:
    """``text`` cut to about ``limit`` characters, saying how many more there were."""
    if len(text) <= limit:
        return text
    more = f" … ({len(text) - limit:,} more characters)"
    return more + text[-limit:] if keep_end else text[:limit] + more


def _text(record: logging.LogRecord) -> tuple[str, str | None]:
    message = record.getMessage()
    trace = None
    info = record.exc_info
    if info and info[1] is not None:
        trace = "".join(traceback.format_exception(info[1]))
    elif record.exc_text:
        trace = record.exc_text
    return message, trace


def on_a_loop() -> bool:
    """Whether this thread runs an event loop (the daemon's): it must never wait for job code."""
    import asyncio

    return asyncio._get_running_loop() is not None


def settle(record: logging.LogRecord, how: str) -> bool:
    """Make ``record``'s text final: ``msg`` the message (cut), ``args`` none, ``exc_text``
    its traceback (cut, end kept) and ``exc_info`` none. ``how``: ``"inline"`` formats here
    (the thread that logged pays for its own objects), ``"helper"`` in a helper thread with a
    deadline (a writer thread), ``"defer"`` only if the record is plain, else returns False
    without touching it (the event loop: hand it to a writer thread). True once settled; never
    raises."""
    if getattr(record, _SETTLED, False):
        return True
    try:
        if how == "inline" or is_plain(record):
            message, trace = _text(record)
        elif how == "defer":
            return False
        else:
            name = record.name
            late: tuple[str, str | None] = (
                f"(a log record of {name}: its text was not ready within "
                f"{offloop.TEXT_TIMEOUT:g}s; not shown)",
                None,
            )
            refused: tuple[str, str | None] = (
                f"(a log record of {name}: not shown while job code hangs)",
                None,
            )
            message, trace = offloop.in_helper(
                lambda: _text(record), fallback=late, refused=refused
            )
    except BaseException as exc:  # a str subclass's __mod__, a formatting error, SystemExit
        message = f"(a log record of {record.name} could not be formatted: {type(exc).__name__})"
        trace = None
    record.msg = cut(message, MAX_CHARS + _MARGIN)
    record.args = None
    record.exc_info = None
    record.exc_text = None if trace is None else cut(trace, MAX_CHARS + _MARGIN, keep_end=True)
    setattr(record, _SETTLED, True)
    return True


# Loggers of the daemon and of the libraries it runs its loop with (ui.log.DAEMON_LOGGERS).
_DAEMON = ("qtasks", "asyncio", "concurrent.futures", "psycopg", "tenacity")


def is_daemons(record: logging.LogRecord) -> bool:
    """Whether ``record`` was logged by the daemon or one of its libraries (by logger name)."""
    return record.name.startswith(_DAEMON)


def here(record: logging.LogRecord) -> bool:
    """``settle`` as the thread that logged ``record`` may: the thread pays for the text of
    what it logged (a job's thread, or an async job's own statement on the loop, as an
    f-string there would), except on the event loop for the daemon's and its libraries'
    records (``asyncio`` formatting a job's task), which are deferred: False for such a record
    that needs job code."""
    return settle(record, "defer" if is_daemons(record) and on_a_loop() else "inline")
