"""WebSocket frames as the bridge writes them: made once per message, shared by every socket.

Pure code: bytes in, bytes out. A message from Redis becomes one `Message` whose
text frame (RFC 6455 5.2, unmasked, as a server sends it) is built once, however
many sockets get it. A batched socket (`/ws?batch_ms=N`) gets one frame holding
several payloads, `{"type":"batch","messages":[...]}`, made by `batch_body`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

_BATCH_HEAD = b'{"type":"batch","messages":['
_BATCH_TAIL = b"]}"


def text_frame(payload: bytes) -> bytes:
    """`payload` as one unmasked, unfragmented WebSocket text frame (RFC 6455 5.2), as a server sends it."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x81, n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x81, 126, n)
    else:
        head = struct.pack("!BBQ", 0x81, 127, n)
    return head + payload


def batch_body(payloads: Iterable[bytes]) -> bytes:
    """The JSON of one batch frame: the payloads exactly as published, in order."""
    return _BATCH_HEAD + b",".join(payloads) + _BATCH_TAIL


@dataclass(slots=True, eq=False)
class Message:
    """One message as every socket gets it: the bytes as published, framed once."""

    seq: int
    payload: bytes
    frame: bytes
    received: float  # loop time of arrival, for the latency histogram
    reset: bool = False  # the first of a newly adopted epoch: receivers replace what they had, not compare seqs
    epoch: int = 0  # with seq, the message's place in its instrument's order
    _event: dict[str, Any] | None = None
    prev_seq: int = -1  # a delta: the seq of the book it applies to (-1: not a delta)
    cap: int = 0  # a delta: bytes of its instrument's snapshot; pending deltas past it are worth less than the snapshot
    book: Any = None  # a book on its way to its topic: its levels as verified (bridge.verify.Book)

    @classmethod
    def of(cls, payload: bytes, seq: int = 0, received: float = 0.0, reset: bool = False, epoch: int = 0) -> Message:
        return cls(seq, payload, text_frame(payload), received, reset, epoch)

    def event(self) -> dict[str, Any]:
        """The ASGI send event, made on first use and shared by every socket."""
        if self._event is None:
            self._event = {"type": "websocket.send", "text": self.payload.decode()}
        return self._event
