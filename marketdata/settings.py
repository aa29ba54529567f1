"""Typed settings of every role, built by the CLI from flags and MD_* variables.

Each role's entry function takes one of these; nothing reads the environment or
argv anywhere else. The fields' defaults are the flags' defaults: the CLI reads them
from here and writes none of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
LOG_LEVEL = "info"  # every command's --log-level; the CLI sets up logging itself


@dataclass(frozen=True, slots=True)
class SimSettings:
    host: str = "127.0.0.1"
    port: int = 50051
    seed: int = 1
    instruments: tuple[str, ...] = ()  # empty: every instrument of the universe
    universe: int = 8  # instruments listed: the eight named ones, then generated ones
    rate: float = 20.0  # events/s per instrument, on average (each has its activity)
    burst_factor: float = 1.0  # rate multiplier during a burst; 1 = no bursts
    burst_every: float = 10.0  # seconds between burst starts
    burst_length: float = 1.0  # seconds a burst lasts
    max_batch: int = 1000  # events per gRPC message at most
    queue_batches: int = 256  # batches a subscriber may fall behind before it is re-snapshotted


@dataclass(frozen=True, slots=True)
class IngestSettings:
    sim: str = "127.0.0.1:50051"
    redis_url: str = DEFAULT_REDIS_URL
    redis_cluster: bool = False  # redis_url names a node of a Redis Cluster: hash-tagged names, SPUBLISH, writes grouped by slot
    depth: int = 25
    prefix: str = "md"
    instruments: tuple[str, ...] = ()  # empty: every instrument the simulator lists
    coalesce: bool = True
    heartbeat_ttl: float = 3.0  # seconds; refreshed by the leader at each lease renewal; outlives a takeover
    trades_history: int = 50
    lease: float = 1.0  # seconds the publishing lease lasts unrenewed; see marketdata.ingest.lease for the timing
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0  # Prometheus /metrics; 0: off


@dataclass(frozen=True, slots=True)
class BridgeSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    redis_url: str = DEFAULT_REDIS_URL
    redis_cluster: bool = False  # redis_url names a node of a Redis Cluster: SSUBSCRIBE on each channel's shard
    prefix: str = "md"
    allowed_origins: tuple[str, ...] = ()  # empty: same origin only; "*": any
    send_timeout: float = 5.0  # a socket stuck this long in one send is closed (1008)
    stale_after: float = 3.0  # seconds without heartbeat before the feed is stale
    max_frame: int = 4096  # bytes of an inbound WebSocket frame at most
    ws: str = "websockets-sansio"  # uvicorn WebSocket implementation
    http: str = "auto"  # uvicorn HTTP implementation: auto (httptools when installed, else h11), httptools or h11
    loop: str = "auto"  # uvicorn event loop: auto, uvloop or asyncio
    # Limits (bridge.limits): what one client may take; see the README's "Limits".
    max_sockets: int = 10_000  # open WebSockets on this bridge; over it: HTTP 503 before the upgrade
    max_sockets_per_address: int = 100  # open WebSockets per client address (IPv6: per /64); over it: HTTP 429
    address_limit_exempt: tuple[str, ...] = ("127.0.0.0/8", "::1")  # IPs/CIDRs not limited per address
    trusted_proxies: tuple[str, ...] = ()  # IPs/CIDRs whose X-Forwarded-For is believed
    handshake_timeout: float = 5.0  # seconds to send a complete request head (HTTP or WebSocket handshake)
    ops_rate: float = 20.0  # inbound frames per socket per second, on average; over it: close 1008 "rate limit"
    ops_burst: int = 40  # inbound frames a socket may send at once before ops_rate applies
    max_instruments: int = 100  # instruments subscribed on one /ws socket at most
    workers: int = 1  # processes serving the port (bridge.workers); 1: this process alone; 0: one per core


@dataclass(frozen=True, slots=True)
class ClientSettings:
    sim: str = "127.0.0.1:50051"
    instruments: tuple[str, ...] = ()
    depth: int = 10
    count: int = 0  # stop after this many updates; 0 = run until interrupted
    json: bool = False


@dataclass(frozen=True, slots=True)
class UpSettings:
    host: str = "127.0.0.1"
    port: int = 8000  # first bridge; the others count upward
    bridges: int = 2
    bridge_workers: int = 1  # processes per bridge on its port; 0: one per core
    ingestors: int = 2  # one leads and publishes, the others stand by with warm books
    universe: int = 8  # instruments the simulator lists
    redis_url: str | None = None  # None: start the embedded server
    redis_cluster: int = 0  # 0: one embedded server; N: an embedded Redis Cluster of N primaries, each with a replica
    sim_port: int = 50051
    rate: float = 20.0
    seed: int = 1
    depth: int = 25


@dataclass(frozen=True, slots=True)
class LoadtestSettings:
    url: str = "http://127.0.0.1:8000"
    clients: int = 100
    instruments: tuple[str, ...] = ()  # empty: every instrument the bridge lists
    duration: float = 10.0
    json: bool = False
    mode: str = "single"  # single: /ws/market_data/{id}; multi: /ws
    processes: int = 0  # 0: one per core
    warmup: float = 1.0
    deltas: bool = False  # ask for deltas; apply and verify each as a real client does
