"""The whole pipeline as a user starts it, and the system Chromium, for browser work.

`Pipeline` runs Redis (the project's embedded server), `marketdata sim`,
`marketdata ingest` and `marketdata bridge` as subprocesses on free ports and can
kill and restart the bridge or Redis on the same port. `launch_chromium` starts
the system Chromium through Playwright. The browser tests, the screenshot script
(`python -m tests.e2e.screenshot`) and bench/bench_dashboard.py share them.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from marketdata.processes import LoggedProcess, ProcessError, port_open, wait_until
from marketdata.supervisor.ports import free_port
from marketdata.supervisor.redis_cluster import RedisClusterServer
from marketdata.supervisor.redis_server import RedisServer

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Playwright

log = logging.getLogger(__name__)

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def find_chromium() -> str | None:
    """The system Chromium: $MD_CHROMIUM if set, else `chromium` or `chromium-browser` on PATH."""
    override = os.environ.get("MD_CHROMIUM")
    if override:
        return override if os.access(override, os.X_OK) else None
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


class ChromiumMissing(RuntimeError):
    """No system Chromium to drive."""


def launch_chromium(playwright: Playwright, extra_args: list[str] | None = None) -> Browser:
    """Launch the system Chromium headless (Playwright downloads no browser here)."""
    path = find_chromium()
    if path is None:
        raise ChromiumMissing("no Chromium found: install it (apt-get install chromium) or set MD_CHROMIUM=/path/to/chromium")
    return playwright.chromium.launch(executable_path=path, headless=True, args=[*CHROMIUM_ARGS, *(extra_args or [])])


class Role(LoggedProcess):
    """One `python -m marketdata ROLE ...` child process, its output in a log file."""

    def __init__(self, name: str, args: list[str], log_dir: Path) -> None:
        super().__init__(name, [sys.executable, "-m", "marketdata", name, *args], log_dir / f"{name}.log",
                         env={**os.environ, "PYTHONUNBUFFERED": "1"})


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """Status and body of a GET; (0, b"") when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as res:
            return res.status, res.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


class Pipeline:
    """Redis + simulator + ingestor + one bridge, each on a free port, started in that order."""

    def __init__(self, rate: float = 50.0, seed: int = 1, depth: int = 25, sim_args: list[str] | None = None, redis_cluster: int = 0) -> None:
        """`redis_cluster`: 0, one Redis; N, a Redis Cluster of N primaries with a replica each (the roles get --redis-cluster)."""
        self.rate = rate
        self.seed = seed
        self.depth = depth
        self._dir = tempfile.TemporaryDirectory(prefix="md-pipeline-")
        self.log_dir = Path(self._dir.name)
        self.redis: RedisServer | RedisClusterServer = RedisClusterServer(redis_cluster, 1) if redis_cluster else RedisServer()
        self._mode = ["--redis-cluster"] if redis_cluster else []
        self.sim_port = free_port()
        self.bridge_port = free_port()
        self.sim = Role("sim", ["--port", str(self.sim_port), "--rate", str(rate), "--seed", str(seed), *(sim_args or [])], self.log_dir)
        self.ingest = Role("ingest", ["--sim", f"127.0.0.1:{self.sim_port}", "--depth", str(depth), *self._mode], self.log_dir)
        self.bridge = Role("bridge", ["--port", str(self.bridge_port), *self._mode], self.log_dir)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.bridge_port}"

    def start(self, timeout: float = 30.0) -> Pipeline:
        try:
            self.redis.start()
            # A cluster's URL names a node that serves: known once it runs.
            self.ingest.argv += ["--redis-url", self.redis.url_for("ingest")]
            self.bridge.argv += ["--redis-url", self.redis.url_for("bridge")]
            self.sim.start()
            self._wait(lambda: port_open(self.sim_port), timeout, "the simulator to listen")
            self.ingest.start()
            self.bridge.start()
            self.wait_ready(timeout)
        except BaseException:
            self.close()
            raise
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until the bridge's /readyz answers 200 (Redis reachable, feed heartbeat fresh)."""
        self._wait(lambda: http_get(f"{self.url}/readyz", 1.0)[0] == 200, timeout, "the bridge to be ready (/readyz 200)")

    def instruments(self) -> list[dict[str, Any]]:
        status, body = http_get(f"{self.url}/api/instruments")
        if status != 200:
            raise AssertionError(f"/api/instruments answered {status}: {body[:200]!r}")
        return json.loads(body)

    def kill_bridge(self) -> None:
        self.bridge.kill()

    def start_bridge(self, timeout: float = 30.0) -> None:
        self.bridge.start()
        self._wait(lambda: port_open(self.bridge_port), timeout, "the bridge to listen again")

    def _wait(self, ready: Callable[[], object], timeout: float, what: str) -> None:
        def check() -> str | None:
            dead = [r.name for r in (self.sim, self.ingest, self.bridge) if r.proc is not None and not r.alive]
            return f"{', '.join(dead)} exited" if dead else None

        try:
            wait_until(ready, timeout, what, check=check)
        except ProcessError as exc:
            raise AssertionError(f"{exc}\n{self.logs()}") from None

    def logs(self) -> str:
        return "\n".join(f"--- {r.name} log (last lines) ---\n" + "\n".join(r.tail()) for r in (self.sim, self.ingest, self.bridge))

    def close(self) -> None:
        for role in (self.bridge, self.ingest, self.sim):
            role.stop()
        self.redis.close()
        self._dir.cleanup()

    def __enter__(self) -> Pipeline:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


