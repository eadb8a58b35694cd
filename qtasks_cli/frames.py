"""The frames ``isolation: process`` children and the daemon exchange, and who may send them.

A frame is a header (magic, the sender's pid, the call it belongs to, the tag's and the
payload's lengths), a short ASCII tag and a payload of at most MAX_PAYLOAD bytes. A header that
announces more is not a frame: the reader refuses it before allocating anything.

The child speaks to the daemon on a UNIX socket, not a pipe. On Linux the daemon's end has
SO_PASSCRED set, so the kernel stamps every message with the pid of the process that wrote it
(unix(7), SCM_CREDENTIALS) and never joins the writes of two processes in one read. A process
the job forked inherits the socket and knows everything the child knows, but it cannot make the
kernel say it is the child: ``SenderStream`` drops what it writes before it is parsed, so it
cannot put a frame, or half of one, into the child's stream. (Only a process with CAP_SYS_ADMIN
may claim another pid; such a job can do anything to the daemon anyway.) Elsewhere the sender's
pid written in the header is all there is to check.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

HEADER = struct.Struct(">4sIIBQ")
MAGIC = b"QTf1"
MAX_TAG = 16
MAX_PAYLOAD = 256 * 1024 * 1024  # bytes: a result, item or argument list pickled
_CHUNK = 1024 * 1024  # bytes read at most per receive
_CREDS = struct.Struct("3i")  # struct ucred: pid, uid, gid
PASSCRED = hasattr(socket, "SO_PASSCRED") and hasattr(socket, "SCM_CREDENTIALS")


class CorruptStream(Exception):
    """What came is not a frame: someone else wrote on the channel, or a header is absurd."""


class FrameTooLarge(ValueError):
    """A payload over MAX_PAYLOAD bytes: it is not sent."""


class Readable(Protocol):
    def read(self, size: int, /) -> bytes | bytearray: ...


@dataclass(frozen=True, slots=True)
class Raw:
    pid: int  # the sender's, as it wrote it
    call: int  # the call it belongs to (0: none)
    tag: str
    payload: bytes | bytearray


_WHAT = {"done": "the result", "item": "a generator's item", "call": "the call's arguments"}


def frame(tag: str, payload: bytes = b"", *, call: int = 0) -> bytes:
    """One frame from this process; FrameTooLarge if ``payload`` is over MAX_PAYLOAD bytes."""
    if len(payload) > MAX_PAYLOAD:
        what = _WHAT.get(tag, f"a {tag!r} message")
        raise FrameTooLarge(
            f"{what} is {len(payload):,} bytes pickled, over the {MAX_PAYLOAD:,} bytes that "
            "cross between qtasks and a process job's child; write large data to a file and "
            "pass its path instead"
        )
    name = tag.encode("ascii")
    return HEADER.pack(MAGIC, os.getpid(), call, len(name), len(payload)) + name + payload


def read_frame(stream: Readable) -> Raw | None:
    """The next frame; None at the end of the stream (or a cut-off frame); CorruptStream if
    what comes is not a frame, or announces a payload over MAX_PAYLOAD bytes."""
    head = stream.read(HEADER.size)
    if len(head) < HEADER.size:
        return None
    magic, pid, call, name_size, payload_size = HEADER.unpack(head)
    if magic != MAGIC or name_size > MAX_TAG:
        raise CorruptStream(f"{len(head)} bytes that are not a frame header: {bytes(head[:8])!r}…")
    if payload_size > MAX_PAYLOAD:
        raise CorruptStream(
            f"a frame header announcing {payload_size:,} bytes, over the limit of {MAX_PAYLOAD:,}"
        )
    name = stream.read(name_size)
    payload = stream.read(payload_size)
    if len(name) < name_size or len(payload) < payload_size:
        return None
    try:
        tag = bytes(name).decode("ascii")
    except UnicodeDecodeError:
        raise CorruptStream(f"a frame with a tag that is not ASCII: {bytes(name)!r}") from None
    return Raw(pid=pid, call=call, tag=tag, payload=payload)


def socket_pair() -> tuple[socket.socket, socket.socket]:
    """(the daemon's end, the child's end) of a child's channel; the daemon's end gets every
    sender's pid from the kernel where it can (Linux)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    if PASSCRED:
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    return ours, theirs


class SenderStream:
    """Reads the bytes one process wrote on a socket from ``socket_pair``: every write by
    another process is dropped (``on_foreign`` gets its pid, or 0 when the kernel gave none)."""

    def __init__(self, sock: socket.socket, sender: int, on_foreign: Callable[[int], None]) -> None:
        self._sock = sock
        self._sender = sender
        self._on_foreign = on_foreign
        self._ancillary = socket.CMSG_SPACE(_CREDS.size) if PASSCRED else 0

    def read(self, size: int) -> bytes | bytearray:
        """Up to ``size`` bytes from the sender: fewer only at the end of the stream."""
        buffer = bytearray(size)
        view = memoryview(buffer)
        got = 0
        while got < size:
            count = self._receive_into(view[got : got + min(size - got, _CHUNK)])
            if count == 0:
                break
            got += max(count, 0)
        view.release()
        if got < size:
            del buffer[got:]
        return buffer

    def _receive_into(self, view: memoryview) -> int:
        """Bytes received into ``view``: 0 at the end; -1 for a foreign write (dropped)."""
        if not PASSCRED:
            return self._sock.recv_into(view)
        count, ancillary, _flags, _addr = self._sock.recvmsg_into([view], self._ancillary)
        if count == 0:
            return 0
        pid = 0
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = _CREDS.unpack(data[: _CREDS.size])[0]
        if pid != self._sender:
            self._on_foreign(pid)
            return -1
        return count

    def close(self) -> None:
        self._sock.close()
