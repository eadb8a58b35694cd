"""Redaction is precise: for any secret (short ones too, with quotes, backslashes, escape
letters, non-ASCII and controls) inside any text, encoded together as a job would encode them
(as they are, ``repr``, ``ascii``, JSON, ``bytes``, percent-encoded, two layers deep), the
secret never shows in any of those spellings, and the text around it comes out byte for byte.
And a secret split by what the operator never sees (escape sequences, controls, zero-width and
other invisible characters) is hidden with what splits it, on every path that redacts.

The few readings the rule leaves ambiguous (``qtasks_cli.spelling``'s docstring, the README's
Security section) are named below (``ambiguous``) and left out of the byte-for-byte check;
each is pinned by an example test of its own."""

from __future__ import annotations

import contextlib
import io
import json
import re
import urllib.parse
from collections.abc import Callable, Iterator

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from qtasks_cli import failures, output, previews, redaction
from qtasks_cli.redaction import clean_output, hidden_parts, redact, redact_value
from qtasks_cli.spelling import ANYWHERE_CHARS
from qtasks_cli.text import clean_line, clean_text, visible

PLACEHOLDER = "${TOKEN}"
SENTINEL = "Q"  # no encoding changes it, and neither secrets nor their surroundings hold it

# Letters that start escapes, hex digits, quotes, backslashes, non-ASCII, controls.
PIECES = [
    *"abntrxuUvf09eE",
    *("\\", "\\", "'", '"', "/", " ", "-", "%", "é", "€", "😀", "\n", "\t", "\x07", "\u202e"),
]
piece = st.sampled_from(PIECES)
secrets_ = st.lists(piece, min_size=4, max_size=12).map("".join)
around = st.lists(piece, max_size=6).map("".join)


def _inner(quoted: str, cut: int) -> str:
    return quoted[cut:-4]  # drops the quote and the closing \'"' added to fix the quote choice


# Each encoder works character by character (the quote choice of repr is fixed by giving it
# both quotes), so the encoding of a text is the encodings of its pieces put together.
ENCODERS: dict[str, Callable[[str], str]] = {
    "raw": lambda s: s,
    "repr": lambda s: _inner(repr(s + "'\""), 1),
    "ascii": lambda s: _inner(ascii(s + "'\""), 1),
    "bytes": lambda s: _inner(repr((s + "'\"").encode("utf-8")), 2),
    "json": lambda s: json.dumps(s)[1:-1],
    "json_unicode": lambda s: json.dumps(s, ensure_ascii=False)[1:-1],
    "percent": lambda s: urllib.parse.quote(s, safe=""),
}
ESCAPING = ["repr", "ascii", "bytes", "json", "json_unicode"]
chains = st.one_of(
    st.sampled_from(sorted(ENCODERS)).map(lambda name: [name]),
    st.lists(st.sampled_from(ESCAPING), min_size=2, max_size=2),
)


def encode(text: str, chain: list[str]) -> str:
    for name in chain:
        text = ENCODERS[name](text)
    return text


def _word(char: str) -> bool:
    return bool(re.match(r"\w", char))


def whole_word(left: str, secret: str, right: str) -> bool:
    """Whether a short secret stands as a whole word between ``left`` and ``right`` (plain)."""
    if len(secret) >= ANYWHERE_CHARS:
        return True
    return not (_word(secret[0]) and left and _word(left[-1])) and not (
        _word(secret[-1]) and right and _word(right[0])
    )


def occurrences(text: str, secret: str) -> list[int]:
    return [i for i in range(len(text)) if text.startswith(secret, i)]


def spellings(secret: str) -> set[str]:
    """The secret in each encoding, one and two layers deep."""
    found = {encode(secret, [name]) for name in ENCODERS}
    return found | {encode(secret, [a, b]) for a in ESCAPING for b in ESCAPING}


def only_there(text: str, secret: str, start: int, end: int) -> bool:
    """Whether every spelling of ``secret`` in ``text`` lies inside ``text[start:end]``."""
    return all(
        start <= at and at + len(spelling) <= end
        for spelling in spellings(secret)
        for at in occurrences(text, spelling)
    )


