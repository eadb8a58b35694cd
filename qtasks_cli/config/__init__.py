"""The job file: YAML to a validated ``Config``, collecting every located problem in one pass."""

from __future__ import annotations

import functools
import logging
import os
import stat
from collections.abc import Mapping
from pathlib import Path

from qtasks_cli import entrypoints, gcpause, yamlload
from qtasks_cli.config.jobs import (
    JobStream,
    _defaults,
    _jobs,
)
from qtasks_cli.config.reading import (
    _ZONE_FROM_FILE,
    KNOWN_JOB_KEYS,
    KNOWN_RETRY_KEYS,
    KNOWN_SETTINGS_KEYS,
    KNOWN_TOP_KEYS,
    MAX_FILE_BYTES,
    Entries,
    _Context,
    _unknown_key,
)
from qtasks_cli.config.settings import (
    _settings,
)
from qtasks_cli.digests import config_digest
from qtasks_cli.errors import (
    ConfigError,
    ConfigFileError,
    Problem,
)
from qtasks_cli.models import (
    Config,
)

__all__ = [
    "KNOWN_JOB_KEYS",
    "KNOWN_RETRY_KEYS",
    "KNOWN_SETTINGS_KEYS",
    "KNOWN_TOP_KEYS",
    "default_config_path",
    "load_config",
    "parse_config_text",
]

log = logging.getLogger(__name__)


def default_config_path(env: Mapping[str, str] | None = None) -> Path:
    """``$QTASKS_CONFIG`` if set, else ``./jobs.yaml``."""
    chosen = (os.environ if env is None else env).get("QTASKS_CONFIG")
    return Path(chosen) if chosen else Path("jobs.yaml")


def load_config(
    path: str | os.PathLike[str],
    *,
    check_imports: bool = True,
    env: Mapping[str, str] | None = None,
    variables_required: bool = True,
) -> Config:
    """Read and validate the job file at ``path``; ConfigFileError if it cannot be read,
    ConfigError listing every problem if it is invalid. Without ``variables_required`` an
    unset ``${NAME}`` is no problem (its value is then empty; see qtasks_cli.request)."""
    shown = os.fspath(path)
    try:
        # Non-blocking open, then a check: a FIFO nobody writes would block here for ever.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with open(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fd).st_mode) and not stat.S_ISDIR(os.fstat(fd).st_mode):
                raise ConfigFileError(
                    f"{shown}: not a regular file (a FIFO, socket or device); "
                    "write the job file to a file"
                )
            os.set_blocking(fd, True)
            data = fh.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ConfigFileError(f"{shown}: no such file") from None
    except IsADirectoryError:
        raise ConfigFileError(f"{shown}: is a directory, not a job file") from None
    except PermissionError:
        raise ConfigFileError(f"{shown}: permission denied") from None
    except OSError as exc:
        raise ConfigFileError(f"{shown}: cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        limit = MAX_FILE_BYTES // (1024 * 1024)
        raise ConfigError([_file_problem(shown, f"the file is larger than {limit} MB")])
    text = _decode(data, shown)
    base_dir = Path(os.path.normpath(Path(path).absolute().parent))
    with gcpause.paused():  # a million young objects that all stay alive: no full passes
        return parse_config_text(
            text,
            filename=shown,
            base_dir=base_dir,
            check_imports=check_imports,
            env=env,
            variables_required=variables_required,
        )


def _file_problem(file: str, message: str, line: int = 1, column: int = 1) -> Problem:
    return Problem(file=file, line=line, column=column, key="", message=message)


def _decode(data: bytes, file: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        message = f"the file is not UTF-8 text (byte 0x{data[exc.start]:02x} cannot be decoded)"
        raise ConfigError([_file_problem(file, message, line, column)]) from None


def parse_config_text(
    text: str,
    *,
    filename: str,
    base_dir: Path,
    check_imports: bool = True,
    env: Mapping[str, str] | None = None,
    variables_required: bool = True,
    stream: bool = True,
) -> Config:
    """Validate job-file ``text``; relative paths in it are taken from ``base_dir``. Each job
    is read as the YAML reader ends it (config.jobs.JobStream) unless ``stream`` is False."""
    base_dir = Path(os.path.normpath(base_dir.absolute()))
    ctx = _Context(
        file=filename,
        base_dir=base_dir,
        env=os.environ if env is None else env,
        check_imports=check_imports,
        problems=[],
        variables_required=variables_required,
    )
    streamed = JobStream(ctx) if stream else None
    tree, problems = yamlload.load(text, filename, jobs=streamed)
    ctx.problems[:0] = problems
    if streamed is not None and streamed.began:
        top_keys: Entries = tree.value if tree is not None and tree.kind == "map" else {}
        if not streamed.usable(top_keys):  # read again, the whole file at once
            return parse_config_text(
                text,
                filename=filename,
                base_dir=base_dir,
                check_imports=check_imports,
                env=env,
                variables_required=variables_required,
                stream=False,
            )
    if tree is None:
        message = "the file is empty; expected a mapping with a 'jobs' key"
        raise ConfigError([*problems, _file_problem(filename, message)])
    if tree.kind != "map":
        ctx.report(tree, f"expected a mapping with a 'jobs' key at the top, got {tree.type_name()}")
        raise ConfigError(_sorted(ctx.problems))
    top: Entries = tree.value
    for key, (key_node, _) in top.items():
        # `x-` keys hold YAML anchors for reuse, as in docker compose files.
        if key not in KNOWN_TOP_KEYS and not key.startswith("x-"):
            ctx.report(key_node, _unknown_key(key, KNOWN_TOP_KEYS))
    if streamed is not None and streamed.began:
        settings, jobs = streamed.settings, streamed.jobs
        if not top["jobs"][1].value:
            ctx.report(top["jobs"][1], "no jobs defined")
    else:
        settings = _settings(ctx, top.get("settings"))
        if check_imports:
            entrypoints.add_to_sys_path(settings.path)
        defaults = _defaults(ctx, top.get("defaults"))
        jobs = _jobs(ctx, tree, top.get("jobs"), settings, defaults)
    if ctx.problems:
        raise ConfigError(_sorted(ctx.problems))
    path = Path(filename) if Path(filename).is_absolute() else base_dir / Path(filename).name
    # Text that belongs to no run (a job's printed lines under the live table, log records)
    # is redacted with every secret this process has seen.
    from qtasks_cli import redaction

    redaction.remember(pair for job in jobs.values() for pair in job.secrets)
    return Config(
        path=path,
        settings=settings,
        jobs=jobs,
        digest_of=functools.partial(
            config_digest,
            jobs,
            ctx.machine_zoned,
            settings,
            machine_zone=ctx.zone_source != _ZONE_FROM_FILE,
        ),
        warnings=tuple(_sorted(ctx.warnings)),
        zone_source=ctx.zone_source,
        where={key: (filename, line, column) for key, (line, column) in ctx.where.items()},
    )


def _sorted(problems: list[Problem]) -> list[Problem]:
    unique = {(p.line, p.column, p.message): p for p in reversed(problems)}
    return sorted(unique.values(), key=lambda p: (p.line, p.column))
