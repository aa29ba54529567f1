"""Deltas against snapshots, side by side in one run, at the 1,000-socket point of the fan-out matrix.

Starts Redis once; for each published depth (`--depths`, 10 and 25) and each simulator
rate, the simulator and an ingestor at that depth, and one bridge; then the same
1,000 sockets over the 8 instruments take snapshots, then ask for deltas, on the same
feed. Every point is measured with bench/fanout.py's machinery (`run_point`, the
load generator of `marketdata loadtest`): deliveries/s, bytes per delivered message
and per second, latency from the exchange time (p50/p99), the bridge's CPU per
delivery. A mode's capacity at a depth is, as in the fan-out matrix, the highest
deliveries/s among its points with p99 under 50 ms, flat memory and no regression.
Every `--verify-every`th delta client also applies each delta and verifies its
checksum, as the dashboard does: their gaps and checksum failures are reported, and
a failure fails the point.

    python -m bench.bench_deltas                  # the run of record (about 3 minutes on 2 cores)
    python -m bench.bench_deltas --small          # smoke: 50 sockets, one rate, 1.5 s points

Prints a table and the comparison, writes JSON (--out, default bench/results/) and a
chart of bytes per delivered message (--chart).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from bench import fanout_report as report
from bench.fanout import IDS, RESULTS, Config, publish_rate, run_point
from bench.machine import reference_ns
from bench.services import Pipeline, contender
from marketdata.loadtest.runner import raise_open_files
from marketdata.supervisor.redis_server import RedisServer

MODES = ("snapshots", "deltas")


@dataclass(slots=True)
class DepthPipeline(Pipeline):
    """The fan-out benchmark's feed (Redis, simulator, ingestor) with the ingestor publishing `depth` levels."""

    depth: int = 25

    def start(self, rate: float, seed: int = 1) -> None:
        os.environ["MD_DEPTH"] = str(self.depth)  # the ingestor's --depth, as its children inherit it
        try:
            Pipeline.start(self, rate, seed)
        finally:
            del os.environ["MD_DEPTH"]


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.bench_deltas", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ints = lambda s: tuple(int(x) for x in s.split(","))  # noqa: E731
    floats = lambda s: tuple(float(x) for x in s.split(","))  # noqa: E731
    p.add_argument("--small", action="store_true", help="smoke configuration: 50 sockets over 2 instruments, rate 20, 1.5 s points")
    p.add_argument("--clients", type=int, default=1000, help="sockets")
    p.add_argument("--instruments", type=int, default=8, help="instruments the sockets are spread over")
    p.add_argument("--rates", type=floats, default=(10.0, 20.0, 40.0), help="simulator events/s per instrument")
    p.add_argument("--depths", type=ints, default=(10, 25), help="levels a side the ingestor publishes")
    p.add_argument("--duration", type=float, default=4.0, help="seconds measured per point")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds run before each point is measured")
    p.add_argument("--processes", type=int, default=0, help="load generator processes (0: one per core)")
    p.add_argument("--verify-every", type=int, default=50, help="every Nth delta client applies and verifies each delta (about 20 µs of the load generator's CPU each)")
    p.add_argument("--out", type=Path, default=None, help="JSON file (default bench/results/deltas-<time>.json)")
    p.add_argument("--chart", type=Path, default=None, help="SVG chart of bytes per delivered message (default: none)")
    a = p.parse_args(argv)
    if a.small:
        a.clients, a.instruments, a.rates, a.duration, a.warmup = 50, 2, (20.0,), min(a.duration, 1.5), min(a.warmup, 0.5)
        a.processes = a.processes or 1
    a.out = a.out or RESULTS / f"deltas-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    return a


def config(a: argparse.Namespace) -> Config:
    """What run_point reads of the fan-out benchmark's configuration."""
    return Config(("ours",), (a.clients,), (a.instruments,), a.rates, a.duration, a.warmup, 1, a.processes,
                  False, False, 0, 0, 0.0, a.out, None, a.small)


