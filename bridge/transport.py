"""A bypass of uvicorn's WebSocket send: prebuilt frames straight onto the connection's transport.

Used under uvicorn's websockets-sansio implementation (the default). Every other
server goes through plain ASGI `send` (see bridge.latest_slot). Measured on 2 shared
cores (200 sockets, picows client in another process), the bridge spends about
12 µs of CPU per delivered message this way (two thirds of it in the kernel's send)
and about 50 µs through uvicorn's ASGI send.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

# Bytes a socket may hold for a client before latest-only conflation takes over: the
# kernel's send buffer (Linux doubles the figure) and the transport's high-water mark.
SEND_BUFFER = 16 * 1024
WRITE_BUFFER = 16 * 1024


class RawWire:
    """Frames straight onto a uvicorn websockets-sansio connection's transport.

    uvicorn's own send for a text event encodes the str, frames it through the
    websockets state machine, joins the output and writes it; a server frame is just
    a header and the payload, so the frame made once per message is written as is.
    Flow control is uvicorn's: its `writable` event is clear while the transport's
    buffer is above the high-water mark.

    The kernel's send buffer and the transport's high-water mark are capped
    (SEND_BUFFER, WRITE_BUFFER): left to autotuning the kernel's grows to megabytes
    per socket, a backlog of seconds of books for a client that reads a little slower
    than the feed, and kernel memory that is not flat. Capped, the backlog stays a
    few dozen books and latest-only conflation takes over early.
    """

    __slots__ = ("_proto", "_transport", "_writable")

    def __init__(self, proto: Any) -> None:
        self._proto = proto
        self._transport = proto.transport
        self._writable: asyncio.Event = proto.writable
        sock = self._transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
            except OSError:  # not a socket we may tune; keep the default
                pass
        self._transport.set_write_buffer_limits(high=WRITE_BUFFER)

    @classmethod
    def attach(cls, send: Send) -> RawWire | None:
        """A wire for the connection behind uvicorn's `send`, or None when it is another server."""
        try:
            from uvicorn.protocols.websockets.websockets_sansio_impl import (
                WebSocketsSansIOProtocol,
            )
        except ImportError:  # pragma: no cover - uvicorn without websockets
            return None
        proto = getattr(send, "__self__", None)
        if not isinstance(proto, WebSocketsSansIOProtocol) or getattr(send, "__func__", None) is not WebSocketsSansIOProtocol.send:
            return None
        needed = ("transport", "writable", "conn", "queue", "close_sent", "close_timer", "read_paused", "loop")
        if not all(hasattr(proto, name) for name in needed) or not proto.handshake_complete:
            return None
        return cls(proto)

    def ready(self) -> bool:
        """True when a write goes out now: open, and the buffer below the high-water mark."""
        return self._writable.is_set() and not self._proto.close_sent and not self._transport.is_closing()

    @property
    def gone(self) -> bool:
        return self._proto.close_sent or self._transport.is_closing()

    def write(self, frame: bytes) -> None:
        self._transport.write(frame)

    async def wait_writable(self) -> None:
        await self._writable.wait()  # uvicorn sets it on connection loss too

    def close_now(self, code: int, reason: str, grace: float) -> None:
        """Queue a close frame behind what is buffered, without waiting for room, and abort after `grace`.

        The same steps as uvicorn's own close, minus the wait for a writable
        transport that a stuck client never gives.
        """
        from websockets.exceptions import InvalidState

        proto = self._proto
        if self.gone:
            return
        try:
            proto.conn.send_close(code, reason)
        except InvalidState:  # the peer's close crossed ours; uvicorn is closing already
            return
        self._transport.write(b"".join(proto.conn.data_to_send()))
        proto.close_sent = True
        proto.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        if proto.read_paused:
            proto.read_paused = False
            self._transport.resume_reading()
        # uvicorn cancels this timer and closes cleanly if the peer answers the close in time.
        proto.close_timer = proto.loop.call_later(grace, self._transport.abort)
