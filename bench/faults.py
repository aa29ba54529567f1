"""Fault suite: the whole system under kill -9 and SIGSTOP, watched by hundreds of checking sockets.

Starts Redis, the simulator, two ingestors and two bridges as separate processes
(bench.fault_cluster), opens `--sockets` WebSockets spread over both bridges and several
instruments, plus a tap on the Redis bus (bench.fault_sockets), all of which verify every
book (checksum against the instrument's tick and lot sizes, (epoch, seq) order). Then, at
seeded random moments, it strikes in turn:

- `sim`: kill -9 of the simulator, restarted after 2-3 s (as a supervisor would);
- `leader`: kill -9 of the ingestor holding the lease; nothing is restarted until the
  standby has taken over (the victim comes back afterwards, as the next standby);
- `standby`: kill -9 of the other ingestor (restarted afterwards);
- `redis`: kill -9 of Redis, restarted on the same port after 1-2 s;
- `bridge`: kill -9 of a bridge (each in turn), restarted after 1-2 s; its sockets
  reconnect, half to the same bridge (a page reconnecting to its origin), half to the
  other (a balancer);
- `pause`: SIGSTOP of the leader for 2-3 lease periods, then SIGCONT: it must be fenced off;
- `primary` (with `--redis-cluster N`, a cluster of N primaries each with a replica): kill -9
  of one primary, each shard in turn (bench.fault_shard): its replica is promoted, its
  instruments' sockets heal within 15 s, the other shards' never stall.

Per fault and per socket it measures when the socket was told the feed is stale (a
`feed` message with live=false; a closed connection for the killed bridge's sockets) and
when fresh verified books (published after the fault; of a new epoch after a simulator
restart) arrived on every instrument it follows, and checks them against the failure
model (bench.fault_checks.judge): stale within 2 s where the feed must go stale, nothing
visible where a standby covers it, fresh books within 5 s of the process being back, or
within 2 s of the fault when nothing is restarted. It prints, per kind of fault, the heal
times (p50/p99/max over sockets and rounds) and every violation, with the machine
reference line (bench/machine.py).

    python -m bench.faults                          # 20 rounds of each fault, 200 sockets
    python -m bench.faults --rounds 2 --kinds sim,redis --json /tmp/faults.json

Exit code 0 when nothing was violated, 1 otherwise. tests/faults runs the same engine
(`Suite`) with fewer rounds and sockets.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.fault_checks import (
    ALLOWED,
    FORBIDDEN,
    REQUIRED,
    Expect,
    FaultResult,
    Outcome,
    Struck,
    Verifier,
    judge,
)
from bench.fault_cluster import Cluster, Role
from bench.fault_shard import strike_primary
from bench.fault_sockets import Fleet, SocketPlan, plan_sockets
from marketdata import schema
from marketdata.clock import now_us
from marketdata.instruments import Instrument
from marketdata.processes import ProcessError, wait_until

log = logging.getLogger(__name__)

KINDS = ("sim", "leader", "standby", "redis", "bridge", "pause")
CLUSTER_KINDS = ("primary", "leader", "bridge")  # with --redis-cluster: a cluster has no one Redis to kill
LABELS = {
    "sim": "simulator kill -9", "leader": "leading ingestor kill -9", "standby": "standby ingestor kill -9",
    "redis": "Redis kill -9", "bridge": "one bridge kill -9", "pause": "leader SIGSTOP past its lease",
    "primary": "a cluster primary kill -9",
}  # fmt: skip
DOWN = {"sim": (2.0, 3.0), "redis": (1.0, 2.0), "bridge": (1.0, 2.0), "pause": (2.0, 3.0)}  # seconds out (pause: in lease periods)
BEFORE = (0.2, 1.0)  # seconds between a settled system and the fault: its random moment
GRACE = 5.0  # seconds past a deadline still waited for, so that a late heal is measured, not lost
SETTLE_TIMEOUT = 30.0
BACK_TO_IT, TO_THE_OTHER = "its sockets, back to it", "its sockets, to the other bridge"  # the killed bridge's, by reconnect policy
STANDS_BY_TIMEOUT = 5.0  # seconds a woken ex-leader gets to report itself a standby


@dataclass(slots=True)
class Config:
    rounds: int = 20
    sockets: int = 200
    instruments: int = 4
    rate: float = 20.0
    seed: int = 1
    kinds: tuple[str, ...] = KINDS
    lease: float = 1.0
    logs: Path | None = None
    redis_cluster: int = 0  # 0: one Redis; N: a Redis Cluster of N primaries, each with a replica
    universe: int = 8  # instruments the simulator lists


def instruments_of(url: str) -> tuple[Instrument, ...]:
    """The instruments a bridge lists (their tick and lot sizes verify the books); () while it does not answer."""
    http = url.replace("ws://", "http://", 1)
    try:
        with urllib.request.urlopen(f"{http}/api/instruments", timeout=5) as answer:
            return schema.decode_instruments(answer.read())
    except OSError:
        return ()


class Suite:
    """The system, the sockets, and one method per kind of fault; `with Suite(config) as suite`."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self._tmp = None if config.logs else tempfile.TemporaryDirectory(prefix="md-faults-")
        logs = config.logs or Path(self._tmp.name)  # type: ignore[union-attr]
        self.cluster = Cluster(logs, config.rate, config.seed, lease=config.lease, redis_cluster=config.redis_cluster, universe=config.universe)
        self.fleet: Fleet | None = None
        self.followed: list[str] = []
        self._bridge_turn = self._primary_turn = 0

    def __enter__(self) -> Suite:
        self.cluster.__enter__()
        try:
            listed = wait_until(lambda: instruments_of(self.cluster.urls[0]), 30, "the instrument list from bridge-1")
            ids = self.followed = [i.id for i in listed][: self.config.instruments]
            plans = plan_sockets(self.config.sockets, len(self.cluster.bridges), ids)
            tap = [self.cluster.keys.book(i) for i in ids] if self.config.redis_cluster else None
            self.fleet = Fleet(plans, self.cluster.urls, self.cluster.inspect_url, Verifier(listed), self.config.seed, tap).__enter__()
            trouble = self.settle()
            if trouble:
                raise ProcessError(f"the system did not start whole: {trouble}")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            if self.fleet is not None:
                self.fleet.__exit__()
                self.fleet = None
        finally:
            self.cluster.close()
            if self._tmp is not None:
                self._tmp.cleanup()

    def settle(self, timeout: float = SETTLE_TIMEOUT) -> str | None:
        """Wait until every process runs, one leads, the standbys are warm and every socket is live and fed; why not, or None."""
        assert self.fleet is not None
        fleet, cluster = self.fleet, self.cluster
        why: list[str | None] = [None]

        def whole() -> bool:
            why[0] = cluster.unready() or fleet.unsettled(within=2.0)
            return why[0] is None

        try:
            wait_until(whole, timeout, "the system to settle", interval=0.1)
        except ProcessError:
            return why[0]
        return None

    # -- one fault -------------------------------------------------------------------

    def run_fault(self, kind: str, round_: int = 0) -> FaultResult:
        """Settle, wait a random moment, strike, wait for the heal, restore, and judge every socket."""
        assert self.fleet is not None
        trouble = self.settle()
        time.sleep(self.rng.uniform(*BEFORE))
        struck = getattr(self, f"_{kind}")()
        plans = [s.plan for s in self.fleet.sockets]
        deadline = min(struck.heal_by, max(struck.back + struck.expect(struck.homes.get(p.index), p).fresh_within for p in plans) + GRACE)
        try:
            wait_until(lambda: self.fleet.unhealed() == 0, max(0.0, deadline - time.monotonic()), "fresh books", interval=0.02)
        except ProcessError:
            pass  # judged below, socket by socket
        problems = [f"before the fault the system was not whole: {trouble}"] if trouble else []
        problems += struck.restore()
        after = self.settle()
        if after:
            problems.append(f"after the fault the system did not come back whole within {SETTLE_TIMEOUT:.0f} s: {after}")
        seen, (bus, bus_counts) = self.fleet.collect()
        result = FaultResult(kind, round_, struck.victim, round(struck.down_s, 3), round(struck.back - struck.t0, 3),
                             problems=problems, elsewhere=struck.elsewhere)
        result.bad_messages.extend(bus)
        for counts in (bus_counts, *(s.counts for s in seen)):
            for what, n in counts.items():
                result.bad_counts[what] = result.bad_counts.get(what, 0) + n
        for s in seen:
            result.bad_messages.extend(s.violations)
            if s.watch is None:
                continue
            home = struck.homes.get(s.plan.index)
            where = f"{s.plan.label} (on bridge-{home + 1} at the fault)" if home is not None else s.plan.label
            outcome: Outcome = judge(where, s.watch, struck.expect(home, s.plan), struck.back, s.live)
            result.missed.extend(outcome.problems)
            result.sockets[s.plan.name] = (_rounded(outcome.stale_s), _rounded(outcome.heal_s))
            group = struck.group(home, s.plan)
            if group is not None:
                if outcome.heal_s is not None:
                    result.heal_s.setdefault(group, []).append(_rounded(outcome.heal_s))
                if outcome.stale_s is not None:
                    result.stale_s.setdefault(group, []).append(_rounded(outcome.stale_s))
        return result

    def _mark(self, new_epoch: bool = False) -> tuple[float, dict[int, int | None]]:
        assert self.fleet is not None
        return self.fleet.mark(new_epoch)

    def _struck(self) -> None:
        """The fault has happened: books published from now on are fresh."""
        assert self.fleet is not None
        self.fleet.fresh_after(now_us())

    def _out_for(self, kind: str, t0: float) -> float:
        """Stay down for the kind's random outage; its length."""
        down = self.rng.uniform(*DOWN[kind])
        time.sleep(max(0.0, t0 + down - time.monotonic()))
        return down

    def _sim(self) -> Struck:
        sim = self.cluster.sim
        t0, homes = self._mark(new_epoch=True)
        self.cluster.kill(sim)
        self._struck()
        down = self._out_for("sim", t0)
        self.cluster.restart(sim)
        self.cluster.wait_listening(sim)
        expect = Expect(REQUIRED, 5.0, "the simulator back")
        return Struck("sim", t0, time.monotonic(), down, homes, lambda _h, _p: expect, _everyone, float("inf"))

    def _redis(self) -> Struck:
        t0, homes = self._mark()
        self.cluster.kill_redis()
        self._struck()
        down = self._out_for("redis", t0)
        self.cluster.restart_redis()
        expect = Expect(REQUIRED, 5.0, "Redis back")
        return Struck("redis", t0, time.monotonic(), down, homes, lambda _h, _p: expect, _everyone, float("inf"))

    def _leader(self) -> Struck:
        return self._ingestor(self.cluster.leader(), "a leading ingestor", ALLOWED)  # a takeover may flash stale

    def _standby(self) -> Struck:
        return self._ingestor(next(iter(self.cluster.standbys()), None), "a standby ingestor", FORBIDDEN)

    def _ingestor(self, role: Role | None, what: str, stale: str) -> Struck:
        """Kill an ingestor; nothing is restarted until the books have healed, then it comes back as a standby."""
        if role is None:
            raise ProcessError(f"no {what} to strike")
        victim = role
        t0, homes = self._mark()
        self.cluster.kill(victim)
        self._struck()
        expect = Expect(stale, 2.0, "the kill (nothing restarted)")

        def again() -> list[str]:
            self.cluster.restart(victim)
            return []

        return Struck(victim.name, t0, t0, 0.0, homes, lambda _h, _p: expect, _everyone, float("inf"), again)

    def _bridge(self) -> Struck:
        # In turn, not at random: the sockets that fail over follow the victim of the round
        # before to the other bridge, so each round strikes them all, and a sticky half.
        index = self._bridge_turn % len(self.cluster.bridges)
        self._bridge_turn += 1
        victim = self.cluster.bridges[index]
        t0, homes = self._mark()
        self.cluster.kill(victim)
        self._struck()
        down = self._out_for("bridge", t0)
        self.cluster.restart(victim)
        self.cluster.wait_listening(victim)
        theirs = Expect(REQUIRED, 5.0, f"{victim.name} back", closing=True)
        others = Expect(FORBIDDEN, 2.0, "the kill (their bridge lives)")

        def group(home: int | None, plan: SocketPlan) -> str | None:
            if home != index:
                return None
            return BACK_TO_IT if plan.sticky else TO_THE_OTHER

        return Struck(victim.name, t0, time.monotonic(), down, homes, lambda h, _p: theirs if h == index else others, group,
                      float("inf"), elsewhere=(TO_THE_OTHER,))

    def _pause(self) -> Struck:
        victim = self.cluster.leader()
        if victim is None:
            raise ProcessError("no leading ingestor to pause")
        t0, homes = self._mark()
        pid = self.cluster.pause(victim)
        self._struck()
        until = t0 + self.rng.uniform(*DOWN["pause"]) * self.cluster.lease

        def wake() -> list[str]:
            time.sleep(max(0.0, until - time.monotonic()))
            self.cluster.resume_pid(pid)
            try:
                wait_until(lambda: victim.metrics().get("ingest_leader") == 0, STANDS_BY_TIMEOUT, "the woken ex-leader to stand by")
            except ProcessError as exc:
                return [f"{victim.name}, paused and woken: {exc}"]
            return []

        expect = Expect(ALLOWED, 2.0, "the pause (nothing restarted)")
        return Struck(victim.name, t0, t0, until - t0, homes, lambda _h, _p: expect, _everyone, until, wake)

    def _primary(self) -> Struck:
        return strike_primary(self)

    def run(self, report: Callable[[FaultResult], None] | None = None) -> list[FaultResult]:
        """Every kind in turn, `rounds` times."""
        results = []
        for r in range(self.config.rounds):
            for kind in self.config.kinds:
                result = self.run_fault(kind, r)
                results.append(result)
                if report is not None:
                    report(result)
        return results


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 4)


