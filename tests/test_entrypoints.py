"""Resolving ``module:attribute`` references, kinds of callables and signature checks."""

from __future__ import annotations

import functools
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from qtasks_cli import entrypoints
from qtasks_cli.entrypoints import (
    CallableKind,
    check_binding,
    describe_import_error,
    kind_of,
    resolve,
    resolve_exception,
)
from qtasks_cli.errors import EntryPointError

WritePackage = Callable[[dict[str, str]], str]


@pytest.fixture
def isolated_imports(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """sys.path, sys.modules and the resolve cache as they were before the test."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    entrypoints.clear_cache()
    yield
    entrypoints.clear_cache()
    for name in set(sys.modules) - before:
        del sys.modules[name]


@pytest.fixture
def package(tmp_path: Path, isolated_imports: None) -> WritePackage:
    """Write a uniquely named package into tmp_path (on sys.path); return its name."""

    def write(files: dict[str, str]) -> str:
        name = f"pkg_{uuid.uuid4().hex[:10]}"
        root = tmp_path / name
        root.mkdir()
        (root / "__init__.py").write_text("")
        for filename, source in files.items():
            (root / filename).write_text(textwrap.dedent(source))
        entrypoints.add_to_sys_path([tmp_path])
        return name

    return write


# --- resolve ------------------------------------------------------------------------------------


def test_resolve_returns_the_named_object_and_caches_it(package: WritePackage) -> None:
    name = package(
        {
            "jobs.py": """
                calls = []
                class Report:
                    @staticmethod
                    def daily(day):
                        return day
                """
        }
    )
    found = resolve(f"{name}.jobs:Report.daily")
    assert found(5) == 5
    module = sys.modules[f"{name}.jobs"]
    module.Report.daily = lambda day: "replaced"  # the cache, not a second lookup, answers
    assert resolve(f"{name}.jobs:Report.daily") is found
    entrypoints.clear_cache()
    assert resolve(f"{name}.jobs:Report.daily")(1) == "replaced"


@pytest.mark.parametrize("ref", ["nocolon", "a:b:c", "mod:", ":attr", "1mod:f", "mod:f-g", ""])
def test_malformed_references_are_rejected(ref: str) -> None:
    with pytest.raises(EntryPointError) as info:
        resolve(ref)
    assert str(info.value) == (
        f"{ref!r} is not an entry point; expected 'module:attribute' such as "
        "'shop.reports:daily_report'"
    )


def test_missing_top_level_module_names_it_and_the_search_path(isolated_imports: None) -> None:
    sys.path[:] = ["/nowhere/one", "/nowhere/two"]
    with pytest.raises(EntryPointError) as info:
        resolve("no_such_module_xyz.sub:fn")
    assert str(info.value) == (
        "module 'no_such_module_xyz.sub' not found (no module named 'no_such_module_xyz'); "
        "searched sys.path: '/nowhere/one', '/nowhere/two'"
    )


def test_missing_submodule_suggests_a_sibling(package: WritePackage) -> None:
    name = package({"reports.py": "def daily(): pass\n"})
    with pytest.raises(EntryPointError) as info:
        resolve(f"{name}.reportz:daily")
    message = str(info.value)
    assert message.startswith(f"module '{name}.reportz' not found: package '{name}' (")
    assert message.endswith("has no module 'reportz' (did you mean 'reports'?)")


def test_missing_attribute_suggests_a_public_name(package: WritePackage) -> None:
    name = package({"reports.py": "def daily_report(): pass\ndef _daily_reportx(): pass\n"})
    with pytest.raises(EntryPointError) as info:
        resolve(f"{name}.reports:dayly_report")
    assert str(info.value) == (
        f"module '{name}.reports' has no attribute 'dayly_report' (did you mean 'daily_report'?)"
    )


def test_missing_nested_attribute_names_its_owner(package: WritePackage) -> None:
    name = package({"reports.py": "class Shop:\n    def close(self): pass\n"})
    with pytest.raises(EntryPointError) as info:
        resolve(f"{name}.reports:Shop.clse")
    assert str(info.value) == (
        f"'{name}.reports:Shop' has no attribute 'clse' (did you mean 'close'?)"
    )


def test_exception_at_import_names_the_user_line_not_importlib(package: WritePackage) -> None:
    name = package(
        {
            "helpers.py": """
                import json

                def load():
                    return json.loads("{broken")
                """,
            "jobs.py": """
                from . import helpers

                SETTINGS = helpers.load()
                """,
        }
    )
    with pytest.raises(EntryPointError) as info:
        resolve(f"{name}.jobs:run")
    message = str(info.value)
    helpers = Path(sys.modules[name].__file__ or "").with_name("helpers.py")
    # json's own frames are library code; the innermost user frame is helpers.py line 5.
    assert message.startswith(f"importing '{name}.jobs' failed: JSONDecodeError: Expecting")
    assert message.endswith(f"(at {helpers}:5)")
    assert "Traceback" not in message
    assert f"{name}.jobs" not in sys.modules


def test_missing_dependency_inside_user_module_is_an_import_failure(
    package: WritePackage,
) -> None:
    name = package({"jobs.py": "import not_installed_dependency_q\n"})
    with pytest.raises(EntryPointError) as info:
        resolve(f"{name}.jobs:run")
    jobs = Path(sys.modules[name].__file__ or "").with_name("jobs.py")
    assert str(info.value) == (
        f"importing '{name}.jobs' failed: ModuleNotFoundError: No module named "
        f"'not_installed_dependency_q' (at {jobs}:1)"
    )


def test_syntax_error_reports_file_and_line(package: WritePackage) -> None:
    name = package({"jobs.py": "x = 1\ndef broken(:\n    pass\n"})
    with pytest.raises(EntryPointError) as info:
        resolve(f"{name}.jobs:broken")
    jobs = Path(sys.modules[name].__file__ or "").with_name("jobs.py")
    assert str(info.value) == (
        f"importing '{name}.jobs' failed: SyntaxError: invalid syntax (at {jobs}:2)"
    )


def test_system_exit_at_import_is_reported_not_raised(package: WritePackage) -> None:
    name = package({"jobs.py": "import sys\nsys.exit(3)\n"})
    with pytest.raises(EntryPointError, match=r"failed: SystemExit: 3 \(at .*jobs.py:2\)$"):
        resolve(f"{name}.jobs:x")


def test_describe_import_error_without_traceback() -> None:
    assert describe_import_error(ValueError("boom"), "m") == "ValueError: boom"
    assert describe_import_error(KeyError(), "m") == "KeyError"


def test_add_to_sys_path_is_idempotent(isolated_imports: None, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    sys.path[:] = ["/x", str(b), "/y"]
    entrypoints.add_to_sys_path([a, b])
    entrypoints.add_to_sys_path([a, b])
    assert sys.path == [str(a), str(b), "/x", "/y"]


# --- kinds ------------------------------------------------------------------------------------


def _sync(x: int) -> int:
    return x


async def _async(x: int) -> int:
    return x


def _gen(x: int) -> Iterator[int]:
    yield x


async def _agen(x: int) -> Any:
    yield x


class _Methods:
    def sync(self) -> None: ...

    async def coro(self) -> None: ...

    def gen(self) -> Iterator[int]:
        yield 1


class _AsyncCallable:
    async def __call__(self) -> None: ...


class _GenCallable:
    def __call__(self) -> Iterator[int]:
        yield 1


@pytest.mark.parametrize(
    ("fn", "kind"),
    [
        (_sync, CallableKind.SYNC),
        (_async, CallableKind.ASYNC),
        (_gen, CallableKind.GENERATOR),
        (_agen, CallableKind.ASYNC_GENERATOR),
        (functools.partial(_async, 1), CallableKind.ASYNC),
        (functools.partial(functools.partial(_agen, 1)), CallableKind.ASYNC_GENERATOR),
        (_Methods().sync, CallableKind.SYNC),
        (_Methods().coro, CallableKind.ASYNC),
        (_Methods().gen, CallableKind.GENERATOR),
        (_AsyncCallable(), CallableKind.ASYNC),
        (_GenCallable(), CallableKind.GENERATOR),
        (_AsyncCallable, CallableKind.SYNC),  # calling a class builds an instance
        (len, CallableKind.SYNC),
    ],
)
def test_kind_of(fn: Any, kind: CallableKind) -> None:
    assert kind_of(fn) is kind
    assert kind.is_generator == (kind in (CallableKind.GENERATOR, CallableKind.ASYNC_GENERATOR))


# --- binding ----------------------------------------------------------------------------------


def _report(day: str, region: str = "eu", *, dry_run: bool = False) -> None: ...


@pytest.mark.parametrize(
    ("args", "kwargs", "reason"),
    [
        (("mon",), {}, None),
        ((), {"day": "mon", "dry_run": True}, None),
        ((), {}, "missing a required argument: 'day'"),
        (("mon", "eu", "extra"), {}, "too many positional arguments"),
        (("mon",), {"colour": 1}, "got an unexpected keyword argument 'colour'"),
        (("mon",), {"day": "tue"}, "multiple values for argument 'day'"),
    ],
)
def test_check_binding(args: tuple[Any, ...], kwargs: dict[str, Any], reason: str | None) -> None:
    assert check_binding(_report, args, kwargs) == reason


def test_check_binding_sees_through_partial_and_methods() -> None:
    assert check_binding(functools.partial(_report, "mon"), (), {}) is None
    assert check_binding(functools.partial(_report, "mon"), ("eu", "x"), {}) is not None
    assert check_binding(_Methods().sync, (), {}) is None
    assert check_binding(_Methods().sync, (1,), {}) == "too many positional arguments"


def test_check_binding_passes_callables_without_a_signature() -> None:
    class NoSignature:
        __signature__ = "not a signature"

        def __call__(self) -> None: ...

    assert check_binding(NoSignature(), (1, 2), {"x": 3}) is None


# --- exceptions -------------------------------------------------------------------------------


def test_resolve_exception_builtins_by_bare_name() -> None:
    assert resolve_exception("ConnectionError") is ConnectionError
    assert resolve_exception("KeyboardInterrupt") is KeyboardInterrupt


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (
            "ConectionError",
            "'ConectionError' is not a builtin exception (did you mean 'ConnectionError'?); "
            "name other exceptions as 'module:Name', such as 'httpx:TransportError'",
        ),
        ("len", "'len' is not an exception class (it is builtin_function_or_method"),
        (
            "httpx.TransportError",
            "'httpx.TransportError' is not an exception name; expected a builtin name such as "
            "'ConnectionError' or 'module:Name'; write 'httpx:TransportError'",
        ),
        ("json:loads", "'json:loads' is not an exception class (it is function"),
        ("json:JSONDecodeErr", "module 'json' has no attribute 'JSONDecodeErr'"),
    ],
)
def test_resolve_exception_errors(name: str, message: str) -> None:
    with pytest.raises(EntryPointError) as info:
        resolve_exception(name)
    assert str(info.value).startswith(message)


def test_resolve_exception_imports_module_names(isolated_imports: None) -> None:
    import json

    assert resolve_exception("json:JSONDecodeError") is json.JSONDecodeError


@pytest.mark.parametrize("raised", ["BaseException('base')", "KeyboardInterrupt", "GeneratorExit"])
def test_a_module_raising_a_base_exception_at_import_is_the_files_error(
    tmp_path: Path, raised: str
) -> None:
    """Hostile tester: `raise BaseException` or `KeyboardInterrupt` in a job's module ended
    validate, run and trigger in a traceback or exit 130, and dropped a reload in silence."""
    name, problem = _import_refused(tmp_path, "side", f"raise {raised}\n")
    assert (problem.line, problem.key) == (5, "jobs.s.entrypoint")
    assert f"importing {name!r} failed: {raised.split('(')[0]}" in problem.message


@pytest.mark.parametrize(
    ("body", "shown"),
    [
        ("raise RuntimeError('str fails')", "whose str() raised RuntimeError"),
        ("import sys; sys.exit(7)", "whose str() raised SystemExit"),
        ("raise KeyboardInterrupt", "whose str() raised KeyboardInterrupt"),
        ("while True: pass", "its str() did not return"),
    ],
)
def test_a_module_exception_whose_str_misbehaves_is_still_located(
    tmp_path: Path, body: str, shown: str
) -> None:
    """Second hostile tester: an import exception whose __str__ raised gave a traceback, one
    raising SystemExit or KeyboardInterrupt ended the command in silence, one that looped hung
    it (and a reload, for good)."""
    name, problem = _import_refused(
        tmp_path,
        "strbad",
        f"class E(BaseException):\n    def __str__(self):\n        {body}\nraise E()\n",
    )
    assert problem.key == "jobs.s.entrypoint"
    assert f"importing {name!r} failed: E: " in problem.message and shown in problem.message


def _import_refused(tmp_path: Path, stem: str, source: str) -> tuple[str, Any]:
    """A module of ``source`` under a fresh name, named by job ``s`` of a file read with
    imports: (the module's name, the one problem the read is refused with)."""
    import secrets

    from qtasks_cli.config import load_config
    from qtasks_cli.errors import ConfigError

    name = f"{stem}_{secrets.token_hex(4)}"
    (tmp_path / f"{name}.py").write_text(source)
    path = tmp_path / "jobs.yaml"
    path.write_text(
        f"settings:\n  path: [{str(tmp_path)!r}]\njobs:\n  s:\n    entrypoint: {name}:f\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    (problem,) = caught.value.problems
    return name, problem