def point_line(r: dict[str, Any]) -> None:
    head = f"depth {r['depth']:>2} rate {r['rate']:>5g} {r['mode']:<9}"
    if "p99_ms" not in r:
        report.say(f"{head}: [red]failed[/]: {r.get('why')}")
        return
    d = r.get("deltas") or {}
    extra = (f"  {d['messages'] / max(1, d['messages'] + d['snapshots']):.0%} deltas, {d['resyncs']} resyncs, "
             f"{d['gaps']} gaps, {d['checksum_failures']} checksum failures") if d else ""
    mark = "[green]ok[/]" if r["ok"] else f"[red]{r['why']}[/]"
    report.say(f"{head}: {r['delivered_per_s']:>9,.0f} msgs/s  {r['bytes_per_message'] or 0:>6,.0f} B/msg  "
               f"p99 {r['p99_ms']:6.1f} ms  bridge {r['cpu_us_per_delivery']:.1f} µs/delivery{extra}  {mark}")


def run(a: argparse.Namespace, redis_url: str, redis_pid: int | None, logs: Path) -> list[dict[str, Any]]:
    cfg = config(a)
    points: list[dict[str, Any]] = []
    pipeline = DepthPipeline(redis_url, logs, redis_pid)
    try:
        for depth in a.depths:
            pipeline.depth = depth
            for rate in a.rates:
                pipeline.start(rate)
                offered = publish_rate(redis_url, IDS[0], 1.0 if a.small else 2.0)
                report.say(f"depth {depth}, simulator at {rate:g} events/s per instrument: {offered:.0f} books/s per instrument")
                bridge = contender("ours", redis_url, pipeline.sim, logs).launch()
                try:
                    bridge.wait_ready(IDS[0])
                    for mode in MODES:
                        r = run_point(bridge, pipeline, cfg, a.clients, a.instruments, rate, offered,
                                      deltas=mode == "deltas", verify_every=a.verify_every)
                        share = r.get("server_cpu_share")
                        r.update(mode=mode, depth=depth, offered_books_per_instrument=round(offered, 1),
                                 cpu_us_per_delivery=round(share / r["delivered_per_s"] * 1e6, 2) if share and r["delivered_per_s"] else 0.0)
                        point_line(r)
                        points.append(r)
                finally:
                    bridge.stop()
    finally:
        pipeline.stop()
    return points


def summary(points: list[dict[str, Any]]) -> dict[str, Any]:
    """Per depth: each mode's capacity, and at each rate both modes passed, the ratios of bytes and CPU."""
    out: dict[str, Any] = {}
    for depth in sorted({r["depth"] for r in points}):
        mine = [r for r in points if r["depth"] == depth and "p99_ms" in r]
        caps = {}
        for mode in MODES:
            ok = [r for r in mine if r["mode"] == mode and r["ok"]]
            best = max(ok, key=lambda r: r["delivered_per_s"], default=None)
            caps[mode] = {"capacity": best["delivered_per_s"] if best else 0.0, "at_rate": best["rate"] if best else None,
                          "p99_ms": best["p99_ms"] if best else None}
        rates = []
        for rate in sorted({r["rate"] for r in mine}):
            pair = {r["mode"]: r for r in mine if r["rate"] == rate}
            if len(pair) < 2 or not pair["snapshots"]["bytes_per_message"] or not pair["deltas"]["bytes_per_message"]:
                continue
            s, d = pair["snapshots"], pair["deltas"]
            rates.append({
                "rate": rate, "both_ok": s["ok"] and d["ok"],
                "bytes_per_message": {"snapshots": s["bytes_per_message"], "deltas": d["bytes_per_message"]},
                "bytes_ratio": round(s["bytes_per_message"] / d["bytes_per_message"], 2),
                "bytes_per_s": {"snapshots": s["bytes_per_s"], "deltas": d["bytes_per_s"]},
                "delivered_per_s": {"snapshots": s["delivered_per_s"], "deltas": d["delivered_per_s"]},
                "cpu_us_per_delivery": {"snapshots": s["cpu_us_per_delivery"], "deltas": d["cpu_us_per_delivery"]},
            })
        capacity_ratio = caps["deltas"]["capacity"] / caps["snapshots"]["capacity"] if caps["snapshots"]["capacity"] else None
        out[str(depth)] = {"capacity": caps, "capacity_ratio": round(capacity_ratio, 2) if capacity_ratio else None,
                           "by_rate": rates}
    return out


