"""The live table's output lines: cut in linear time and bounded memory, whatever the lines."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from qtasks_cli.ui import live
from qtasks_cli.ui.lines import MAX_HELD, LineCutter
from qtasks_cli.ui.tally import EventLine


def _all(chunks: list[bytes]) -> list[tuple[bytes, bool]]:
    cutter = LineCutter(len)
    out = []
    for chunk in chunks:
        out += cutter.feed(chunk)
        assert len(cutter._pending) <= MAX_HELD  # never held without bound
    return out + cutter.finish()


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.binary(max_size=300).map(lambda b: b.replace(b"\n", b"")), max_size=30), st.data()
)
def test_lines_within_the_bound_come_out_whole_and_in_order(
    lines: list[bytes], data: st.DataObject
) -> None:
    whole = b"".join(line + b"\n" for line in lines)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(whole)), max_size=10)))
    chunks = [whole[a:b] for a, b in zip([0, *cuts], [*cuts, len(whole)], strict=True)]
    out = _all(chunks)
    assert b"".join(block for block, _ in out) == whole
    assert not any(cut for _, cut in out)


def test_one_huge_line_is_cut_once_and_the_next_lines_come_through() -> None:
    rng = random.Random(12)
    huge = b"x" * (30 * 1024 * 1024)
    stream = b"before\n" + huge + b"\nafter\n"
    chunks, at = [], 0
    while at < len(stream):
        size = rng.randint(1, 65536)
        chunks.append(stream[at : at + size])
        at += size
    out = _all(chunks)
    assert sum(len(block) for block, _ in out) <= 2 * MAX_HELD + 16
    assert [cut for _, cut in out].count(True) == 1
    text = b"".join(block for block, _ in out)
    assert text.startswith(b"before\n") and text.endswith(b"after\n")


class _View:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def clock(self) -> object:
        return None

    def add_line(self, line: EventLine) -> None:
        self.lines.append(line.text)


def test_a_cut_line_is_shown_clipped_with_a_marker() -> None:
    view = _View()
    live._show_output(view, b"y" * MAX_HELD, True)  # type: ignore[arg-type]
    (shown,) = view.lines
    assert len(shown) < 2200 and shown.endswith("is not shown)")
