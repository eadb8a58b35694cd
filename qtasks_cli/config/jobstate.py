"""One job's state while the job file's reader reads it, and how its problems are reported."""

from __future__ import annotations

from typing import Any

from qtasks_cli.config.reading import _Context
from qtasks_cli.located import Located
from qtasks_cli.models import Settings


class _JobState:
    """What the readers of one job share: the values read so far and the nodes they came from."""

    def __init__(self, ctx: _Context, name: str, name_node: Located, settings: Settings) -> None:
        self.ctx = ctx
        self.name = name
        self.name_node = name_node
        self.settings = settings
        self.ok = True
        self.nodes: dict[str, Located] = {}
        self.values: dict[str, Any] = {"name": name, "line": name_node.line}
        self.secrets: dict[str, str] = {}
        self.variables: dict[str, str] = {}
        self.exception_nodes: list[Located] = []
        self.arguments_ok = True  # args and kwargs read without problems

    def report(self, node: Located, message: str, *, per_job: bool = False) -> None:
        """Report at ``node``; ``per_job`` problems depend on the job, so a value inherited
        from `defaults` says which job it broke (others are reported once)."""
        self.ok = False
        own = node.path == f"jobs.{self.name}" or node.path.startswith(f"jobs.{self.name}.")
        self.ctx.report(node, f"job {self.name!r}: {message}" if per_job and not own else message)
