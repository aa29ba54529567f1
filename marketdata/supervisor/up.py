"""`marketdata up`: the whole system in one terminal.

Starts the embedded Redis (unless --redis-url names one; with --redis-cluster N, an
embedded Redis Cluster of N primaries with a replica each: see up_redis.py), the simulator, N
ingestors (one leads, the others stand by) and N bridges as child processes, prefixes their logs, prints where to
look, and restarts a child that dies. The embedded Redis runs with the users of the
roles (marketdata.supervisor.acl): the ingestors log in as `ingest`, the bridges as
`bridge`, each child finding its URL in its environment (MD_REDIS_URL), never on its
command line, which any user of the machine can read; the banner shows the read-only
`inspect` user's and no other password. Whatever ends `up` (Ctrl-C, SIGTERM, SIGHUP
from a closed terminal, a closed output pipe), it stops everything in order: the
bridges first (their sockets close with 1001), then the ingestors, the simulator,
and Redis last, leaving no process and no port behind. The children lead their own
process groups, so a Ctrl-C reaches only `up`, which keeps that order; on Linux they
also die with `up` when it is killed with SIGKILL (see processes.py; on macOS a
`kill -9` of `up` leaves them running).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import sys
import time
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field

from marketdata import processes
from marketdata.errors import MarketDataError
from marketdata.settings import UpSettings
from marketdata.supervisor.output import Output
from marketdata.supervisor.ports import describe_holder, is_free
from marketdata.supervisor.up_redis import UpRedis

log = logging.getLogger(__name__)

RESTART_BACKOFF_MAX = 10.0
STOP_TIMEOUT = 5.0  # seconds a child gets between SIGTERM and SIGKILL
BRIDGE_STOP_TIMEOUT = 12.0  # a bridge with workers gives them 10 s to close their sockets with 1001
READY_TIMEOUT = 30.0  # seconds the bridges get to answer /healthz at start
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class StartError(MarketDataError):
    """The system could not start (a port is taken, a child failed at once)."""


@dataclass(slots=True)
class Child:
    """One supervised role process and how to start it again."""

    name: str
    args: list[str]
    output: Output
    env: dict[str, str] = field(default_factory=dict, repr=False)  # on top of ours, minus MD_REDIS_URL
    grace: float = STOP_TIMEOUT  # between SIGTERM and SIGKILL
    proc: asyncio.subprocess.Process | None = None
    restarts: int = 0
    started_at: float = 0.0
    pump: asyncio.Task[None] | None = field(default=None, repr=False)

    async def start(self) -> None:
        # Only the roles that use Redis get a URL, and whether it is a cluster is said by a flag.
        env = {k: v for k, v in os.environ.items() if k not in ("MD_REDIS_URL", "MD_REDIS_CLUSTER")}
        self.proc = await processes.spawn_async(
            [sys.executable, "-m", "marketdata", *self.args],
            stdout=asyncio.subprocess.PIPE,
            env={**env, "PYTHONUNBUFFERED": "1", **self.env},
        )
        self.started_at = time.monotonic()
        self.pump = asyncio.create_task(self._pump(self.proc), name=f"log-{self.name}")

    async def _pump(self, proc: asyncio.subprocess.Process) -> None:
        # Drains the child's output for as long as it lives, even once nobody reads ours:
        # a child blocked on a full pipe would never stop.
        assert proc.stdout is not None
        tag = f"[{self.name}] ".encode()
        async for line in proc.stdout:
            self.output.line(tag + line)

    def exit_reason(self) -> str | None:
        if self.proc is None or self.proc.returncode is None:
            return None
        return f"{self.name} exited with code {self.proc.returncode}"

    async def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        code = await processes.stop_async(proc, self.grace)
        log.info("%s stopped (exit code %d)", self.name, code)
        if self.pump is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.pump, 1.0)


def plan(settings: UpSettings, redis_urls: Mapping[str, str], output: Output, redis_args: Sequence[str] = ()) -> list[Child]:
    """The child processes, in start order (stopped in reverse).

    `redis_urls` holds the URL of each role ("ingest", "bridge"); it goes into the child's
    environment, since a password on a command line is visible to every user (ps, /proc).
    `redis_args` go on the command lines of those roles (`--redis-cluster`).
    """
    level = ["--log-level", logging.getLevelName(logging.getLogger().level).lower()]
    sim_addr = f"127.0.0.1:{settings.sim_port}"
    children = [
        Child("sim", ["sim", "--host", "127.0.0.1", "--port", str(settings.sim_port),
                      "--rate", str(settings.rate), "--seed", str(settings.seed),
                      "--universe", str(settings.universe), *level], output),
    ]
    for i in range(settings.ingestors):
        children.append(Child(f"ingest-{i + 1}", ["ingest", "--sim", sim_addr, "--depth", str(settings.depth), *redis_args, *level],
                              output, {"MD_REDIS_URL": redis_urls["ingest"]}))
    for i in range(settings.bridges):
        children.append(Child(f"bridge-{i + 1}", ["bridge", "--host", settings.host, "--port", str(settings.port + i),
                                                   "--workers", str(settings.bridge_workers), *redis_args, *level],
                              output, {"MD_REDIS_URL": redis_urls["bridge"]}, BRIDGE_STOP_TIMEOUT))
    return children


def check_ports(settings: UpSettings) -> None:
    """StartError, in one line naming who holds it, when a port `up` needs is taken."""
    wanted = [(settings.sim_port, "127.0.0.1", "--sim-port")]
    wanted += [(p, settings.host, "--port") for p in range(settings.port, settings.port + settings.bridges)]
    taken = [(p, flag) for p, host, flag in wanted if not is_free(p, host)]
    if taken:
        held = ", ".join(f"port {p} is {describe_holder(p)}" for p, _ in taken)
        flags = " / ".join(dict.fromkeys(flag for _, flag in taken))
        raise StartError(f"{held}; stop {'it' if len(taken) == 1 else 'them'} or pass {flags}")


async def _healthy(host: str, port: int) -> bool:
    """True when the bridge on host:port answers /healthz with 200."""
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        return False
    try:
        writer.write(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        return b" 200 " in await reader.readline()
    except OSError:
        return False
    finally:
        writer.close()


async def _start_all(children: list[Child], settings: UpSettings) -> None:
    """Start every child in order, then wait until each bridge answers."""
    for child in children:
        await child.start()
    host = "127.0.0.1" if settings.host == "0.0.0.0" else settings.host

    def check() -> str | None:
        return next((r for r in map(Child.exit_reason, children) if r), None)

    try:
        await asyncio.gather(*(
            processes.wait_until_async(lambda p=settings.port + i: _healthy(host, p), READY_TIMEOUT,
                                       f"bridge-{i + 1} to answer on port {settings.port + i}", check=check, interval=0.1)
            for i in range(settings.bridges)
        ))
    except processes.ProcessError as exc:
        raise StartError(f"{exc}; see its log lines above") from None


async def _unless_stopped(work: Awaitable[None], stop: asyncio.Event) -> bool:
    """Run `work` until done (True) or until `stop` is set first (False, `work` cancelled)."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return False
    task.result()
    return True


