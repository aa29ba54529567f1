"""`marketdata loadtest`: many WebSocket clients against a bridge, measured.

The parent process plans the sockets (spread round-robin over the instruments and
the URLs), starts one worker process per core (marketdata.loadtest.worker) to open and read
them, waits until every socket is open, lets the warm-up pass, resets the workers'
counters and measures for the duration. It shows live progress while it runs and a
summary at the end (or one JSON object with --json). Its own cost is measured in
the same run (CPU per message in the workers), so the summary can say when the load
generator, not the server, was the limit. With --deltas the clients ask for deltas
and apply and verify each one (marketdata.loadtest.generator.DeltaClient), counting
resyncs and checksum failures.

`measure()` is the API the fan-out benchmark (bench/fanout.py) calls.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import resource
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from urllib.parse import quote, urlsplit

import orjson

from marketdata.errors import MarketDataError
from marketdata.loadtest import report as loadreport
from marketdata.loadtest.generator import PROTOCOLS
from marketdata.loadtest.measurement import Plan, Report, Result, Totals
from marketdata.loadtest.worker import Target, WorkerPlan, worker_main
from marketdata.settings import LoadtestSettings

log = logging.getLogger(__name__)

FILES_PER_WORKER = 64  # descriptors a worker needs besides its sockets
CONNECT_DEADLINE = 60.0  # seconds for every socket to be opened (or to fail), plus CONNECT_PER_SOCKET each
CONNECT_PER_SOCKET = 0.05


class LoadtestError(MarketDataError):
    """The load test could not run (the server is unreachable, no socket opened)."""


# -- setting up -------------------------------------------------------------------


def ws_base(url: str) -> str:
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    return f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def http_base(url: str) -> str:
    parts = urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def socket_url(base: str, protocol: str, instrument: str, deltas: bool = False) -> str:
    """The URL a client of `protocol` opens (a multiplexed one asks for deltas in its subscribe)."""
    ws = ws_base(base)
    if protocol == "single":
        return f"{ws}/ws/market_data/{quote(instrument, safe='')}" + ("?deltas=1" if deltas else "")
    if protocol == "multi":
        return f"{ws}/ws"
    return f"{ws}/socket.io/?EIO=4&transport=websocket"


def check_reachable(url: str, timeout: float = 3.0) -> None:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme in ("https", "wss") else 80)
    try:
        socket.create_connection((parts.hostname or "127.0.0.1", port), timeout).close()
    except OSError as exc:
        raise LoadtestError(f"cannot reach {url}: {exc.strerror or exc}") from None


def fetch_instruments(url: str, timeout: float = 5.0) -> tuple[str, ...]:
    """The instrument ids a bridge lists at /api/instruments."""
    where = f"{http_base(url)}/api/instruments"
    try:
        listed = orjson.loads(instrument_list(url, timeout))
    except urllib.error.HTTPError as exc:
        raise LoadtestError(f"{where} answered HTTP {exc.code}; pass --instruments to skip the lookup") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise LoadtestError(f"cannot reach {url}: {getattr(reason, 'strerror', None) or reason}") from None
    except orjson.JSONDecodeError:
        raise LoadtestError(f"{where} did not answer JSON; is {url} a marketdata bridge?") from None
    ids = tuple(str(i["id"]) if isinstance(i, dict) else str(i) for i in listed)
    if not ids:
        raise LoadtestError(f"{where} lists no instruments")
    return ids


def instrument_list(url: str, timeout: float = 5.0) -> bytes:
    """The instrument list as a bridge serves it at /api/instruments (JSON); raises urllib's errors."""
    with urllib.request.urlopen(f"{http_base(url)}/api/instruments", timeout=timeout) as response:
        return response.read()  # type: ignore[no-any-return]


