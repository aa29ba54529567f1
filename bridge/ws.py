"""The two WebSocket endpoints, as plain ASGI apps: /ws/market_data/{id} and the multiplexed /ws.

Each socket is two tasks: its Outbox's sender and a reader of client frames. The
handshake checks the Origin first (a disallowed one is refused before accept:
HTTP 403), then the instrument (close 1008 naming it). Data never passes through
Starlette's WebSocket wrapper: the hot path is the hub calling the socket's Outbox.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from typing import Any
from urllib.parse import urlsplit

from bridge import protocol
from bridge.hub import Hub
from bridge.metrics import Stats
from bridge.sockets import Outbox
from marketdata.errors import UnknownInstrument
from marketdata.logs import Throttled
from marketdata.settings import BridgeSettings

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

RAW_SEND = "bridge.send"  # scope key where KeepRawSend leaves the server's own send
GOING_AWAY = 1001
POLICY = 1008
TOO_BIG = 1009
_DEFAULT_PORTS = {"http": "80", "https": "443", "ws": "80", "wss": "443"}


class KeepRawSend:
    """ASGI middleware: remember the server's own `send` for the WebSocket endpoints.

    Starlette's exception layer wraps `send` in a closure for every connection; the
    endpoints use the server's callable directly, which lets bridge.sockets write
    prebuilt frames under uvicorn and saves a call per message everywhere.
    """

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            scope[RAW_SEND] = send
        await self.app(scope, receive, send)


class OriginPolicy:
    """Which browser origins may open a socket: none given (not a browser), same as Host, or listed."""

    def __init__(self, allowed: tuple[str, ...]) -> None:
        self.any = "*" in allowed
        self.listed = frozenset(_origin(a) for a in allowed if a != "*")

    def allows(self, origin: str | None, host: str | None) -> bool:
        if origin is None or self.any:
            return True
        o = _origin(origin)
        if o in self.listed:
            return True
        if not host:
            return False
        parts = urlsplit(o)
        return bool(parts.netloc) and _strip_port(parts.netloc, parts.scheme) == _strip_port(host.lower(), parts.scheme)


def _origin(text: str) -> str:
    return text.strip().rstrip("/").lower()


def _strip_port(netloc: str, scheme: str) -> str:
    default = _DEFAULT_PORTS.get(scheme)
    if default and netloc.endswith(":" + default):
        return netloc[: -len(default) - 1]
    return netloc


def _headers(scope: Scope) -> tuple[str | None, str | None]:
    origin = host = None
    for name, value in scope.get("headers", ()):
        if name == b"origin":
            origin = value.decode("latin-1")
        elif name == b"host":
            host = value.decode("latin-1")
    return origin, host


class _Endpoint:
    """Handshake, origin check, and the two tasks of a socket; subclasses read the client."""

    def __init__(self, settings: BridgeSettings, stats: Stats, hub: Callable[[], Hub], raw_frames: bool) -> None:
        self.settings = settings
        self.stats = stats
        self._hub = hub
        self.raw_frames = raw_frames
        self.origins = OriginPolicy(settings.allowed_origins)
        self._refusals = Throttled(log)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        send = scope.get(RAW_SEND, send)
        if (await receive())["type"] != "websocket.connect":
            return
        origin, host = _headers(scope)
        if not self.origins.allows(origin, host):
            self.stats.origin_rejects += 1
            self._refusals(logging.INFO, "refused a WebSocket from origin %s (host %s)", protocol.shown(origin), protocol.shown(host))
            await send({"type": "websocket.close", "code": POLICY})  # before accept: HTTP 403
            return
        await send({"type": "websocket.accept"})
        await self.serve(scope, receive, send, self._hub())

    async def serve(self, scope: Scope, receive: Receive, send: Send, hub: Hub) -> None:
        raise NotImplementedError

    def outbox(self, send: Send, batch: float = 0.0) -> Outbox:
        # A slow client closed 1008 gets a few seconds to read its close frame before the abort.
        return Outbox(send, self.stats, raw=self.raw_frames, grace=max(2.0, self.settings.send_timeout), batch=batch)

    async def run(self, outbox: Outbox, reader: Coroutine[Any, Any, None]) -> None:
        """Run the sender and `reader` until either ends (client gone, closed, slow)."""
        tasks = (asyncio.create_task(outbox.run()), asyncio.create_task(reader))
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
        for result in results:
            if isinstance(result, Exception):
                log.error("socket task failed", exc_info=result)
        await outbox.finish()

    async def too_big(self, outbox: Outbox, data: str | bytes) -> bool:
        """Close 1009 if a client frame is over --max-frame (uvicorn enforces it too, where it can)."""
        if len(data) > self.settings.max_frame:
            await outbox.close(TOO_BIG, f"frame over {self.settings.max_frame} bytes")
            return True
        return False


class MarketDataSocket(_Endpoint):
    """WS /ws/market_data/{instrument}: the last book, then every live one, as published."""

    async def serve(self, scope: Scope, receive: Receive, send: Send, hub: Hub) -> None:
        instrument = scope["path_params"]["instrument"]
        try:
            await hub.lookup(instrument)
        except UnknownInstrument:
            await send({"type": "websocket.close", "code": POLICY, "reason": protocol.unknown_instrument(instrument)})
            return
        outbox = self.outbox(send)
        async with hub.session(outbox):
            hub.want(outbox, instrument)
            await self.run(outbox, self._read(receive, outbox))

    async def _read(self, receive: Receive, outbox: Outbox) -> None:
        while True:
            message = await receive()
            if message["type"] != "websocket.receive":
                return
            data = message.get("text") or message.get("bytes") or b""
            if await self.too_big(outbox, data):
                return


class MultiplexedSocket(_Endpoint):
    """WS /ws: subscribe, unsubscribe and ping over one socket; see bridge.protocol.

    `/ws?batch_ms=N` (1 to 1000) asks for one batch frame every N ms instead of a
    frame per message (bridge.sockets); a bad value closes the socket 1008 saying why.
    """

    async def serve(self, scope: Scope, receive: Receive, send: Send, hub: Hub) -> None:
        try:
            batch_ms = protocol.batch_ms(scope.get("query_string", b""))
        except protocol.RequestError as exc:
            await send({"type": "websocket.close", "code": POLICY, "reason": exc.message})
            return
        outbox = self.outbox(send, batch_ms / 1000)
        async with hub.session(outbox):
            await self.run(outbox, self._read(receive, outbox, hub))

    async def _read(self, receive: Receive, outbox: Outbox, hub: Hub) -> None:
        while True:
            message = await receive()
            if message["type"] != "websocket.receive":
                return
            data = message.get("text")
            if data is None:
                data = message.get("bytes") or b""
            if await self.too_big(outbox, data):
                return
            try:
                request = protocol.parse_request(data)
            except protocol.RequestError as exc:
                outbox.offer_control(protocol.error(exc.code, exc.message))
                continue
            if isinstance(request, protocol.Ping):
                outbox.offer_control(protocol.PONG)
            elif isinstance(request, protocol.Subscribe):
                unknown = [i for i in request.instruments if not await _listed(hub, i)]
                if unknown:
                    outbox.offer_control(protocol.error(protocol.UNKNOWN_INSTRUMENT, _unknown_message(unknown)))
                    continue
                outbox.offer_control(protocol.subscribed(request.instruments))
                for instrument in request.instruments:
                    hub.want(outbox, instrument, request.trades)
            else:
                for instrument in request.instruments:
                    hub.unwant(outbox, instrument)
                outbox.offer_control(protocol.unsubscribed(request.instruments))


async def _listed(hub: Hub, instrument: str) -> bool:
    try:
        await hub.lookup(instrument)
    except UnknownInstrument:
        return False
    return True


def _unknown_message(unknown: list[str]) -> str:
    if len(unknown) == 1:
        return protocol.unknown_instrument(unknown[0])
    return "unknown instruments " + ", ".join(protocol.shown(i) for i in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
