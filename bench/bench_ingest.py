"""Ingest: simulator to Redis. Events/s ingested, publishes/s, CPU, and latency to a subscriber.

Run: .venv/bin/python bench/bench_ingest.py                        (about 2 minutes)
     .venv/bin/python bench/bench_ingest.py --rates 100,10000 --modes on
     .venv/bin/python bench/bench_ingest.py --rates max --profile    (cProfile of the ingestor)

Every piece runs in its own process, as in production, so the 2 cores are shared
honestly: the embedded Redis (marketdata.supervisor.redis_server), the feed, the ingestor
(`marketdata.ingest.ingestor.Ingestor` under uvloop, in a child of this script that prints its
counters) and, in this process, one Redis subscriber on `md:book:BTC-USD` that
measures latency.

Feeds: `sim@R` is the real simulator (`python -m marketdata sim --rate R`, 8
instruments, R events/s each; `max` asks for 100,000/s each and gets what the
simulator can generate). `replay` is a stand-in that sends pre-generated,
pre-serialised batches (800 events each, like the simulator's at high rate) as fast
as the ingestor reads them: the ingestor's own ceiling, with no simulator competing
for the cores. Each point runs with coalescing on and off.

Latency: exchange `ts` (stamped by the simulator when it generates the event) to
the moment the subscriber here has the message, and `pts` (stamped by the ingestor
when it encodes the snapshot) to the same moment; p50/p99 over the window. Replay
timestamps are old, so replay points report no latency.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import dataclasses
import json
import os
import pstats
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import orjson  # noqa: E402
import redis.asyncio as aredis  # noqa: E402

from bench.child import cpu_seconds, grpc_server  # noqa: E402
from bench.machine import reference_line  # noqa: E402
from marketdata.supervisor.ports import free_port  # noqa: E402
from marketdata.supervisor.redis_server import RedisServer  # noqa: E402

TARGET = 200_000  # events/s ingested with coalescing, the target
MAX_RATE = 100_000.0  # the simulator's highest --rate


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


# -- the feed --------------------------------------------------------------------------------


@contextlib.contextmanager
def feed(name: str) -> Iterator[tuple[str, int]]:
    """Start the simulator (sim@R) or the replay server in a child; yield its address and pid."""
    port = free_port()
    if name == "replay":
        args = [str(Path(__file__).resolve()), "--serve-replay", str(port)]
    else:
        rate = name.split("@", 1)[1]
        args = ["-m", "marketdata", "sim", "--port", str(port), "--rate", rate, "--log-level", "error"]
    with grpc_server(args, port, stop_timeout=20) as (address, pid):
        yield address, pid


# -- the ingestor, in a child process ----------------------------------------------------------


async def ingest_child(args: argparse.Namespace) -> None:
    """Run the Ingestor; after the warm-up print START, after the window print its counters as JSON."""
    from marketdata.ingest.ingestor import Ingestor
    from marketdata.settings import IngestSettings

    ingestor = Ingestor(IngestSettings(sim=args.sim, redis_url=args.redis_url, coalesce=args.coalesce == "on"))
    task = asyncio.create_task(ingestor.run())
    deadline = time.monotonic() + 30
    while ingestor.stats.events == 0:
        if task.done() or time.monotonic() > deadline:
            raise SystemExit("ingestor received no events")
        await asyncio.sleep(0.01)
    await asyncio.sleep(args.warmup)
    before, t0, c0 = dataclasses.replace(ingestor.stats), time.perf_counter(), time.process_time()
    profile = cProfile.Profile() if args.profile else None
    if profile:
        profile.enable()
    print("START", flush=True)
    await asyncio.sleep(args.seconds)
    if profile:
        profile.disable()
    after, seconds, cpu = ingestor.stats, time.perf_counter() - t0, time.process_time() - c0
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    delta = {f.name: getattr(after, f.name) - getattr(before, f.name) for f in dataclasses.fields(after)}
    print(json.dumps({"seconds": seconds, "cpu": cpu, **delta}), flush=True)
    if profile:
        pstats.Stats(profile, stream=sys.stderr).sort_stats("tottime").print_stats(18)


# -- one point --------------------------------------------------------------------------------


async def measure(redis: RedisServer, feed_name: str, coalesce: str, args: argparse.Namespace) -> dict:
    with feed(feed_name) as (address, feed_pid):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--ingest-child", "--sim", address, "--redis-url", redis.url,
               "--coalesce", coalesce, "--warmup", str(args.warmup), "--seconds", str(args.seconds)]  # fmt: skip
        if args.profile:
            cmd.append("--profile")
        child = await asyncio.create_subprocess_exec(*cmd, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL)
        assert child.stdout is not None
        client = aredis.Redis.from_url(redis.url, socket_timeout=None)
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe("md:book:BTC-USD")
        from_ts: list[float] = []
        from_pts: list[float] = []
        measuring = False

        async def listen() -> None:
            async for msg in pubsub.listen():
                if not measuring or msg["type"] != "message":
                    continue
                now = time.time_ns() / 1000
                body = orjson.loads(msg["data"])
                from_ts.append((now - body["ts"]) / 1000)
                from_pts.append((now - body["pts"]) / 1000)

        listener = asyncio.create_task(listen())
        try:
            line = await asyncio.wait_for(child.stdout.readline(), 60)
            if line.strip() != b"START":
                raise SystemExit(f"ingestor child failed: {line!r}")
            measuring = True
            cpu0 = {"feed": cpu_seconds(feed_pid), "redis": cpu_seconds(redis.pid or 0)}
            result = json.loads(await asyncio.wait_for(child.stdout.readline(), args.seconds + 30))
            measuring = False
            cpu1 = {"feed": cpu_seconds(feed_pid), "redis": cpu_seconds(redis.pid or 0)}
            await child.wait()
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
            await pubsub.aclose()
            await client.aclose()
            if child.returncode is None:
                child.kill()
                await child.wait()
    s = result["seconds"]
    latency = feed_name != "replay"
    return {
        "feed": feed_name,
        "coalesce": coalesce,
        "events_per_s": result["events"] / s,
        "level_changes_per_s": result["level_changes"] / s,
        "publishes_per_s": result["publishes"] / s,
        "trades_per_s": result["trade_publishes"] / s,
        "drains_per_s": result["drains"] / s,
        "events_per_drain": result["events"] / max(1, result["drains"]),
        "resubscribes": result["resubscribes"],
        "dropped": result["dropped"],
        "cpu_ingest": result["cpu"] / s,
        "ingest_us_per_event": result["cpu"] * 1e6 / max(1, result["events"]),
        "cpu_feed": (cpu1["feed"] - cpu0["feed"]) / s,
        "cpu_redis": (cpu1["redis"] - cpu0["redis"]) / s,
        "samples": len(from_ts),
        "ts_p50_ms": percentile(from_ts, 0.5) if latency else None,
        "ts_p99_ms": percentile(from_ts, 0.99) if latency else None,
        "pts_p50_ms": percentile(from_pts, 0.5) if latency else None,
        "pts_p99_ms": percentile(from_pts, 0.99) if latency else None,
    }


def show(p: dict) -> None:
    def ms(x: float | None) -> str:
        return "     -" if x is None else f"{x:6.2f}"

    print(
        f"{p['feed']:>12} coalesce {p['coalesce']:>3}  {p['events_per_s']:>9,.0f} ev/s  {p['publishes_per_s']:>8,.0f} pub/s "
        f"{p['trades_per_s']:>7,.0f} trades/s {p['drains_per_s']:>6,.0f} drains/s ({p['events_per_drain']:>6,.1f} ev/drain)  "
        f"CPU ingest {p['cpu_ingest']:4.0%} ({p['ingest_us_per_event']:5.1f} us/ev) feed {p['cpu_feed']:4.0%} redis {p['cpu_redis']:4.0%}  "
        f"ts->sub p50 {ms(p['ts_p50_ms'])} p99 {ms(p['ts_p99_ms'])} ms  pts->sub p50 {ms(p['pts_p50_ms'])} p99 {ms(p['pts_p99_ms'])} ms"
        + (f"  resubscribes {p['resubscribes']}" if p["resubscribes"] else "")
        + (f"  dropped {p['dropped']}" if p["dropped"] else ""),
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rates", default="100,1000,10000,max", help="simulator events/s per instrument, comma list ('max': 100000)")
    ap.add_argument("--replay", action=argparse.BooleanOptionalAction, default=True, help="also measure the replay feed")
    ap.add_argument("--modes", default="on,off", help="coalescing modes to measure: on,off")
    ap.add_argument("--seconds", type=float, default=3.0, help="measured window of each point")
    ap.add_argument("--warmup", type=float, default=1.0, help="seconds before the window")
    ap.add_argument("--runs", type=int, default=1, help="runs of each point; the median by events/s is shown")
    ap.add_argument("--profile", action="store_true", help="cProfile the ingestor during the window (stderr)")
    ap.add_argument("--json", type=Path, help="also write every point to this file")
    ap.add_argument("--serve-replay", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--ingest-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--sim", help=argparse.SUPPRESS)
    ap.add_argument("--redis-url", help=argparse.SUPPRESS)
    ap.add_argument("--coalesce", default="on", help=argparse.SUPPRESS)
    args = ap.parse_args()

    import uvloop

    if args.serve_replay:
        from bench import replay
        from marketdata.instruments import DEFAULT_INSTRUMENTS

        # 100 batches of 100 events of each of the 8 instruments (800 a batch, like the simulator's at high rate)
        uvloop.run(replay.serve(args.serve_replay, DEFAULT_INSTRUMENTS, replay.cycle(DEFAULT_INSTRUMENTS, 100, 80_000)))
        return
    if args.ingest_child:
        uvloop.run(ingest_child(args))
        return

    feeds = [f"sim@{MAX_RATE:g}" if r == "max" else f"sim@{float(r):g}" for r in args.rates.split(",") if r]
    if args.replay:
        feeds.append("replay")
    modes = [m for m in args.modes.split(",") if m]
    load0 = os.getloadavg()[0]
    print(reference_line())
    print(f"ingest benchmark: 8 instruments, {args.seconds:g} s windows after {args.warmup:g} s warm-up, {os.cpu_count()} cores")
    points = []
    with RedisServer() as redis:
        for name in feeds:
            for mode in modes:
                runs = [asyncio.run(measure(redis, name, mode, args)) for _ in range(args.runs)]
                point = sorted(runs, key=lambda p: p["events_per_s"])[len(runs) // 2]
                points.append(point)
                show(point)
    best = max((p["events_per_s"] for p in points if p["coalesce"] == "on"), default=0.0)
    print(f"best with coalescing: {best:,.0f} events/s ingested (target {TARGET:,}: {'met' if best >= TARGET else 'missed'})")
    replayed = [p for p in points if p["feed"] == "replay" and p["coalesce"] == "on"]
    if replayed:
        print(f"ingestor CPU per event, replay, coalescing: {replayed[0]['ingest_us_per_event']:.1f} us "
              f"(at most {1e6 / replayed[0]['ingest_us_per_event']:,.0f} events/s per core it gets to itself)")
    print(f"load average (1 min) before/after: {load0:.1f} / {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    if args.json:
        args.json.write_text(json.dumps({"points": points, "median_of": args.runs, "target": TARGET, "load_before": load0}, indent=1))


if __name__ == "__main__":
    main()