def ambiguous(chain: list[str], left: str, secret: str, right: str) -> str | None:
    """Why the encoded text reads two ways at an edge of the secret (None: it does not). Each
    reason is a rule of ``qtasks_cli.spelling``, pinned by ``test_the_ambiguous_readings``."""
    e_left, e_secret, e_right = (encode(t, chain) for t in (left, secret, right))
    if re.search(r"%[0-9a-fA-F]{2}$", e_left) or re.match(r"%[0-9a-fA-F]{2}", e_right):
        # A URL's "%0a" next to a short secret reads as the line break it encodes.
        return "percent escape at an edge"
    if chain == ["raw"] and "\\" in e_left[-10:] + e_right[:10]:
        # Backslashes in raw text next to the secret read as escapes: "C:\tabs" as a tab.
        return "raw backslash at an edge"
    if (e_secret.endswith("\\") and e_right.startswith("\\")) or (
        e_secret.startswith(("\\", "'", '"', "/")) and e_left.endswith("\\")
    ):
        # Backslashes next to a secret's own, or before its first quote, read as its own (each
        # layer doubles them and may escape a quote): the deepest reading that fits is taken.
        return "backslashes next to a secret's own"
    if len(chain) == 2 and len(secret) < ANYWHERE_CHARS and ("\\" in e_left[-12:] + e_right[:12]):
        # Two layers deep, "\\n" (an escaped line break) reads as a backslash and an "n":
        # a short secret next to it is read as inside a word.
        return "even run two layers deep"
    return None


@settings(max_examples=1500)
@given(secret=secrets_, left=around, right=around, chain=chains)
def test_the_text_around_a_secret_comes_out_byte_for_byte(
    secret: str, left: str, right: str, chain: list[str]
) -> None:
    """(b) redacting ``E(left + secret + right)`` gives ``E(left) + placeholder + E(right)``
    (or the text unchanged, for a short secret inside a word)."""
    assume(SENTINEL not in left + secret + right)
    assume(hidden_parts(secret) == (secret,))  # no line of it is a secret of its own
    plain = left + secret + right
    assume(occurrences(plain, secret) == [len(left)])
    text = encode(plain, chain)
    assert text == encode(left, chain) + encode(secret, chain) + encode(right, chain)
    pairs = ((secret, PLACEHOLDER),)
    e_left, e_right = encode(left, chain), encode(right, chain)
    assume(redact(e_left, pairs) == e_left and redact(e_right, pairs) == e_right)
    assume(ambiguous(chain, left, secret, right) is None)
    # Text that holds another spelling of the secret (a layer deeper, say) is one occurrence more.
    assume(only_there(text, secret, len(e_left), len(text) - len(e_right)))
    if whole_word(left, secret, right):
        expected = encode(left + SENTINEL + right, chain).replace(SENTINEL, PLACEHOLDER)
    else:
        expected = text
    assert redact(text, pairs) == expected, (text, chain)


SEPARATORS = st.lists(st.sampled_from([" ", ",", ":", "(", ")", "[", "="]), max_size=4).map("".join)


@settings(max_examples=1000)
@given(secret=secrets_, left=SEPARATORS, right=SEPARATORS, chain=chains)
def test_no_spelling_of_the_secret_is_left(
    secret: str, left: str, right: str, chain: list[str]
) -> None:
    """(a) with the secret standing clear in the plain text, no spelling of it (in any of the
    encodings, one or two layers deep) is left in what redaction gives back."""
    plain = left + secret + right
    assume(occurrences(plain, secret) == [len(left)])
    shown = redact(encode(plain, chain), ((secret, PLACEHOLDER),))
    for piece_ in shown.split(PLACEHOLDER):
        for spelling in spellings(secret):
            if len(spelling) >= 4:
                assert spelling not in piece_, (shown, spelling, chain)


# --- the readings the rule chose -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (repr("col\tabs"), repr("col\tabs")),  # a tab and "abs": "tabs" is not there
        ("'\\nabc'", "'\\nabc'"),  # for the secret "nabc"
        (r"x \tabs", r"x \tabs"),  # raw text reads the same: the cost of the rule
        (r"C:\\tabs", r"C:\\${TOKEN}"),  # an escaped backslash, then the word
        (r"\xe9tabs", r"\xe9tabs"),  # "étabs": not a whole word
        (r"\ntabs", r"\n${TOKEN}"),
        (r"tabs\xe9", r"tabs\xe9"),
        (r"tabs\n", r"${TOKEN}\n"),
        (r"tabs\\xe9", r"${TOKEN}\\xe9"),  # a backslash, then "xe9"
        ("\\\\tabs", "\\\\${TOKEN}"),  # an even run: escaped backslashes, then the word
    ],
)
def test_short_secrets_and_the_escapes_next_to_them(text: str, shown: str) -> None:
    secret = "nabc" if "nabc" in text else "tabs"
    assert redact(text, ((secret, PLACEHOLDER),)) == shown