async def _stop_all(children: list[Child], redis: UpRedis | None) -> None:
    """Bridges first (together), then the other children in reverse start order, Redis last."""
    log.info("stopping")
    bridges = [c for c in children if c.name.startswith("bridge")]
    await asyncio.gather(*(c.stop() for c in bridges))
    for child in reversed(children):
        if child not in bridges:
            await child.stop()
    if redis is not None:
        redis.close()
        log.info("redis stopped")
    log.info("stopped")


def _banner(settings: UpSettings, redis: UpRedis) -> str:
    """Where to look. The only password in it is the read-only `inspect` user's."""
    shown_host = "localhost" if settings.host in ("127.0.0.1", "0.0.0.0") else settings.host
    lines = ["", "marketdata is up:"]
    for i in range(settings.bridges):
        lines.append(f"  dashboard  http://{shown_host}:{settings.port + i}/")
    lines.append(f"  simulator  grpc 127.0.0.1:{settings.sim_port}   (marketdata client --sim 127.0.0.1:{settings.sim_port})")
    lines += redis.banner()
    lines.append("Ctrl-C stops everything.")
    return "\n".join(lines) + "\n"


async def supervise(settings: UpSettings) -> int:
    check_ports(settings)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal(sig: signal.Signals) -> None:
        if not stop.is_set():
            log.info("%s received", sig.name)
        stop.set()  # a second one changes nothing: the children are stopped in order, each within STOP_TIMEOUT

    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, on_signal, sig)
    output = Output(loop, stop.set)
    redis: UpRedis | None = None
    children: list[Child] = []
    try:
        redis = UpRedis(settings)
        redis.start()  # from the loop's thread: the main one (see processes.py)
        urls = {role: redis.url_for(role) for role in ("ingest", "bridge")}
        children = plan(settings, urls, output, redis.child_args())
        if await _unless_stopped(_start_all(children, settings), stop):
            output.print(_banner(settings, redis))
            await _watch(children, redis, stop)
    finally:
        await _stop_all(children, redis)
        output.close()
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)
    return 0


async def _watch(children: list[Child], redis: UpRedis, stop: asyncio.Event) -> None:
    """Restart any child (or the embedded Redis) that dies, with backoff, until `stop` is set."""
    while not stop.is_set():
        waiters = {asyncio.create_task(c.proc.wait()): c for c in children if c.proc is not None}
        stopper = asyncio.create_task(stop.wait())
        redis_check = asyncio.create_task(asyncio.sleep(1.0))
        done, pending = await asyncio.wait({*waiters, stopper, redis_check}, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        if stop.is_set():
            return
        redis.heal()
        for task in done:
            child = waiters.get(task)
            if child is None:
                continue
            code = task.result()
            lived = time.monotonic() - child.started_at
            child.restarts = 0 if lived > 30 else child.restarts + 1
            delay = min(RESTART_BACKOFF_MAX, 0.5 * 2**child.restarts) * random.uniform(0.8, 1.2)
            log.error("%s exited with code %s after %.1f s; restarting it in %.1f s", child.name, code, lived, delay)
            try:
                await asyncio.wait_for(stop.wait(), delay)
                return
            except asyncio.TimeoutError:
                pass
            await child.start()


def run(settings: UpSettings) -> int:
    return asyncio.run(supervise(settings))
