"""`marketdata up` as a user runs it: everything starts, books agree everywhere, Ctrl-C cleans up."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from websockets.asyncio.client import connect

from marketdata import schema
from marketdata.supervisor.ports import free_port, is_free
from tests.support import wait_for

pytestmark = pytest.mark.slow


class Up:
    """A running `marketdata up` whose output is collected line by line."""

    def __init__(self, args: list[str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "marketdata", "up", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(20)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._reader.join(5)
            if self.proc.stdout is not None:
                self.proc.stdout.close()


@pytest.fixture
def up() -> Iterator[tuple[Up, int, int]]:
    port = free_port()
    while not is_free(port + 1):
        port = free_port()
    sim_port = free_port()
    running = Up(["--bridges", "2", "--port", str(port), "--sim-port", str(sim_port), "--rate", "50"])
    try:
        wait_for(lambda: "Ctrl-C stops everything" in running.output or running.proc.poll() is not None,
                 timeout=60, what="the `marketdata up` banner")
        assert running.proc.poll() is None, f"marketdata up exited early:\n{running.output}"
        yield running, port, sim_port
    finally:
        running.stop()


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd:
            found.append(f"{entry.name}: {cmd}")
    return found


async def _collect(url: str, n: int, out: dict[int, bytes]) -> None:
    async with connect(url) as ws:
        while len(out) < n:
            msg = await asyncio.wait_for(ws.recv(decode=False), 10)
            if msg.startswith(b'{"v":1,"type":"book"'):
                out[schema.peek_seq(msg)] = msg


async def _collect_redis(url: str, channel: str, n: int, out: dict[int, bytes]) -> None:
    client = aioredis.Redis.from_url(url)
    async with client.pubsub() as pubsub:
        await pubsub.subscribe(channel)
        while len(out) < n:
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=10)
            if msg is not None:
                out[schema.peek_seq(msg["data"])] = msg["data"]
    await client.aclose()


def test_up_serves_the_same_books_everywhere_and_ctrl_c_leaves_nothing(up: tuple[Up, int, int]) -> None:
    running, port, sim_port = up
    banner = running.output
    assert f"http://localhost:{port}/" in banner and f"http://localhost:{port + 1}/" in banner
    match = re.search(r"redis-cli -p (\d+) subscribe md:book:BTC-USD", banner)
    assert match, f"no redis-cli line in:\n{banner}"
    redis_port = int(match.group(1))

    got: list[dict[int, bytes]] = [{}, {}, {}]

    async def gather() -> None:
        await asyncio.gather(
            _collect(f"ws://127.0.0.1:{port}/ws/market_data/BTC-USD", 30, got[0]),
            _collect(f"ws://127.0.0.1:{port + 1}/ws/market_data/BTC-USD", 30, got[1]),
            _collect_redis(f"redis://127.0.0.1:{redis_port}/0", "md:book:BTC-USD", 30, got[2]),
        )

    asyncio.run(asyncio.wait_for(gather(), 45))
    common = set(got[0]) & set(got[1]) & set(got[2])
    assert len(common) >= 10, f"too few seqs seen by both bridges and redis: {sorted(common)[:5]}"
    for seq in common:
        assert got[0][seq] == got[1][seq] == got[2][seq], f"payloads differ at seq {seq}"

    assert running.stop() == 0, running.output
    for p in (port, port + 1, sim_port, redis_port):
        wait_for(lambda p=p: is_free(p), timeout=10, what=f"port {p} to be released")
    assert not _processes_mentioning(f"--port {sim_port}"), "simulator still running"
    assert not _processes_mentioning(f"--port {port}"), "bridge still running"
    assert not _processes_mentioning(f"--port {redis_port}"), "redis still running"


def test_up_reports_a_taken_port_in_one_line() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = s.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "marketdata", "up", "--port", str(taken), "--bridges", "1", "--sim-port", str(free_port())],
            capture_output=True, text=True, timeout=60,
        )
    assert proc.returncode == 1
    assert f"port {taken} already in use" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_up_restarts_a_child_that_dies(up: tuple[Up, int, int]) -> None:
    running, port, sim_port = up
    victims = [line.split(":", 1)[0] for line in _processes_mentioning(f"--port {sim_port}") if " sim " in line]
    assert victims, "no simulator process found"
    os.kill(int(victims[0]), signal.SIGKILL)
    wait_for(lambda: "sim exited with code" in running.output, timeout=15, what="the supervisor to notice")
    wait_for(lambda: [l for l in _processes_mentioning(f"--port {sim_port}") if " sim " in l and not l.startswith(victims[0] + ":")],
             timeout=20, what="a new simulator process")