def test_the_ambiguous_readings() -> None:
    pairs = (("abc\\", PLACEHOLDER),)
    # A secret's own backslashes and the escape of what follows: each keeps its own.
    assert redact(json.dumps("abc\\\n"), pairs) == '"${TOKEN}\\n"'
    assert redact(repr(repr("abc\\\n")), pairs) == "\"'${TOKEN}\\\\n'\""
    assert redact("abc\\", pairs) == PLACEHOLDER
    # Raw backslashes after a secret that ends with one: read as nesting (hidden, all of it).
    assert redact("abc\\\\n", pairs) == "${TOKEN}n"
    # A spelling that mixes depths is no spelling: "bt" and a JSON newline, then a raw "\".
    assert redact(json.dumps(" bt\nf")[1:-1], (("bt\\\n", PLACEHOLDER),)) == " bt\\nf"
    # A "%XX" next to a short secret is the character it encodes: "%0a" is a line break.
    assert redact("%0aaaab", (("aaab", PLACEHOLDER),)) == "%0a" + PLACEHOLDER
    # Raw text that is an escaped spelling of the secret is hidden (it is one).
    assert redact("x0t\\t", (("x0t\t", PLACEHOLDER),)) == PLACEHOLDER


# --- secrets split by what the operator never sees ---------------------------------------------

INVISIBLE = [
    "\r",  # a carriage return: a raw terminal draws what follows over the start
    "\x0c",  # a form feed
    "\u200b",  # zero-width space
    "\u00ad",  # soft hyphen
    "\ufeff",  # zero-width no-break space
    "\u2060",  # word joiner
    "\u200d",  # zero-width joiner
    "\ufe0f",  # variation selector
    "\U000e0041",  # a tag character
    "\x1b[0m",
    "\x1b[38;5;208m",
    "\x1b]0;title\x07",
    "\x1b]8;;http://x\x1b\\",  # a hyperlink, ended by ST
    "\x1b(B",
    "\x00",
    "\x07",
    "\x08",
    "\x7f",
    "\x9b31m",  # a one-byte CSI
]
BETWEEN_BACKSLASHES = re.compile(r"\\(?:" + "|".join(map(re.escape, INVISIBLE)) + r")+\\")
invisible = st.lists(st.sampled_from(INVISIBLE), min_size=1, max_size=2).map("".join)
plain_secrets = st.lists(
    st.sampled_from([*"abcxyz0123-_.", "é", "😀", "'", "\\"]), min_size=4, max_size=12
).map("".join)


@st.composite
def split(draw: st.DrawFn, secret: str, encoder: Callable[[str], str] = str) -> str:
    """``secret`` with invisible text between some of its characters (at least one place),
    each character encoded by ``encoder`` (as a job splits its value, then encodes it)."""
    cuts = draw(st.sets(st.integers(1, len(secret) - 1), min_size=1, max_size=len(secret) - 1))
    out = [encoder(char) for char in secret]
    for cut in sorted(cuts, reverse=True):
        out.insert(cut, draw(invisible))
    return "".join(out)


seen_around = st.lists(
    st.sampled_from([p for p in PIECES if p not in "\x07\u202e"]), max_size=6
).map("".join)


@settings(max_examples=600)
@given(st.data(), plain_secrets, seen_around, seen_around, st.sampled_from(["raw", "json_unicode"]))
def test_a_secret_split_by_invisible_characters_is_hidden_with_them(
    data: st.DataObject, secret: str, left: str, right: str, encoding: str
) -> None:
    """What is stored (the redacted text) and every way it is shown (cleaned for a terminal,
    one line, a printed line) hold no spelling of the secret once the invisible characters
    are gone; the text around it is kept."""
    assume(occurrences(left + secret + right, secret) == [len(left)])
    assume(whole_word(left, secret, right))
    e_left, e_secret, e_right = (ENCODERS[encoding](t) for t in (left, secret, right))
    pairs = ((secret, PLACEHOLDER),)
    assume(redact(e_left, pairs) == e_left and redact(e_right, pairs) == e_right)
    assume(ambiguous([encoding], left, secret, right) is None)
    text = e_left + data.draw(split(secret, ENCODERS[encoding])) + e_right
    # The "\" of an ST (ESC \) before a secret's own "\" is one more raw spelling of it.
    assume("\x1b\\" not in text or "\\" not in secret)
    # Backslashes on both sides of the cut: the first of them end a raw spelling of the secret.
    assume(not BETWEEN_BACKSLASHES.search(text))
    stored = redact(text, pairs)
    assert stored == e_left + PLACEHOLDER + e_right, (text, stored)
    for shown in (stored, visible(stored)[0], clean_text(stored), clean_line(stored)):
        assert secret not in visible(shown)[0] and e_secret not in visible(shown)[0]


