"""Fan-out benchmark: our bridge against its peers, one feed, one load generator, one run.

Starts Redis (marketdata.supervisor.redis_server) once, then for each simulator rate the
simulator and the ingestor, and runs every contender in turn on the same load
matrix with `marketdata loadtest`'s engine (marketdata.loadtest.runner.measure):
clients x instruments x rate. For each point it records delivered messages/s,
latency from the exchange time `ts` (p50/p99), the contender's CPU seconds per
1,000 deliveries and its RSS (psutil), and whether that RSS stayed flat.

Following docs/architecture.md ("How we compare with peers"), a contender's *sustained
capacity* is the highest delivered messages/s among the points where its p99 stays
under 50 ms, its memory is flat, every client connected and no sequence went
backwards. A failed point is run once more (the machine is shared); once a contender
is clearly saturated at a point (p99 over a second, RSS growing, or under half the
offered messages delivered), the points that load it more (no fewer clients, the
same instruments, no lower rate) are skipped.

    python -m bench.fanout --small                 # smoke configuration, well under a minute
    python -m bench.fanout                         # the default matrix (about an hour on 2 cores)
    python -m bench.fanout --calibrate             # the load generator's own ceiling (bench/trivial_server.py)
    python -m bench.fanout --memory                # 5,000 idle-ish sockets; stalled readers vs readers

Prints tables, writes JSON (--out, default bench/results/), draws an SVG (--chart).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import redis

from bench import fanout_report as report
from bench.machine import reference_ns
from bench.services import CONTENDERS, Contender, Pipeline, contender
from marketdata.instruments import DEFAULT_INSTRUMENTS
from marketdata.loadtest.runner import LoadtestError, Plan, measure, raise_open_files
from marketdata.supervisor.redis_server import RedisServer

IDS = tuple(i.id for i in DEFAULT_INSTRUMENTS)
P99_LIMIT_MS = 50.0
RESULTS = Path(__file__).resolve().parent / "results"


@dataclasses.dataclass(slots=True)
class Config:
    contenders: tuple[str, ...]
    clients: tuple[int, ...]
    instruments: tuple[int, ...]
    rates: tuple[float, ...]
    duration: float
    warmup: float
    repeats: int
    processes: int
    memory: bool
    calibrate: bool
    idle_clients: int
    slow_clients: int
    slow_seconds: float
    out: Path
    chart: Path | None
    small: bool = False
    matrix: bool = True


def flat(rss: list[int]) -> tuple[float, bool]:
    """RSS growth over the window (MB) and whether it counts as flat (< 16 MB and < 10 %)."""
    if len(rss) < 2:
        return 0.0, True
    growth = (rss[-1] - rss[0]) / 1e6
    return round(growth, 1), growth < max(16.0, rss[0] / 1e6 * 0.10)


def run_point(c: Contender, pipeline: Pipeline | None, cfg: Config, clients: int, n_instr: int, rate: float,
              offered: float, stalled: int = 0, duration: float | None = None, deltas: bool = False,
              verify_every: int = 10) -> dict[str, Any]:
    """One measurement: the load generator against `c`, with the contender's CPU and RSS sampled.

    `deltas`: the clients ask for deltas (bench/bench_deltas.py); every `verify_every`th
    one applies and verifies each, as the dashboard does.
    """
    samples: list[tuple[float, float, int, float]] = []

    def progress(phase: str, _totals: object, _elapsed: float) -> None:
        if phase == "measuring":
            samples.append((time.monotonic(), c.cpu(), c.rss(), pipeline.cpu() if pipeline else 0.0))

    rss_before = c.rss()
    plan = Plan(c.urls, IDS[:n_instr], clients, duration or cfg.duration, cfg.warmup, c.protocol, cfg.processes, stalled,
                deltas, verify_every)
    record: dict[str, Any] = {"contender": c.name, "clients": clients, "instruments": n_instr, "rate": rate,
                              "stalled": stalled, "offered_per_s": round(offered * (clients - stalled)),
                              "rss_before_mb": round(rss_before / 1e6, 1)}
    try:
        result = measure(plan, progress)
    except LoadtestError as exc:
        record.update(ok=False, why=str(exc), delivered_per_s=0.0)
        return record
    d = result.as_dict()
    lat = d["latency_ts"]
    span = samples[-1][0] - samples[0][0] if len(samples) > 1 else 0.0
    cpu_share = (samples[-1][1] - samples[0][1]) / span if span else 0.0
    pipe_share = (samples[-1][3] - samples[0][3]) / span if span else 0.0
    growth, is_flat = flat([s[2] for s in samples])
    delivered = d["messages_per_s"]
    closed = sum(d["closed_by_server"].values())
    record.update(
        delivered_per_s=delivered, bytes_per_s=d["bytes_per_s"], p50_ms=lat["p50_ms"], p90_ms=lat["p90_ms"],
        p99_ms=lat["p99_ms"], max_ms=lat["max_ms"], p99_pts_ms=d["latency_pts"]["p99_ms"],
        regressions=d["regressions"], conflated=d["conflated"], connect_failures=d["connect_failures"],
        closed_by_server=d["closed_by_server"], errors=d["errors"],
        server_cpu_share=round(cpu_share, 3),
        cpu_s_per_1k=round(cpu_share / delivered * 1000, 5) if delivered else None,
        pipeline_cpu_share=round(pipe_share, 3),
        rss_mb=round(samples[-1][2] / 1e6, 1) if samples else None, rss_growth_mb=growth, flat=is_flat,
        loadgen=d["load_generator"], per_client=d["per_client_messages"],
        bytes_per_message=d["bytes_per_message"], deltas=d["deltas"],
        loadavg_1m=round(os.getloadavg()[0], 2),  # the machine is shared: how busy it was
    )
    why = []
    if not delivered:
        why.append("nothing delivered")
    if lat["p99_ms"] >= P99_LIMIT_MS:
        why.append(f"p99 {lat['p99_ms']:.0f} ms")
    if not is_flat:
        why.append(f"RSS +{growth:.0f} MB")
    if d["connect_failures"]:
        why.append(f"{d['connect_failures']} connect failures")
    if d["regressions"]:
        why.append(f"{d['regressions']} regressions")
    if d["deltas"] and d["deltas"]["checksum_failures"]:
        why.append(f"{d['deltas']['checksum_failures']} checksum failures")
    if closed and not stalled:
        why.append(f"{closed} closed by server")
    starved = d["per_client_messages"] and d["per_client_messages"]["min"] == 0
    if starved:
        why.append("some clients got nothing")
    record.update(ok=not why, why=", ".join(why))
    return record


def run_repeated(c: Contender, pipeline: Pipeline | None, cfg: Config, clients: int, n_instr: int, rate: float,
                 offered: float) -> dict[str, Any]:
    """`cfg.repeats` runs of a point; the run with the median delivered rate, with median p99 beside it.

    A single run that fails is run once more and the better of the two kept (the machine
    is shared: one scheduling hiccup must not end a contender's series).
    """
    runs = [run_point(c, pipeline, cfg, clients, n_instr, rate, offered) for _ in range(cfg.repeats)]
    if len(runs) == 1 and not runs[0]["ok"] and "delivered_per_s" in runs[0]:
        again = run_point(c, pipeline, cfg, clients, n_instr, rate, offered)
        first = runs[0]
        runs = [again if again["ok"] or again.get("p99_ms", 1e9) < first.get("p99_ms", 1e9) else first]
        runs[0]["retried"] = {k: first.get(k) for k in ("delivered_per_s", "p99_ms", "why")}
    runs.sort(key=lambda r: r["delivered_per_s"])
    chosen = dict(runs[len(runs) // 2])
    if len(runs) > 1:
        chosen["runs"] = [{k: r.get(k) for k in ("delivered_per_s", "p99_ms", "cpu_s_per_1k", "ok")} for r in runs]
        chosen["median_p99_ms"] = statistics.median(r.get("p99_ms", 0.0) or 0.0 for r in runs)
        chosen["ok"] = sum(r["ok"] for r in runs) * 2 > len(runs)
    report.point_line(chosen)
    return chosen


def publish_rate(redis_url: str, instrument: str, seconds: float = 2.0) -> float:
    """Book snapshots per second the ingestor publishes for one instrument (the offered rate per socket)."""
    client = redis.Redis.from_url(redis_url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(f"md:book:{instrument}")
    try:
        deadline = time.monotonic() + 60
        while pubsub.get_message(timeout=0.5) is None:  # the (re)started ingestor is publishing
            if time.monotonic() > deadline:
                raise SystemExit("fanout: the ingestor published nothing within 60 s")
        n, start = 0, time.monotonic()
        while time.monotonic() - start < seconds:
            if pubsub.get_message(timeout=0.1):
                n += 1
        return n / seconds
    finally:
        pubsub.close()
        client.close()


def saturated(r: dict[str, Any]) -> bool:
    """Clearly past capacity (not a hiccup): heavier points would only fail slower."""
    if "p99_ms" not in r:
        return True
    return r["p99_ms"] > 1000 or not r["flat"] or r["delivered_per_s"] < 0.5 * r["offered_per_s"]


def dominated(failed: list[tuple[int, int, float]], clients: int, n_instr: int, rate: float) -> bool:
    return any(clients >= c and n_instr == k and rate >= r for c, k, r in failed)


def matrix(cfg: Config, redis_url: str, redis_pid: int | None, logs: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, float]]:
    points: list[dict[str, Any]] = []
    memory: list[dict[str, Any]] = []
    offered_by_rate: dict[str, float] = {}
    failed: dict[str, list[tuple[int, int, float]]] = {n: [] for n in cfg.contenders}
    pipeline = Pipeline(redis_url, logs, redis_pid)
    running: list[Contender] = []
    try:
        for rate in cfg.rates:
            if not cfg.matrix and not (cfg.memory and rate == cfg.rates[-1]):
                continue
            pipeline.start(rate)
            offered = publish_rate(redis_url, IDS[0], 1.0 if cfg.small else 2.0)
            offered_by_rate[f"{rate:g}"] = round(offered, 1)
            report.say(f"simulator at {rate:g} events/s per instrument: the ingestor publishes {offered:.0f} books/s per instrument")
            # Small runs start every contender at once (quicker; they then idle beside the one
            # measured); real runs start each alone, so no idle peer takes CPU from it.
            if cfg.small:
                running = [contender(n, redis_url, pipeline.sim, logs).launch() for n in cfg.contenders]
            for name in cfg.contenders:
                c = next((r for r in running if r.name == name), None) or contender(name, redis_url, pipeline.sim, logs).launch()
                if c not in running:
                    running.append(c)
                c.wait_ready(IDS[0])
                report.say(f"[bold]{c.label}[/] started (RSS {c.rss() / 1e6:.0f} MB)")
                for clients in cfg.clients if cfg.matrix else ():
                    for k in cfg.instruments:
                        if dominated(failed[name], clients, k, rate):
                            points.append({"contender": name, "clients": clients, "instruments": k, "rate": rate,
                                           "skipped": "saturated at a lighter load"})
                            continue
                        rec = run_repeated(c, pipeline, cfg, clients, k, rate, offered)
                        points.append(rec)
                        if saturated(rec):
                            failed[name].append((clients, k, rate))
                if cfg.memory and rate == cfg.rates[-1]:
                    memory.extend(memory_runs(c, pipeline, cfg, offered))
                c.stop()
            _stop(running)
        if cfg.memory:
            pipeline.start(cfg.rates[0])
            offered = publish_rate(redis_url, IDS[0])
            for name in cfg.contenders:
                c = contender(name, redis_url, pipeline.sim, logs)
                running.append(c)
                c.start(IDS[0])
                rec = run_point(c, pipeline, cfg, cfg.idle_clients, len(IDS), cfg.rates[0], offered)
                rec["kind"] = f"{cfg.idle_clients} idle-ish sockets"
                report.point_line(rec)
                memory.append(rec)
                c.stop()
    finally:
        _stop(running)
        pipeline.stop()
    return points, memory, offered_by_rate


def _stop(running: list[Contender]) -> None:
    while running:
        running.pop().stop()


def memory_runs(c: Contender, pipeline: Pipeline, cfg: Config, offered: float) -> list[dict[str, Any]]:
    """Half the clients stop reading for `cfg.slow_seconds`: does the contender's RSS grow?

    The stalled sockets have a 4 KB receive buffer, but the kernel still holds a few MB
    per socket on the server side before anything backs up into the process, so the
    run must last long enough to push more than that through each stalled socket.
    """
    rec = run_point(c, pipeline, cfg, cfg.slow_clients, len(IDS), pipeline.rate, offered,
                    stalled=cfg.slow_clients // 2, duration=cfg.slow_seconds)
    rec["kind"] = f"{cfg.slow_clients - cfg.slow_clients // 2} reading + {cfg.slow_clients // 2} stalled, {cfg.slow_seconds:g} s"
    report.point_line(rec)
    return [rec]


def calibrate(cfg: Config, logs: Path) -> dict[str, Any]:
    """The load generator against bench/trivial_server.py: the highest rate it reads with p99 < 50 ms.

    Each point is run `cfg.repeats` times and the median run kept, as in the matrix.
    """
    records = []
    for rate in (50.0, 100.0, 200.0, 400.0, 0.0):
        c = contender("trivial", "", "", logs, trivial_rate=rate)
        c.start(IDS[0])
        try:
            for clients in cfg.clients:
                rec = run_repeated(c, None, cfg, clients, len(IDS), rate, rate)
                rec["kind"] = "blast (as fast as the sockets take it)" if rate == 0 else f"{rate:g} msgs/s per socket"
                records.append(rec)
        finally:
            c.stop()
    passing = [r["delivered_per_s"] for r in records if r.get("p99_ms", 1e9) < P99_LIMIT_MS and not r.get("connect_failures")]
    ceiling = max(passing, default=0.0)
    blast = max((r["delivered_per_s"] for r in records if r["rate"] == 0), default=0.0)
    report.say(f"load generator ceiling: {ceiling:,.0f} msgs/s with p99 < 50 ms; {blast:,.0f} msgs/s flat out")
    return {"points": records, "ceiling_p99_under_50ms": ceiling, "blast": blast}


def parse(argv: list[str] | None) -> Config:
    p = argparse.ArgumentParser(prog="python -m bench.fanout", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ints = lambda s: tuple(int(x) for x in s.split(","))  # noqa: E731
    floats = lambda s: tuple(float(x) for x in s.split(","))  # noqa: E731
    p.add_argument("--small", action="store_true", help="smoke configuration: rate 10, 20 clients over 2 instruments, 1.5 s points, contenders started together")
    p.add_argument("--contenders", default=",".join(CONTENDERS), help="comma list")
    p.add_argument("--clients", type=ints, default=(100, 1000, 5000), help="comma list of socket counts, one matrix axis")
    p.add_argument("--instruments", type=ints, default=(1, 8), help="instruments the clients are spread over")
    p.add_argument("--rates", type=floats, default=(10.0, 100.0, 1000.0), help="simulator events/s per instrument")
    p.add_argument("--duration", type=float, default=5.0, help="seconds measured per point")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds run before each point is measured")
    p.add_argument("--repeats", type=int, default=1, help="runs per point; the median is kept")
    p.add_argument("--processes", type=int, default=0, help="load generator processes (0: one per core)")
    p.add_argument("--memory", action="store_true", help="also: idle-ish sockets and stalled-client runs")
    p.add_argument("--idle-clients", type=int, default=5000, help="sockets of the idle-ish memory run (1 book/s per instrument)")
    p.add_argument("--slow-clients", type=int, default=40, help="clients of the slow-consumer run (half of them stall)")
    p.add_argument("--slow-seconds", type=float, default=45.0, help="length of the slow-consumer run")
    p.add_argument("--no-matrix", dest="matrix", action="store_false", help="with --memory: only the memory runs, no load matrix")
    p.add_argument("--calibrate", action="store_true", help="measure the load generator against bench/trivial_server.py only")
    p.add_argument("--out", type=Path, default=None, help="JSON file (default bench/results/fanout-<kind>-<time>.json)")
    p.add_argument("--chart", type=Path, default=None, help="SVG chart to draw (default: none)")
    a = p.parse_args(argv)
    if a.small:
        a.clients, a.instruments, a.rates = (20,), (2,), (10.0,)
        a.duration, a.warmup, a.processes, a.idle_clients = min(a.duration, 1.5), min(a.warmup, 0.5), a.processes or 1, 100
    kind = "calibration" if a.calibrate else "small" if a.small else "matrix"
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = a.out or RESULTS / f"fanout-{kind}-{stamp}.json"
    names = tuple(n for n in a.contenders.split(",") if n)
    return Config(names, a.clients, a.instruments, a.rates, a.duration, a.warmup, a.repeats, a.processes,
                  a.memory, a.calibrate, a.idle_clients, a.slow_clients, a.slow_seconds, out, a.chart, a.small, a.matrix)


def main(argv: list[str] | None = None) -> int:
    cfg = parse(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: every child process is stopped
    note = raise_open_files(max(cfg.clients + (cfg.idle_clients,)) * 2 + 1024)  # inherited by every server started
    if note:
        report.say(note)
    command = "python -m bench.fanout " + " ".join(sys.argv[1:] if argv is None else argv)
    meta = {"command": command.strip(), "started": datetime.datetime.now().isoformat(timespec="seconds"),
            "cores": os.cpu_count(), "reference_ns": round(reference_ns(), 2), "python": platform.python_version(), "machine": platform.machine(),
            "config": {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(cfg).items()}}
    report.say(f"machine reference: an empty `for` loop takes {meta['reference_ns']} ns CPU per iteration")
    with tempfile.TemporaryDirectory(prefix="md-fanout-") as tmp:
        logs = Path(tmp)
        if cfg.calibrate:
            data = {**meta, "calibration": calibrate(cfg, logs)}
        else:
            with RedisServer() as server:
                points, memory, offered = matrix(cfg, server.url, server.pid, logs)
            data = {**meta, "offered_per_instrument": offered, "points": points, "memory": memory,
                    "capacity": report.capacities(points)}
            report.print_tables(data)
    data["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    cfg.out.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
    report.say(f"wrote {cfg.out}")
    if cfg.chart is not None and not cfg.calibrate:
        report.chart(data, cfg.chart)
        report.say(f"drew {cfg.chart}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
