"""The bridge's FastAPI app and server: `create_app(settings)` and `run(settings)`.

Routes: GET / (the dashboard), /api/instruments, /api/book/{id}, /healthz, /readyz,
/metrics, /static, and the WebSockets /ws/market_data/{id} and /ws (bridge.endpoints).
The hub (bridge.hub) lives in the app's lifespan: Redis connections open on
startup and close on shutdown, and every socket is closed 1001 before uvicorn
stops (uvicorn alone would send 1012). The server closes connections that do not
finish their request head in time (bridge.handshake) and leaves X-Forwarded-For to
the endpoints, which believe it only from --trusted-proxies (bridge.limits).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from jinja2 import TemplateNotFound
from starlette.routing import WebSocketRoute

import web
from bridge import control, limits
from bridge.bus import REDIS_ERRORS
from bridge.endpoints import (
    GOING_AWAY,
    KeepRawSend,
    MarketDataSocket,
    MultiplexedSocket,
)
from bridge.handshake import http_protocol, with_deadline
from bridge.hub import Hub
from bridge.limits import Admission
from bridge.metrics import CONTENT_TYPE, Gauges, Metrics, Stats
from marketdata import __version__
from marketdata.errors import UnknownInstrument
from marketdata.settings import BridgeSettings

log = logging.getLogger(__name__)

WEB = Path(web.__file__).parent
SHUTDOWN_REASON = "server shutting down"
STUCK_GRACE = 1.0  # seconds sockets get at shutdown to take what is buffered for them
PLACEHOLDER = (
    "<!doctype html><html><head><meta charset=\"utf-8\"><title>marketdata bridge</title></head>"
    "<body><h1>marketdata bridge {version}</h1><p>The dashboard is not installed here. "
    "Try <a href=\"/api/instruments\">/api/instruments</a>, <a href=\"/readyz\">/readyz</a> "
    "or <a href=\"/metrics\">/metrics</a>, or a WebSocket on /ws.</p></body></html>"
)


@dataclass(slots=True)
class Bridge:
    """What the routes share: settings, counters, the sockets' admission, and the hub while the app runs."""

    settings: BridgeSettings
    stats: Stats
    admission: Admission
    current: Hub | None = None

    def hub(self) -> Hub:
        if self.current is None:
            raise RuntimeError("the bridge's hub is not running (outside the app's lifespan)")
        return self.current

    def gauges(self) -> Gauges:
        return self.current.gauges() if self.current is not None else Gauges(0, 0, False, False)


def create_app(settings: BridgeSettings, *, raw_frames: bool = True) -> FastAPI:
    """The bridge as an ASGI app. `raw_frames=False` sends every frame through ASGI `send` (for comparison)."""
    admission = Admission(settings.max_sockets, settings.max_sockets_per_address, limits.networks(settings.address_limit_exempt))
    bridge = Bridge(settings, Stats(), admission)
    metrics = Metrics(bridge.stats, bridge.gauges)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with Hub(settings, bridge.stats) as hub:
            bridge.current = hub
            try:
                yield
            finally:
                await hub.close_sockets(GOING_AWAY, SHUTDOWN_REASON)
                bridge.current = None

    app = FastAPI(title="marketdata bridge", version=__version__, lifespan=lifespan)
    app.state.bridge = bridge
    app.state.metrics = metrics  # bridge.workers makes it sum every worker's counters
    app.add_middleware(KeepRawSend)
    templates = Jinja2Templates(directory=str(WEB / "templates"))
    if not (WEB / "templates" / "index.html").exists():
        log.info("%s is missing; GET / serves a placeholder until it exists", WEB / "templates" / "index.html")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index(request: Request) -> Response:
        try:
            return templates.TemplateResponse(request, "index.html", {"version": __version__})
        except TemplateNotFound:
            return HTMLResponse(PLACEHOLDER.format(version=__version__))

    @app.get("/api/instruments")
    async def instruments() -> Response:
        """The instrument list as the ingestor published it."""
        hub = bridge.hub()
        if hub.instruments_json == b"[]":
            try:
                await hub.refresh_instruments()
            except REDIS_ERRORS:
                pass  # answer with what we have
        return Response(hub.instruments_json, media_type="application/json")

    @app.get("/api/book/{instrument}")
    async def book(instrument: str) -> Response:
        """The latest snapshot of `instrument`, the JSON bytes as published."""
        hub = bridge.hub()
        try:
            await hub.lookup(instrument)
        except UnknownInstrument:
            return JSONResponse({"detail": control.unknown_instrument(instrument)}, status_code=404)
        try:
            payload = await hub.book(instrument)
        except REDIS_ERRORS:
            return JSONResponse({"detail": "redis unreachable"}, status_code=503, headers={"Retry-After": "1"})
        if payload is None:
            detail = f"no book published yet for {control.shown(instrument)}"
            return JSONResponse({"detail": detail}, status_code=503, headers={"Retry-After": "1"})
        return Response(payload, media_type="application/json")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        live, reason = bridge.hub().ready
        if live:
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "unready", "reason": reason}, status_code=503)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    app.router.routes.append(WebSocketRoute("/ws/market_data/{instrument}", MarketDataSocket(settings, bridge.stats, bridge.hub, raw_frames, admission)))
    app.router.routes.append(WebSocketRoute("/ws", MultiplexedSocket(settings, bridge.stats, bridge.hub, raw_frames, admission)))
    app.mount("/static", StaticFiles(directory=str(WEB / "static"), check_dir=False), name="static")
    return app


