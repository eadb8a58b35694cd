"""check_binding and kind_of remember their answers per function (10,000 jobs over one
function bind once): a remembered answer must be the one a fresh check gives, for any number
of arguments and any keywords, and a function whose code is replaced is looked at again."""

from __future__ import annotations

import inspect
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from qtasks_cli.entrypoints import CallableKind, check_binding, kind_of


def target(a: Any, b: Any = 1, *, c: Any, d: Any = 2) -> None:
    pass


def _fresh(args: tuple[Any, ...], kwargs: dict[str, Any], partial: bool) -> str | None:
    signature = inspect.signature(target)
    try:
        (signature.bind_partial if partial else signature.bind)(*args, **kwargs)
    except TypeError as exc:
        return str(exc)
    return None


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 3),
            st.lists(st.sampled_from(["a", "b", "c", "d", "e"]), unique=True),
            st.booleans(),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_a_remembered_binding_is_a_fresh_one(calls: list[tuple[int, list[str], bool]]) -> None:
    for count, names, partial in calls:
        args = tuple(range(count))
        kwargs = {name: object() for name in names}
        assert check_binding(target, args, kwargs, partial=partial) == _fresh(args, kwargs, partial)


def test_a_function_whose_code_changes_is_looked_at_again() -> None:
    def job() -> None:
        pass

    async def other() -> None:
        pass

    assert kind_of(job) is CallableKind.SYNC
    job.__code__ = other.__code__
    assert kind_of(job) is CallableKind.ASYNC
