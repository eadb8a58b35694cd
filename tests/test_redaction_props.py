"""Redaction, attacked as a property: a ``${NAME}`` secret with quotes, backslashes, non-ASCII,
line breaks and controls, inside job values, errors, printed lines and log records, in every
encoding (and nesting of encodings) the product or a job produces, never shows; and text
without the secret, or with a value too short to be a secret, is unchanged byte for byte.

The state file, ``history`` and ``show`` of the same attacks through the installed command are
in ``tests/reliability/test_rel_trust_secrets.py``; one in-process run into a real SQLite state
is at the end of this file."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qtasks_cli import failures, previews, redaction
from qtasks_cli.redaction import redact, redact_lines, redact_value

START, END = "Zq7k", "X7w9"  # every secret starts and ends so: neither may ever show
PLACEHOLDER = "${TOKEN}"

hostile_char = st.one_of(
    st.sampled_from(
        [
            *("'", '"', "\\", "\\'", '\\"', "/", "é", "€", "😀", "\u202e", "\n", "\r\n", "\t"),
            *("\x1b[2J", "\x07", "\x7f", "\x85", "\u2028", "$", "{}", "%s", " "),
        ]
    ),
    st.characters(codec="utf-8", exclude_characters="\x00", exclude_categories=["Cs"]),
)
secrets_ = st.lists(hostile_char, min_size=1, max_size=10).map(
    lambda parts: START + "".join(parts) + END
)
# Text that cannot hold a secret: it never holds a marker.
clean_text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=30).filter(
    lambda t: START not in t and END not in t and "Zq" not in t and "X7" not in t
)

ENCODERS: dict[str, Callable[[str], str]] = {
    "repr": repr,
    "ascii": ascii,
    "json": json.dumps,
    "json_unicode": lambda s: json.dumps(s, ensure_ascii=False),
    "bytes": lambda s: repr(s.encode("utf-8")),
    "in_a_list": lambda s: repr([s, "'\""]),
    "key_error": lambda s: str(KeyError(s)),
    "json_document": lambda s: json.dumps({"token": s, "n": 1}),
}
chains = st.lists(st.sampled_from(sorted(ENCODERS)), max_size=3)


def encode(secret: str, chain: list[str]) -> str:
    for name in chain:
        secret = ENCODERS[name](secret)
    return secret


@st.composite
def texts_with(draw: st.DrawFn, secret: str) -> str:
    """Clean text around the secret in some nesting of encodings."""
    return draw(clean_text) + encode(secret, draw(chains)) + draw(clean_text)


def values(leaf: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    keys = clean_text | leaf.filter(lambda v: isinstance(v, str))
    return st.recursive(
        scalars | leaf,
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.tuples(inner, inner)
            | st.dictionaries(keys, inner, max_size=3)
        ),
        max_leaves=8,
    )


def hidden(text: str) -> bool:
    return START not in text and END not in text


def identity(text: str) -> str:
    return text


@settings(max_examples=300)
@given(st.data(), secrets_)
def test_every_nesting_of_encodings_is_hidden_and_clean_text_is_kept(
    data: st.DataObject, secret: str
) -> None:
    pairs = ((secret, PLACEHOLDER),)
    text = data.draw(texts_with(secret))
    assert hidden(redact(text, pairs)), (text, redact(text, pairs))
    clean = data.draw(clean_text)
    assert redact(clean, pairs) == clean


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), secrets_)
def test_previews_hide_the_secret_and_change_only_the_leaves_that_hold_it(
    data: st.DataObject, secret: str
) -> None:
    """A result preview (JSON) and an item line (repr): no marker, and the preview is exactly
    the preview of the value whose leaves were redacted: never a JSON quote, bracket or
    another value rewritten."""
    pairs = ((secret, PLACEHOLDER),)
    with_secret = texts_with(secret)
    leaf = clean_text | with_secret | with_secret.map(lambda t: t.encode("utf-8"))
    value = data.draw(values(leaf))
    for as_json in (True, False):
        shown = previews.preview(value, lambda t: redact(t, pairs), as_json=as_json)
        assert hidden(shown), (value, shown)
        assert shown == previews.preview(redact_value(value, pairs), identity, as_json=as_json)


@settings(max_examples=200)
@given(values(clean_text | clean_text.map(lambda t: t.encode("utf-8"))), secrets_)
def test_a_value_without_the_secret_is_previewed_byte_for_byte(value: Any, secret: str) -> None:
    pairs = ((secret, PLACEHOLDER),)
    for as_json in (True, False):
        assert previews.preview(value, lambda t: redact(t, pairs), as_json=as_json) == (
            previews.preview(value, identity, as_json=as_json)
        )
    assert redact_value(value, pairs) == value


@settings(max_examples=60, deadline=None)
@given(
    secret=st.lists(
        st.sampled_from(["\\", '"', "'", "é", "\n", "😀", "a", "/"]), min_size=8, max_size=16
    ).map("".join),
    unit=st.lists(
        st.sampled_from(["\\", '"', "'", "a", "xe9", "u00e9", "n", "\n"]), min_size=1, max_size=4
    ).map("".join),
)
def test_redaction_stays_linear_on_hostile_text(secret: str, unit: str) -> None:
    """A job's text made of what the patterns are built from (backslashes, quotes, escape
    bodies), 60,000 characters of it: redaction must not backtrack its way into minutes."""
    import time

    text = (unit * (60_000 // len(unit) + 1))[:60_000] + secret[:-1]
    started = time.monotonic()
    redact(text, ((secret, PLACEHOLDER),))
    # About 10 ms when it is linear; backtracking takes minutes. A bound, not a speed target
    # (bench/ measures speed): generous for a busy machine.
    assert time.monotonic() - started < 30.0


def test_the_stored_result_of_the_issue_stays_valid_json() -> None:
    """REGION=eu: too short to be a secret, so nothing is rewritten; a longer value is
    replaced inside strings only, and the preview is still the same JSON shape."""
    value = {"neutral": "eu", "queue": [1, "reuse"], "eu": True}
    short = (("eu", "${REGION}"),)
    assert previews.preview(value, lambda t: redact(t, short)) == json.dumps(value)
    region = (("eu-west-1", "${REGION}"),)
    shown = previews.preview({"region": "eu-west-1", "true": 1}, lambda t: redact(t, region))
    assert json.loads(shown) == {"region": "${REGION}", "true": 1}
    # A value that is JSON syntax itself is hidden in strings, never in the document.
    syntax = (('", "true": [1, 2]}', "${X}"),)
    value = {"a": 'x", "true": [1, 2]}', "b": [1, 2]}
    assert json.loads(previews.preview(value, lambda t: redact(t, syntax))) == {
        "a": "x${X}",
        "b": [1, 2],
    }


@pytest.mark.parametrize("value", ["", "e", "eu", "1", "yes", "%s", "  "])
@given(text=st.text(max_size=40))
def test_values_shorter_than_the_minimum_never_change_text(value: str, text: str) -> None:
    assert redact(text, ((value, "${SHORT}"),)) == text
    assert not redaction.is_secret(value)


def test_short_secrets_are_hidden_only_as_whole_words() -> None:
    pairs = (("hunter2", "${PASSWORD}"), ("1234", "${PIN}"))
    assert redact("login hunter2 failed", pairs) == "login ${PASSWORD} failed"
    assert redact("'hunter2'", pairs) == "'${PASSWORD}'"
    assert redact(json.dumps("pw:\nhunter2"), pairs) == '"pw:\\n${PASSWORD}"'
    for text in ("xhunter2", "hunter2_", "order 12345", "id-91234", "ünhunter2"):
        assert redact(text, pairs) == text
    assert redact("pin 1234, order 12345", pairs) == "pin ${PIN}, order 12345"


@settings(max_examples=100)
@given(st.data(), secrets_)
def test_errors_and_tracebacks_hide_the_secret(data: st.DataObject, secret: str) -> None:
    pairs = ((secret, PLACEHOLDER),)
    message = data.draw(texts_with(secret))
    chained = data.draw(st.booleans())

    def fail() -> None:
        try:
            raise KeyError(secret)
        except KeyError as exc:
            raise RuntimeError(message) from (exc if chained else None)

    try:
        fail()
    except RuntimeError as exc:
        error_type, error, trace = failures.describe_exception(exc, lambda t: redact(t, pairs))
    assert error_type == "RuntimeError"
    assert hidden(error) and trace is not None and hidden(trace), (error, trace)


@settings(max_examples=100)
@given(st.data(), secrets_)
def test_printed_lines_hide_a_secret_that_spans_lines(data: st.DataObject, secret: str) -> None:
    """What ``show`` keeps of a run's output: lines redacted as the text they were."""
    printed = data.draw(texts_with(secret)) + "\n" + data.draw(texts_with(secret))
    lines = printed.split("\n")
    kept = redact_lines(lines, ((secret, PLACEHOLDER),))
    assert hidden("\n".join(kept)), (lines, kept)
    clean = data.draw(st.lists(clean_text.filter(lambda t: "\n" not in t), max_size=4))
    assert redact_lines(clean, ((secret, PLACEHOLDER),)) == clean


