"""`marketdata loadtest` as a user runs it, against the real pipeline (Redis, sim, ingest, bridge)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from marketdata.supervisor.ports import free_port
from tests.e2e.browser import Pipeline

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pipeline() -> Iterator[Pipeline]:
    with Pipeline(rate=50.0) as running:
        yield running


def loadtest(*args: str, timeout: float = 90.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "marketdata", "loadtest", *args],
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("mode", ["single", "multi"])
def test_loadtest_measures_a_real_bridge(pipeline: Pipeline, mode: str) -> None:
    proc = loadtest("--url", pipeline.url, "--clients", "6", "--instruments", "BTC-USD,ETH-USD", "--duration", "2",
                    "--warmup", "0.5", "--processes", "2", "--mode", mode, "--json")
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stderr}\n{pipeline.logs()}"
    report = json.loads(proc.stdout)
    assert report["connected"] == 6 and report["connect_failures"] == 0, report
    assert report["messages"] > 0 and report["messages_per_s"] > 0, report
    assert report["regressions"] == 0, report
    assert report["errors"] == 0, report["error_samples"]
    assert report["per_client_messages"]["min"] > 0, "a client received no book"
    assert report["latency_ts"]["count"] == report["messages"]
    assert 0 < report["latency_ts"]["p50_ms"] <= report["latency_ts"]["p99_ms"] <= report["latency_ts"]["max_ms"]
    assert report["load_generator"]["processes"] == 2


def test_loadtest_prints_a_summary_and_looks_up_the_instruments(pipeline: Pipeline) -> None:
    proc = loadtest("--url", pipeline.url, "--clients", "8", "--duration", "1", "--warmup", "0.3", "--processes", "1")
    assert proc.returncode == 0, proc.stderr
    assert "delivered" in proc.stdout and "latency from ts" in proc.stdout and "regressions" in proc.stdout
    assert "8 connected of 8" in proc.stdout, proc.stdout


@pytest.mark.parametrize("extra", [[], ["--instruments", "BTC-USD"]])
def test_unreachable_url_is_one_line_and_exit_1(extra: list[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    proc = loadtest("--url", url, "--duration", "1", *extra, timeout=30)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("marketdata loadtest: cannot reach"), proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("mode", ["single", "multi"])
def test_loadtest_with_deltas_applies_and_verifies_them(pipeline: Pipeline, mode: str) -> None:
    proc = loadtest("--url", pipeline.url, "--clients", "6", "--duration", "2", "--warmup", "0.5", "--processes", "2",
                    "--mode", mode, "--deltas", "--json")
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stderr}\n{pipeline.logs()}"
    report = json.loads(proc.stdout)
    deltas = report["deltas"]
    assert deltas["verifying_clients"] == 6 and deltas["checksum_failures"] == 0 and deltas["gaps"] == 0, deltas
    assert deltas["messages"] > 0.8 * report["messages"], "after the first snapshot nearly everything is a delta"
    assert report["regressions"] == 0 and report["errors"] == 0, report["error_samples"]
    assert report["bytes_per_message"] < 600, "a delta is a fraction of a 25-level snapshot"
    if mode == "multi":
        return
    summary = loadtest("--url", pipeline.url, "--clients", "2", "--duration", "1", "--warmup", "0.3", "--processes", "1",
                       "--deltas")
    assert summary.returncode == 0 and "checksum failures" in summary.stdout and "resyncs" in summary.stdout, summary.stdout