WAIT_MS = 20_000  # the longest any condition may take before the test fails

PANEL_JS = """
(id) => {
  const p = [...document.querySelectorAll('.panel')].find((x) => x.dataset.instrument === id);
  if (!p) return null;
  const texts = (sel) => [...p.querySelectorAll(sel)].map((n) => n.textContent.trim()).filter((t) => t !== '');
  const badge = p.querySelector('.badge');
  return {
    state: p.dataset.state,
    seq: p.dataset.seq ? Number(p.dataset.seq) : null,
    epoch: p.dataset.epoch ? Number(p.dataset.epoch) : null,
    status: (p.querySelector('.panel-status, .unknown-msg') || {}).textContent || '',
    bid: (p.querySelector('.stat.bid dd') || {}).textContent || '',
    ask: (p.querySelector('.stat.ask dd') || {}).textContent || '',
    askPrices: texts('.lvl.ask .px'),
    bidPrices: texts('.lvl.bid .px'),
    trades: texts('.trow:not(.thead) .s'),
    verified: badge ? badge.dataset.verified : null,
    badgeText: badge ? badge.textContent : '',
    badgeColor: badge ? getComputedStyle(badge).color : '',
  };
}
"""


@dataclass
class Dash:
    """One browser context on the dashboard, with what its console said."""

    page: Any
    base: str
    errors: list[str] = field(default_factory=list)

    def open(self, query: str = "") -> None:
        self.page.goto(f"{self.base}/{query}")

    def panel(self, instrument: str) -> dict[str, Any] | None:
        return self.page.evaluate(PANEL_JS, instrument)

    def panel_ids(self) -> list[str]:
        return self.page.evaluate("[...document.querySelectorAll('.panel')].map((p) => p.dataset.instrument)")

    def wait(self, js: str, arg: Any = None, what: str = "", timeout: int = WAIT_MS) -> Any:
        try:
            return self.page.wait_for_function(js, arg=arg, timeout=timeout)
        except Exception as exc:  # Playwright's TimeoutError: say what we waited for
            raise AssertionError(f"timed out waiting for {what or js}: {exc}") from None

    def wait_live(self, ids: list[str], what: str = "live panels") -> None:
        self.wait(
            """(ids) => ids.every((id) => {
                 const p = [...document.querySelectorAll('.panel')].find((x) => x.dataset.instrument === id);
                 return p && p.dataset.state === 'live' && p.querySelector('.badge').dataset.verified === 'ok';
               })""",
            ids,
            what=f"{what} {ids}",
        )

    def seqs(self, ids: list[str]) -> dict[str, int]:
        return {i: self.panel(i)["seq"] for i in ids}

    def wait_progress(self, before: dict[str, int], what: str = "books to move on", timeout: int = WAIT_MS) -> None:
        self.wait(
            """(before) => Object.entries(before).every(([id, seq]) => {
                 const p = [...document.querySelectorAll('.panel')].find((x) => x.dataset.instrument === id);
                 return p && p.dataset.seq && Number(p.dataset.seq) !== seq;
               })""",
            before,
            what=what,
            timeout=timeout,
        )
