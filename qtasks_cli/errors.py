"""Errors a user can cause, each with its message built where it is raised, and exit codes."""

from __future__ import annotations

from dataclasses import dataclass

EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_USAGE = 2
EXIT_FORCED = 130


class QtasksError(Exception):
    """A problem caused by the user's input or environment; shown without a traceback."""

    exit_code = EXIT_USAGE


@dataclass(frozen=True, kw_only=True, slots=True)
class Problem:
    """One located problem in a job file: ``FILE:LINE:COL: key.path: message``."""

    file: str
    line: int  # 1-based; 0 for a problem outside the file (``file`` then says where)
    column: int  # 1-based
    key: str  # dotted path such as ``jobs.daily_report.schedule``; "" for the whole file
    message: str

    def __str__(self) -> str:
        if self.line == 0:  # not in the file: an environment variable, say (``file`` names it)
            return (
                f"{self.file}: {self.key}: {self.message}"
                if self.key
                else f"{self.file}: {self.message}"
            )
        where = f"{self.file}:{self.line}:{self.column}"
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class ConfigError(QtasksError):
    """Every problem found in one pass over a job file."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class ConfigFileError(QtasksError):
    """The job file is missing or unreadable (one line)."""


class EntryPointError(QtasksError):
    """A ``module:attribute`` reference that cannot be resolved or called as configured."""


class UnknownJobError(QtasksError):
    """A job name that the file does not define."""


class StoreError(QtasksError):
    """The state store cannot be opened or used (locked by another daemon, bad permissions...).

    ``transient`` is True when waiting may cure it (a lock held by another process, a full
    disk, a read-only mount, a server that does not answer); the daemon then retries with
    backoff instead of exiting."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class ScheduleError(ValueError):
    """A schedule that cannot be parsed; config turns it into a located Problem."""


class DurationError(ValueError):
    """A duration that cannot be parsed; config turns it into a located Problem."""
