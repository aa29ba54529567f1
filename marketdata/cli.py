"""The `marketdata` command: parses settings, then calls one entry function per role.

Every setting is a flag and an MD_* environment variable (the flag wins); --help
shows both and the default. Bad values are a one-line error and exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import logging
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn
from urllib.parse import urlsplit

from marketdata import __version__
from marketdata.errors import MarketDataError
from marketdata.instruments import MAX_UNIVERSE
from marketdata.logs import redact
from marketdata.settings import (
    LOG_LEVEL,
    BridgeSettings,
    ClientSettings,
    IngestSettings,
    LoadtestSettings,
    SimSettings,
    UpSettings,
)

log = logging.getLogger("marketdata")

# -- value types: each raises ValueError with a message a user can act on --------


def port(text: str) -> int:
    n = int(text)
    if not 0 <= n <= 65535:
        raise ValueError(f"port {n} is outside 0-65535")
    return n


def positive_int(text: str) -> int:
    n = int(text)
    if n < 1:
        raise ValueError(f"{n} is not a positive integer")
    return n


def count(text: str) -> int:
    n = int(text)
    if n < 0:
        raise ValueError(f"{n} is negative")
    return n


def universe_size(text: str) -> int:
    n = int(text)
    if not 1 <= n <= MAX_UNIVERSE:
        raise ValueError(f"{n} is outside 1-{MAX_UNIVERSE}")
    return n


def cluster_size(text: str) -> int:
    n = int(text)
    if n != 0 and n < 3:
        raise ValueError(f"{n} primaries cannot elect a replica when one dies: use 0 (one server) or at least 3")
    return n


def positive_float(text: str) -> float:
    x = float(text)
    if not (x > 0 and math.isfinite(x)):
        raise ValueError(f"{text} is not a positive number")
    return x


def id_list(text: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))


def network_list(text: str) -> tuple[str, ...]:
    """A comma list of IP addresses and CIDR networks (the bridge's --trusted-proxies)."""
    nets = id_list(text)
    for net in nets:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise ValueError(f"{net!r} is not an IP address or a CIDR network") from None
    return nets


def address(text: str) -> str:
    host, sep, p = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{text!r} is not host:port")
    port(p)
    return text


def redis_url(text: str) -> str:
    if urlsplit(text).scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"{redact(text)!r} is not a redis://, rediss:// or unix:// URL")
    return text


