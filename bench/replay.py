"""A stand-in simulator that replays pre-serialised batches as fast as they are read.

With no simulator competing for the cores, what a consumer reads from it is that
consumer's own ceiling (gRPC transport plus whatever it does per event). `cycle`
generates the batches once, from the real order-flow model and wire encoding: a
snapshot of every book, then contiguous events; `serve` sends them in a loop, each
loop starting again from the same snapshots.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections.abc import AsyncIterator, Sequence

import grpc

from marketdata.instruments import Instrument
from marketdata.sim.model import Model
from marketdata.sim.wire import encode_events
from marketdata.v1 import market_data_pb2 as pb


def cycle(instruments: Sequence[Instrument], per_instrument: int, events: int) -> list[bytes]:
    """Encoded batches: the snapshots, then batches of `per_instrument` events of each instrument, `events` at least in all."""
    model = Model(instruments, random.Random(1))
    batches = [encode_events([model.snapshot(i.id, 0) for i in instruments])]
    total = 0
    while total < events:
        batches.append(b"".join(encode_events(model.generate(i.id, per_instrument, time.time_ns() // 1000)) for i in instruments))
        total += per_instrument * len(instruments)
    return batches


async def serve(port: int, instruments: Sequence[Instrument], batches: list[bytes]) -> None:
    """Serve ListInstruments and Subscribe (the batches, in a loop) on `port` until SIGINT or SIGTERM."""
    listing = pb.ListInstrumentsResponse(instruments=[
        pb.Instrument(id=i.id, kind=i.kind, description=i.description, tick_size=i.tick_size, lot_size=i.lot_size,
                      price_decimals=i.price_decimals, size_decimals=i.size_decimals)
        for i in instruments
    ])  # fmt: skip

    async def subscribe(request: pb.SubscribeRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        while True:
            for data in batches:
                yield data

    async def list_instruments(request: pb.ListInstrumentsRequest, context: grpc.aio.ServicerContext) -> pb.ListInstrumentsResponse:
        return listing

    handlers = {
        "Subscribe": grpc.unary_stream_rpc_method_handler(subscribe, request_deserializer=pb.SubscribeRequest.FromString),
        "ListInstruments": grpc.unary_unary_rpc_method_handler(
            list_instruments, request_deserializer=pb.ListInstrumentsRequest.FromString,
            response_serializer=pb.ListInstrumentsResponse.SerializeToString,
        ),
    }  # fmt: skip
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("marketdata.v1.MarketData", handlers),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0)