def print_tables(data: dict[str, Any]) -> None:
    out = Console() if Console().is_terminal else Console(width=200)
    t = Table(title=f"snapshots against deltas, {data['clients']:,} sockets over {data['instruments']} instruments "
                    "(latency from exchange time ts; CPU of the bridge)")
    for col in ("depth", "rate", "books/s/instr", "mode", "delivered/s", "B/msg", "MB/s", "p50 ms", "p99 ms",
                "bridge µs/delivery", "deltas", "resyncs", "gaps/failures", "verdict"):
        t.add_column(col, justify="left" if col in ("mode", "verdict") else "right")
    for r in data["points"]:
        if "p99_ms" not in r:
            t.add_row(str(r["depth"]), f"{r['rate']:g}", "", r["mode"], "0", "", "", "", "", "", "", "", "", f"[red]{r['why']}[/]")
            continue
        d = r.get("deltas") or {}
        t.add_row(str(r["depth"]), f"{r['rate']:g}", f"{r['offered_books_per_instrument']:.0f}", r["mode"],
                  f"{r['delivered_per_s']:,.0f}", f"{r['bytes_per_message'] or 0:,.0f}", f"{r['bytes_per_s'] / 1e6:.1f}",
                  f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}", f"{r['cpu_us_per_delivery']:.1f}",
                  f"{d['messages'] / max(1, d['messages'] + d['snapshots']):.0%}" if d else "-",
                  f"{d['resyncs']:,}" if d else "-", f"{d['gaps']}/{d['checksum_failures']}" if d else "-",
                  "[green]ok[/]" if r["ok"] else f"[red]{r['why']}[/]")
    out.print(t)
    for depth, s in data["summary"].items():
        caps = s["capacity"]
        out.print(f"depth {depth}: capacity (p99 < 50 ms) snapshots {caps['snapshots']['capacity']:,.0f} msgs/s, "
                  f"deltas {caps['deltas']['capacity']:,.0f} msgs/s (x{s['capacity_ratio']})")
        for x in s["by_rate"]:
            b, c = x["bytes_per_message"], x["cpu_us_per_delivery"]
            out.print(f"  rate {x['rate']:g}: {b['snapshots']:,.0f} B against {b['deltas']:,.0f} B per delivered message "
                      f"({x['bytes_ratio']}x fewer), bridge {c['snapshots']:.1f} against {c['deltas']:.1f} µs per delivery")


def chart(data: dict[str, Any], path: Path) -> None:
    """Bytes per delivered message, snapshots against deltas, per depth (SVG, pygal)."""
    import pygal
    from pygal.style import CleanStyle

    labels, series = [], {mode: [] for mode in MODES}  # type: ignore[var-annotated]
    for depth, s in data["summary"].items():
        for x in s["by_rate"]:
            labels.append(f"depth {depth}, {x['rate']:g} ev/s")
            for mode in MODES:
                series[mode].append(x["bytes_per_message"][mode])
    bars = pygal.HorizontalBar(style=CleanStyle, width=900, height=160 + 50 * len(labels), print_values=True,
                               value_formatter=lambda v: f"{v:,.0f} B", truncate_label=-1,
                               x_title=f"bytes per delivered message, {data['clients']:,} sockets ({data['cores']} cores)")
    bars.title = f"Snapshots against deltas ({data['started'][:10]})\n{data['command']}"
    bars.x_labels = labels
    for mode in MODES:
        bars.add(mode, series[mode])
    path.parent.mkdir(parents=True, exist_ok=True)
    bars.render_to_file(str(path))


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: every child process is stopped
    note = raise_open_files(a.clients * 2 + 1024)
    if note:
        report.say(note)
    command = "python -m bench.bench_deltas " + " ".join(sys.argv[1:] if argv is None else argv)
    data: dict[str, Any] = {
        "command": command.strip(), "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "cores": os.cpu_count(), "reference_ns": round(reference_ns(), 2), "python": platform.python_version(),
        "machine": platform.machine(), "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "clients": a.clients, "instruments": a.instruments, "verify_every": a.verify_every,
    }
    report.say(f"machine reference: an empty `for` loop takes {data['reference_ns']} ns CPU per iteration; "
               f"load average {' '.join(f'{x:.1f}' for x in data['loadavg_start'])}")
    with tempfile.TemporaryDirectory(prefix="md-deltas-") as tmp, RedisServer() as server:
        data["points"] = run(a, server.url, server.pid, Path(tmp))
    data["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    data["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
    data["summary"] = summary(data["points"])
    print_tables(data)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
    report.say(f"wrote {a.out}")
    if a.chart is not None:
        chart(data, a.chart)
        report.say(f"drew {a.chart}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
