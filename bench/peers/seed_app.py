"""Peer (a), the seed's design: one FastAPI process that is its own gRPC client.

It subscribes to the simulator for every instrument, rebuilds the books in process
(marketdata.feed.Books) and, after each gRPC batch, broadcasts one JSON snapshot
per changed instrument to every socket of that instrument with a loop of
`await websocket.send_json(...)`: no Redis, no second replica possible, the JSON
encoded again for each socket, and a slow socket holds up everyone behind it.
The snapshot has the same fields as schema.encode_book (so the load generator
reads it the same way); `pts` is this process's broadcast time.

    python -m bench.peers.seed_app --port 8001 --sim 127.0.0.1:50051
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import grpc
from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from bench.peers import serve
from marketdata import instruments as refdata
from marketdata.errors import BookError
from marketdata.feed import Books
from marketdata.v1 import market_data_pb2 as pb
from marketdata.v1 import market_data_pb2_grpc as pb_grpc

log = logging.getLogger("seed_app")
DEPTH = 25


def snapshot(inst: refdata.Instrument, books: Books, ts: int, pts: int) -> dict[str, object]:
    book = books.books[inst.id]
    price, size = inst.price, inst.size
    return {
        "v": 1, "type": "book", "instrument": inst.id, "seq": book.seq, "ts": ts, "pts": pts,
        "bids": [[price(p), size(s)] for p, s in book.bids(DEPTH)],
        "asks": [[price(p), size(s)] for p, s in book.asks(DEPTH)],
        "checksum": book.checksum(),
    }


def create_app(sim: str) -> FastAPI:
    clients: dict[str, set[WebSocket]] = {}

    async def broadcast(name: str, message: dict[str, object]) -> None:
        for ws in list(clients.get(name, ())):
            try:
                await ws.send_json(message)
            except (WebSocketDisconnect, RuntimeError, OSError):
                clients[name].discard(ws)

    async def feed() -> None:
        while True:
            try:
                async with grpc.aio.insecure_channel(sim) as channel:
                    stub = pb_grpc.MarketDataStub(channel)
                    listed = await stub.ListInstruments(pb.ListInstrumentsRequest(), timeout=5)
                    chosen = {i.id: i for i in refdata.select([i.id for i in listed.instruments])}
                    for name in chosen:
                        clients.setdefault(name, set())
                    books = Books(chosen)
                    log.info("subscribed to %s (%d instruments)", sim, len(chosen))
                    async for batch in stub.Subscribe(pb.SubscribeRequest(instruments=list(chosen))):
                        changed = books.apply_batch(batch.events).changed
                        pts = time.time_ns() // 1000
                        for name, ts in changed.items():
                            if clients[name]:
                                await broadcast(name, snapshot(chosen[name], books, ts, pts))
            except (grpc.aio.AioRpcError, BookError) as exc:
                log.warning("feed lost (%s); reconnecting", exc)
                await asyncio.sleep(0.5)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(feed())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app = FastAPI(lifespan=lifespan)

    @app.websocket("/ws/market_data/{instrument}")
    async def market_data(websocket: WebSocket, instrument: str) -> None:
        await websocket.accept()
        clients.setdefault(instrument, set()).add(websocket)
        try:
            while True:
                await websocket.receive_text()
        except WebSocketDisconnect:
            pass
        finally:
            clients[instrument].discard(websocket)

    return app


def main(argv: list[str] | None = None) -> None:
    serve.main(argv, create_app, "the seed's design as a benchmark peer", port=8001, source="sim")


if __name__ == "__main__":
    main()