class BridgeServer(uvicorn.Server):
    """uvicorn's server, closing the bridge's sockets with 1001 before uvicorn's own shutdown."""

    def __init__(self, config: uvicorn.Config, bridge: Bridge) -> None:
        super().__init__(config)
        self.bridge = bridge

    @property
    def port(self) -> int:
        """The bound port (settings may say 0)."""
        return self.servers[0].sockets[0].getsockname()[1]

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            host = self.config.host
            shown = f"[{host}]" if ":" in host else host
            log.info("bridge listening on http://%s:%d", shown, self.port)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """SIGINT/SIGTERM start a graceful shutdown (a second SIGINT forces it); unlike uvicorn's own,
        the signal is not raised again afterwards, so `run` returns 0 like the other roles."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in getattr(self, "servers", ()):
            server.close()  # no new sockets while the open ones are told goodbye
        if self.bridge.current is not None:
            await self.bridge.current.close_sockets(GOING_AWAY, SHUTDOWN_REASON)
        # A client that stopped reading never takes its close frame, and uvicorn would wait
        # for it until timeout_graceful_shutdown: give the others a moment, then cut it off.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STUCK_GRACE
        while loop.time() < deadline and any(_stuck(c) for c in self.server_state.connections):
            await asyncio.sleep(0.05)
        for connection in list(self.server_state.connections):
            if _stuck(connection):
                connection.transport.abort()
        await super().shutdown(sockets)


class _InvalidUtf8Frames(logging.Filter):
    """uvicorn's websockets-sansio logs a client's text frame that is not UTF-8 at ERROR, with a
    traceback, once per frame and at the client's will; it closes the socket 1007 as it should.
    That is bad input, not a bug: one INFO line without the traceback."""

    MESSAGE = "Invalid UTF-8 sequence received from client."

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == self.MESSAGE:
            record.levelno, record.levelname = logging.INFO, logging.getLevelName(logging.INFO)
            record.msg = "closed a WebSocket (1007): a text frame from the client was not UTF-8"
            record.exc_info = record.exc_text = None
        return True


def _quiet_invalid_utf8() -> None:
    uvicorn_log = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _InvalidUtf8Frames) for f in uvicorn_log.filters):
        uvicorn_log.addFilter(_InvalidUtf8Frames())


def _stuck(connection: object) -> bool:
    transport = getattr(connection, "transport", None)
    return transport is not None and transport.get_write_buffer_size() > 0


def build_server(settings: BridgeSettings, app: FastAPI) -> BridgeServer:
    """A uvicorn server for `app` as settings say (HTTP and WebSocket implementations, loop, limits)."""
    stats: Stats = app.state.bridge.stats

    def handshake_expired() -> None:
        stats.refusals[limits.HANDSHAKE_TIMEOUT] += 1

    _quiet_invalid_utf8()
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=with_deadline(http_protocol(settings.http), settings.handshake_timeout, handshake_expired),
        ws=settings.ws,  # type: ignore[arg-type]
        loop=settings.loop,  # type: ignore[arg-type]
        ws_max_size=settings.max_frame,
        # Compressing every frame for every socket costs more CPU than the whole fan-out.
        ws_per_message_deflate=False,
        lifespan="on",
        log_config=None,  # the CLI configured logging
        access_log=False,
        # uvicorn would believe X-Forwarded-For from loopback (or $FORWARDED_ALLOW_IPS) and
        # rewrite the client address; the endpoints apply --trusted-proxies themselves.
        proxy_headers=False,
        timeout_graceful_shutdown=5,
    )
    return BridgeServer(config, app.state.bridge)


def run(settings: BridgeSettings) -> int:
    """Serve until SIGINT or SIGTERM, then close every socket with 1001 and stop.

    With `settings.workers` other than 1, this process supervises that many worker
    processes serving the port instead (bridge.workers).
    """
    if settings.workers != 1:
        from bridge import workers  # it builds on this module

        return workers.run(settings)
    app = create_app(settings)
    server = build_server(settings, app)
    server.run()
    return 0 if server.started else 1
