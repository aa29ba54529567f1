"""A deadline on the HTTP request head: a connection that does not finish it in time is closed.

uvicorn has no header-read timeout: a client that opens a TCP connection and sends
half a request line keeps a socket, a file descriptor and a protocol object forever
(its keep-alive timer only runs between requests). `with_deadline(base, seconds,
expired)` subclasses uvicorn's HTTP protocol (httptools or h11, whichever the bridge
runs) and passes as `uvicorn.Config(http=...)`:

- the timer starts when the connection is made, and again when the first bytes of a
  later request arrive on a kept-alive connection;
- it stops when a request head is complete (uvicorn made a new request cycle for it)
  or the connection became a WebSocket (the transport has another protocol): the
  WebSocket handshake request is that same head, so a socket that got its 101 is
  never touched;
- when it fires, the client gets `408 Request Timeout` and the connection is closed.

A timer per connection is a heap entry, so thousands of half-open connections cost
the loop nothing until they expire, and /healthz keeps answering meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from uvicorn.importer import import_from_string

from marketdata.logs import Throttled

log = logging.getLogger(__name__)

PROTOCOLS = {
    "auto": "uvicorn.protocols.http.auto:AutoHTTPProtocol",  # httptools when installed, else h11
    "httptools": "uvicorn.protocols.http.httptools_impl:HttpToolsProtocol",
    "h11": "uvicorn.protocols.http.h11_impl:H11Protocol",
}
_TIMEOUT_BODY = b"the request head came too slowly\r\n"
TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(_TIMEOUT_BODY), _TIMEOUT_BODY)
)


def http_protocol(name: str) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol class for `name` (auto, httptools or h11)."""
    return import_from_string(PROTOCOLS[name])  # type: ignore[no-any-return]


def with_deadline(base: type[asyncio.Protocol], seconds: float, expired: Callable[[], None]) -> type[asyncio.Protocol]:
    """`base` (a uvicorn HTTP protocol) closing connections whose request head takes over `seconds`.

    `expired` is called once per connection closed that way (the bridge counts it).
    """
    refusals = Throttled(log)

    class DeadlineProtocol(base):  # type: ignore[valid-type, misc]
        # uvicorn's protocols set `loop`, `transport` and `cycle` (None until a request head is parsed).
        _deadline: asyncio.TimerHandle | None = None
        loop: asyncio.AbstractEventLoop
        transport: asyncio.Transport
        cycle: Any

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            self._deadline = self.loop.call_later(seconds, self._expire)

        def data_received(self, data: bytes) -> None:
            if self._deadline is None and (self.cycle is None or self.cycle.response_complete):
                # A kept-alive connection between requests: these bytes start the next head.
                self._deadline = self.loop.call_later(seconds, self._expire)
            cycle = self.cycle
            super().data_received(data)
            if self._deadline is not None and (self.cycle is not cycle or self.transport.get_protocol() is not self):
                self._deadline.cancel()
                self._deadline = None

        def connection_lost(self, exc: Exception | None) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None
            super().connection_lost(exc)

        def _expire(self) -> None:
            self._deadline = None
            transport = self.transport
            if transport.is_closing() or transport.get_protocol() is not self:
                return
            expired()
            refusals(logging.INFO, "closed a connection from %s: no complete request head in %.1f s", _peer(transport), seconds)
            transport.write(TIMEOUT_RESPONSE)
            transport.close()

    DeadlineProtocol.__name__ = DeadlineProtocol.__qualname__ = f"Deadline{base.__name__}"
    return DeadlineProtocol


def _peer(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else "an unknown peer"
