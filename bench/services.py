"""The processes a fan-out benchmark starts: the pipeline and each contender.

A `Service` is one child process (its output kept in a log file, its CPU and RSS
read with psutil); a `Contender` is a named set of them plus the base URLs and the
protocol the load generator uses to reach it. `contender(name, ...)` knows how
each one is started: ours is `python -m marketdata bridge` (`ours-x2`: two of them on
two ports, the clients split between them; `ours-w2`: one with `--workers 2`, two
processes on one port), the peers live in bench/peers/, and `trivial` is the calibration server (bench/trivial_server.py).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import redis
from websockets.sync.client import connect

from marketdata.processes import LoggedProcess, ProcessError
from marketdata.supervisor.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
CONTENDERS = ("ours", "ours-x2", "ours-w2", "seed", "broadcaster", "socketio")
LABELS = {
    "ours": "ours, 1 bridge",
    "ours-x2": "ours, 2 bridges",
    "ours-w2": "ours, 1 bridge, --workers 2",
    "seed": "seed design (FastAPI + gRPC, send_json loop)",
    "broadcaster": "FastAPI + broadcaster (Redis)",
    "socketio": "python-socketio + AsyncRedisManager",
    "trivial": "bare picows server (calibration)",
}


class ServiceError(RuntimeError):
    pass


@dataclass(slots=True)
class Service:
    """One child process of the benchmark (it never outlives the benchmark: see
    marketdata/processes.py), its output in a log file, its CPU and RSS read by psutil."""

    name: str
    args: list[str]
    port: int | None = None  # ready once this port accepts connections
    process: LoggedProcess | None = None
    ps: psutil.Process | None = None

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return self.process.proc if self.process is not None else None

    @property
    def log_path(self) -> Path | None:
        return self.process.log_path if self.process is not None else None

    def start(self, logs: Path) -> Service:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
        process = LoggedProcess(self.name, [sys.executable, *self.args], logs / f"{self.name}.log", env=env, cwd=ROOT)
        self.process = process.start()
        self.ps = psutil.Process(process.proc.pid)  # type: ignore[union-attr]  # started just above
        return self

    def wait_port(self, timeout: float = 30.0) -> None:
        if self.port is None or self.process is None:
            return
        try:
            self.process.wait_port(self.port, timeout)
        except ProcessError as exc:
            raise ServiceError(f"{exc}: {self.tail()}") from None

    def tail(self, lines: int = 5) -> str:
        return " | ".join(self.process.tail(lines)) if self.process is not None else ""

    def _tree(self) -> list[psutil.Process]:
        """The process and the children it started (a bridge's --workers)."""
        if self.ps is None:
            return []
        try:
            return [self.ps, *self.ps.children(recursive=True)]
        except psutil.Error:
            return [self.ps]

    def cpu(self) -> float:
        """CPU seconds (user + system) the process and its children used so far."""
        total = 0.0
        for p in self._tree():
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    def rss(self) -> int:
        total = 0
        for p in self._tree():
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        return total

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is not None:
            self.process.stop(timeout)


@dataclass(slots=True)
class Contender:
    name: str
    services: list[Service]
    urls: tuple[str, ...]
    protocol: str = "single"
    logs: Path = field(default_factory=lambda: Path(tempfile.gettempdir()))

    @property
    def label(self) -> str:
        return LABELS.get(self.name, self.name)

    def launch(self) -> Contender:
        for s in self.services:
            s.start(self.logs)
        return self

    def wait_ready(self, probe_instrument: str, timeout: float = 60.0) -> None:
        """Until every port listens and every URL delivers a book."""
        try:
            for s in self.services:
                s.wait_port(timeout)
            for url in self.urls:
                first_book(url, self.protocol, probe_instrument, timeout)
                if self.name == "ours-w2":  # the kernel spreads connections over listening workers only
                    workers_serving(url, 2, timeout)
        except BaseException:
            self.stop()
            raise

    def start(self, probe_instrument: str, timeout: float = 60.0) -> None:
        self.launch().wait_ready(probe_instrument, timeout)

    def stop(self) -> None:
        for s in reversed(self.services):
            s.stop()

    def cpu(self) -> float:
        return sum(s.cpu() for s in self.services)

    def rss(self) -> int:
        return sum(s.rss() for s in self.services)


def first_book(base: str, protocol: str, instrument: str, timeout: float) -> None:
    """Wait until a socket on `base` receives a book of `instrument` (the contender is fed)."""
    from marketdata.loadtest.runner import socket_url

    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            with connect(socket_url(base, protocol, instrument), open_timeout=5, max_size=None) as ws:
                while time.monotonic() < deadline:
                    data = ws.recv(timeout=max(0.1, deadline - time.monotonic()))
                    text = data if isinstance(data, str) else data.decode()
                    if protocol == "socketio":
                        if text.startswith("0{"):
                            ws.send("40")
                        elif text.startswith("40"):
                            ws.send(f'42["subscribe","{instrument}"]')
                        elif text == "2":
                            ws.send("3")
                    if '"type":"book"' in text:
                        return
        except Exception as exc:  # noqa: BLE001 - refused, closed, timed out: all mean "not yet"
            last = f"{type(exc).__name__}: {exc}"
            time.sleep(0.2)
    raise ServiceError(f"no book from {base} ({protocol}) within {timeout:.0f} s: {last}")


def workers_serving(base: str, n: int, timeout: float) -> None:
    """Wait until the bridge's /metrics lists `n` workers (each publishes once it listens)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{base}/metrics", timeout=2) as res:
            if res.read().count(b"bridge_worker_sockets_open{") >= n:
                return
        time.sleep(0.2)
    raise ServiceError(f"{base} did not list {n} serving workers in /metrics within {timeout:.0f} s")


def _py(module: str, *args: str) -> list[str]:
    return ["-m", module, *args]


def contender(name: str, redis_url: str, sim: str, logs: Path, trivial_rate: float = 100.0) -> Contender:
    """How each contender is started, each on free ports."""
    quiet = ("--log-level", "warning")
    if name in ("ours", "ours-x2", "ours-w2"):
        ports = [free_port() for _ in range(2 if name == "ours-x2" else 1)]
        workers = ("--workers", "2") if name == "ours-w2" else ()
        services = [Service(f"bridge-{p}", _py("marketdata", "bridge", "--port", str(p), "--redis-url", redis_url, *workers, *quiet), p)
                    for p in ports]
        return Contender(name, services, tuple(f"http://127.0.0.1:{p}" for p in ports), "single", logs)
    port = free_port()
    url = (f"http://127.0.0.1:{port}",)
    if name == "seed":
        return Contender(name, [Service("seed", _py("bench.peers.seed_app", "--port", str(port), "--sim", sim), port)], url, "single", logs)
    if name == "broadcaster":
        return Contender(name, [Service("broadcaster", _py("bench.peers.broadcaster_app", "--port", str(port), "--redis-url", redis_url), port)],
                         url, "single", logs)
    if name == "socketio":
        return Contender(name, [
            Service("socketio", _py("bench.peers.socketio_app", "--port", str(port), "--redis-url", redis_url), port),
            Service("socketio-relay", _py("bench.peers.socketio_relay", "--redis-url", redis_url)),
        ], url, "socketio", logs)
    if name == "trivial":
        return Contender(name, [Service("trivial", ["bench/trivial_server.py", "--port", str(port), "--rate", str(trivial_rate)], port)],
                         url, "single", logs)
    raise ValueError(f"unknown contender {name!r} (choose from {', '.join(CONTENDERS)}, trivial)")


@dataclass(slots=True)
class Pipeline:
    """Redis, the simulator and the ingestor: the feed every contender shares."""

    redis_url: str
    logs: Path
    redis_pid: int | None = None  # counted in cpu() when given
    rate: float = 0.0
    sim_port: int = 0
    services: list[Service] = field(default_factory=list)

    @property
    def sim(self) -> str:
        return f"127.0.0.1:{self.sim_port}"

    def start(self, rate: float, seed: int = 1) -> None:
        self.stop()
        client = redis.Redis.from_url(self.redis_url)  # no book of the previous feed may be served as "last value"
        client.flushall()
        client.close()
        self.rate = rate
        self.sim_port = free_port()
        quiet = ("--log-level", "warning")
        self.services = [
            Service(f"sim-{rate:g}", _py("marketdata", "sim", "--port", str(self.sim_port), "--rate", f"{rate:g}", "--seed", str(seed), *quiet), self.sim_port),
            Service(f"ingest-{rate:g}", _py("marketdata", "ingest", "--sim", self.sim, "--redis-url", self.redis_url, *quiet)),
        ]
        self.services[0].start(self.logs).wait_port()
        self.services[1].start(self.logs)

    def cpu(self) -> float:
        """CPU seconds of the simulator, the ingestor and Redis."""
        total = sum(s.cpu() for s in self.services)
        if self.redis_pid is not None:
            with contextlib.suppress(psutil.Error):
                t = psutil.Process(self.redis_pid).cpu_times()
                total += t.user + t.system
        return total

    def stop(self) -> None:
        for s in reversed(self.services):
            s.stop()
        self.services = []
