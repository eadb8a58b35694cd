"""Safe YAML to a tree of located values: every value keeps its line and column.

The composer's node tree is walked (``yamlwalk``) instead of being constructed by PyYAML, so
that duplicate keys, unknown tags and alias bombs become located problems, never surprises.

PyYAML reads YAML 1.1, whose plain scalars change meaning silently: ``1:30`` is the base-60
number 90, ``0755`` the octal 493, ``yes``/``no``/``on``/``off`` are booleans and
``2024-01-01`` a date. Such a value keeps YAML's reading but is marked (``Located.trap``), so
that duration and schedule fields refuse it and ``validate`` says what arguments became.
Where PyYAML was built with libyaml, libyaml's events become located values directly, with no
node tree in between (``yamlstream``: a tenth of the time of PyYAML's composer, and no
transient tree of 39 MB for 10,000 jobs); a file with an anchor, alias, merge key or other
rarity is composed by PyYAML's composer over libyaml's parser, for the alias marks and limits
above, and a file libyaml refuses is parsed again in Python for PyYAML's own wording.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import yaml

from qtasks_cli.errors import ConfigError, Problem
from qtasks_cli.located import Located
from qtasks_cli.yamlcompose import _FastLoader, _Marked, _MarkedLoader
from qtasks_cli.yamlwalk import _NotATree, _Walker

__all__ = ["Located", "line_col", "load", "plain", "yaml_error_problem"]

log = logging.getLogger(__name__)


def plain(node: Located) -> Any:
    """The Python value of ``node`` without locations (lists and dicts)."""
    if node.kind == "map":
        return {key: plain(value) for key, (_, value) in node.value.items()}
    if node.kind == "seq":
        return [plain(item) for item in node.value]
    return node.value


def yaml_error_problem(file: str, text: str, exc: yaml.YAMLError) -> Problem:
    """Turn a PyYAML error into ``FILE:LINE:COL: message``."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return Problem(
            file=file,
            line=mark.line + 1,
            column=mark.column + 1,
            key="",
            message=f"invalid YAML: {_explain(exc)}",
        )
    if isinstance(exc, yaml.reader.ReaderError):
        line, column = line_col(text, exc.position)
        return Problem(
            file=file,
            line=line,
            column=column,
            key="",
            message=f"character U+{exc.character:04X} is not allowed in YAML; "
            "write it as an escape inside a double-quoted string",
        )
    return Problem(file=file, line=1, column=1, key="", message=f"invalid YAML: {exc}")


def _explain(exc: yaml.MarkedYAMLError) -> str:
    problem = exc.problem or "syntax error"
    context = exc.context or ""
    first = f"line {exc.context_mark.line + 1}" if exc.context_mark is not None else ""
    # PyYAML's wording for the common mistakes is cryptic; say what to do instead.
    if "'\\t'" in problem:
        return "a tab character; indent YAML with spaces, not tabs"
    if problem == "mapping values are not allowed here":
        return f"{problem} (put a value that contains ': ' in quotes)"
    if context.startswith("found duplicate anchor"):
        return f"{context.split(';')[0]} (first defined at {first})"
    if problem == "but found another document":
        return f"a second YAML document; a job file holds one (the first starts at {first})"
    if context and first:
        return f"{context} ({first}): {problem}"
    return f"{context}: {problem}" if context else problem


_BIG_ESCAPE = re.compile(r"\\U([0-9A-Fa-f]{8})")


def _unmarked_problem(file: str, text: str, exc: Exception) -> Problem:
    """An error PyYAML's Python reader raises without a mark: a ``\\U`` escape past
    U+10FFFF (the end of Unicode) is pointed at; anything else is told at the file's top."""
    for found in _BIG_ESCAPE.finditer(text):
        if int(found.group(1), 16) > 0x10FFFF:
            line, column = line_col(text, found.start())
            message = (
                f"invalid YAML: the escape {found.group()} is not a character (Unicode ends "
                "at U+10FFFF)"
            )
            return Problem(file=file, line=line, column=column, key="", message=message)
    return Problem(file=file, line=1, column=1, key="", message=f"invalid YAML: {exc}")


def line_col(text: str, position: int) -> tuple[int, int]:
    """1-based line and column of character ``position`` in ``text``."""
    before = text[:position]
    line = before.count("\n") + 1
    return line, position - (before.rfind("\n") + 1) + 1


def _load_c(text: str, file: str, jobs: Any = None) -> tuple[Located | None, list[Problem]] | None:
    """``load`` from libyaml's events straight to located values (``yamlstream``), for a
    file of the plain shape (most): None when the file has an anchor, alias, merge key, tag
    on a collection, nests too deep or does not parse, so that the caller composes it with
    PyYAML's composer, for the alias marks and PyYAML's wording."""
    from qtasks_cli.yamlstream import EventReader

    loader = _FastLoader(text)
    walker = _Walker(loader=loader, file=file, problems=[])
    try:
        tree = EventReader(loader, walker, jobs).document()
    except (yaml.YAMLError, _NotATree):
        return None
    return tree, walker.problems


def load(text: str, file: str, jobs: Any = None) -> tuple[Located | None, list[Problem]]:
    """Parse ``text`` into a Located tree plus the non-fatal problems found on the way.
    With ``jobs`` (config.jobs.JobStream), the plain reader hands it each job as it ends and
    keeps only the job's key (see ``JobStream.usable``).

    Raises ConfigError for anything that stops parsing (syntax, nesting, alias bombs).
    Returns None for a document with no content.
    """
    loader: _Marked | None = None
    if _FastLoader is not None:
        found = _load_c(text, file, jobs)
        if found is not None:
            return found
        fast = _FastLoader(text)
        try:
            root = fast.get_single_node()
            loader = fast
        except yaml.YAMLError:
            loader = None  # parsed again below, for PyYAML's own message
    if loader is None:
        try:
            loader = _MarkedLoader(text)
            try:
                root = loader.get_single_node()
            finally:
                loader.dispose()
        except yaml.YAMLError as exc:
            raise ConfigError([yaml_error_problem(file, text, exc)]) from None
        except Exception as exc:  # PyYAML's own: chr() of a "\U00110000" escape, say
            raise ConfigError([_unmarked_problem(file, text, exc)]) from None
    if root is None:
        return None, []
    walker = _Walker(loader=loader, file=file, problems=[])
    tree = walker.walk(root, "")
    return tree, walker.problems
