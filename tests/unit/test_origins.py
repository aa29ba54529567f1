"""Which browser origins may open a WebSocket on the bridge."""

from __future__ import annotations

import pytest

from bridge.origins import OriginPolicy


@pytest.mark.parametrize(
    ("allowed", "origin", "host", "ok"),
    [
        ((), None, "bridge:8000", True),  # not a browser
        ((), "http://bridge:8000", "bridge:8000", True),  # same origin
        ((), "HTTP://Bridge:8000/", "bridge:8000", True),
        ((), "https://bridge", "bridge:443", True),  # default ports
        ((), "http://bridge:8001", "bridge:8000", False),
        ((), "http://evil.example", "bridge:8000", False),
        ((), "null", "bridge:8000", False),
        ((), "http://bridge:8000", None, False),
        (("https://dash.example",), "https://dash.example", "bridge:8000", True),
        (("https://dash.example/",), "https://DASH.example", "bridge:8000", True),
        (("https://dash.example",), "http://dash.example", "bridge:8000", False),
        (("*",), "http://anything.example", "bridge:8000", True),
    ],
)
def test_origin_policy(allowed: tuple[str, ...], origin: str | None, host: str | None, ok: bool) -> None:
    assert OriginPolicy(allowed).allows(origin, host) is ok
