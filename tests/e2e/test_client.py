"""`marketdata client` as a user runs it, against the real simulator on a free port."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from decimal import Decimal

import orjson
import pytest

from marketdata.client.ladder import PANEL_WIDTH
from marketdata.instruments import DEFAULT_INSTRUMENTS
from marketdata.supervisor.ports import free_port
from tests.conftest import RunningSim
from tests.support import BackgroundLoop, wait_for

TICKS = {i.id: Decimal(i.tick_size) for i in DEFAULT_INSTRUMENTS}
LOTS = {i.id: Decimal(i.lot_size) for i in DEFAULT_INSTRUMENTS}
RUN_TIMEOUT = 60  # seconds any one client run may take


def environment(**extra: str) -> dict[str, str]:
    """The test's environment without MD_* settings or forced colours, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MD_") and k not in ("FORCE_COLOR", "TTY_COMPATIBLE")}
    env.update(extra)
    return env


def client(address: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "marketdata", "client", "--sim", address, *args],
        capture_output=True, text=True, timeout=RUN_TIMEOUT, stdin=subprocess.DEVNULL, env=environment(**env),
    )  # fmt: skip


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    """The single line the client printed on stderr for an expected failure."""
    assert done.returncode == 1, f"exit code {done.returncode}, stderr:\n{done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr
    lines = [ln for ln in done.stderr.splitlines() if ln.strip() and " INFO " not in ln]
    assert len(lines) == 1, f"expected one line of error, got:\n{done.stderr}"
    return lines[0]


def on_grid(value: float, step: Decimal) -> bool:
    return Decimal(str(value)) % step == 0


def test_json_lines_are_verified_books_in_sequence(sim: RunningSim) -> None:
    count = 3000  # at 200 events/s for each of 8 instruments, about two seconds
    done = client(sim.address, "--json", "--count", str(count))
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == count, f"--count {count} printed {len(lines)} lines"
    epoch = sim.server.epoch  # type: ignore[attr-defined]
    last_seq: dict[str, int] = {}
    first_seq: dict[str, int] = {}
    for line in lines:
        u = orjson.loads(line)
        name = u["instrument"]
        assert u["verified"] is True, f"unverified update: {line}"
        assert u["epoch"] == epoch, f"{name}: epoch {u['epoch']}, the simulator's is {epoch}"
        assert u["seq"] > last_seq.get(name, -1), f"{name}: seq went from {last_seq.get(name)} to {u['seq']}"
        first_seq.setdefault(name, u["seq"])
        last_seq[name] = u["seq"]
        assert isinstance(u["ts"], int) and u["ts"] > 1_600_000_000_000_000  # µs since the epoch
        assert isinstance(u["checksum"], int) and 0 <= u["checksum"] < 2**32
        bid, ask = u["bid"], u["ask"]
        assert bid < ask, f"crossed book: {line}"
        assert on_grid(bid, TICKS[name]) and on_grid(ask, TICKS[name]), f"price off the tick grid: {line}"
        assert on_grid(u["bid_size"], LOTS[name]) and on_grid(u["ask_size"], LOTS[name]), line
        assert Decimal(str(u["spread"])) == Decimal(str(ask)) - Decimal(str(bid))
        assert Decimal(str(u["mid"])) == (Decimal(str(ask)) + Decimal(str(bid))) / 2
        assert u["spread_bps"] == pytest.approx(u["spread"] / u["mid"] * 1e4, abs=1e-3)
    assert set(last_seq) == {i.id for i in DEFAULT_INSTRUMENTS}, "every instrument streams"
    events = sum(last_seq[n] - first_seq[n] for n in last_seq)
    assert events >= 2000, f"only {events} events were verified"


def test_instruments_are_streamed_in_the_order_asked(sim: RunningSim) -> None:
    done = client(sim.address, "--json", "--count", "300", "--instruments", "EUR-USD,ES-DEC26")
    assert done.returncode == 0, done.stderr
    names = [orjson.loads(line)["instrument"] for line in done.stdout.splitlines()]
    assert len(names) == 300 and set(names) == {"EUR-USD", "ES-DEC26"}


