"""`marketdata up`: the whole system in one terminal.

Starts the embedded Redis (unless --redis-url names one), the simulator, the
ingestor and N bridges as child processes, prefixes their logs, prints where to
look, restarts a child that dies, and on Ctrl-C stops everything in order,
leaving no process and no port behind.
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
from dataclasses import dataclass, field

from marketdata.errors import MarketDataError
from marketdata.settings import UpSettings
from marketdata.supervisor.ports import is_free
from marketdata.supervisor.redis_server import RedisServer

log = logging.getLogger(__name__)

RESTART_BACKOFF_MAX = 10.0
STOP_TIMEOUT = 5.0


class StartError(MarketDataError):
    """The system could not start (a port is taken, a child failed at once)."""


@dataclass(slots=True)
class Child:
    """One supervised role process and how to start it again."""

    name: str
    args: list[str]
    proc: asyncio.subprocess.Process | None = None
    restarts: int = 0
    started_at: float = 0.0
    pump: asyncio.Task[None] | None = field(default=None, repr=False)

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "marketdata", *self.args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.started_at = time.monotonic()
        self.pump = asyncio.create_task(self._pump(self.proc), name=f"log-{self.name}")

    async def _pump(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        tag = f"[{self.name}] ".encode()
        out = sys.stderr.buffer
        async for line in proc.stdout:
            out.write(tag + line)
            out.flush()

    async def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
            except asyncio.TimeoutError:
                log.warning("%s did not stop within %.0f s; killing it", self.name, STOP_TIMEOUT)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self.pump is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.pump, 1.0)


def plan(settings: UpSettings, redis_url: str) -> list[Child]:
    """The child processes, in start order (stopped in reverse)."""
    level = ["--log-level", logging.getLevelName(logging.getLogger().level).lower()]
    sim_addr = f"127.0.0.1:{settings.sim_port}"
    children = [
        Child("sim", ["sim", "--host", "127.0.0.1", "--port", str(settings.sim_port),
                      "--rate", str(settings.rate), "--seed", str(settings.seed), *level]),
        Child("ingest", ["ingest", "--sim", sim_addr, "--redis-url", redis_url,
                         "--depth", str(settings.depth), *level]),
    ]
    for i in range(settings.bridges):
        children.append(Child(f"bridge-{i + 1}", ["bridge", "--host", settings.host, "--port",
                                                   str(settings.port + i), "--redis-url", redis_url, *level]))
    return children


def check_ports(settings: UpSettings) -> None:
    taken = [settings.sim_port] if not is_free(settings.sim_port) else []
    taken += [p for p in range(settings.port, settings.port + settings.bridges) if not is_free(p, settings.host)]
    if taken:
        raise StartError(
            f"port {', '.join(map(str, taken))} already in use; stop what holds it or choose others "
            f"with --port / --sim-port"
        )


async def _wait_http(host: str, port: int, timeout: float) -> bool:
    """True once something answers HTTP on host:port (the bridge is up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        writer.write(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        status = await reader.readline()
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        if b" 200 " in status:
            return True
        await asyncio.sleep(0.1)
    return False


def _banner(settings: UpSettings, redis: RedisServer | None, redis_url: str) -> str:
    shown_host = "localhost" if settings.host in ("127.0.0.1", "0.0.0.0") else settings.host
    lines = ["", "marketdata is up:"]
    for i in range(settings.bridges):
        lines.append(f"  dashboard  http://{shown_host}:{settings.port + i}/")
    lines.append(f"  simulator  grpc 127.0.0.1:{settings.sim_port}   (marketdata client --sim 127.0.0.1:{settings.sim_port})")
    if redis is not None:
        cli = os.path.join(os.path.dirname(redis.binary), "valkey-cli")
        lines.append(f"  redis      {redis_url}   (embedded)")
        lines.append(f"  inspect    redis-cli -p {redis.port} subscribe md:book:BTC-USD")
        if os.access(cli, os.X_OK):
            lines.append(f"             (no redis-cli? {cli} -p {redis.port} subscribe md:book:BTC-USD)")
    else:
        lines.append(f"  redis      {redis_url}")
        lines.append(f"  inspect    redis-cli -u {redis_url} subscribe md:book:BTC-USD")
    lines.append("Ctrl-C stops everything.")
    return "\n".join(lines) + "\n"


async def supervise(settings: UpSettings) -> int:
    check_ports(settings)
    redis: RedisServer | None = None
    if settings.redis_url is None:
        redis = RedisServer().start()
        redis_url = redis.url
    else:
        redis_url = settings.redis_url
    children = plan(settings, redis_url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        for child in children:
            await child.start()
        bridges = [c for c in children if c.name.startswith("bridge")]
        ready = await asyncio.gather(*(_wait_http(settings.host if settings.host != "0.0.0.0" else "127.0.0.1",
                                                  settings.port + i, 30.0) for i in range(len(bridges))))
        if not all(ready):
            raise StartError("a bridge did not answer within 30 s; see its log lines above")
        print(_banner(settings, redis, redis_url), flush=True)
        await _watch(children, redis, stop)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        log.info("stopping")
        for child in reversed(children):
            await child.stop()
        if redis is not None:
            redis.close()
        log.info("stopped")
    return 0


async def _watch(children: list[Child], redis: RedisServer | None, stop: asyncio.Event) -> None:
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
        if redis is not None and not redis.alive:
            log.error("embedded redis died; restarting it on port %d", redis.port)
            redis.restart()
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
