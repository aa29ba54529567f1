"""The bridge's limits on what one client may take (pure: values and a clock reading in, verdicts out).

- `TokenBucket`: inbound ops per socket per second, with a burst;
- `Admission`: open sockets per bridge and per client address;
- `Proxies`: the client address of a connection, believing X-Forwarded-For only from
  a trusted proxy.

The endpoints (bridge.endpoints) turn a verdict into an answer: HTTP 503 or 429 before
the upgrade, close 1008, or an error message; the handshake deadline lives with the
uvicorn protocol it wraps (bridge.handshake). Each refusal is counted by its reason,
one of REFUSALS, in /metrics as `bridge_refusals_total{reason=...}`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

SOCKETS_PER_BRIDGE = "sockets_per_bridge"
SOCKETS_PER_ADDRESS = "sockets_per_address"
HANDSHAKE_TIMEOUT = "handshake_timeout"
RATE_LIMIT = "rate_limit"
INSTRUMENTS_PER_SOCKET = "instruments_per_socket"
ORIGIN = "origin"
REFUSALS = (SOCKETS_PER_BRIDGE, SOCKETS_PER_ADDRESS, HANDSHAKE_TIMEOUT, RATE_LIMIT, INSTRUMENTS_PER_SOCKET, ORIGIN)

# One IPv6 client usually holds a whole /64 and can pick any address in it: count it as one.
IPV6_CLIENT_PREFIX = 64

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def networks(texts: Iterable[str]) -> tuple[Network, ...]:
    """IPs and CIDRs ("10.0.0.0/8", "::1") as networks; raise ValueError naming a bad one."""
    out = []
    for text in texts:
        try:
            out.append(ipaddress.ip_network(text.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{text!r} is not an IP address or a CIDR network") from None
    return tuple(out)


def _address(text: str) -> Address | None:
    try:
        address = ipaddress.ip_address(text.strip().removeprefix("[").removesuffix("]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # ::ffff:1.2.3.4 is the IPv4 client 1.2.3.4
    return address


def _within(address: Address | None, nets: tuple[Network, ...]) -> bool:
    return address is not None and any(address.version == n.version and address in n for n in nets)


class TokenBucket:
    """`rate` tokens a second up to `burst`; each op takes one. Starts full."""

    __slots__ = ("_stamp", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._tokens = float(burst)
        self._stamp = now

    def take(self, now: float) -> bool:
        """Spend a token at time `now` (seconds, any monotonic clock); False when none is left."""
        tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if tokens < 1.0:
            self._tokens = tokens
            return False
        self._tokens = tokens - 1.0
        return True


class Proxies:
    """Who the client is: the peer, or, when the peer is a trusted proxy, what X-Forwarded-For says.

    Each proxy appends the address it got the request from, so the list reads
    client, proxy1, proxy2 and only its right end is written by proxies we trust:
    the client is the right-most address that is not a trusted proxy. Anything to
    its left was written by the client itself and is ignored.
    """

    def __init__(self, trusted: Iterable[str]) -> None:
        self.trusted = networks(trusted)

    def client(self, peer: str | None, forwarded_for: Iterable[str] = ()) -> str:
        """The client address of a connection from `peer` carrying these X-Forwarded-For headers, in order."""
        peer = peer or "unknown"
        if not self.trusted or not _within(_address(peer), self.trusted):
            return peer
        hops = [hop.strip() for header in forwarded_for for hop in header.split(",")]
        for hop in reversed(hops):
            if not hop:
                continue
            if not _within(_address(hop), self.trusted):
                return hop[:64]  # a client-made value that no proxy vouched for stays short
        # Every hop was a trusted proxy (or there was no header): the left-most is the closest we know.
        first = next((hop for hop in hops if hop), None)
        return first[:64] if first is not None else peer


@dataclass(slots=True)
class Admission:
    """Counts open sockets per bridge and per client address; `admit` before accepting, `release` after.

    Addresses in `exempt` (loopback by default: the load generator, a local health
    check) are not limited per address, only per bridge.
    """

    max_sockets: int
    max_per_address: int
    exempt: tuple[Network, ...] = ()
    total: int = field(default=0, init=False)
    _per_address: dict[str, int] = field(default_factory=dict, init=False)

    def key(self, client: str) -> str:
        """The accounting key of a client address: the address itself, an IPv6 one's /64."""
        address = _address(client)
        if address is None:
            return client
        if isinstance(address, ipaddress.IPv6Address):
            return str(ipaddress.IPv6Network((address, IPV6_CLIENT_PREFIX), strict=False))
        return str(address)

    def admit(self, client: str) -> str | None:
        """Take a socket for `client`; None when admitted, else the refusal reason (nothing taken)."""
        if self.total >= self.max_sockets:
            return SOCKETS_PER_BRIDGE
        if not _within(_address(client), self.exempt):
            key = self.key(client)
            held = self._per_address.get(key, 0)
            if held >= self.max_per_address:
                return SOCKETS_PER_ADDRESS
            self._per_address[key] = held + 1
        self.total += 1
        return None

    def release(self, client: str) -> None:
        """Give back the socket `admit` took for `client`."""
        self.total -= 1
        if not _within(_address(client), self.exempt):
            key = self.key(client)
            held = self._per_address.get(key, 0) - 1
            if held > 0:
                self._per_address[key] = held
            else:
                self._per_address.pop(key, None)

    def held(self, client: str) -> int:
        """Sockets counted against `client`'s address now."""
        return self._per_address.get(self.key(client), 0)