def raise_open_files(needed: int) -> str:
    """Raise the soft RLIMIT_NOFILE towards the hard limit when `needed` exceeds it; say what was done."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if needed <= soft:
        return ""
    target = needed if hard == resource.RLIM_INFINITY else hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    note = f"raised the open-files limit (RLIMIT_NOFILE) from {soft} to {target} for {needed} descriptors"
    if target < needed:
        note += f"; the hard limit {hard} is lower than that: some connects will fail (raise `ulimit -Hn` or add --processes)"
    return note


def plan_workers(plan: Plan, processes: int, reference: bytes = b"") -> list[WorkerPlan]:
    """Clients round-robin over instruments and URLs, then dealt to the workers in turn.

    `reference`: the instrument list, for clients that verify deltas.
    """
    targets: list[list[Target]] = [[] for _ in range(processes)]
    stalled = [0] * processes
    for n in range(plan.clients):
        url = socket_url(plan.urls[n % len(plan.urls)], plan.protocol, plan.instruments[n % len(plan.instruments)], plan.deltas)
        w = n % processes
        target = Target(url, plan.instruments[n % len(plan.instruments)])
        if n < plan.stalled:
            # A worker stalls its first sockets: put the stalled ones at the front.
            targets[w].insert(stalled[w], target)
            stalled[w] += 1
        else:
            targets[w].append(target)
    return [WorkerPlan(i, plan.protocol, tuple(t), stalled=stalled[i], deltas=plan.deltas, verify_every=plan.verify_every,
                       reference=reference) for i, t in enumerate(targets) if t]


# -- running ------------------------------------------------------------------


Progress = Callable[[str, Totals, float], None]  # phase, totals so far, seconds into the phase


def measure(plan: Plan, progress: Progress | None = None) -> Result:
    """Run the load test described by `plan` and return what the clients saw."""
    if plan.protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {plan.protocol!r}")
    if not plan.instruments or not plan.urls:
        raise ValueError("a plan needs at least one URL and one instrument")
    if plan.deltas and plan.protocol == "socketio":
        raise ValueError("deltas are the bridge's: protocol single or multi")
    reference = b""
    if plan.deltas and plan.verify_every:
        try:
            reference = instrument_list(plan.urls[0])
        except (urllib.error.URLError, OSError) as exc:
            raise LoadtestError(f"cannot read the instrument list of {plan.urls[0]} to verify deltas: {exc}") from None
    processes = min(plan.processes or os.cpu_count() or 1, plan.clients)
    note = raise_open_files(math.ceil(plan.clients / processes) + FILES_PER_WORKER)
    if note:
        log.info("%s", note)
    # A fork server with the worker module preloaded: later workers start in milliseconds
    # (the fan-out benchmark starts hundreds), and no worker inherits the parent's threads.
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["marketdata.loadtest.worker"])
    conns: list[Connection] = []
    procs = []
    for wp in plan_workers(plan, processes, reference):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=worker_main, args=(wp, child), name=f"loadgen-{wp.index}", daemon=True)
        proc.start()
        child.close()
        conns.append(parent)
        procs.append(proc)
    latest: dict[int, Report] = {}
    try:
        _until(conns, latest, progress, "connecting", CONNECT_DEADLINE + CONNECT_PER_SOCKET * plan.clients,
               lambda: len(latest) == len(conns) and all(r.phase != "connecting" for r in latest.values()))
        totals = Totals.of(list(latest.values()))
        if totals.connected == 0:
            reasons = sorted(totals.failure_reasons.items(), key=lambda kv: -kv[1])
            raise LoadtestError(f"no socket opened to {plan.urls[0]}: {reasons[0][0] if reasons else 'unknown reason'}")
        _until(conns, latest, progress, "warm-up", plan.warmup, lambda: False)
        totals = Totals.of(list(latest.values()))
        if totals.open == 0:
            closes = sorted(totals.closed.items(), key=lambda kv: -kv[1])
            raise LoadtestError(f"the server closed every socket ({closes[0][0] if closes else 'no reason given'})")
        for conn in conns:
            conn.send("reset")
        _until(conns, latest, progress, "measuring", plan.duration, lambda: False)
        for conn in conns:
            conn.send("stop")
        finals: dict[int, Report] = {}
        _until(conns, finals, None, "stopping", 30.0, lambda: len(finals) == len(conns), final_only=True)
        return Result(plan, len(conns), Totals.of(list(finals.values())), note)
    finally:
        for conn in conns:
            try:
                conn.send("stop")
            except OSError:
                pass
        for proc in procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join()
        for conn in conns:
            conn.close()


def _until(conns: list[Connection], latest: dict[int, Report], progress: Progress | None, phase: str,
           seconds: float, done: Callable[[], bool], final_only: bool = False) -> None:
    """Collect reports for `seconds` (or until `done()`), calling `progress` as they come."""
    start = time.monotonic()
    deadline = start + seconds
    shown = 0.0
    live = [c for c in conns if not c.closed]
    while not done():
        left = deadline - time.monotonic()
        if not live:
            raise LoadtestError(f"a load generator worker exited while {phase}")
        if left <= 0:
            if phase in ("connecting", "stopping"):
                raise LoadtestError(f"load generator workers did not finish {phase} within {seconds:.0f} s")
            return
        for conn in wait(live, min(left, 0.25)):
            try:
                report: Report = conn.recv()  # type: ignore[assignment]
            except EOFError:
                if final_only:  # a worker that sent its final report has exited
                    live.remove(conn)
                    continue
                raise LoadtestError(f"a load generator worker died while {phase}") from None
            if final_only and report.phase != "final":
                continue
            latest[report.worker] = report
        now = time.monotonic()
        if progress is not None and now - shown >= 0.5:
            shown = now
            progress(phase, Totals.of(list(latest.values())), now - start)


def run(settings: LoadtestSettings) -> int:
    """The `marketdata loadtest` entry: measure, print, exit 0 (1 on regressions or no socket)."""
    url = settings.url
    if settings.instruments:
        check_reachable(url)
        instruments = settings.instruments
    else:
        instruments = fetch_instruments(url)
    plan = Plan((url,), instruments, settings.clients, settings.duration, max(0.0, settings.warmup),
                settings.mode, settings.processes, deltas=settings.deltas)
    view = loadreport.LiveView(plan, quiet=settings.json)
    with view:
        result = measure(plan, view.update)
    if settings.json:
        sys.stdout.write(orjson.dumps(result.as_dict(), option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        loadreport.print_summary(result)
    if result.totals.regressions:
        print(f"marketdata loadtest: {result.totals.regressions} sequence regressions (seq going backwards or repeating)",
              file=sys.stderr)
        return 1
    if result.totals.checksum_failures:
        print(f"marketdata loadtest: {result.totals.checksum_failures} books or deltas failed their checksum", file=sys.stderr)
        return 1
    return 0
