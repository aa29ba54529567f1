"""`marketdata bridge --workers 2` as a user runs it: two processes serve one port, each with
sockets of its own, /metrics counts them all whichever worker answers, a dead worker is
restarted, and Ctrl-C or kill -9 of the parent leaves no worker and no port behind."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import psutil
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from marketdata.instruments import DEFAULT_INSTRUMENTS
from marketdata.supervisor.ports import is_free
from tests.e2e.browser import Pipeline, http_get
from tests.support import async_wait_for, wait_for

pytestmark = pytest.mark.slow

SOCKETS = 40
IDS = tuple(i.id for i in DEFAULT_INSTRUMENTS)
GONE_TIMEOUT = 15.0  # seconds the workers and the port get to disappear (their stop grace is 10 s)


@pytest.fixture
def bridge() -> Iterator[Pipeline]:
    """Redis, the simulator, the ingestor and `marketdata bridge --workers 2`, both workers serving."""
    pipeline = Pipeline(rate=50)
    pipeline.bridge.argv += ["--workers", "2"]
    with pipeline:
        wait_for(lambda: _worker_sockets(_scrape(pipeline)).keys() == {"1", "2"}, timeout=30,
                 what="both workers to publish their counters (so both listen)")
        yield pipeline


def _scrape(pipeline: Pipeline) -> str:
    status, body = http_get(f"{pipeline.url}/metrics")
    return body.decode() if status == 200 else ""


def _value(text: str, name: str) -> float | None:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else None


def _worker_sockets(text: str) -> dict[str, float]:
    return {w: float(v) for w, v in re.findall(r'^bridge_worker_sockets_open\{worker="(\d+)"\} (\S+)$', text, re.MULTILINE)}


def _workers(pipeline: Pipeline) -> list[psutil.Process]:
    assert pipeline.bridge.pid is not None
    return [p for p in psutil.Process(pipeline.bridge.pid).children() if "bridge.workers" in p.cmdline()]


def _established(process: psutil.Process, port: int) -> int:
    """TCP connections the process has accepted on `port`, as the kernel sees them."""
    return sum(1 for c in process.net_connections(kind="tcp") if c.laddr and c.laddr.port == port and c.status == psutil.CONN_ESTABLISHED)


def _gone(process: psutil.Process) -> bool:
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _assert_nothing_left(workers: list[psutil.Process], port: int) -> None:
    try:
        wait_for(lambda: all(map(_gone, workers)), timeout=GONE_TIMEOUT, what="every worker to exit")
    except AssertionError:
        for p in workers:  # the test failed: leave nothing to the next one
            if not _gone(p):
                p.kill()
        raise
    wait_for(lambda: is_free(port), timeout=GONE_TIMEOUT, what=f"port {port} to be released")


@dataclass
class Client:
    """One socket, read in the background: the books it got and the close code it was sent."""

    ws: ClientConnection
    books: int = 0
    code: int | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)

    async def read(self) -> None:
        try:
            while True:
                if (await self.ws.recv(decode=False)).startswith(b'{"v":1,"type":"book"'):
                    self.books += 1
        except ConnectionClosed as exc:
            self.code = exc.rcvd.code if exc.rcvd is not None else None
        finally:
            self.done.set()


async def _open(pipeline: Pipeline, n: int) -> tuple[list[Client], list[asyncio.Task[None]]]:
    base = pipeline.url.replace("http://", "ws://")
    clients = [Client(await connect(f"{base}/ws/market_data/{IDS[i % len(IDS)]}", open_timeout=10)) for i in range(n)]
    readers = [asyncio.create_task(c.read()) for c in clients]
    await async_wait_for(lambda: all(c.books >= 2 for c in clients), timeout=30,
                         what=f"every one of {n} sockets to get its last-value book and a live one")
    return clients, readers


def test_two_workers_share_one_port_metrics_count_them_all_and_ctrl_c_closes_everything(bridge: Pipeline) -> None:
    port = bridge.bridge_port
    workers = _workers(bridge)
    assert len(workers) == 2, [p.cmdline() for p in workers]

    async def scenario() -> list[Client]:
        clients, readers = await _open(bridge, SOCKETS)
        # The kernel's own count, per process: both workers accepted some of the sockets.
        per_process = [_established(p, port) for p in workers]
        assert sum(per_process) == SOCKETS and min(per_process) > 0, f"sockets per worker process: {per_process}"

        def settled() -> str | None:  # a worker publishes every second: wait for the scrape that shows all
            text = _scrape(bridge)
            return text if _value(text, "bridge_sockets_open") == SOCKETS else None

        text = await async_wait_for(lambda: asyncio.to_thread(settled), timeout=10, what=f"/metrics to count {SOCKETS} sockets")
        assert sorted(_worker_sockets(text).values()) == sorted(per_process), text
        sent = 0.0
        for _ in range(8):  # each scrape lands on either worker: all of them count everything, and never less than before
            text = await asyncio.to_thread(_scrape, bridge)
            assert _value(text, "bridge_sockets_open") == SOCKETS, text
            out = _value(text, "bridge_messages_out_total") or 0.0
            assert out >= max(sent, 2 * SOCKETS), f"bridge_messages_out_total went from {sent} to {out}"
            sent = out
        count = _value(text, "bridge_send_latency_seconds_count") or 0.0
        assert count >= 2 * SOCKETS, "the latency histogram is not summed over the workers"

        bridge.bridge.proc.send_signal(signal.SIGINT)  # type: ignore[union-attr]  # as Ctrl-C in its terminal
        await asyncio.wait_for(asyncio.gather(*readers), GONE_TIMEOUT)
        return clients

    clients = asyncio.run(scenario())
    try:
        code = bridge.bridge.proc.wait(GONE_TIMEOUT)  # type: ignore[union-attr]
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the bridge still runs {GONE_TIMEOUT:.0f} s after SIGINT:\n{bridge.logs()}") from None
    assert code == 0, bridge.logs()
    assert [c.code for c in clients] == [1001] * SOCKETS, "every socket, on either worker, is closed going away (1001)"
    _assert_nothing_left(workers, port)
    log = bridge.bridge.log_path.read_text()
    assert "bridge worker 1 stopped (exit code 0)" in log and "bridge worker 2 stopped (exit code 0)" in log, log


def test_a_dead_worker_is_restarted_its_counts_stay_and_kill_9_of_the_parent_leaves_no_worker(bridge: Pipeline) -> None:
    port = bridge.bridge_port
    victim, survivor = _workers(bridge)

    seen: list[tuple[float, float]] = []  # (when, messages_out_total) of the scrapes that agree so far

    def steady() -> float | None:
        """messages_out_total once no socket is open and it held for longer than a worker's publish period."""
        text = _scrape(bridge)
        out = _value(text, "bridge_messages_out_total")
        if _value(text, "bridge_sockets_open") != 0 or not out or (seen and seen[-1][1] != out):
            seen.clear()
        if out:
            seen.append((time.monotonic(), out))
        return out if seen and seen[-1][0] - seen[0][0] > 1.5 else None

    async def send_some() -> int:
        clients, readers = await _open(bridge, SOCKETS)
        on_victim = _established(victim, port)
        for c in clients:
            await c.ws.close()
        await asyncio.gather(*readers)
        return on_victim

    assert asyncio.run(send_some()) > 0, "the worker to be killed had no socket: its counts would prove nothing"
    before = wait_for(steady, timeout=15, what="the counters to settle with every socket closed")
    victim.kill()
    wait_for(lambda: "exited with code -9" in bridge.bridge.log_path.read_text(), timeout=10, what="the parent to log the dead worker")
    assert re.search(rf"bridge worker \d \(pid {victim.pid}\) exited with code -9 after [\d.]+ s; restarting it in [\d.]+ s",
                     bridge.bridge.log_path.read_text())
    wait_for(lambda: len(_worker_sockets(_scrape(bridge))) == 2 and len(_workers(bridge)) == 2, timeout=20,
             what="a new worker to serve in the dead one's place")
    assert victim.pid not in {p.pid for p in _workers(bridge)}
    after = _value(_scrape(bridge), "bridge_messages_out_total")
    assert after == before, f"bridge_messages_out_total went from {before} to {after} when a worker died (a reset to Prometheus)"

    workers = _workers(bridge)
    assert survivor in workers
    bridge.bridge.proc.kill()  # type: ignore[union-attr]
    bridge.bridge.proc.wait(GONE_TIMEOUT)  # type: ignore[union-attr]
    _assert_nothing_left(workers, port)