@contextlib.contextmanager
def known(pairs: tuple[tuple[str, str], ...]) -> Iterator[None]:
    """The secrets of "the loaded job files" for text that belongs to no run."""
    saved = redaction._Known.pairs
    redaction._Known.pairs = pairs
    try:
        yield
    finally:
        redaction._Known.pairs = saved


def pump(view: Any, writes: list[str]) -> None:
    """Feed ``writes`` to the live table's output reader through a pipe, each write read
    alone: the next is written once the reader has taken the last from the pipe."""
    import fcntl
    import termios
    import time

    from qtasks_cli.ui.capture import _pump

    read_end, write_end = os.pipe()
    reader = threading.Thread(target=_pump, args=(read_end, view), daemon=True)
    reader.start()
    unread = bytearray(4)
    try:
        for text in writes:
            os.write(write_end, text.encode("utf-8", "surrogateescape"))
            deadline = time.monotonic() + 10
            while fcntl.ioctl(read_end, termios.FIONREAD, unread) == 0 and any(unread):
                assert time.monotonic() < deadline, "the reader took nothing"
                time.sleep(0.001)
    finally:
        os.close(write_end)
        reader.join(10)
    assert not reader.is_alive()


@settings(max_examples=60, deadline=None)
@given(st.data(), secrets_)
def test_the_live_table_hides_secrets_printed_over_several_lines(
    data: st.DataObject, secret: str
) -> None:
    """Output captured under the live table, read in arbitrary pieces: a secret of several
    lines whose lines arrive in different reads is still hidden; lines without a secret are
    shown as they were."""
    from qtasks_cli.redaction import clean_output
    from qtasks_cli.ui.live import LiveView

    pairs = ((secret, PLACEHOLDER),)
    lines = data.draw(st.lists(texts_with(secret) | clean_text, min_size=1, max_size=4))
    stream = "\n".join(lines) + "\n"
    cuts = sorted(data.draw(st.sets(st.integers(0, len(stream)), max_size=5)))
    writes = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)])]
    view = LiveView()
    with known(pairs):
        pump(view, writes)
        view.add_text(f"a record with {secret!r} and\n{secret}")
    screen = "\n".join(line.text for line in view.lines)
    assert hidden(screen), (writes, screen)
    assert PLACEHOLDER in screen
    clean = "\n".join(data.draw(st.lists(clean_text, min_size=1, max_size=4))) + "\n"
    view = LiveView()
    with known(pairs):
        pump(view, [clean[: len(clean) // 2], clean[len(clean) // 2 :]])
        expected = [clean_output(row) for row in clean.split("\n")]
    assert [line.text for line in view.lines] == [f"output: {r}" for r in expected if r.strip()]


@settings(max_examples=100, deadline=None)
@given(st.data(), secrets_)
def test_log_records_hide_the_secret_in_plain_and_json(data: st.DataObject, secret: str) -> None:
    """A log record that is not a run's event (a job's exception logged by qtasks, say)."""
    from qtasks_cli.ui.log import JsonFormatter, PlainFormatter

    pairs = ((secret, PLACEHOLDER),)
    message = data.draw(texts_with(secret))
    try:
        raise ValueError(data.draw(texts_with(secret)))
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.LogRecord(
        "qtasks.test", logging.ERROR, __file__, 1, "%s", (message,), exc_info
    )
    clean = data.draw(clean_text)
    plain_record = logging.LogRecord("qtasks.test", logging.INFO, __file__, 1, "%s", (clean,), None)
    with known(pairs):
        plain = PlainFormatter().format(record)
        dumped = JsonFormatter().format(record)
        kept = json.loads(JsonFormatter().format(plain_record))
    assert hidden(plain), plain
    assert hidden(dumped) and hidden(repr(json.loads(dumped))), dumped
    assert kept["message"] == clean


@settings(max_examples=100, deadline=None)
@given(st.data(), secrets_)
def test_a_jobs_prints_are_hidden_in_any_pieces(data: st.DataObject, secret: str) -> None:
    """What a job prints through ``sys.stdout`` in the daemon or ``qtasks trigger``: the
    secret hidden however the writes cut it; clean text passes as it was, byte for byte."""
    import io

    from qtasks_cli.output import hiding

    printed = data.draw(texts_with(secret)) + "\n" + data.draw(clean_text)
    cuts = sorted(data.draw(st.sets(st.integers(0, len(printed)), max_size=6)))
    pieces = [printed[a:b] for a, b in zip([0, *cuts], [*cuts, len(printed)])]
    clean = data.draw(st.lists(clean_text, max_size=4))
    for writes in (pieces, clean):
        sink = io.StringIO()
        saved = sys.stdout
        sys.stdout = sink  # type: ignore[assignment]
        try:
            with known(((secret, PLACEHOLDER),)), hiding():
                for piece in writes:
                    sys.stdout.write(piece)
        finally:
            sys.stdout = saved
        if writes is pieces:
            assert hidden(sink.getvalue()), (pieces, sink.getvalue())
        else:
            assert sink.getvalue() == "".join(writes)


# --- one run of each kind into a real SQLite state --------------------------------------------

JOB_MODULE = """
import json

ENCODERS = {
    "repr": repr,
    "ascii": ascii,
    "json": json.dumps,
    "json_unicode": lambda s: json.dumps(s, ensure_ascii=False),
    "bytes": lambda s: repr(s.encode("utf-8")),
    "in_a_list": lambda s: repr([s, "'\\""]),
    "key_error": lambda s: str(KeyError(s)),
    "json_document": lambda s: json.dumps({"token": s, "n": 1}),
}


def enc(token, chain):
    for name in chain:
        token = ENCODERS[name](token)
    return token


def returns(token, chain):
    shown = enc(token, chain)
    return {"value": shown, "bytes": shown.encode("utf-8"), "list": [shown, 1], "n": 1}


def raises(token, chain):
    print("printed", enc(token, chain))
    raise ValueError(enc(token, chain))


def items(token, chain):
    yield enc(token, chain)
    yield {"t": enc(token, chain)}


def keep(item):
    return item
"""

JOBS = """
settings:
  state: state/state.db
jobs:
  returns:
    entrypoint: redaction_job:returns
    kwargs: {token: "${TOKEN}"}
  raises:
    entrypoint: redaction_job:raises
    kwargs: {token: "${TOKEN}"}
  items:
    entrypoint: redaction_job:items
    kwargs: {token: "${TOKEN}"}
    generate_handler: redaction_job:keep
    echo: true
"""


@pytest.fixture(scope="module")
def job_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("redaction")
    (folder / "redaction_job.py").write_text(JOB_MODULE)
    (folder / "jobs.yaml").write_text(JOBS)
    return folder


@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(secret=secrets_, chain=chains)
def test_runs_into_a_real_state_file_and_its_logs_hide_the_secret(
    job_folder: Path, secret: str, chain: list[str]
) -> None:
    """Foreground runs that return, raise (after printing) and yield the secret in a nesting
    of encodings: the SQLite file's bytes, the run results and the plain and JSON log lines
    of their events hold no part of it."""
    from qtasks_cli import api
    from qtasks_cli.events import EventBus
    from qtasks_cli.ui.log import JsonFormatter, PlainFormatter, event_level

    for old in job_folder.glob("state/state.db*"):
        old.unlink()
    lines: list[str] = []
    plain, as_json = PlainFormatter(), JsonFormatter()

    def sink(event: Any) -> None:
        record = logging.LogRecord("qtasks.events", event_level(event), "", 0, "", (), None)
        record.qtasks_event = event
        lines.append(plain.format(record))
        lines.append(repr(json.loads(as_json.format(record))))

    saved = os.environ.get("TOKEN")
    os.environ["TOKEN"] = secret
    try:
        config = api.load(job_folder / "jobs.yaml")
        bus = EventBus()
        bus.subscribe(sink)
        results = [
            asyncio.run(api.trigger_now(config, job, kwargs={"chain": chain}, bus=bus))
            for job in ("returns", "raises", "items")
        ]
        rows = asyncio.run(api.read_history(config, limit=10))
    finally:
        if saved is None:
            os.environ.pop("TOKEN", None)
        else:
            os.environ["TOKEN"] = saved
    assert [str(r.status) for r in results] == ["succeeded", "failed", "succeeded"], results
    assert results[0].result_preview is not None and results[1].error is not None
    stored = b"".join(p.read_bytes() for p in sorted(job_folder.glob("state/state.db*")))
    assert START.encode() not in stored and END.encode() not in stored
    for text in [*lines, repr(rows), *(repr(r.result_preview) + repr(r.error) for r in results)]:
        assert hidden(text), text
    assert any("${TOKEN}" in line for line in lines)
