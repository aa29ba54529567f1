"""Which browser origins may open a WebSocket on the bridge (pure: strings in, a verdict out).

A page from another site must not read the feed through a visitor's browser, so the
handshake's Origin header is checked before the socket is accepted. No Origin means
not a browser (scripts, the load generator): allowed.
"""

from __future__ import annotations

from urllib.parse import urlsplit

_DEFAULT_PORTS = {"http": "80", "https": "443", "ws": "80", "wss": "443"}


class OriginPolicy:
    """Which browser origins may open a socket: none given (not a browser), same as Host, or listed."""

    def __init__(self, allowed: tuple[str, ...]) -> None:
        self.any = "*" in allowed
        self.listed = frozenset(_origin(a) for a in allowed if a != "*")

    def allows(self, origin: str | None, host: str | None) -> bool:
        if origin is None or self.any:
            return True
        o = _origin(origin)
        if o in self.listed:
            return True
        if not host:
            return False
        parts = urlsplit(o)
        return bool(parts.netloc) and _strip_port(parts.netloc, parts.scheme) == _strip_port(host.lower(), parts.scheme)


def _origin(text: str) -> str:
    return text.strip().rstrip("/").lower()


def _strip_port(netloc: str, scheme: str) -> str:
    default = _DEFAULT_PORTS.get(scheme)
    if default and netloc.endswith(":" + default):
        return netloc[: -len(default) - 1]
    return netloc
