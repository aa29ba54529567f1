"""Simulator benchmark: what one core generates, and what the server streams to one consumer.

Run: .venv/bin/python bench/bench_sim.py            (about 15 s)
     .venv/bin/python bench/bench_sim.py --quick    (a smoke run)

1. The pure model (`Model.generate`, blocks of 10/100/1000 events per instrument, a
   checksum per block as the server computes it), alone and with the wire encoding the
   server does per event (`WireEncoder.events`). Figures are events per CPU-second of
   this process (time.process_time), so a busy machine slows them less than wall time.
2. `marketdata sim --rate 100000` (far above what it can make) in its own process, one
   grpc.aio consumer here that only counts events (no book rebuilding: bench_stream.py
   measures that path): delivered events/s and the server's CPU use from /proc.
3. The server's tick loop over a universe of --universe instruments (default 1,000) at
   20 events/s per instrument on average: the schedule picks the instruments due every
   5 ms tick, the model generates their events, the encoder serialises them, as
   `SimServer._emit` does. Quiet instruments owe one event at a time, each with its
   checksum, so this costs more per event than the blocks of part 1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import grpc  # noqa: E402

from bench.child import cpu_seconds  # noqa: E402
from bench.machine import reference_line  # noqa: E402
from marketdata.instruments import DEFAULT_INSTRUMENTS, universe  # noqa: E402
from marketdata.sim.model import Model  # noqa: E402
from marketdata.sim.schedule import Schedule  # noqa: E402
from marketdata.sim.wire import WireEncoder  # noqa: E402
from marketdata.v1 import market_data_pb2 as pb  # noqa: E402
from marketdata.v1 import market_data_pb2_grpc as pb_grpc  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
IDS = [inst.id for inst in DEFAULT_INSTRUMENTS]
TS = 1_700_000_000_000_000


def model_rate(block: int, encode: bool, seconds: float) -> float:
    model = Model(DEFAULT_INSTRUMENTS, random.Random(1))
    encoder = WireEncoder()
    n = 0
    start = time.process_time()
    while time.process_time() - start < seconds:
        for name in IDS:
            events = model.generate(name, block, TS)
            if encode:
                encoder.events(events)
            n += block
    return n / (time.process_time() - start)


def universe_rate(n: int, rate: float, seconds: float) -> tuple[float, float, float]:
    """Market events/s, events per CPU-second and the schedule's share of the CPU, over `seconds` of market time."""
    listed = universe(n, 1)
    model = Model(listed, random.Random(1))
    encoder = WireEncoder()
    ids = [inst.id for inst in listed]
    schedule = Schedule([rate * inst.activity for inst in listed])
    clock = scheduling = 0.0
    n_events = 0
    start = time.process_time()
    while clock < seconds:
        clock += 0.005
        before = time.process_time()
        due = schedule.due(clock, 0.01)
        scheduling += time.process_time() - before
        for index, count in due:
            encoder.events(model.generate(ids[index], count, TS))
            n_events += count
    cpu = time.process_time() - start
    return n_events / seconds, n_events / cpu, scheduling / cpu


async def _consume(port: int, pid: int, seconds: float) -> tuple[float, float, float]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = pb_grpc.MarketDataStub(channel).Subscribe(pb.SubscribeRequest())
        warm = time.perf_counter() + 1.0
        start = cpu = 0.0
        n = batches = 0
        async for batch in call:
            now = time.perf_counter()
            if not start and now >= warm:
                start, cpu, n, batches = now, cpu_seconds(pid), 0, 0
            n += len(batch.events)
            batches += 1
            if start and now - start >= seconds:
                break
        elapsed = time.perf_counter() - start
        call.cancel()
        return n / elapsed, n / batches, (cpu_seconds(pid) - cpu) / elapsed


def stream_rate(seconds: float) -> tuple[float, float, float]:
    cmd = [sys.executable, "-m", "marketdata", "sim", "--port", "0", "--rate", "100000", "--log-level", "info"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            found = re.search(r"listening on [^ ]+:(\d+)", line)
            if found:
                port = int(found.group(1))
                break
        else:
            raise SystemExit("the simulator did not start")
        return asyncio.run(_consume(port, proc.pid, seconds))
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs, for a smoke test")
    parser.add_argument("--universe", type=int, default=1000, help="instruments of the tick-loop measurement")
    args = parser.parse_args()
    secs = 0.3 if args.quick else 1.5
    print(reference_line())
    for block in (10, 100, 1000):
        alone = model_rate(block, False, secs)
        encoded = model_rate(block, True, secs)
        print(f"model, blocks of {block:4d}: {alone:9,.0f} events/CPU-s; with wire encoding {encoded:9,.0f} events/CPU-s")
    delivered, per_batch, cpu = stream_rate(1.0 if args.quick else 5.0)
    print(
        f"sim --rate 100000 -> one grpc.aio consumer: {delivered:,.0f} events/s delivered, "
        f"{per_batch:.0f} events a batch, server CPU {cpu:.2f} cores ({delivered / max(cpu, 1e-9):,.0f} events per server CPU-s)"
    )
    market, per_cpu, share = universe_rate(args.universe, 20.0, 1.0 if args.quick else 5.0)
    print(
        f"tick loop, --universe {args.universe} --rate 20: {market:,.0f} events/s of market, {per_cpu:,.0f} events/CPU-s "
        f"({market / per_cpu:.2f} cores), {share:.0%} of it in the schedule"
    )


if __name__ == "__main__":
    main()
