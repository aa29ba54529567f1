"""The two WebSocket endpoints, as plain ASGI apps: /ws/market_data/{id} and the multiplexed /ws.

Each socket is two tasks: its LatestSlot's sender and a reader of client frames. The
handshake checks the Origin first (bridge.origins; a disallowed one is refused before
accept: HTTP 403), then the bridge's room for one more socket, in total and for the
client's address (bridge.limits; refused before accept: HTTP 503 or 429 with
Retry-After), then the instrument (close 1008 naming it). Every client frame spends a
token of the socket's bucket; an empty bucket closes it 1008 "rate limit". Data never
passes through Starlette's WebSocket wrapper: the hot path is the hub calling the
socket's LatestSlot.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from typing import Any

from bridge import control, limits
from bridge.hub import Hub
from bridge.latest_slot import LatestSlot
from bridge.limits import Admission, Proxies, TokenBucket
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
RETRY_AFTER = b"5"  # seconds, in the 503 and 429 answers: room comes back as sockets close
# HTTP answers to a handshake refused before the upgrade, by reason.
DENIALS = {
    limits.SOCKETS_PER_BRIDGE: (503, b"this bridge has no room for another WebSocket; retry later or use another replica"),
    limits.SOCKETS_PER_ADDRESS: (429, b"too many WebSockets from your address; close some first"),
}


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


def _headers(scope: Scope) -> tuple[str | None, str | None, list[str]]:
    """Origin, Host and every X-Forwarded-For header of a handshake, in order."""
    origin = host = None
    forwarded: list[str] = []
    for name, value in scope.get("headers", ()):
        if name == b"origin":
            origin = value.decode("latin-1")
        elif name == b"host":
            host = value.decode("latin-1")
        elif name == b"x-forwarded-for":
            forwarded.append(value.decode("latin-1"))
    return origin, host, forwarded


async def _deny(scope: Scope, send: Send, reason: str) -> None:
    """Refuse a handshake with an HTTP answer (the ASGI WebSocket denial response), or 403 where the server has none."""
    if "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": POLICY})
        return
    status, body = DENIALS[reason]
    headers = [(b"retry-after", RETRY_AFTER), (b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"%d" % len(body))]
    await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
    await send({"type": "websocket.http.response.body", "body": body})
    # uvicorn's websockets-sansio sends the answer and closes, but leaves its handshake
    # unfinished and logs an ERROR for every refusal (Kludex/uvicorn#3138): finish it.
    server = getattr(send, "__self__", None)
    if getattr(server, "handshake_complete", None) is False:
        server.handshake_complete = True


class _Endpoint:
    """Handshake, origin check, and the two tasks of a socket; subclasses read the client."""

    def __init__(self, settings: BridgeSettings, stats: Stats, hub: Callable[[], Hub], raw_frames: bool, admission: Admission) -> None:
        """`admission` counts the sockets of the whole bridge: both endpoints share one."""
        self.settings = settings
        self.stats = stats
        self._hub = hub
        self.raw_frames = raw_frames
        self.origins = OriginPolicy(settings.allowed_origins)
        self.proxies = Proxies(settings.trusted_proxies)
        self.admission = admission
        self._refusals = Throttled(log)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        send = scope.get(RAW_SEND, send)
        if (await receive())["type"] != "websocket.connect":
            return
        origin, host, forwarded = _headers(scope)
        if not self.origins.allows(origin, host):
            self.stats.origin_rejects += 1
            self.stats.refusals[limits.ORIGIN] += 1
            self._refusals(logging.INFO, "refused a WebSocket from origin %s (host %s)", control.shown(origin), control.shown(host))
            await send({"type": "websocket.close", "code": POLICY})  # before accept: HTTP 403
            return
        peer = scope.get("client")
        client = self.proxies.client(peer[0] if peer else None, forwarded)
        refusal = self.admission.admit(client)
        if refusal is not None:
            self.stats.refusals[refusal] += 1
            self._refusals(logging.INFO, "refused a WebSocket from %s: %s (%d open)", control.shown(client), refusal, self.admission.total)
            await _deny(scope, send, refusal)
            return
        try:
            await send({"type": "websocket.accept"})
            await self.serve(scope, receive, send, self._hub())
        finally:
            self.admission.release(client)

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

    def bucket(self) -> TokenBucket:
        """A new socket's allowance of client frames (--ops-rate, --ops-burst)."""
        return TokenBucket(self.settings.ops_rate, self.settings.ops_burst, asyncio.get_running_loop().time())

    async def refused(self, slot: LatestSlot, bucket: TokenBucket, data: str | bytes) -> bool:
        """Close the socket if this client frame is one too many (1008) or over --max-frame (1009).

        uvicorn enforces --max-frame too, where it can.
        """
        if not bucket.take(asyncio.get_running_loop().time()):
            self.stats.refusals[limits.RATE_LIMIT] += 1
            self._refusals(logging.INFO, "closing a socket over its rate of %g frames/s", self.settings.ops_rate)
            await slot.close(POLICY, control.RATE_LIMITED)
            return True
        if len(data) > self.settings.max_frame:
            await slot.close(TOO_BIG, f"frame over {self.settings.max_frame} bytes")
            return True
        return False