def http_url(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https", "ws", "wss") or not parts.netloc:
        raise ValueError(f"{text!r} is not an http:// or ws:// URL")
    return text.rstrip("/")


def boolean(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"{text!r} is not a boolean (1/0, true/false)")


def choice(*names: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in names:
            raise ValueError(f"{text!r} is not one of {', '.join(names)}")
        return text

    parse.__name__ = "choice"
    return parse


def _typed(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    """Wrap a parser so argparse prints its own message rather than 'invalid value'."""

    def parse(text: str) -> Any:
        try:
            return kind(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


_NO_DEFAULT: Any = object()


def _field_default(settings: type, name: str) -> Any:
    """The default of field `name` of a settings dataclass: the one place a flag's default is written."""
    for f in dataclasses.fields(settings):
        if f.name == name:
            return f.default
    raise LookupError(f"{settings.__name__} has no field {name!r}")


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, settings: type | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The settings dataclass this command builds; its fields' defaults are the flags'.
        self.settings = settings
        # A bad MD_* value is reported only if this command is the one run.
        self.env_errors: list[str] = []

    def _default(self, flag: str, default: Any) -> Any:
        if default is not _NO_DEFAULT:
            return default
        if self.settings is None:
            raise TypeError(f"{self.prog} {flag}: no default given and no settings class to take it from")
        return _field_default(self.settings, flag.removeprefix("--").replace("-", "_"))

    def error(self, message: str) -> NoReturn:
        """One line, no usage dump, exit code 2."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def _env(self, env: str, kind: Callable[[str], Any], default: Any) -> Any:
        raw = os.environ.get(env)
        if raw is None:
            return default
        try:
            return kind(raw)
        except ValueError as exc:
            self.env_errors.append(f"environment variable {env}={redact(raw)!r}: {exc}")
            return default

    def opt(self, flag: str, env: str, kind: Callable[[str], Any], help: str, default: Any = _NO_DEFAULT) -> None:
        """A flag whose default is its settings field's, or `env`'s value when that variable is set."""
        default = self._env(env, kind, self._default(flag, default))
        shown = ",".join(default) if isinstance(default, tuple) else default
        if shown in ("", None, ()):
            shown = "none"
        # A URL from the environment may carry a password: --help shows it as `user:***@`.
        # argparse %-formats help text: a "%" left in a value must be doubled.
        shown = redact(str(shown)).replace("%", "%%")
        self.add_argument(flag, type=_typed(kind), default=default, help=f"{help} [env {env}; default {shown}]")

    def flag(self, flag: str, env: str, help: str) -> None:
        """An on/off switch; --no-X turns it off."""
        default = self._env(env, boolean, self._default(flag, _NO_DEFAULT))
        self.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=f"{help} [env {env}; default {'on' if default else 'off'}]")


def _common(p: _Parser) -> None:
    p.opt("--log-level", "MD_LOG_LEVEL", choice("debug", "info", "warning", "error"), "log verbosity", default=LOG_LEVEL)


def build_parser() -> _Parser:
    root = _Parser(
        prog="marketdata",
        description="Live order books from a simulated exchange, fanned out through Redis to WebSocket bridges.",
        epilog="Run `marketdata up` to start everything; `marketdata COMMAND --help` explains each command. "
        "Every setting is a flag and an MD_* environment variable (`marketdata sim --port` or MD_SIM_PORT); the flag wins.",
    )
    root.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = root.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser, required=True)

    p = sub.add_parser("up", help="run everything: Redis, simulator, ingestor and N bridges", description="Start the whole system in one terminal and print the dashboard URLs. Ctrl-C stops everything.", settings=UpSettings)
    p.opt("--bridges", "MD_BRIDGES", positive_int, "bridge processes to start")
    p.opt("--bridge-workers", "MD_BRIDGE_WORKERS", count, "worker processes of each bridge on its port (0: one per core)")
    p.opt("--universe", "MD_UNIVERSE", universe_size, "instruments the simulator lists: the eight named ones, then generated ones (see marketdata sim --help)")
    p.opt("--ingestors", "MD_INGESTORS", positive_int, "ingestor processes to start: one leads, the others stand by and take over within one lease")
    p.opt("--host", "MD_BRIDGE_HOST", str, "interface the bridges listen on")
    p.opt("--port", "MD_BRIDGE_PORT", port, "port of the first bridge; the others count upward")
    p.opt("--redis-url", "MD_REDIS_URL", redis_url, "use this Redis instead of starting the embedded one")
    p.opt("--redis-cluster", "MD_REDIS_CLUSTER", cluster_size, "start an embedded Redis Cluster of this many primaries (at least 3), each with one replica, instead of one server (0: one server); with --redis-url: that URL names a node of a cluster")
    p.opt("--sim-port", "MD_SIM_PORT", port, "port of the simulator's gRPC server")
    p.opt("--rate", "MD_RATE", positive_float, "simulator events per second per instrument")
    p.opt("--seed", "MD_SEED", int, "simulator seed (same seed, same market)")
    p.opt("--depth", "MD_DEPTH", positive_int, "levels per side in each published snapshot (at least 10)")
    _common(p)

    p = sub.add_parser("sim", help="run the simulated exchange (gRPC server)", description="Serve a deterministic simulated market over gRPC (marketdata.v1.MarketData), with health checking and reflection.", settings=SimSettings)
    p.opt("--host", "MD_SIM_HOST", str, "interface to listen on (0.0.0.0 for every interface)")
    p.opt("--port", "MD_SIM_PORT", port, "port to listen on (0: any free port, printed in the log)")
    p.opt("--seed", "MD_SEED", int, "seed of the order-flow model (same seed, same events)")
    p.opt("--universe", "MD_UNIVERSE", universe_size, f"instruments in the market: the eight named ones, then generated crypto pairs, equities, FX pairs and futures (at most {MAX_UNIVERSE})")
    p.opt("--instruments", "MD_INSTRUMENTS", id_list, "comma list of instruments to list (default: the whole universe)")
    p.opt("--rate", "MD_RATE", positive_float, "events per second per instrument on average (1 to 100000); generated instruments are busy or quiet around it, the total stays rate x instruments")
    p.opt("--burst-factor", "MD_BURST_FACTOR", positive_float, "rate multiplier during bursts (1: no bursts)")
    p.opt("--burst-every", "MD_BURST_EVERY", positive_float, "seconds between the starts of two bursts")
    p.opt("--burst-length", "MD_BURST_LENGTH", positive_float, "seconds a burst lasts")
    p.opt("--max-batch", "MD_MAX_BATCH", positive_int, "events per gRPC message at most")
    p.opt("--queue-batches", "MD_QUEUE_BATCHES", positive_int, "batches a subscriber may lag before it gets fresh snapshots instead")
    _common(p)

    p = sub.add_parser("ingest", help="rebuild books from the simulator and publish them to Redis", description="Subscribe to the simulator, verify every book, publish snapshots to Redis pub/sub with a last-value key.", settings=IngestSettings)
    p.opt("--sim", "MD_SIM", address, "simulator address host:port")
    p.opt("--redis-url", "MD_REDIS_URL", redis_url, "Redis to publish to")
    p.flag("--redis-cluster", "MD_REDIS_CLUSTER", "--redis-url names any node of a Redis Cluster: names carry hash tags (md:book:{BTC-USD}), writes go out grouped by slot with SPUBLISH")
    p.opt("--depth", "MD_DEPTH", positive_int, "levels per side in each published snapshot (at least 10)")
    p.opt("--prefix", "MD_PREFIX", str, "prefix of every Redis key and channel")
    p.opt("--instruments", "MD_INSTRUMENTS", id_list, "comma list of instruments to ingest (default: all the simulator lists)")
    p.flag("--coalesce", "MD_COALESCE", "publish one snapshot per changed instrument per drain (--no-coalesce: one per event)")
    p.opt("--heartbeat-ttl", "MD_HEARTBEAT_TTL", positive_float, "seconds the heartbeat key lives without a refresh (at least 1.5 times --lease, so that a takeover never lets it lapse)")
    p.opt("--trades-history", "MD_TRADES_HISTORY", positive_int, "recent trades kept per instrument")
    p.opt("--lease", "MD_INGEST_LEASE", positive_float, "seconds the publishing lease lasts unrenewed: of several ingestors one publishes, renewing it every third of this; the others take over within about this when it dies")
    p.opt("--metrics-host", "MD_INGEST_METRICS_HOST", str, "interface the Prometheus endpoint listens on (0.0.0.0 for every interface)")
    p.opt("--metrics-port", "MD_INGEST_METRICS_PORT", port, "port of the Prometheus endpoint /metrics (0: off)")
    _common(p)

    p = sub.add_parser("bridge", help="serve the dashboard and WebSockets from Redis", description="A stateless FastAPI bridge: Redis pub/sub in, WebSocket clients out. Start as many as you like.", settings=BridgeSettings)
    p.opt("--host", "MD_BRIDGE_HOST", str, "interface to listen on (0.0.0.0 for every interface)")
    p.opt("--port", "MD_BRIDGE_PORT", port, "port to listen on")
    p.opt("--redis-url", "MD_REDIS_URL", redis_url, "Redis to subscribe to")
    p.flag("--redis-cluster", "MD_REDIS_CLUSTER", "--redis-url names any node of a Redis Cluster: SSUBSCRIBE each channel on the shard that owns it, following slot moves and failovers")
    p.opt("--prefix", "MD_PREFIX", str, "prefix of every Redis key and channel")
    p.opt("--allowed-origins", "MD_ALLOWED_ORIGINS", id_list, "comma list of browser origins allowed to open WebSockets ('*': any; default: same origin)")
    p.opt("--send-timeout", "MD_SEND_TIMEOUT", positive_float, "seconds a socket may stay stuck in one send before it is closed")
    p.opt("--stale-after", "MD_STALE_AFTER", positive_float, "seconds without a feed heartbeat before the feed is reported stale")
    p.opt("--max-frame", "MD_MAX_FRAME", positive_int, "largest inbound WebSocket frame in bytes")
    p.opt("--ws", "MD_WS", choice("websockets-sansio", "websockets", "wsproto"), "uvicorn WebSocket implementation")
    p.opt("--http", "MD_HTTP", choice("auto", "httptools", "h11"), "uvicorn HTTP implementation (auto: httptools when installed, else h11)")
    p.opt("--loop", "MD_LOOP", choice("auto", "uvloop", "asyncio"), "event loop")
    p.opt("--max-sockets", "MD_MAX_SOCKETS", positive_int, "open WebSockets on this bridge at most; over it the handshake gets HTTP 503 with Retry-After")
    p.opt("--max-sockets-per-address", "MD_MAX_SOCKETS_PER_ADDRESS", positive_int, "open WebSockets per client address (IPv6: per /64) at most; over it HTTP 429")
    p.opt("--address-limit-exempt", "MD_ADDRESS_LIMIT_EXEMPT", network_list, "comma list of IPs/CIDRs not limited per address ('': none)")
    p.opt("--trusted-proxies", "MD_TRUSTED_PROXIES", network_list, "comma list of IPs/CIDRs of proxies whose X-Forwarded-For is believed (the client is its right-most untrusted address)")
    p.opt("--handshake-timeout", "MD_HANDSHAKE_TIMEOUT", positive_float, "seconds a connection has to send a complete HTTP request head (a WebSocket handshake too); then 408 and closed")
    p.opt("--ops-rate", "MD_OPS_RATE", positive_float, "inbound WebSocket frames per socket per second; over it the socket is closed 1008 'rate limit'")
    p.opt("--ops-burst", "MD_OPS_BURST", positive_int, "inbound WebSocket frames a socket may send at once before --ops-rate applies")
    p.opt("--max-instruments", "MD_MAX_INSTRUMENTS", positive_int, "instruments one /ws socket may subscribe at once; over it the subscribe gets an error too_many_instruments")
    p.opt("--workers", "MD_BRIDGE_WORKERS", count, "processes serving the one port, the kernel spreading connections over them (Linux; 1: this process alone; 0: one per core); the limits above apply to each worker")
    _common(p)

    p = sub.add_parser("client", help="print live books from the simulator in the terminal", description="Subscribe to the simulator, rebuild and verify every book, show a live ladder (or JSON lines).", settings=ClientSettings)
    p.opt("--sim", "MD_SIM", address, "simulator address host:port")
    p.opt("--instruments", "MD_INSTRUMENTS", id_list, "comma list of instruments (default: all)")
    p.opt("--depth", "MD_CLIENT_DEPTH", positive_int, "levels per side to show")
    p.opt("--count", "MD_COUNT", count, "stop after this many updates (an update is one instrument whose book changed in one batch from the simulator, checked against the exchange's checksum; 0: run until Ctrl-C)")
    p.flag("--json", "MD_JSON", "print one JSON line per update instead of the ladder: instrument, seq, ts (µs), bid, bid_size, ask, ask_size, spread, spread_bps, mid, checksum, verified")
    _common(p)

    p = sub.add_parser("loadtest", help="measure a bridge with many WebSocket clients", description="Open many WebSocket clients against a bridge and report delivered messages/s and latency.", settings=LoadtestSettings)
    p.opt("--url", "MD_URL", http_url, "bridge base URL")
    p.opt("--clients", "MD_CLIENTS", positive_int, "WebSocket clients to open, spread over the instruments")
    p.opt("--instruments", "MD_INSTRUMENTS", id_list, "comma list of instruments (default: all the bridge lists)")
    p.opt("--duration", "MD_DURATION", positive_float, "seconds to measure, after the warm-up")
    p.opt("--warmup", "MD_WARMUP", float, "seconds of warm-up not counted")
    p.opt("--mode", "MD_MODE", choice("single", "multi"), "single: /ws/market_data/{id}; multi: one /ws per client")
    p.opt("--processes", "MD_PROCESSES", count, "load generator processes (0: one per core)")
    p.flag("--deltas", "MD_DELTAS", "ask for deltas; apply and verify each as a real client does, counting resyncs and checksum failures")
    p.flag("--json", "MD_JSON", "print the summary as one JSON object")
    _common(p)
    root.commands = sub.choices  # type: ignore[attr-defined]
    return root


def _settings(command: _Parser, ns: argparse.Namespace) -> Any:
    values = {k: v for k, v in vars(ns).items() if k not in ("command", "log_level")}
    return command.settings(**values)  # type: ignore[misc]


def _entry(command: str) -> Callable[[Any], int | None]:
    # Imported late so `marketdata client` never loads FastAPI, nor `bridge` gRPC.
    if command == "up":
        from marketdata.supervisor.up import run
    elif command == "sim":
        from marketdata.sim.server import run
    elif command == "ingest":
        from marketdata.ingest.ingestor import run
    elif command == "bridge":
        from bridge.app import run
    elif command == "client":
        from marketdata.client.terminal import run
    else:
        from marketdata.loadtest.runner import run
    return run


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    command = parser.commands[ns.command]  # type: ignore[attr-defined]
    if command.env_errors:
        command.error(command.env_errors[0])
    depth = getattr(ns, "depth", None)
    if ns.command in ("up", "ingest") and depth is not None and depth < 10:
        command.error(f"--depth {depth}: at least 10 levels are needed for readers to verify the checksum")
    if ns.command == "ingest" and ns.heartbeat_ttl < 1.5 * ns.lease:
        command.error(f"--heartbeat-ttl {ns.heartbeat_ttl:g} is under 1.5 times --lease {ns.lease:g}: the feed would look stale during a takeover")
    logging.basicConfig(
        level=ns.log_level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    settings = _settings(command, ns)
    try:
        return _entry(ns.command)(settings) or 0
    except KeyboardInterrupt:
        return 130
    except MarketDataError as exc:
        print(f"marketdata {ns.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
