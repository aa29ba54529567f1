"""`marketdata bridge --workers N`: N bridge processes serving one port, so a bridge uses every core.

One bridge is one event loop on one core: when every instrument ticks at once, all of
its sockets are due together on that core. With `--workers N` (0: one per core) this
process serves nothing itself; it starts N workers (`python -m bridge.workers`), each a
whole bridge with its own Redis subscriptions, hub and sockets, as stateless as one
bridge, and supervises them.

- **One port, the kernel balancing (Linux).** Each worker binds its own listening socket
  with SO_REUSEPORT and the kernel hashes every new connection to one of them: an even
  spread whatever each worker is busy with, no shared accept queue, no thundering herd.
  One listening socket inherited by every worker (uvicorn's `--workers`) would let
  whichever worker gets back to its loop first accept, so the spread follows scheduling
  luck; it would also need the descriptor handed to each child, which `spawn` (below)
  does not do. This process keeps one more SO_REUSEPORT socket on the port, bound but
  never listening (the kernel hands connections to listening sockets only): it refuses
  at once a port someone else holds, turns port 0 into one port for every worker, and
  keeps the port across restarts. A worker that dies resets the connections still
  waiting in its accept queue; its open sockets close and their clients reconnect,
  landing on the others.
- **macOS** (and the BSDs' plain SO_REUSEPORT) accepts the binds but does not balance:
  new connections go to one of the sockets, so in practice one worker takes them all and
  the others stand in when it dies (a warning says so). There, run bridges on several
  ports behind a balancer.
- **Supervision.** A worker that dies is restarted after a backoff (under half a second,
  doubling up to 10 s, from the start again once a worker has lived 30 s), with a log
  line. SIGINT (Ctrl-C) or SIGTERM: every worker gets SIGTERM and closes its sockets with
  1001, as one bridge does, SIGKILL after STOP_GRACE. Workers are started with
  marketdata.processes.spawn: each leads its own session (a Ctrl-C reaches
  only this process) and, on Linux, dies with this process even when it is killed with
  SIGKILL. A worker that exits before any worker has served ends the start with a
  one-line error and exit code 1.
- **Limits** (`--max-sockets`, `--max-sockets-per-address`, ...) apply to each worker: N
  workers hold up to N times `--max-sockets`, a client address up to N times its limit.
- **/metrics** of any worker answers for all of them (bridge.metrics.Board).
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import uvicorn

from bridge.app import Bridge, BridgeServer, build_server, create_app
from bridge.metrics import Board, Metrics
from marketdata.backoff import Backoff
from marketdata.errors import MarketDataError
from marketdata.logs import Throttled
from marketdata.processes import spawn
from marketdata.processes import stop as stop_child
from marketdata.settings import BridgeSettings

log = logging.getLogger(__name__)

SPEC_ENV = "MD_BRIDGE_WORKER"  # a worker's orders from its parent, JSON (settings, number, board)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
STOP_GRACE = 10.0  # seconds a worker gets after SIGTERM: uvicorn's graceful 5 s and the stuck-socket grace fit in it
POLL = 0.1  # seconds between two looks at the workers
LIVED = 30.0  # a worker that lived this long starts its next backoff from the beginning
PUBLISH_TICKS = 10  # uvicorn ticks every 0.1 s: a worker publishes its counters every second
SHARED_MEMORY = Path("/dev/shm")  # the board's home where it exists: snapshots never touch a disk


class WorkerError(MarketDataError):
    """The workers could not start (the port is taken, a worker failed before any served)."""


def worker_count(requested: int) -> int:
    """`requested`, or for 0 the number of cores this process may run on."""
    if requested > 0:
        return requested
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def shared_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port with SO_REUSEPORT, not listening yet (asyncio listens)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


# -- the parent ------------------------------------------------------------------------


@dataclass(slots=True)
class Worker:
    """One worker's place: its number stays, its process changes with each restart."""

    number: int
    generation: int = 0
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restart_at: float | None = None
    served: bool = False  # its current process published a snapshot, so it listens
    backoff: Backoff = field(default_factory=lambda: Backoff(initial=0.5, cap=10.0))

    @property
    def file(self) -> str:
        """Its current process's snapshot file on the board."""
        return Board.live_name(self.number, self.generation)


