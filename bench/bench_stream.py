"""Simulator to one consumer over gRPC: events/s and level changes/s, books rebuilt and verified.

Run: .venv/bin/python bench/bench_stream.py                  (about 30 s)
     .venv/bin/python bench/bench_stream.py --rate 2000,5000  (one line per rate)
     .venv/bin/python bench/bench_stream.py --source replay   (the consumer's ceiling)
     .venv/bin/python bench/bench_stream.py --profile         (cProfile of both processes)

`--source sim` (default) starts the real simulator in its own process
(`python -m marketdata sim --port P --rate R`) and consumes its stream here, applying
every batch with `feed.Books.apply_batch`, which checks every seq and every checksum
(the ingestor's path; the CLI client's loop does a little less per event). Each run
uses a fresh simulator, skips a warm-up second, then counts for --seconds; the
figure is the median of --runs runs.

`--source replay` swaps the simulator for a server that only replays pre-generated,
pre-serialised batches (a snapshot of every book, then contiguous events, in a
loop) as fast as the consumer takes them: gRPC transport plus the consumer alone.

Both processes' CPU use is read from /proc, so a run says which side is saturated.
Issue target: >= 250,000 level changes/s end to end on the 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import os
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import grpc  # noqa: E402

from bench.child import cpu_seconds, grpc_server  # noqa: E402
from bench.machine import reference_line  # noqa: E402
from marketdata.feed import BatchResult, Books  # noqa: E402
from marketdata.instruments import DEFAULT_INSTRUMENTS, select  # noqa: E402
from marketdata.supervisor.ports import free_port  # noqa: E402
from marketdata.v1 import market_data_pb2 as pb  # noqa: E402
from marketdata.v1 import market_data_pb2_grpc as pb_grpc  # noqa: E402

TARGET = 250_000  # level changes/s
_OPTIONS = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]


@dataclass(slots=True)
class Run:
    seconds: float = 0.0
    events: int = 0
    level_changes: int = 0
    batches: int = 0
    snapshots: int = 0  # snapshot events after the first ones: resyncs (sim) or replay loops
    consumer_cpu: float = 0.0  # seconds
    server_cpu: float = 0.0

    def per_s(self, n: int) -> float:
        return n / self.seconds if self.seconds else 0.0


# -- servers -------------------------------------------------------------------------------


@contextlib.contextmanager
def server(args: argparse.Namespace, rate: float, profile_to: str | None) -> Iterator[tuple[str, int]]:
    """Start the simulator (or the replay server) in a child process; yield its address and pid."""
    port = free_port()
    prof = ["-m", "cProfile", "-o", profile_to] if profile_to else []
    if args.source == "sim":
        cmd = [*prof, "-m", "marketdata", "sim", "--port", str(port), "--rate", f"{rate:g}",
               "--max-batch", str(args.max_batch), "--log-level", "warning"]  # fmt: skip
        if args.instruments:
            cmd += ["--instruments", args.instruments]
    else:
        cmd = [*prof, str(Path(__file__).resolve()), "--serve-replay", str(port),
               "--instruments", args.instruments, "--max-batch", str(args.max_batch)]  # fmt: skip
    with grpc_server(cmd, port, stop_timeout=30) as (address, pid):
        yield address, pid


# -- the consumer --------------------------------------------------------------------------


class Meter:
    """Applies batches and counts, after a warm-up, for a fixed time."""

    def __init__(self, ids: list[str], warmup: float, seconds: float, server_pid: int, apply: bool = True) -> None:
        self.books = Books(ids)
        self.apply = self.books.apply_batch if apply else _count_only
        self.warmup, self.seconds, self.pid = warmup, seconds, server_pid
        self.run = Run()
        self.start: float | None = None
        self.first = time.perf_counter()
        self.cpu0 = self.server0 = 0.0

    def take(self, batch: pb.EventBatch) -> bool:
        """Apply one batch; False when the measurement is over."""
        result = self.apply(batch.events)
        now = time.perf_counter()
        if self.start is None:
            if now - self.first < self.warmup:
                return True
            self.start, self.cpu0, self.server0 = now, time.process_time(), cpu_seconds(self.pid)
            return True
        run = self.run
        run.events += len(batch.events)
        run.level_changes += result.level_changes
        run.snapshots += result.snapshots
        run.batches += 1
        if now - self.start < self.seconds:
            return True
        run.seconds = now - self.start
        run.consumer_cpu = time.process_time() - self.cpu0
        run.server_cpu = cpu_seconds(self.pid) - self.server0
        return False


def _count_only(events: object) -> BatchResult:
    """Transport alone: the batch is parsed but not applied."""
    return BatchResult()


def consume_sync(address: str, meter: Meter, ids: list[str]) -> None:
    with grpc.insecure_channel(address, options=_OPTIONS) as channel:
        call = pb_grpc.MarketDataStub(channel).Subscribe(pb.SubscribeRequest(instruments=ids))
        for batch in call:
            if not meter.take(batch):
                break
        call.cancel()


async def consume_aio(address: str, meter: Meter, ids: list[str]) -> None:
    async with grpc.aio.insecure_channel(address, options=_OPTIONS) as channel:
        call = pb_grpc.MarketDataStub(channel).Subscribe(pb.SubscribeRequest(instruments=ids))
        read, take = call.read, meter.take
        while take(await read()):
            pass
        call.cancel()


def consume(args: argparse.Namespace, address: str, pid: int, ids: list[str]) -> Run:
    meter = Meter(ids, args.warmup, args.seconds, pid, apply=not args.no_apply)
    if args.transport == "sync":
        consume_sync(address, meter, ids)
    elif args.transport == "uvloop":
        import uvloop

        uvloop.run(consume_aio(address, meter, ids))
    else:
        asyncio.run(consume_aio(address, meter, ids))
    return meter.run


# -- main ----------------------------------------------------------------------------------


def measure(args: argparse.Namespace, rate: float, ids: list[str]) -> list[Run]:
    runs = []
    for i in range(args.runs):
        profile = args.profile and i == 0
        server_prof = None
        if profile:
            fd, server_prof = tempfile.mkstemp(suffix=".prof")
            os.close(fd)
        with server(args, rate, server_prof) as (address, pid):
            if profile:
                prof = cProfile.Profile()
                run = prof.runcall(consume, args, address, pid, ids)
            else:
                run = consume(args, address, pid, ids)
        runs.append(run)
        print(
            f"  run {i + 1}: {run.per_s(run.events):>9,.0f} events/s {run.per_s(run.level_changes):>9,.0f} level changes/s "
            f"{run.per_s(run.batches):>6,.0f} batches/s  {run.events / max(1, run.batches):>5,.0f} events/batch  "
            f"CPU consumer {run.consumer_cpu / run.seconds:4.0%} ({run.consumer_cpu * 1e6 / max(1, run.events):.1f} us/event) "
            f"server {run.server_cpu / run.seconds:4.0%} ({run.server_cpu * 1e6 / max(1, run.events):.1f} us/event)  "
            f"snapshots {run.snapshots}",
            flush=True,
        )
        if profile:
            print("  consumer profile (top 12 by own time):")
            pstats.Stats(prof).sort_stats("tottime").print_stats(12)
            if server_prof and os.path.exists(server_prof):
                print("  server profile (top 15 by own time):")
                pstats.Stats(server_prof).sort_stats("tottime").print_stats(15)
                os.unlink(server_prof)
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", choices=("sim", "replay"), default="sim")
    ap.add_argument("--rate", default="20000", help="events/s per instrument given to the simulator; a comma list measures each")
    ap.add_argument("--instruments", default=",".join(i.id for i in DEFAULT_INSTRUMENTS))
    ap.add_argument("--max-batch", type=int, default=1000)
    ap.add_argument("--transport", choices=("uvloop", "aio", "sync"), default="uvloop", help="consumer's gRPC API and loop")
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-apply", action="store_true", help="only receive and parse (measures the transport alone)")
    ap.add_argument("--profile", action="store_true", help="cProfile both processes during the first run")
    ap.add_argument("--serve-replay", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_replay:
        from bench import replay

        insts = select([i for i in args.instruments.split(",") if i])
        per = max(1, args.max_batch // len(insts))  # events of each instrument a batch
        asyncio.run(replay.serve(args.serve_replay, insts, replay.cycle(insts, per, 40_000)))
        return
    ids = [i.id for i in select([i for i in args.instruments.split(",") if i])]
    print(reference_line())
    print(f"python {sys.version.split()[0]}, grpcio {grpc.__version__}, {os.cpu_count()} CPUs; source {args.source}, "
          f"{len(ids)} instruments, consumer {args.transport} + {'nothing' if args.no_apply else 'Books.apply_batch'}, max batch {args.max_batch}, "
          f"{args.runs} runs of {args.seconds:g} s after {args.warmup:g} s warm-up")  # fmt: skip
    for rate in [float(r) for r in args.rate.split(",")]:
        label = f"rate {rate:g}/s per instrument" if args.source == "sim" else "replay"
        print(f"{label}:", flush=True)
        runs = measure(args, rate, ids)
        ev = statistics.median(r.per_s(r.events) for r in runs)
        lc = statistics.median(r.per_s(r.level_changes) for r in runs)
        verdict = "" if args.no_apply else f" ({'meets' if lc >= TARGET else 'misses'} the {TARGET:,} target)"
        print(f"  median: {ev:,.0f} events/s, {lc:,.0f} level changes/s{verdict}", flush=True)


if __name__ == "__main__":
    main()