@settings(max_examples=200)
@given(st.data(), plain_secrets.filter(lambda s: len(s) >= 6))
def test_split_secrets_are_hidden_on_every_path(data: st.DataObject, secret: str) -> None:
    """The same rule in a result preview, a redacted value (stored arguments, hook payloads),
    an error and its traceback, and a printed line."""
    pairs = ((secret, PLACEHOLDER),)
    cut = data.draw(split(secret))
    text = "got " + cut + " end"

    def gone(shown: str) -> None:
        assert secret not in visible(shown)[0] and secret not in clean_text(shown), shown

    gone(previews.preview({"v": text, "b": text.encode()}, lambda t: redact(t, pairs)))
    gone(repr(redact_value({"v": [text, text.encode()]}, pairs)))
    try:
        raise ValueError(text)
    except ValueError as exc:
        _, error, trace = failures.describe_exception(exc, lambda t: redact(t, pairs))
    gone(error)
    gone(trace or "")
    gone(clean_output(redact(text, pairs)))


def test_fullwidth_and_other_cases_are_not_secrets() -> None:
    """Stated in the README: a secret the job changed (case, fullwidth lookalikes) is not
    hidden; the visible-text rule only removes what is drawn as nothing."""
    pairs = (("hunter2xyz", PLACEHOLDER),)
    assert redact("HUNTER2XYZ", pairs) == "HUNTER2XYZ"
    assert redact("ｈｕｎｔｅｒ２ｘｙｚ", pairs) == "ｈｕｎｔｅｒ２ｘｙｚ"
    assert redact("hun\u200bter2xyz", pairs) == PLACEHOLDER


# --- what is written in pieces ---------------------------------------------------------------


@contextlib.contextmanager
def known(pairs: tuple[tuple[str, str], ...]) -> Iterator[None]:
    saved = redaction._Known.pairs
    redaction._Known.pairs = pairs
    try:
        yield
    finally:
        redaction._Known.pairs = saved


TOKEN = "Zq7-hunter2-Xw9"


@pytest.mark.parametrize("separator", ["", "\u200b", "\x1b[0m", "\x1b[", "\x00"])
def test_the_start_of_a_split_secret_is_held_back(separator: str) -> None:
    """A writer keeps back the end of a partial line that may start a secret, read as the
    operator sees it (an escape sequence cut short counts as what it will be)."""
    with known(((TOKEN, PLACEHOLDER),)):
        held = "Bearer " + TOKEN[:5] + separator
        assert redaction.secret_start(held) == len(TOKEN[:5] + separator)
    lines = "log\n" + "-----BEGIN\u200b\n"
    with known((("-----BEGIN\nline two\n-----END", PLACEHOLDER),)):
        assert redaction.hold_back(lines) == len("log\n")


def test_writers_partial_lines_are_held_apart_and_flushes_keep_a_secrets_start() -> None:
    """Two runs printing at once (a run's line, flushed in two pieces with another run's line
    between them): the secret's start never goes out alone, and nothing is lost."""
    sink = io.StringIO()
    tee = output._Tee(sink, 1, keep=False)  # type: ignore[arg-type]
    with known(((TOKEN, PLACEHOLDER),)):
        tee.pass_on("run-a", "Bearer " + TOKEN[:5] + "\u200b")
        tee.pass_on("run-b", "other line\n")
        tee.flush()
        assert "Zq7" not in visible(sink.getvalue())[0], sink.getvalue()
        tee.pass_on("run-a", TOKEN[5:] + "\n")
        tee.pass_on("run-b", "a start without its end: Zq7")
        tee.release("run-b")  # its run ended
        tee.flush_all()
    assert sink.getvalue() == (
        "other line\nBearer " + PLACEHOLDER + "\na start without its end: Zq7"
    ), sink.getvalue()


def test_an_exception_class_named_after_the_secret_is_hidden() -> None:
    pairs = ((TOKEN, PLACEHOLDER),)
    named = type("Err_" + TOKEN.replace("-", "_"), (Exception,), {})
    pairs += ((TOKEN.replace("-", "_"), PLACEHOLDER),)
    try:
        raise named("boom")
    except Exception as exc:
        error_type, error, trace = failures.describe_exception(exc, lambda t: redact(t, pairs))
    assert "hunter2" not in error_type + error + (trace or ""), (error_type, trace)
