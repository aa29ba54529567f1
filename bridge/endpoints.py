"""The two WebSocket endpoints, as plain ASGI apps: /ws/market_data/{id} and the multiplexed /ws.

Each socket is two tasks: its LatestSlot's sender and a reader of client frames. The
handshake checks the Origin first (bridge.origins; a disallowed one is refused before
accept: HTTP 403), then the instrument (close 1008 naming it). Data never passes
through Starlette's WebSocket wrapper: the hot path is the hub calling the socket's
LatestSlot.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from typing import Any

from bridge import control
from bridge.hub import Hub
from bridge.latest_slot import LatestSlot
from bridge.metrics import Stats
from bridge.origins import OriginPolicy
from bridge.transport import Send
from marketdata.errors import UnknownInstrument
from marketdata.logs import Throttled
from marketdata.settings import BridgeSettings

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]

RAW_SEND = "bridge.send"  # scope key where KeepRawSend leaves the server's own send
GOING_AWAY = 1001
POLICY = 1008
TOO_BIG = 1009


class KeepRawSend:
    """ASGI middleware: remember the server's own `send` for the WebSocket endpoints.

    Starlette's exception layer wraps `send` in a closure for every connection; the
    endpoints use the server's callable directly, which lets bridge.transport write
    prebuilt frames under uvicorn and saves a call per message everywhere.
    """

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            scope[RAW_SEND] = send
        await self.app(scope, receive, send)


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
            self._refusals(logging.INFO, "refused a WebSocket from origin %s (host %s)", control.shown(origin), control.shown(host))
            await send({"type": "websocket.close", "code": POLICY})  # before accept: HTTP 403
            return
        await send({"type": "websocket.accept"})
        await self.serve(scope, receive, send, self._hub())

    async def serve(self, scope: Scope, receive: Receive, send: Send, hub: Hub) -> None:
        raise NotImplementedError

    def slot(self, send: Send, batch: float = 0.0) -> LatestSlot:
        # A slow client closed 1008 gets a few seconds to read its close frame before the abort.
        return LatestSlot(send, self.stats, raw=self.raw_frames, grace=max(2.0, self.settings.send_timeout), batch=batch)

    async def run(self, slot: LatestSlot, reader: Coroutine[Any, Any, None]) -> None:
        """Run the sender and `reader` until either ends (client gone, closed, slow)."""
        tasks = (asyncio.create_task(slot.run()), asyncio.create_task(reader))
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
        for result in results:
            if isinstance(result, Exception):
                log.error("socket task failed", exc_info=result)
        await slot.finish()

    async def too_big(self, slot: LatestSlot, data: str | bytes) -> bool:
        """Close 1009 if a client frame is over --max-frame (uvicorn enforces it too, where it can)."""
        if len(data) > self.settings.max_frame:
            await slot.close(TOO_BIG, f"frame over {self.settings.max_frame} bytes")
            return True
        return False


class MarketDataSocket(_Endpoint):
    """WS /ws/market_data/{instrument}: the last book, then every live one, as published."""

    async def serve(self, scope: Scope, receive: Receive, send: Send, hub: Hub) -> None:
        instrument = scope["path_params"]["instrument"]
        try:
            await hub.lookup(instrument)
        except UnknownInstrument:
            await send({"type": "websocket.close", "code": POLICY, "reason": control.unknown_instrument(instrument)})
            return
        slot = self.slot(send)
        async with hub.session(slot):
            hub.want(slot, instrument)
            await self.run(slot, self._read(receive, slot))

    async def _read(self, receive: Receive, slot: LatestSlot) -> None:
        while True:
            message = await receive()
            if message["type"] != "websocket.receive":
                return
            data = message.get("text") or message.get("bytes") or b""
            if await self.too_big(slot, data):
                return


class MultiplexedSocket(_Endpoint):
    """WS /ws: subscribe, unsubscribe and ping over one socket; see bridge.control.

    `/ws?batch_ms=N` (1 to 1000) asks for one batch frame every N ms instead of a
    frame per message (bridge.latest_slot); a bad value closes the socket 1008 saying why.
    """

    async def serve(self, scope: Scope, receive: Receive, send: Send, hub: Hub) -> None:
        try:
            batch_ms = control.batch_ms(scope.get("query_string", b""))
        except control.RequestError as exc:
            await send({"type": "websocket.close", "code": POLICY, "reason": exc.message})
            return
        slot = self.slot(send, batch_ms / 1000)
        async with hub.session(slot):
            await self.run(slot, self._read(receive, slot, hub))

    async def _read(self, receive: Receive, slot: LatestSlot, hub: Hub) -> None:
        while True:
            message = await receive()
            if message["type"] != "websocket.receive":
                return
            data = message.get("text")
            if data is None:
                data = message.get("bytes") or b""
            if await self.too_big(slot, data):
                return
            try:
                request = control.parse_request(data)
            except control.RequestError as exc:
                slot.offer_control(control.error(exc.code, exc.message))
                continue
            if isinstance(request, control.Ping):
                slot.offer_control(control.PONG)
            elif isinstance(request, control.Subscribe):
                unknown = [i for i in request.instruments if not await _listed(hub, i)]
                if unknown:
                    slot.offer_control(control.error(control.UNKNOWN_INSTRUMENT, _unknown_message(unknown)))
                    continue
                slot.offer_control(control.subscribed(request.instruments))
                for instrument in request.instruments:
                    hub.want(slot, instrument, request.trades)
            else:
                for instrument in request.instruments:
                    hub.unwant(slot, instrument)
                slot.offer_control(control.unsubscribed(request.instruments))


async def _listed(hub: Hub, instrument: str) -> bool:
    try:
        await hub.lookup(instrument)
    except UnknownInstrument:
        return False
    return True


def _unknown_message(unknown: list[str]) -> str:
    if len(unknown) == 1:
        return control.unknown_instrument(unknown[0])
    return "unknown instruments " + ", ".join(control.shown(i) for i in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