class Pool:
    """The parent's side: start the workers, restart the ones that die, stop them all."""

    def __init__(self, settings: BridgeSettings, count: int, board: Board) -> None:
        self.settings = settings  # what each worker serves: the resolved port, one process
        self.board = board
        self.workers = [Worker(n) for n in range(1, count + 1)]
        self.ever_served = False
        self.announced = False
        self.log_level = logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower()

    def start(self, worker: Worker) -> None:
        worker.generation += 1
        worker.served = False
        worker.restart_at = None
        spec = {"settings": dataclasses.asdict(self.settings), "worker": worker.number, "file": worker.file,
                "board": str(self.board.path), "log_level": self.log_level}
        # The settings travel in the environment, which only this user can read, not in argv
        # for `ps` to show: a Redis URL may carry a password.
        env = {**os.environ, SPEC_ENV: orjson.dumps(spec).decode()}
        # Output inherited: the workers' log lines go where this process's go.
        worker.proc = spawn([sys.executable, "-m", "bridge.workers", str(worker.number)], stdout=None, stderr=None, env=env)
        worker.started_at = time.monotonic()

    def start_all(self) -> None:
        for worker in self.workers:
            self.start(worker)

    def check(self) -> None:
        """Notice the workers that started serving or died; restart the dead ones whose backoff is over."""
        now = time.monotonic()
        for worker in self.workers:
            proc = worker.proc
            if proc is None:
                if worker.restart_at is not None and now >= worker.restart_at:
                    self.start(worker)
                continue
            if not worker.served and self.board.has(worker.file):
                worker.served = self.ever_served = True
            code = proc.poll()
            if code is None:
                continue
            worker.proc = None
            self.board.retire(worker.file)
            if not self.ever_served:
                raise WorkerError(f"bridge worker {worker.number} exited with code {code} before any worker served; see its log above")
            lived = now - worker.started_at
            if lived > LIVED:
                worker.backoff.reset()
            delay = worker.backoff.next()
            worker.restart_at = now + delay
            log.error("bridge worker %d (pid %d) exited with code %d after %.1f s; restarting it in %.1f s",
                      worker.number, proc.pid, code, lived, delay)
        if not self.announced and all(w.served for w in self.workers):
            self.announced = True
            pids = ", ".join(str(w.proc.pid) for w in self.workers if w.proc is not None)
            log.info("%d bridge workers serving port %d (pids %s)", len(self.workers), self.settings.port, pids)

    def stop(self) -> None:
        """SIGTERM to every worker at once, then wait for each (SIGKILL after STOP_GRACE in all)."""
        running = [w for w in self.workers if w.proc is not None]
        for worker in running:
            worker.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]  # a reaped one is skipped by Popen
        deadline = time.monotonic() + STOP_GRACE
        for worker in running:
            proc, worker.proc = worker.proc, None
            assert proc is not None
            try:
                code = proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                # One SIGTERM only: a second one, once uvicorn has put the default handler
                # back at the very end, would kill a worker that is exiting cleanly.
                log.warning("bridge worker %d did not stop within %.0f s of SIGTERM; killing it", worker.number, STOP_GRACE)
                code = stop_child(proc, 0.0, signal.SIGKILL)
            log.info("bridge worker %d stopped (exit code %d)", worker.number, code)


def _board_dir() -> Path:
    """A new private directory (mode 0700) for the workers' snapshots, in memory where possible."""
    where = SHARED_MEMORY if SHARED_MEMORY.is_dir() and os.access(SHARED_MEMORY, os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix="md-bridge-", dir=where))


def run(settings: BridgeSettings) -> int:
    """Serve `settings.port` from `settings.workers` processes until SIGINT or SIGTERM, then stop them all."""
    count = worker_count(settings.workers)
    one = dataclasses.replace(settings, workers=1)
    if count == 1:
        from bridge import app

        return app.run(one)
    if not hasattr(socket, "SO_REUSEPORT"):
        raise WorkerError("--workers needs SO_REUSEPORT, which this system lacks: run one bridge per port")
    if not sys.platform.startswith("linux"):
        log.warning("%s does not spread connections over SO_REUSEPORT sockets: one worker will take them all, "
                    "the others stand by (run bridges on several ports behind a balancer instead)", sys.platform)
    try:
        reserved = shared_socket(settings.host, settings.port)
    except OSError as exc:
        advice = "; stop whoever holds it or pass --port" if exc.errno == errno.EADDRINUSE else ""
        raise WorkerError(f"cannot serve {settings.host} port {settings.port}: {exc.strerror or exc}{advice}") from None
    received: list[int] = []  # a signal handler only records; the loop below acts (and logs)
    previous = {sig: signal.signal(sig, lambda signum, _frame: received.append(signum)) for sig in STOP_SIGNALS}
    board = Board(_board_dir())
    pool = Pool(dataclasses.replace(one, port=reserved.getsockname()[1]), count, board)
    try:
        pool.start_all()
        while not received:
            time.sleep(POLL)
            pool.check()
        log.info("%s received; stopping %d bridge workers", signal.Signals(received[0]).name, count)
    finally:
        pool.stop()
        reserved.close()
        shutil.rmtree(board.path, ignore_errors=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


# -- a worker --------------------------------------------------------------------------


class WorkerServer(BridgeServer):
    """A worker's server: it publishes its counters to the board once listening, then every second."""

    def __init__(self, config: uvicorn.Config, bridge: Bridge, metrics: Metrics) -> None:
        super().__init__(config, bridge)
        self.metrics = metrics
        self._failures = Throttled(log, 60.0)

    def _publish(self) -> None:
        try:
            self.metrics.publish()
        except OSError as exc:
            self._failures(logging.WARNING, "cannot publish this worker's counters for /metrics: %s", exc)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self._publish()  # the parent takes this first snapshot as "listening"

    async def on_tick(self, counter: int) -> bool:
        if counter % PUBLISH_TICKS == 0:
            self._publish()
        return await super().on_tick(counter)


def serve(spec: dict[str, Any]) -> int:
    """Run one worker as `spec` (from the parent) says; its exit code."""
    settings = BridgeSettings(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec["settings"].items()})
    try:
        sock = shared_socket(settings.host, settings.port)
    except OSError as exc:
        log.error("cannot bind %s port %d: %s", settings.host, settings.port, exc.strerror or exc)
        return 1
    app = create_app(settings)
    metrics: Metrics = app.state.metrics
    metrics.share(Board(Path(spec["board"])), spec["worker"], spec["file"])
    server = WorkerServer(build_server(settings, app).config, app.state.bridge, metrics)
    server.run(sockets=[sock])
    return 0 if server.started else 1


def main() -> int:
    raw = os.environ.get(SPEC_ENV)
    if raw is None:
        print("python -m bridge.workers is started by `marketdata bridge --workers N`, not by hand", file=sys.stderr)
        return 2
    spec = orjson.loads(raw)
    logging.basicConfig(
        level=spec["log_level"].upper(),
        format=f"%(asctime)s %(levelname)-7s %(name)s (worker {spec['worker']}): %(message)s",
        stream=sys.stderr,
    )
    return serve(spec)


if __name__ == "__main__":
    sys.exit(main())
