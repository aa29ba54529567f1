"""The whole system as separate processes that the fault suite kills, pauses and restarts one by one.

An embedded Redis (marketdata.supervisor.redis_server), or an embedded Redis Cluster of
N primaries each with a replica (marketdata.supervisor.redis_cluster), the simulator, N ingestors and
N bridges, each a `LoggedProcess` (marketdata.processes: its own session, and
on Linux it dies with this process whatever ends it), on loopback ports chosen once, so
that a restarted process comes back where its clients look for it. Who leads is read
where the ingestors decide it, the lease key (`md:leader`, or `md:{leader}` in a cluster:
`TOKEN ingest:HOST:PID:...`);
whether a standby is warm, from its /metrics.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil
import redis
import redis.cluster
from marketdata.supervisor.redis_cluster import RedisClusterServer
from prometheus_client.parser import text_string_to_metric_families

from marketdata.ingest.lease import Holder
from marketdata.processes import LoggedProcess, port_open
from marketdata.schema import Keys
from marketdata.supervisor.ports import free_port
from marketdata.supervisor.redis_server import RedisServer

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
WARM_EVENTS = 50  # events a standby has applied before it counts as warm
CLUSTER_NODE_TIMEOUT = 2.0  # seconds before a cluster fails a silent primary over to its replica


@dataclass(slots=True)
class Role:
    """One role process: its name, its process (restartable with the same argv), the ports it serves."""

    name: str
    process: LoggedProcess
    port: int | None = None  # where it listens (simulator, bridge)
    metrics_port: int | None = None  # ingestors

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.alive

    def metrics(self) -> dict[str, float]:
        """Its /metrics as {sample: value}; {} while it does not answer."""
        if self.metrics_port is None:
            return {}
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=1) as answer:
                text = answer.read().decode()
        except (urllib.error.URLError, OSError):
            return {}
        return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}


class Cluster:
    """Start with `with Cluster(...) as cluster`; everything stops (bridges first, Redis last) on the way out."""

    def __init__(self, logs: Path, rate: float = 20.0, seed: int = 1, bridges: int = 2, ingestors: int = 2, lease: float = 1.0,
                 redis_cluster: int = 0, universe: int = 8) -> None:
        self.logs = logs
        self.lease = lease
        self.redis: RedisServer | RedisClusterServer = RedisClusterServer(redis_cluster, 1, node_timeout=CLUSTER_NODE_TIMEOUT) if redis_cluster else RedisServer()
        self.keys = Keys(cluster=bool(redis_cluster))
        mode = ("--redis-cluster",) if redis_cluster else ()
        # Every setting at its default unless passed here: no MD_* variable of the caller's leaks in.
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("MD_")}, "PYTHONUNBUFFERED": "1"}

        def role(name: str, *args: str, port: int | None = None, metrics_port: int | None = None, user: str = "") -> Role:
            """A role process; `user` is the Redis user it logs in as, whose URL it finds in MD_REDIS_URL (as under `up`),
            set once Redis runs (a cluster's URL names a node that serves)."""
            argv = [sys.executable, "-m", "marketdata", *args]
            if user:
                self._users[name] = user
            return Role(name, LoggedProcess(name, argv, logs / f"{name}.log", env=dict(env), cwd=ROOT), port, metrics_port)

        self._users: dict[str, str] = {}

        sim_port = free_port()
        self.sim = role("sim", "sim", "--host", "127.0.0.1", "--port", str(sim_port), "--rate", f"{rate:g}", "--seed", str(seed),
                        "--universe", str(universe), port=sim_port)
        self.ingestors = []
        for i in range(ingestors):
            m = free_port()
            self.ingestors.append(role(f"ingest-{i + 1}", "ingest", "--sim", f"127.0.0.1:{sim_port}", "--lease", f"{lease:g}",
                                       "--metrics-port", str(m), *mode, metrics_port=m, user="ingest"))
        self.bridges = []
        for i in range(bridges):
            p = free_port()
            self.bridges.append(role(f"bridge-{i + 1}", "bridge", "--host", "127.0.0.1", "--port", str(p), *mode, port=p, user="bridge"))
        self._client: redis.Redis | redis.cluster.RedisCluster | None = None
        self._paused: set[int] = set()

    @property
    def inspect_url(self) -> str:
        """What the suite reads Redis with (the lease, the bus): the read-only user."""
        return self.redis.url_for("inspect")

    @property
    def urls(self) -> list[str]:
        """The bridges' WebSocket base URLs."""
        return [f"ws://127.0.0.1:{b.port}" for b in self.bridges]

    @property
    def roles(self) -> list[Role]:
        return [self.sim, *self.ingestors, *self.bridges]

    def __enter__(self) -> Cluster:
        self.logs.mkdir(parents=True, exist_ok=True)
        try:
            self.redis.start()
            if isinstance(self.redis, RedisClusterServer):
                self._client = redis.cluster.RedisCluster.from_url(self.inspect_url, socket_connect_timeout=0.5, socket_timeout=1.0)
            else:
                self._client = redis.Redis.from_url(self.inspect_url, socket_connect_timeout=0.5, socket_timeout=1.0)
            for r in self.roles:
                if r.name in self._users:
                    r.process.env["MD_REDIS_URL"] = self.redis.url_for(self._users[r.name])  # type: ignore[index]
                r.process.start()
            for r in (self.sim, *self.bridges):
                self.wait_listening(r)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for pid in list(self._paused):
            self.resume_pid(pid)
        for group in (self.bridges, self.ingestors, [self.sim]):
            for r in group:
                r.process.stop(5.0)
        if self._client is not None:
            self._client.close()
        self.redis.close()

    # -- who is who ---------------------------------------------------------------

    def leader(self) -> Role | None:
        """The ingestor whose name the lease key holds, None when nobody leads (or Redis does not answer)."""
        if self._client is None:
            return None
        try:
            holder = Holder.parse(self._client.get(self.keys.leader))
        except (redis.RedisError, OSError):
            return None
        if holder is None:
            return None
        pid = holder.name.rsplit(":", 2)[-2]
        return next((r for r in self.ingestors if str(r.pid) == pid), None)

    def standbys(self) -> list[Role]:
        lead = self.leader()
        return [r for r in self.ingestors if r is not lead]

    def unready(self) -> str | None:
        """Why the system is not whole (a process down, no leader, a cold standby), or None."""
        if isinstance(self.redis, RedisClusterServer):
            down = self.redis.dead_ports()
            if down:
                return f"redis cluster node(s) {', '.join(map(str, down))} down"
        elif not self.redis.alive:
            return "redis is down"
        for r in self.roles:
            if not r.alive:
                return f"{r.name} is not running"
        lead = self.leader()
        if lead is None:
            return "no ingestor holds the lease"
        for r in self.standbys():
            m = r.metrics()
            if m.get("ingest_sim_live") != 1 or m.get("ingest_leader") != 0 or m.get("ingest_events_total", 0) < WARM_EVENTS:
                return f"{r.name} is not a warm standby yet"
        return None

    # -- faults -----------------------------------------------------------------------

    def kill(self, r: Role) -> None:
        """SIGKILL, and reaped: when this returns the process is gone."""
        r.process.kill()

    def restart(self, r: Role) -> None:
        r.process.start()

    def wait_listening(self, r: Role, timeout: float = 30.0) -> None:
        assert r.port is not None
        r.process.wait_until(lambda: port_open(r.port), timeout, f"{r.name} to listen on port {r.port}")

    def pause(self, r: Role) -> int:
        """SIGSTOP; returns once the kernel reports the process stopped."""
        pid = r.pid
        assert pid is not None
        self._paused.add(pid)
        os.kill(pid, signal.SIGSTOP)
        proc = psutil.Process(pid)
        deadline = time.monotonic() + 5.0
        while proc.status() != psutil.STATUS_STOPPED and time.monotonic() < deadline:
            time.sleep(0.001)
        return pid

    def resume_pid(self, pid: int) -> None:
        self._paused.discard(pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)

    def kill_redis(self) -> None:
        self.redis.kill()

    def restart_redis(self) -> None:
        """The same port and folder; start() returns once it answers PING."""
        self.redis.start()

    # -- a Redis Cluster's nodes ----------------------------------------------------------

    def shard_of(self, instrument: str) -> int:
        """The port of the primary that owns `instrument`'s slot now."""
        assert isinstance(self.redis, RedisClusterServer)
        return self.redis.primary_for(self.keys.book(instrument))

    def kill_node(self, port: int) -> None:
        assert isinstance(self.redis, RedisClusterServer)
        self.redis.kill(port)

    def restart_node(self, port: int) -> None:
        """Start a killed node again in its folder: it rejoins the cluster (as a replica of its promoted one)."""
        assert isinstance(self.redis, RedisClusterServer)
        self.redis.restart(port)
