"""A bare picows WebSocket server that sends book-shaped JSON: the load generator's yardstick.

No ASGI, no Redis, no per-socket task: one timer builds each message once and
writes it to every socket of its instrument, skipping a socket whose transport
asked to pause (latest-only, so nothing queues). Whatever `marketdata loadtest`
measures against it is the load generator's ceiling on this machine, not a server's.

    python bench/trivial_server.py --port 0 --rate 100 --instruments BTC-USD,ETH-USD
    python bench/trivial_server.py --rate 0     # as fast as the sockets take it

Serves `WS /ws/market_data/{id}` and `GET /api/instruments`; prints
"listening on HOST:PORT" on stdout once bound.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time

import orjson
from picows import (
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
    ws_create_server,
)

from marketdata.instruments import DEFAULT_INSTRUMENTS

log = logging.getLogger("trivial_server")
TICK = 0.001


def book_tail(size: int) -> bytes:
    """The part of a book message after `pts`: 25 levels a side, padded to about `size` bytes in all."""
    levels = 25
    width = (size - 160) // (2 * levels)  # bytes per level, brackets and commas included
    digits = "7" * max(1, (width - 12) // 2)
    side = ",".join(f"[{65000 + i}.{digits},{i}.{digits}]" for i in range(levels))
    return f',"bids":[{side}],"asks":[{side}],"checksum":123456789}}'.encode()


class Feed(WSListener):
    """One connected socket of one instrument."""

    __slots__ = ("hub", "instrument", "transport", "paused")

    def __init__(self, hub: Hub, instrument: str) -> None:
        self.hub = hub
        self.instrument = instrument
        self.transport: WSTransport | None = None
        self.paused = False

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        self.hub.sockets[self.instrument].add(self)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.hub.sockets[self.instrument].discard(self)

    def on_ws_frame(self, transport: WSTransport, frame: object) -> None:
        if getattr(frame, "msg_type", None) is WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())  # type: ignore[attr-defined]
            transport.disconnect()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False


class Hub:
    def __init__(self, instruments: list[str], rate: float, size: int) -> None:
        self.instruments = instruments
        self.rate = rate
        self.sockets: dict[str, set[Feed]] = {i: set() for i in instruments}
        self.seq = dict.fromkeys(instruments, 0)
        self.heads = {i: b'{"v":1,"type":"book","instrument":"' + i.encode() + b'","seq":' for i in instruments}
        self.tail = book_tail(size)
        self.sent = 0
        self.skipped = 0
        self.conflated = 0

    def route(self, request: WSUpgradeRequest) -> Feed | WSUpgradeResponseWithListener | None:
        path = request.path.decode()
        if path.startswith("/api/instruments"):
            body = orjson.dumps([{"id": i} for i in self.instruments])
            return WSUpgradeResponseWithListener(
                WSUpgradeResponse.create_ok_response(body, {"Content-Type": "application/json"}), None)
        if path.startswith("/ws/market_data/"):
            name = path.rsplit("/", 1)[-1]
            if name in self.sockets:
                return Feed(self, name)
        return None

    def send_all(self) -> None:
        """One message per instrument, built once, to every socket that is not paused."""
        now = time.time_ns() // 1000
        for name, sockets in self.sockets.items():
            if not sockets:
                continue
            self.seq[name] += 1
            ts = str(now).encode()
            msg = b"".join((self.heads[name], str(self.seq[name]).encode(), b',"ts":', ts, b',"pts":', ts, self.tail))
            for feed in sockets:
                if feed.paused:
                    self.skipped += 1
                else:
                    feed.transport.send(WSMsgType.TEXT, msg)  # type: ignore[union-attr]
                    self.sent += 1

    async def run(self) -> None:
        if self.rate <= 0:
            while True:
                self.send_all()
                await asyncio.sleep(0)
        last, due = time.monotonic(), 0.0
        while True:
            await asyncio.sleep(TICK)
            now = time.monotonic()
            due += self.rate * (now - last)
            last = now
            if due >= 1:
                # Behind schedule, one message stands for all that were due (latest-only):
                # the loop keeps breathing, so handshakes are served under any load.
                self.conflated += int(due) - 1
                self.send_all()
                due -= int(due)


async def serve(args: argparse.Namespace) -> None:
    instruments = args.instruments.split(",") if args.instruments else [i.id for i in DEFAULT_INSTRUMENTS]
    hub = Hub(instruments, args.rate, args.size)
    server = await ws_create_server(hub.route, args.host, args.port, backlog=4096)
    port = server.sockets[0].getsockname()[1]
    print(f"listening on {args.host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    task = asyncio.create_task(hub.run())
    await stop.wait()
    task.cancel()
    server.close()
    log.info("sent %d messages, skipped %d for paused sockets, conflated %d ticks", hub.sent, hub.skipped, hub.conflated)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--rate", type=float, default=100.0, help="messages/s per instrument (0: as fast as possible)")
    parser.add_argument("--instruments", default="", help="comma list (default: the eight default ids)")
    parser.add_argument("--size", type=int, default=1500, help="approximate message size in bytes")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    import uvloop

    uvloop.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
