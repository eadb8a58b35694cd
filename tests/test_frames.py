"""The frames of ``isolation: process``: whatever bytes come, the reader returns a frame whose
payload is within MAX_PAYLOAD, None, or CorruptStream; it never allocates what a header claims."""

from __future__ import annotations

import io
import os
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qtasks_cli import frames


def test_a_header_announcing_an_absurd_length_is_refused_before_reading() -> None:
    for size in (frames.MAX_PAYLOAD + 1, 2**62, 2**64 - 1):
        header = frames.HEADER.pack(frames.MAGIC, os.getpid(), 1, 4, size)
        with pytest.raises(frames.CorruptStream, match="over the limit"):
            frames.read_frame(io.BytesIO(header + b"done"))


def test_an_oversized_payload_is_not_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(frames, "MAX_PAYLOAD", 1000)
    with pytest.raises(frames.FrameTooLarge, match="the result is 1,001 bytes pickled"):
        frames.frame("done", b"x" * 1001)
    assert frames.read_frame(io.BytesIO(frames.frame("done", b"x" * 1000))) is not None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 2**64 - 1))
def test_any_bytes_give_a_bounded_frame_none_or_corrupt(tail: bytes, size: int) -> None:
    header = frames.HEADER.pack(frames.MAGIC, 1, 1, 4, size)
    for data in (tail, header + tail, frames.frame("done", tail) + tail):
        try:
            raw = frames.read_frame(io.BytesIO(data))
        except frames.CorruptStream:
            continue
        assert raw is None or len(raw.payload) <= min(frames.MAX_PAYLOAD, len(data))


def test_a_frame_round_trips() -> None:
    payload = pickle.dumps({"a": 1})
    raw = frames.read_frame(io.BytesIO(frames.frame("done", payload, call=7)))
    assert raw is not None
    assert (raw.pid, raw.call, raw.tag, bytes(raw.payload)) == (os.getpid(), 7, "done", payload)
