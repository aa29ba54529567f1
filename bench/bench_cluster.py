"""One Redis against a 3-shard Redis Cluster, side by side: messages out, Redis CPU, latency, bridge cost.

Run: .venv/bin/python bench/bench_cluster.py                      (about 4 minutes)
     .venv/bin/python bench/bench_cluster.py --quick              (a smoke run, seconds)
     .venv/bin/python bench/bench_cluster.py --modes single --rates 1000,5000 --json out.json

One run measures each mode in turn with the same offered rates and the same payloads:
`single` (marketdata.supervisor.redis_server.RedisServer), `cluster` (3 primaries, no
replica: like for like with the single server) and `cluster-replicas` (3 primaries with
one replica each, as the test fixture runs it: the primaries also feed their replicas).
In each: 1,000 instruments (marketdata.instruments.universe), one publisher process
writing their 25-level books round-robin through the ingestor's publish path, and 4
subscriber processes, each a bridge's Redis side subscribed to all 1,000 book channels
(bench/cluster_roles.py has both). Every process is its own, so the 2 cores are
shared as in production.

Per step (offered books/s in): books published/s, messages out of Redis/s (counted by
the subscribers), delivered/offered (messages out / (offered x bridges)), each Redis
process's CPU (utime+stime from /proc over the window) and its CPU per message out,
the publisher's pipeline round trip p50/p99 (publish latency) and publish time to a
subscriber's read p50/p99, the subscribers' CPU per message and the CPU of the
publisher and the busiest subscriber: the process nearest 100 % is the one that
saturates. Stepping stops after a step that delivers less than 90 % of what was
offered (`--all-steps` runs them all). Before the steps: each subscriber's time, CPU
and memory to subscribe the 1,000 channels (and fetch their last values), and Redis's
memory for the 4,000 subscriptions.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
import redis  # noqa: E402

from bench.cluster_roles import LEASE_VALUE  # noqa: E402
from bench.machine import reference_line, reference_ns  # noqa: E402
from marketdata import schema  # noqa: E402
from marketdata.processes import child_options, stop  # noqa: E402
from marketdata.supervisor.redis_server import RedisServer  # noqa: E402

MODES = ("single", "cluster", "cluster-replicas")
KEEP_UP = 0.9  # a step that delivers less than this share of what was offered is the last one


@dataclass
class Servers:
    """What a mode's Redis gives the run: the roles' URLs and the server processes to watch."""

    ingest_url: str
    bridge_url: str
    admins: list[redis.Redis]  # one admin client per primary (memory), the lease set through the first
    pids: dict[str, int]  # label -> pid of every server process (replicas included)


@contextlib.contextmanager
def servers(mode: str) -> Iterator[Servers]:
    if mode == "single":
        with RedisServer() as server:
            admin = redis.Redis.from_url(server.url)
            admin.set(schema.Keys().leader, LEASE_VALUE)  # the lease, held by the publisher
            yield Servers(server.url_for("ingest"), server.url_for("bridge"), [admin], {"redis": server.pid or 0})
            admin.close()
        return
    from marketdata.supervisor.redis_cluster import RedisClusterServer  # the cluster-server branch's fixture

    with RedisClusterServer(3, replicas=1 if mode == "cluster-replicas" else 0) as cluster:
        srv = cluster_servers(cluster)
        yield srv
        for admin in srv.admins:
            admin.close()


def cluster_servers(cluster) -> Servers:  # type: ignore[no-untyped-def]
    """The cluster's roles' URLs (any node: clients find the others), an admin per primary, every node's pid."""
    nodes = sorted(cluster.nodes, key=lambda n: (n.role != "primary", n.port))
    admin = urlsplit(cluster.url)
    admins = [redis.Redis.from_url(admin._replace(netloc=f"{admin.netloc.rsplit(':', 1)[0]}:{n.port}").geturl())
              for n in nodes if n.role == "primary"]  # fmt: skip
    pids = {f"{n.role} :{n.port}": n.pid for n in nodes}
    return Servers(cluster.url_for("ingest"), cluster.url_for("bridge"), admins, pids)


