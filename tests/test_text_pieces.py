"""Long job output is searched and cleaned in pieces (``text.PIECE``) so that no call holds the
GIL for long (an 8 MB line held it 0.4 s, and fires were missed). Invariant: the pieces give
exactly what one call over the whole text gives, wherever the cuts fall. The pieces are made
small here, so that short generated texts cross many cuts."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qtasks_cli import redaction, text

ALPHABET = (
    [chr(c) for c in range(0x00, 0x20)]
    + [chr(c) for c in range(0x7F, 0xA0)]
    + list("[]\\P^_X;0a: -+.$%é")
    + ["\u200b", "\u2028", "\u202e", "\ufeff", "\ud800", "\udc80", "\U000110bd"]
)
texts = st.text(alphabet=st.sampled_from(ALPHABET), max_size=200)


def _whole_visible(value: str) -> str:
    return text.INVISIBLE.sub("", value)


def _whole_clean(value: str) -> str:
    if not text._UNSAFE.search(value):
        return value
    value = text._SEQUENCE.sub("", value) if text._INTRODUCER.search(value) else value
    value = text._BREAKS.sub("\n", value).replace("\t", "    ")
    value = text._CONTROL.sub("", value)
    return text._SURROGATE.sub(text._show_surrogate, value)


@pytest.fixture(autouse=True)
def _small_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(text, "PIECE", 3)


@settings(max_examples=400, deadline=None)
@given(value=texts)
def test_pieces_give_what_one_call_gives(value: str) -> None:
    assert text.strip_sequences(value) == text._SEQUENCE.sub("", value)
    assert text.clean_text(value) == _whole_clean(value)
    view, _starts = text.visible(value)
    assert view == _whole_visible(value)
    assert [m.span() for m in text.matches(text.INVISIBLE, text.ANY_INVISIBLE, value)] == [
        m.span() for m in text.INVISIBLE.finditer(value)
    ]
    for pattern in (text.ANY_INVISIBLE, text._INTRODUCER, text._UNSAFE, text._SURROGATE):
        assert text.found(pattern, value) == (pattern.search(value) is not None)


@settings(max_examples=200, deadline=None)
@given(body=st.text(alphabet="ab\n", max_size=40), at=st.integers(0, 40))
def test_a_secret_across_cuts_is_hidden(body: str, at: int) -> None:
    secret = "s3cr3t-Tok\x1b[1men-value"
    value = body[:at] + secret + body[at:]
    hidden = redaction.redact(value, [(secret.replace("\x1b[1m", ""), "${TOKEN}")])
    assert "s3cr3t" not in hidden


def test_an_ascii_megabyte_line_is_found_clean_in_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(text, "PIECE", 64 * 1024)
    line = "e" * (1 << 20)
    assert not text.found(text.ANY_INVISIBLE, line)
    assert text.found(text.ANY_INVISIBLE, line + "\x7f")
    assert text.found(re.compile("[\x1b]"), "a" * 10 + "\x1b" + "a" * 10)


SECRET = "S3cr3t-Tok3n-XYZ0123456789abcdef"


@pytest.mark.parametrize("split", [1, 10, len(SECRET) // 2, len(SECRET) - 1])
def test_a_secret_across_the_cut_of_a_long_partial_line_is_hidden(split: int) -> None:
    # A partial line past HOLD_CHARS goes out without waiting for its end, but an end that
    # may be the start of a secret waits for the rest (a hostile tester saw it whole).
    import io

    from qtasks_cli import output
    from qtasks_cli.ui import text_drain

    redaction.remember([(SECRET, "${TOKEN}")])
    first = "C1" + "x" * (text_drain.HOLD_CHARS + 100) + SECRET[:split]
    rest = SECRET[split:] + " end\n"
    sink = io.StringIO()
    tee = output._Tee(sink, 1, keep=False)
    tee.write(first)
    tee.write(rest)
    tee.flush_all()
    assert SECRET not in sink.getvalue()
    assert sink.getvalue().endswith("${TOKEN} end\n")

    drain = text_drain._TextDrain.__new__(text_drain._TextDrain)
    drain.encoding, drain.errors, drain._held, drain._held_since = "utf-8", "strict", "", None
    drain._release = lambda size: None  # type: ignore[method-assign]
    shown = drain.join([(first, 0)]) + drain.join([(rest, 0)])
    assert SECRET.encode() not in shown
    assert shown.endswith(b"${TOKEN} end\n")
