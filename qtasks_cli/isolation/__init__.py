"""``isolation: process``: each call of a job runs in a child process, kept and reused across runs.

A worker is ``python -m qtasks_cli.isolation.child``. It imports the job's entry point on its first
call and then serves calls one at a time. Parent and child exchange frames (qtasks_cli.frames):
the parent writes on the child's stdin pipe, the child answers on a UNIX socket given as its
stdout, on which the kernel names the writer of every message; the parent accepts a frame only
from its child and for the current call. The child moves both to private descriptors (a copy it
forks with os.fork finds /dev/null there); its own stdout and stderr are two more pipes,
which the parent reads, keeps for the run's ``qtasks show`` and passes on to its own (so a job
prints where an inline job would; qtasks_cli.childout). The exchange is lockstep: the parent
sends ``call`` and reads until a final frame (``done``, ``end`` or ``raised``); a generator's
every ``item`` waits for ``next`` or ``close``, because the generate_handler runs in the parent.

Modules: ``wire`` (pickles, messages, ReportedError: light, the executor imports it), ``pool``
(the parent's children), ``call`` (one attempt, behind the ``Invocation`` seam, so this package
never imports the executor) and ``child`` (the child's side). The executor imports ``pool`` and
``call`` only when a process job runs. The child imports ctypes on Linux and, on its first call,
the job's module.
"""

from __future__ import annotations

from typing import Any

# The names callers use, imported on first use: ``import qtasks_cli.isolation.child`` (what a
# child runs) or ``...wire`` (the executor, at start-up) must not import the parent's side.
_EXPORTS = {
    "Worker": "pool",
    "Workers": "pool",
    "call_attempt": "call",
    "Invocation": "call",
    "ChildCrashed": "wire",
    "ReportedError": "wire",
    "describe_exit": "wire",
    "KILL_WAIT": "wire",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
