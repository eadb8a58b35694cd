"""What parent and child share: the call's pickles, the messages read from the child, why a child
ended, and the error a child reports (frames themselves: qtasks_cli.frames). Light: the executor
imports it at start-up."""

from __future__ import annotations

import logging
import pickle
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from qtasks_cli import frames
from qtasks_cli.failures import safe_str as _safe_str

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

KILL_WAIT = 2.0  # seconds for a SIGKILLed child process to be reaped


class ChildCrashed(Exception):
    """The child process running a call died before it answered."""


# Its public name, as recorded in error types and written in ``retry_on``.
ChildCrashed.__module__ = "qtasks_cli.isolation"


# --- frames --------------------------------------------------------------------------------------


CorruptStream = frames.CorruptStream


def dumps(value: Any, what: str, purpose: str) -> bytes:
    try:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise TypeError(
            f"{what} cannot be pickled {purpose}: {type(exc).__name__}: {_safe_str(exc)}"
        ) from None


def describe_exit(returncode: int) -> str:
    """Why a child ended, for the run's error: ``child exited with signal 11 (SIGSEGV)``."""
    if returncode == -signal.SIGKILL:
        return "child was killed (SIGKILL), possibly out of memory"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "unknown signal"
        return f"child exited with signal {-returncode} ({name})"
    return f"child exited with code {returncode}"


@dataclass(frozen=True, kw_only=True, slots=True)
class Message:
    tag: str
    value: Any = None
    unreadable: str | None = None  # why the payload could not be unpickled here


def decode(tag: str, payload: bytes | bytearray) -> Message:
    if not payload:
        return Message(tag=tag)
    try:
        return Message(tag=tag, value=pickle.loads(payload))
    except BaseException as exc:
        return Message(tag=tag, unreadable=f"{type(exc).__name__}: {_safe_str(exc, 500)}")


def qualified_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


class ReportedError(Exception):
    """An exception raised where its object cannot come from (a job's child process), carried
    as text: its type's name, the qualified names of its classes, its message and traceback."""

    def __init__(
        self, *, type_name: str, message: str, traceback_text: str | None, bases: Sequence[str]
    ) -> None:
        super().__init__(message)
        self.type_name = type_name
        self.message = message
        self.traceback_text = traceback_text
        self.bases = frozenset(bases)

    def is_a(self, classes: tuple[type[BaseException], ...]) -> bool:
        """What ``isinstance`` says of the original exception, judged by class names."""
        return any(qualified_name(cls) in self.bases for cls in classes)