class MarketDataSocket(_Endpoint):
    """WS /ws/market_data/{instrument}: the last book, then every live one, as published.

    `?deltas=1`: after the first book, deltas where they apply; the client may send
    `{"op":"resync","instruments":[its instrument]}` for a snapshot again. Other
    frames are read and ignored.
    """

    async def serve(self, scope: Scope, receive: Receive, send: Send, hub: Hub) -> None:
        instrument = scope["path_params"]["instrument"]
        try:
            with_deltas = control.deltas(scope.get("query_string", b""))
            await hub.lookup(instrument)
        except control.RequestError as exc:
            await send({"type": "websocket.close", "code": POLICY, "reason": exc.message})
            return
        except UnknownInstrument:
            await send({"type": "websocket.close", "code": POLICY, "reason": control.unknown_instrument(instrument)})
            return
        slot = self.slot(send)
        async with hub.session(slot):
            hub.want(slot, instrument, deltas=with_deltas)
            await self.run(slot, self._read(receive, slot, hub, instrument))

    async def _read(self, receive: Receive, slot: LatestSlot, hub: Hub, instrument: str) -> None:
        bucket = self.bucket()
        while True:
            message = await receive()
            if message["type"] != "websocket.receive":
                return
            data = message.get("text") or message.get("bytes") or b""
            if await self.refused(slot, bucket, data):
                return
            try:
                request = control.parse_request(data)
            except control.RequestError:
                continue
            if isinstance(request, control.Resync) and instrument in request.instruments:
                hub.resync(slot, instrument)


class MultiplexedSocket(_Endpoint):
    """WS /ws: subscribe, unsubscribe and ping over one socket; see bridge.control.

    `/ws?batch_ms=N` (1 to 1000) asks for one batch frame every N ms instead of a
    frame per message (bridge.latest_slot); `?deltas=1` makes deltas the default of its
    subscriptions. A bad value closes the socket 1008 saying why.
    """

    async def serve(self, scope: Scope, receive: Receive, send: Send, hub: Hub) -> None:
        query = scope.get("query_string", b"")
        try:
            batch_ms = control.batch_ms(query)
            with_deltas = control.deltas(query)
        except control.RequestError as exc:
            await send({"type": "websocket.close", "code": POLICY, "reason": exc.message})
            return
        slot = self.slot(send, batch_ms / 1000)
        async with hub.session(slot):
            await self.run(slot, self._read(receive, slot, hub, with_deltas))

    async def _read(self, receive: Receive, slot: LatestSlot, hub: Hub, with_deltas: bool) -> None:
        bucket = self.bucket()
        mine: set[str] = set()  # the instruments this socket is subscribed to
        limit = self.settings.max_instruments
        while True:
            message = await receive()
            if message["type"] != "websocket.receive":
                return
            data = message.get("text")
            if data is None:
                data = message.get("bytes") or b""
            if await self.refused(slot, bucket, data):
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
                if len(mine.union(request.instruments)) > limit:
                    self.stats.refusals[limits.INSTRUMENTS_PER_SOCKET] += 1
                    slot.offer_control(control.error(control.TOO_MANY_INSTRUMENTS, control.too_many_instruments(limit)))
                    continue
                mine.update(request.instruments)
                slot.offer_control(control.subscribed(request.instruments))
                wants_deltas = with_deltas if request.deltas is None else request.deltas
                for instrument in request.instruments:
                    hub.want(slot, instrument, request.trades, wants_deltas)
            elif isinstance(request, control.Resync):
                strangers = [i for i in request.instruments if i not in mine]
                if strangers:
                    slot.offer_control(control.error(control.BAD_REQUEST, control.not_subscribed(strangers)))
                for instrument in request.instruments:
                    if instrument in mine:
                        hub.resync(slot, instrument)
            else:
                mine.difference_update(request.instruments)
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