def test_unknown_instrument_is_one_line_naming_it(sim: RunningSim) -> None:
    done = client(sim.address, "--json", "--count", "5", "--instruments", "BTC-USD,NOPE-USD")
    line = one_line_error(done)
    assert "unknown instrument 'NOPE-USD'" in line and "BTC-USD" in line  # names the bad one, lists the good
    assert done.stdout == ""


def test_unreachable_simulator_is_one_line_without_traceback() -> None:
    port = free_port()  # nobody listens here
    done = client(f"127.0.0.1:{port}", "--json", "--count", "5")
    line = one_line_error(done)
    assert f"cannot reach simulator at 127.0.0.1:{port} (connection refused)" in line
    assert "marketdata sim" in line


def test_ladder_is_readable_text_when_not_a_terminal(sim: RunningSim) -> None:
    done = client(sim.address, "--count", "200", "--depth", "3", "--instruments", "BTC-USD,AAPL", COLUMNS="100")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "\x1b[" not in out, "no terminal escapes in a pipe"
    lines = out.splitlines()
    assert all(len(ln) <= 100 for ln in lines)
    assert "BTC-USD" in lines[0] and "AAPL" in lines[0], "two ladders side by side in 100 columns"
    assert out.count("verified") == 2 and "NOT verified" not in out
    # the AAPL ladder, on the right: 3 asks falling to the best ask, a line, then 3 bids falling
    right = [ln[PANEL_WIDTH + 1 :] for ln in lines]
    rows = [m for ln in right if (m := re.fullmatch(r"│ +(\d+ +)?(\d+\.\d\d)( +\d+)? +│", ln))]
    assert len(rows) == 6, out
    asks, bids = rows[:3], rows[3:]
    assert all(r.group(3) and not r.group(1) for r in asks) and all(r.group(1) and not r.group(3) for r in bids), out
    prices = [Decimal(r.group(2)) for r in rows]
    assert prices == sorted(prices, reverse=True), f"asks above bids, best prices nearest the spread: {prices}"
    header = next(m for ln in right if (m := re.search(r"bid (\d+\.\d\d)  ask (\d+\.\d\d)", ln)))
    assert (Decimal(header.group(1)), Decimal(header.group(2))) == (prices[3], prices[2])
    assert re.search(r"spread \d+\.\d\d \(\d+\.\d\d bps\)  mid \d+\.\d{2,3}", out)


class Running:
    """A client whose stdout and stderr are collected as they come."""

    def __init__(self, args: list[str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "marketdata", "client", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=environment(),
        )  # fmt: skip
        self.out: list[str] = []
        self.err: list[str] = []
        self._threads = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for t in self._threads:
            t.start()

    @staticmethod
    def _read(stream: object, into: list[str]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            into.append(line)

    def wait(self) -> int:
        code = self.proc.wait(RUN_TIMEOUT)
        for t in self._threads:
            t.join(10)
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for t in self._threads:
            t.join(10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def running_client(sim: RunningSim) -> Iterator[Running]:
    proc = Running(["--sim", sim.address, "--json"])
    try:
        wait_for(lambda: proc.out or proc.proc.poll() is not None, timeout=30, what="the first JSON line")
        assert proc.proc.poll() is None, "".join(proc.err)
        yield proc
    finally:
        proc.close()


def test_ctrl_c_exits_130_without_traceback(running_client: Running) -> None:
    running_client.proc.send_signal(signal.SIGINT)
    assert running_client.wait() == 130
    assert "Traceback" not in "".join(running_client.err)


def test_simulator_going_away_is_one_line_and_exit_1(running_client: Running, sim: RunningSim, background_loop: BackgroundLoop) -> None:
    background_loop.call(lambda: sim.server.stop(0))  # type: ignore[attr-defined]
    assert running_client.wait() == 1
    err = [ln for ln in running_client.err if " INFO " not in ln]
    assert len(err) == 1 and "simulator" in err[0], "".join(running_client.err)
    assert "Traceback" not in "".join(running_client.err)