def _everyone(_home: int | None, _plan: SocketPlan) -> str:
    return ""


def parse(argv: list[str] | None = None) -> tuple[Config, Path | None]:
    """The configuration, and where to write the JSON (None: nowhere)."""
    p = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=20, help="times each fault is struck (default 20)")
    p.add_argument("--sockets", type=int, default=200, help="WebSockets, spread over both bridges (default 200)")
    p.add_argument("--instruments", type=int, default=4, help="instruments the sockets follow (default 4)")
    p.add_argument("--rate", type=float, default=20.0, help="simulator events/s per instrument (default 20)")
    p.add_argument("--seed", type=int, default=1, help="seeds the fault moments and outages (default 1)")
    p.add_argument("--kinds", help=f"faults to strike, in turn (default {','.join(KINDS)}; with --redis-cluster {','.join(CLUSTER_KINDS)})")
    p.add_argument("--redis-cluster", type=int, default=0, help="run on a Redis Cluster of this many primaries, each with a replica (default 0: one Redis)")
    p.add_argument("--universe", type=int, default=8, help="instruments the simulator lists (default 8)")
    p.add_argument("--json", type=Path, help="write the results as JSON to this file")
    p.add_argument("--logs", type=Path, help="keep the processes' logs in this folder (default: a temporary one)")
    args = p.parse_args(argv)
    kinds = tuple(k for k in (args.kinds or ",".join(CLUSTER_KINDS if args.redis_cluster else KINDS)).split(",") if k)
    unknown = [k for k in kinds if k not in LABELS]
    if unknown or args.rounds < 1 or args.sockets < 1 or args.instruments < 1:
        p.error(f"unknown fault {unknown[0]!r} (choose from {', '.join(KINDS)})" if unknown else "rounds, sockets and instruments must be at least 1")
    return Config(args.rounds, args.sockets, args.instruments, args.rate, args.seed, kinds, logs=args.logs,
                  redis_cluster=args.redis_cluster, universe=args.universe), args.json


def main(argv: list[str] | None = None) -> int:
    from bench import fault_report

    config, path = parse(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    header = fault_report.header(config)
    print(header, flush=True)
    started = time.monotonic()
    with Suite(config) as suite:
        results = suite.run(lambda r: print(fault_report.line(r), flush=True))
        totals = suite.fleet.totals() if suite.fleet else {}
    elapsed = time.monotonic() - started
    summary = fault_report.summary(results)
    print(fault_report.table(summary, config, elapsed, totals))
    if path is not None:
        fault_report.write_json(path, config, results, summary, totals, elapsed, header)
        print(f"wrote {path}")
    return 0 if not any(r.failures for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
