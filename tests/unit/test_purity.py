"""The pure modules load no I/O framework: the sans-I/O boundary stays where docs/architecture.md draws it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

FORBIDDEN = ("grpc", "redis", "asyncio", "fastapi", "starlette", "uvicorn")
PURE = [
    # the core
    "marketdata.book", "marketdata.feed", "marketdata.schema", "marketdata.instruments", "marketdata.errors",
    "marketdata.settings", "marketdata.backoff", "marketdata.logs", "marketdata.clock", "marketdata.delta", "marketdata.slots",
    # the roles' pure parts
    "marketdata.sim.model", "marketdata.sim.wire", "marketdata.ingest.publish_queue", "marketdata.client.ladder",
    "marketdata.loadtest.latency", "marketdata.loadtest.measurement", "marketdata.sim.schedule", "marketdata.ingest.lease",
    "marketdata.ingest.slot_writes",
    # the bridge's pure parts
    "bridge.verify", "bridge.limits", "bridge.frames", "bridge.feed_state", "bridge.origins", "bridge.control",
]  # fmt: skip

_PROBE = """
import importlib, json, sys
importlib.import_module(sys.argv[1])
roots = sorted({name.split(".")[0] for name in sys.modules})
print(json.dumps(roots))
"""


def loaded_roots(module: str) -> set[str]:
    """Top-level packages in sys.modules after importing `module` in a fresh interpreter."""
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, module], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, f"importing {module} failed:\n{done.stderr}"
    return set(json.loads(done.stdout))


@pytest.mark.parametrize("module", PURE)
def test_pure_module_imports_no_io(module: str) -> None:
    bad = sorted(loaded_roots(module) & set(FORBIDDEN))
    assert not bad, f"importing {module} loads {', '.join(bad)}; pure modules must stay free of I/O frameworks"


def test_probe_can_see_a_forbidden_import() -> None:
    # the check itself works: the generated gRPC stubs import grpc, and the probe sees it
    assert "grpc" in loaded_roots("marketdata.v1.market_data_pb2_grpc")