class Child:
    """A bench/cluster_roles.py process: one command line in, one JSON line out."""

    def __init__(self, role: str, url: str, cluster: bool, instruments: int) -> None:
        argv = [sys.executable, "-m", "bench.cluster_roles", role, "--url", url, "--instruments", str(instruments)]
        if cluster:
            argv.append("--cluster")
        self.role = role
        self.proc = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, **child_options())
        self.ready: dict = {}

    def read(self) -> dict:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"{self.role} exited ({self.proc.wait()}); its error is above")
        return json.loads(line)

    def wait_ready(self) -> dict:
        self.ready = self.read()["ready"]
        return self.ready

    def ask(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        stop(self.proc, grace=5)


def cpu(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds so far of each server, from the scheduler's nanosecond count of every thread
    (/proc/PID/task/*/schedstat; utime+stime tick at 10 ms, too coarse for a few % over seconds)."""
    out = {}
    for label, pid in pids.items():
        total = 0
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):  # a thread that just ended
                total += int((task / "schedstat").read_text().split()[0])
        out[label] = total / 1e9
    return out


def script_time(admins: list[redis.Redis]) -> tuple[int, int, int]:
    """(EVAL and EVALSHA calls, µs spent in them, clients dropped past their output buffer limit) so far over the primaries.

    The scripts' time includes their PUBLISHes; a reader too slow for its messages is dropped
    by the server once its pub/sub output buffer passes the limit (32 MB, or 8 MB for 60 s)."""
    stats = [s for a in admins for info in [a.info("commandstats")] for s in (info.get("cmdstat_eval", {}), info.get("cmdstat_evalsha", {}))]
    dropped = sum(int(a.info("stats").get("client_output_buffer_limit_disconnections", 0)) for a in admins)
    return sum(int(x.get("calls", 0)) for x in stats), sum(int(x.get("usec", 0)) for x in stats), dropped


def used_memory(admins: list[redis.Redis]) -> int:
    return sum(int(a.info("memory")["used_memory"]) for a in admins)


def measure(mode: str, readers: str, args: argparse.Namespace) -> dict:
    """Every step of one mode and kind of reader; stops after the first that falls behind (unless --all-steps)."""
    cluster = mode != "single"
    with servers(mode) as srv:
        pub = Child("publisher", srv.ingest_url, cluster, args.instruments)
        subs: list[Child] = []
        try:
            pub.wait_ready()
            pub.ask("prime")
            pub.read()
            mem0 = used_memory(srv.admins)
            for _ in range(args.bridges):  # one at a time: each one's subscribe time is its own
                subs.append(Child("subscriber" if readers == "bridge" else "reader", srv.bridge_url, cluster, args.instruments))
                subs[-1].wait_ready()
            mem1 = used_memory(srv.admins)
            result = {"mode": mode, "readers": readers, "servers": list(srv.pids), "subscribe": [s.ready for s in subs],
                      "redis_bytes_per_subscription": (mem1 - mem0) / (args.bridges * args.instruments),
                      "payload_bytes": pub.ready["payload_bytes"], "steps": []}  # fmt: skip
            result["redis_idle_cpu"] = idle_cpu(srv.pids, args.seconds)
            show_subscribe(result)
            for rate in args.rates:
                step = measure_step(rate, pub, subs, srv, result["redis_idle_cpu"], args)
                result["steps"].append(step)
                show_step(step)
                if step["failed"] or step["delivered_share"] < KEEP_UP and not args.all_steps:
                    break
        finally:
            for child in [*subs, pub]:
                child.stop()
    return result


def mark(children: list[Child]) -> list[dict]:
    for c in children:
        c.ask("mark")
    return [c.read() for c in children]


def idle_cpu(pids: dict[str, int], seconds: float) -> dict[str, float]:
    """Each server's CPU with every reader subscribed and nothing published (cron, and the cluster bus's gossip)."""
    c0, t0 = cpu(pids), time.perf_counter()
    time.sleep(seconds)
    c1, secs = cpu(pids), time.perf_counter() - t0
    return {k: (c1[k] - c0[k]) / secs for k in pids}


def measure_step(rate: float, pub: Child, subs: list[Child], srv: Servers, idle: dict[str, float],
                 args: argparse.Namespace) -> dict:  # fmt: skip
    dropped0 = script_time(srv.admins)[2]  # from the warm-up on
    pub.ask(f"rate {rate}")
    pub.read()
    time.sleep(args.warmup)
    pids = srv.pids
    machine0, redis0, scripts0 = psutil.cpu_times(), cpu(pids), script_time(srv.admins)
    p0, s0 = mark([pub])[0], mark(subs)
    time.sleep(args.seconds)
    p1, s1 = mark([pub])[0], mark(subs)
    machine1, redis1, scripts1 = psutil.cpu_times(), cpu(pids), script_time(srv.admins)
    pub.ask("rate 0")  # quiet between steps: the next one's warm-up starts from an empty backlog
    pub.read()
    secs = p1["t"] - p0["t"]
    books = (p1["books"] - p0["books"]) / secs
    got = [(b["messages"] - a["messages"]) for a, b in zip(s0, s1)]
    out = sum(got) / secs
    sub_cpu = [(b["cpu_s"] - a["cpu_s"]) for a, b in zip(s0, s1)]
    redis_cpu = {k: (redis1[k] - redis0[k]) / secs for k in pids}
    busy = sum(redis_cpu.values())
    total = sum(machine1) - sum(machine0)
    idle_s = (machine1.idle + getattr(machine1, "iowait", 0.0)) - (machine0.idle + getattr(machine0, "iowait", 0.0))
    p50s = sorted(s["lat_p50_ms"] for s in s1 if s["lat_p50_ms"] is not None)
    p99s = [s["lat_p99_ms"] for s in s1 if s["lat_p99_ms"] is not None]
    return {
        "offered_books_per_s": rate,
        "published_books_per_s": books,
        "coalesced_per_s": (p1["coalesced"] - p0["coalesced"]) / secs,
        "publish_errors": p1["errors"] - p0["errors"],
        "drains_per_s": (p1["drains"] - p0["drains"]) / secs,
        "messages_out_per_s": out,
        "delivered_share": out / (rate * len(subs)),
        "redis_cpu": redis_cpu,
        "redis_us_per_message_out": busy * secs * 1e6 / max(1, sum(got)),
        # the same without what the servers burn idle: the cost that grows with the messages
        "redis_marginal_us_per_message_out": (busy - sum(idle.values())) * secs * 1e6 / max(1, sum(got)),
        "scripts_per_s": (scripts1[0] - scripts0[0]) / secs,
        "script_us_per_book": (scripts1[1] - scripts0[1]) / max(1, p1["books"] - p0["books"]),
        "output_buffer_drops": scripts1[2] - dropped0,
        "publish_rtt_p50_ms": p1["rtt_p50_ms"],
        "publish_rtt_p99_ms": p1["rtt_p99_ms"],
        "latency_p50_ms": p50s[len(p50s) // 2] if p50s else None,  # the median subscriber's
        "latency_p99_ms": max(p99s) if p99s else None,  # the worst subscriber's
        "subscriber_us_per_message": sum(sub_cpu) * 1e6 / max(1, sum(got)),
        "subscriber_cpu_max": max(sub_cpu) / secs,
        "publisher_cpu": (p1["cpu_s"] - p0["cpu_s"]) / secs,
        "publisher_us_per_book": (p1["cpu_s"] - p0["cpu_s"]) * 1e6 / max(1, p1["books"] - p0["books"]),
        "subscriber_rss_mb": max(s["rss_mb"] for s in s1),
        "resubscribes": sum(s["resubscribes"] for s in s1),
        "failed": [s["failed"] for s in s1 if "failed" in s],
        "machine_busy": 1 - idle_s / total if total else None,
        "load_1min": os.getloadavg()[0],
    }


def show_subscribe(r: dict) -> None:
    ready = r["subscribe"]
    n = ready[0]["channels"]
    print(f"\n== {r['mode']}, {r['readers']} readers: servers {', '.join(r['servers'])}; {len(ready)} readers x {n:,} channels; "
          f"{r['payload_bytes']:,.0f} B a book", flush=True)  # fmt: skip
    per_sub = [(s["rss_mb"] - s["rss0_mb"]) * 1e6 / n for s in ready if "rss_mb" in s]
    if per_sub:
        print(f"subscribe {n:,} channels + fetch last values, per bridge: "
              f"{min(s['subscribe_s'] for s in ready) * 1000:,.0f}-{max(s['subscribe_s'] for s in ready) * 1000:,.0f} ms wall, "
              f"{sum(s['subscribe_cpu_s'] for s in ready) / len(ready) * 1e6 / n:,.0f} µs CPU per subscription, "
              f"RSS +{sum(per_sub) / len(per_sub) / 1000:,.1f} KB per subscription (+{ready[0]['rss_mb'] - ready[0]['rss0_mb']:,.1f} MB); "
              f"Redis memory {r['redis_bytes_per_subscription']:,.0f} B per subscription", flush=True)  # fmt: skip
    else:
        print(f"raw readers: {ready[0]['connections']} connection(s) each; Redis memory {r['redis_bytes_per_subscription']:,.0f} B "
              "per subscription", flush=True)  # fmt: skip
    print("Redis CPU idle (subscribed, nothing published): " + " ".join(f"{v:.1%}" for v in r["redis_idle_cpu"].values()))
    print(f"{'offered/s':>9} {'books/s':>8} {'out msg/s':>9} {'deliv':>5} {'Redis CPU (per node)':>24} {'µs/msg (>idle)':>14} {'script µs/book':>14} "
          f"{'pub rtt p50/p99 ms':>18} {'pub->sub p50/p99 ms':>19} {'sub µs/msg':>10} {'sub max':>7} {'pub':>5} {'machine':>7}", flush=True)  # fmt: skip


def show_step(s: dict) -> None:
    def ms(x: float | None) -> str:
        return "-" if x is None else f"{x:.1f}"

    nodes = " ".join(f"{v:.0%}" for v in s["redis_cpu"].values())
    print(f"{s['offered_books_per_s']:>9,.0f} {s['published_books_per_s']:>8,.0f} {s['messages_out_per_s']:>9,.0f} "
          f"{s['delivered_share']:>5.0%} {nodes:>24} {s['redis_us_per_message_out']:>5.2f} ({s['redis_marginal_us_per_message_out']:>5.2f}) "
          f"{s['script_us_per_book']:>14.1f} "
          f"{ms(s['publish_rtt_p50_ms']) + ' / ' + ms(s['publish_rtt_p99_ms']):>18} "
          f"{ms(s['latency_p50_ms']) + ' / ' + ms(s['latency_p99_ms']):>19} {s['subscriber_us_per_message']:>10.1f} "
          f"{s['subscriber_cpu_max']:>7.0%} {s['publisher_cpu']:>5.0%} {s['machine_busy']:>7.0%}"
          + (f"  {s['publish_errors']} publish errors" if s["publish_errors"] else "")
          + (f"  {s['resubscribes']} resubscribes" if s["resubscribes"] else "")
          + (f"  {len(s['failed'])} subscribers lost: {s['failed'][0]}" if s["failed"] else "")
          + (f" ({s['output_buffer_drops']} dropped by Redis: output buffer limit)" if s["output_buffer_drops"] else ""), flush=True)  # fmt: skip


def summarise(results: list[dict], bridges: int) -> list[str]:
    """Where each mode's limit is: the saturating process, and the rate at which Redis would fill a core."""
    lines = []
    for r in results:
        if not r["steps"]:
            continue
        kept = [s for s in r["steps"] if s["delivered_share"] >= KEEP_UP] or r["steps"][:1]
        top = kept[-1]
        name, busiest = max(top["redis_cpu"].items(), key=lambda kv: kv[1])
        idle = r["redis_idle_cpu"][name]
        us, marginal = top["redis_us_per_message_out"], top["redis_marginal_us_per_message_out"]
        # the busiest server fills its core when idle + (busiest - idle) x (rate / this rate) = 1 (shards share slots evenly)
        per_core = top["messages_out_per_s"] * (1 - idle) / (busiest - idle) if busiest > idle else 0.0
        # with a core each, the process whose ceiling (in books/s in) is lowest saturates first
        ceilings = {"publisher": 1e6 / top["publisher_us_per_book"], "a reader": 1e6 / top["subscriber_us_per_message"],
                    "redis (busiest server)": per_core / bridges}  # fmt: skip
        first = min(ceilings, key=ceilings.__getitem__)
        lines.append(
            f"{r['mode']}, {r['readers']} readers: highest step kept up: {top['offered_books_per_s']:,.0f} books/s in, "
            f"{top['messages_out_per_s']:,.0f} msgs/s out; Redis {us:.2f} µs CPU per message out (all servers; {marginal:.2f} "
            f"above idle), busiest server at {busiest:.0%} ({idle:.0%} idle): it would fill a core at about {per_core:,.0f} msgs/s "
            f"out; with a core each, ceilings in books/s in: "
            + ", ".join(f"{k} {v:,.0f}" for k, v in ceilings.items())
            + f" -> {first} saturates first"
        )
        r["ceilings_books_per_s"], r["first_limit"] = ceilings, first
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma list of {', '.join(MODES)}")
    ap.add_argument("--rates", default="1000,2000,5000,10000,20000,40000,80000,160000", help="offered books/s in, comma list")
    ap.add_argument("--readers", default="bridge,raw",
                    help="comma list: bridge (the bridge's Redis side, redis-py), raw (bytes counted: Redis is what saturates)")
    ap.add_argument("--bridges", type=int, default=4, help="subscriber processes, each on every book channel")
    ap.add_argument("--instruments", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=5.0, help="measured window of each step")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds at the step's rate before the window")
    ap.add_argument("--all-steps", action="store_true", help="go on stepping after a step that fell behind")
    ap.add_argument("--quick", action="store_true", help="smoke run: single and cluster, two short steps")
    ap.add_argument("--json", type=Path, help="also write every step to this file")
    args = ap.parse_args()
    if args.quick:
        args.modes, args.readers, args.rates, args.seconds, args.warmup = "single,cluster", "bridge", "500,2000", 1.0, 0.5
    args.rates = [float(r) for r in args.rates.split(",") if r]
    modes = [m for m in args.modes.split(",") if m]
    readers = [r for r in args.readers.split(",") if r]
    if unknown := set(modes) - set(MODES):
        ap.error(f"unknown modes {', '.join(sorted(unknown))}")
    ref, load0 = reference_ns(), os.getloadavg()
    print(reference_line())
    print(f"cluster benchmark: {args.instruments:,} instruments, {args.bridges} bridges on every book channel, "
          f"{args.seconds:g} s windows after {args.warmup:g} s warm-up, {os.cpu_count()} cores", flush=True)  # fmt: skip
    results = [measure(mode, kind, args) for mode in modes for kind in readers]
    print()
    for line in summarise(results, args.bridges):
        print(line)
    print(f"load average (1 min) before/after: {load0[0]:.1f} / {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    if args.json:
        args.json.write_text(json.dumps({"reference_ns": ref, "loadavg_start": load0, "bridges": args.bridges,
                                         "instruments": args.instruments, "seconds": args.seconds,
                                         "warmup": args.warmup, "modes": results}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
