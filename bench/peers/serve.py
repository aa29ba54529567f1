"""How every benchmark peer is run: the same flags and the same uvicorn settings.

A peer's command takes --host, --port, --ws and the one flag naming where its
books come from (--redis-url or --sim), then serves its app under uvicorn with
uvloop, a deep accept backlog and a short graceful shutdown, so that the peers
differ only in their app, never in how they are served.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from typing import Any

import uvicorn

# Where a peer's books come from: its flag, its metavar and its default.
SOURCES = {
    "redis": ("--redis-url", "REDIS_URL", "redis://127.0.0.1:6379/0"),
    "sim": ("--sim", "SIM", "127.0.0.1:50051"),
}


def main(argv: list[str] | None, create_app: Callable[[str], Any], description: str, port: int, source: str) -> None:
    """Parse the peer's flags, then serve `create_app(<the value of its source flag>)` until stopped."""
    flag, metavar, default = SOURCES[source]
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=port)
    parser.add_argument(flag, dest="source", metavar=metavar, default=default)
    parser.add_argument("--ws", default="websockets-sansio")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    uvicorn.run(create_app(args.source), host=args.host, port=args.port, ws=args.ws, loop="uvloop",
                log_level="warning", backlog=4096, timeout_graceful_shutdown=2)
