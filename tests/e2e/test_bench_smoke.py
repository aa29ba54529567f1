"""The benchmarks' small configurations run end to end: every fan-out contender delivers, the page is measured.

No timing is asserted (performance is never asserted in tests); this only proves
that the harness, the peers and the load generator still work together.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.services import CONTENDERS

pytestmark = pytest.mark.slow


def test_small_fanout_benchmark_runs_every_contender(tmp_path: Path) -> None:
    out, chart = tmp_path / "fanout.json", tmp_path / "fanout.svg"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.fanout", "--small", "--out", str(out), "--chart", str(chart)],
        capture_output=True, text=True, timeout=110, stdin=subprocess.DEVNULL,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    data = json.loads(out.read_text())
    measured = [p for p in data["points"] if "skipped" not in p]
    assert {p["contender"] for p in measured} == set(CONTENDERS)
    for point in measured:
        name = point["contender"]
        assert point["delivered_per_s"] > 0, f"{name} delivered nothing: {point.get('why')}"
        assert point["connect_failures"] == 0, f"{name}: {point['connect_failures']} clients failed to connect"
        assert point["regressions"] == 0, f"{name}: seq went backwards"
        assert point["per_client"]["min"] > 0, f"{name}: a client received no book"
        for field in ("p50_ms", "p99_ms", "cpu_s_per_1k", "rss_mb"):
            assert point[field] is not None, f"{name}: no {field}"
    assert set(data["capacity"]["by_contender"]) == set(CONTENDERS)
    assert chart.read_text().lstrip().startswith(("<?xml", "<!--", "<svg"))
    assert "sustained capacity" in proc.stdout


def test_dashboard_benchmark_measures_a_live_page(tmp_path: Path) -> None:
    """bench/bench_dashboard.py against the real pipeline and the system Chromium, one short window."""
    from tests.e2e.browser import find_chromium

    if find_chromium() is None:
        reason = "no system Chromium (apt-get install chromium, or set MD_CHROMIUM)"
        if os.environ.get("CI"):
            pytest.fail(reason + "; CI must run the browser benchmark's smoke test")
        pytest.skip(reason)
    proc = subprocess.run(
        [sys.executable, "bench/bench_dashboard.py", "--rate", "50", "--panels", "2", "--at", "0.05", "--window", "2", "--json"],
        capture_output=True, text=True, timeout=110, stdin=subprocess.DEVNULL,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    report = json.loads(proc.stdout)
    (sample,) = report["samples"]
    assert report["panels"] == 2
    assert sample["fps"] > 0 and sample["messages_per_s"] > 0, sample
    for field in ("script_ms_per_frame", "layout_style_ms_per_frame", "heap_mb_after_gc"):
        assert sample[field] is not None, f"no {field}"


@pytest.mark.parametrize("script", ["bench/bench_book.py", "bench/bench_verify.py"])
def test_quick_benchmark_runs_and_prints_the_machine_reference(script: str) -> None:
    """Each in-process benchmark runs in its quick form and prints the machine reference next to its figures."""
    done = subprocess.run(
        [sys.executable, script, "--quick", "--repeats", "1"], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, f"{script} failed:\n{done.stdout}\n{done.stderr}"
    assert "# machine reference: an empty `for` loop takes" in done.stdout, done.stdout


def test_small_deltas_benchmark_compares_both_modes(tmp_path: Path) -> None:
    out, chart = tmp_path / "deltas.json", tmp_path / "deltas.svg"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.bench_deltas", "--small", "--depths", "25", "--out", str(out), "--chart", str(chart)],
        capture_output=True, text=True, timeout=110, stdin=subprocess.DEVNULL,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    data = json.loads(out.read_text())
    modes = {p["mode"]: p for p in data["points"]}
    assert set(modes) == {"snapshots", "deltas"} and all(p["delivered_per_s"] > 0 for p in modes.values()), data["points"]
    d = modes["deltas"]["deltas"]
    assert d["messages"] > 0 and d["checksum_failures"] == 0 and d["gaps"] == 0 and d["verifying_clients"] > 0, d
    assert modes["deltas"]["bytes_per_message"] < modes["snapshots"]["bytes_per_message"]
    assert data["summary"]["25"]["by_rate"] and data["reference_ns"] > 0 and data["loadavg_start"]
    assert chart.read_text().lstrip().startswith(("<?xml", "<!--", "<svg"))


def test_quick_cluster_benchmark_measures_both_modes(tmp_path: Path) -> None:
    """bench/bench_cluster.py --quick: one server and a 3-shard cluster each deliver every book to every reader."""
    out = tmp_path / "cluster.json"
    proc = subprocess.run(
        [sys.executable, "bench/bench_cluster.py", "--quick", "--json", str(out)],
        capture_output=True, text=True, timeout=110, stdin=subprocess.DEVNULL,
        cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert "# machine reference: an empty `for` loop takes" in proc.stdout, proc.stdout
    data = json.loads(out.read_text())
    assert [r["mode"] for r in data["modes"]] == ["single", "cluster"] and data["reference_ns"] > 0
    for run in data["modes"]:
        assert all(s["channels"] == 1000 for s in run["subscribe"]), run["subscribe"]
        assert run["steps"], f"{run['mode']}: no step measured"
        for step in run["steps"]:
            assert step["messages_out_per_s"] > 0 and step["redis_us_per_message_out"] > 0, step
            assert not step["failed"] and step["publish_errors"] == 0, step
            assert step["latency_p99_ms"] is not None and step["publish_rtt_p99_ms"] is not None, step
    assert len(data["modes"][1]["steps"][0]["redis_cpu"]) >= 3, "one CPU figure per cluster node"
