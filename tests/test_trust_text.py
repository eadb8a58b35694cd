"""Pure parts of the trust boundaries: terminal text, JSON output, secret redaction and unit
values. Property tests: any input, not only the escapes we thought of."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qtasks_cli import redaction, text
from qtasks_cli import systemd_unit as systemd
from qtasks_cli.redaction import redact, redact_value

# Everything a terminal acts on: ESC, other C0 but \n, DEL, C1, bidi controls, U+2028/9.
OBEYED = re.compile(
    r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]"
)

hostile_chars = st.one_of(
    st.sampled_from(
        [
            "\x1b",
            "[",
            "]",
            "\x07",
            "\\",
            "\x9b",
            "\x9d",
            "\x9c",
            "P",
            "_",
            "^",
            "52",
            ";",
            "c",
            "\n",
            "\r",
            "\t",
            "\u202e",
            "\u2066",
            "\u2028",
            "\x00",
            "\x7f",
            "'",
            '"',
            "é",
            "€",
        ]
    ),
    st.characters(codec="utf-8"),
)
hostile_text = st.lists(hostile_chars, max_size=40).map("".join)


@given(hostile_text)
def test_clean_line_leaves_nothing_a_terminal_obeys_and_no_line_break(value: str) -> None:
    shown = text.clean_line(value)
    assert not OBEYED.search(shown), repr(shown)
    assert "\n" not in shown


@given(hostile_text)
def test_clean_text_keeps_only_line_feeds(value: str) -> None:
    shown = text.clean_text(value)
    assert not OBEYED.search(shown), repr(shown)


@given(hostile_text)
def test_clean_output_is_one_clean_line(value: str) -> None:
    shown = redaction.clean_output(value)
    assert not OBEYED.search(shown) and "\n" not in shown


def test_the_escapes_of_the_issue_are_removed_with_their_payload() -> None:
    body = "CRM answered: \x1b]0;owned\x07\x1b[2J\x1b]52;c;cm0gLXJmIH4=\x07done \u202eevil"
    assert text.clean_line(body) == "CRM answered: done evil"
    assert text.clean_line("a\x9b31mb\x9d0;t\x9cc\x1b") == "abc"  # C1 forms, lone ESC
    assert text.clean_line("one\ntwo\r\nthree") == "one\\ntwo\\nthree"
    assert text.clean_line("plain text, ünïcode ✓") == "plain text, ünïcode ✓"


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | hostile_text,
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(hostile_text, inner, max_size=3)
        ),
        max_leaves=10,
    )
)
def test_json_safe_keeps_the_exact_value_and_hides_what_a_terminal_obeys(value: Any) -> None:
    dumped = text.json_safe(json.dumps(value, ensure_ascii=False))
    assert json.loads(dumped) == value
    assert not OBEYED.search(dumped.replace("\n", ""))


# A marker at each end (long enough to count as a secret whatever lies between): if either
# shows, part of the secret leaked.
secret_text = st.lists(hostile_chars.filter(lambda c: c != "\x00"), min_size=1, max_size=12).map(
    lambda chars: "Zq7k" + "".join(chars) + "X7w9"
)


def _encodings(secret: str) -> list[str]:
    wrapped = f"before {secret} after"
    return [
        secret,
        repr(secret),
        ascii(secret),
        repr([secret, "x'\""]),
        str(KeyError(secret)),
        str(ValueError(secret.encode("utf-8"))),
        json.dumps({"k": secret}),
        json.dumps({"k": secret}, ensure_ascii=False),
        json.dumps(repr(wrapped)),
        json.dumps([repr(secret)], ensure_ascii=False),
        f"{wrapped!r}",
        f"Traceback (most recent call last):\nKeyError: {secret!r}\n",
    ]


@settings(max_examples=300)
@given(secret_text)
def test_redaction_hides_every_encoding_of_a_secret(secret: str) -> None:
    pairs = ((secret, "${TOKEN}"),)
    for encoded in _encodings(secret):
        hidden = redact(encoded, pairs)
        assert secret not in hidden, (encoded, hidden)
        assert "Zq7k" not in hidden and "X7w9" not in hidden, (encoded, hidden)


@given(secret_text)
def test_redact_value_hides_secrets_in_a_hook_payload(secret: str) -> None:
    pairs = ((secret, "${TOKEN}"),)
    value = {"a": [secret, (f"x{secret}", {secret.encode()})], secret: 1, "n": 3}
    hidden = redact_value(value, pairs)
    assert secret not in repr(hidden) and secret not in str(hidden)
    assert hidden["n"] == 3 and hidden["${TOKEN}"] == 1


@pytest.mark.parametrize(
    "path",
    [
        "/srv/x\nExecStartPre=/bin/sh -c 'id'\n#/jobs.yaml",
        "/srv/x\rExecStartPre=/bin/true/jobs.yaml",
        "/srv/x\u2028y/jobs.yaml",
        "/srv/x\x00y/jobs.yaml",
    ],
)
def test_unit_values_with_line_breaks_are_refused(path: str) -> None:
    from pathlib import Path

    with pytest.raises(systemd.UnitValueError, match="cannot be written into a systemd unit"):
        systemd.render_unit(
            executable=Path("/usr/bin/qtasks"),
            config=Path(path),
            working_directory=Path(path).parent,
            shutdown_grace=systemd.STOP_MARGIN,
        )


@given(
    st.text(
        st.characters(codec="utf-8", exclude_categories=["Cc", "Cs"]).filter(
            lambda c: c not in "\u2028\u2029"
        ),
        min_size=1,
        max_size=20,
    )
)
def test_every_unit_line_is_one_directive_for_any_folder_name(name: str) -> None:
    from pathlib import Path

    folder = (
        Path("/srv") / name.replace("/", "_").strip().rstrip("\\")
        if name.strip().rstrip("\\")
        else Path("/srv/x")
    )
    unit = systemd.render_unit(
        executable=Path("/usr/bin/qtasks"),
        config=folder / "jobs.yaml",
        working_directory=folder,
        shutdown_grace=systemd.STOP_MARGIN,
        user="root",
    )
    keys = [
        line.split("=", 1)[0]
        for line in unit.splitlines()
        if line and not line.startswith(("#", "["))
    ]
    assert keys == [
        "Description",
        "Wants",
        "After",
        "Type",
        "NotifyAccess",
        "ExecStart",
        "ExecReload",
        "WorkingDirectory",
        "User",
        "Environment",
        "Restart",
        "RestartSec",
        "RestartPreventExitStatus",
        "TimeoutStopSec",
        "WatchdogSec",
        "KillMode",
        "SyslogIdentifier",
        "WantedBy",
    ]
    assert not any(line.endswith("\\") for line in unit.splitlines())
