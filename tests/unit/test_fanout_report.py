"""bench/fanout_report.py: capacities over merged result files, and its command's answers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from bench import fanout_report


def point(contender: str, clients: int, delivered: float, p99: float, ok: bool) -> dict[str, Any]:
    return {"contender": contender, "clients": clients, "instruments": 8, "rate": 100.0, "offered_per_s": clients * 100,
            "delivered_per_s": delivered, "p50_ms": p99 / 2, "p99_ms": p99, "cpu_s_per_1k": 0.005, "rss_mb": 90.0,
            "rss_growth_mb": 0.0, "ok": ok, "why": "" if ok else f"p99 {p99:.0f} ms"}


def write(path: Path, points: list[dict[str, Any]], command: str) -> Path:
    path.write_bytes(orjson.dumps({"command": command, "started": "2026-12-01T09:00:00", "cores": 2,
                                   "points": points, "memory": []}))
    return path


def test_capacity_is_taken_over_every_merged_file(tmp_path: Path) -> None:
    main_run = write(tmp_path / "steps.json", [
        point("ours", 1000, 100_000, 8.0, True),
        point("ours", 2000, 170_000, 30.0, True),
        point("broadcaster", 500, 50_000, 10.0, True),
        point("broadcaster", 1000, 99_000, 200.0, False),
    ], "python -m bench.fanout --clients 500,1000,2000")
    refined = write(tmp_path / "refine.json", [point("broadcaster", 750, 75_000, 16.0, True)],
                    "python -m bench.fanout --contenders broadcaster --clients 750")
    data = fanout_report.merge([main_run, refined])
    cap = data["capacity"]
    assert cap["by_contender"]["ours"]["capacity"] == 170_000
    assert cap["by_contender"]["broadcaster"]["capacity"] == 75_000  # the refined point, not the coarse 50k
    assert cap["ours_vs_best_peer"] == {"peer": "broadcaster", "ratio": round(170_000 / 75_000, 2)}
    assert len(data["points"]) == 5
    assert data["command"] == f"python -m bench.fanout_report {main_run} {refined}"


def test_the_command_draws_the_chart(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = write(tmp_path / "r.json", [point("ours", 100, 10_000, 2.0, True)], "python -m bench.fanout")
    chart = tmp_path / "chart.svg"
    assert fanout_report.main([str(result), "--chart", str(chart)]) == 0
    assert "sustained capacity" in capsys.readouterr().out
    svg = chart.read_text()
    assert svg.lstrip().startswith(("<?xml", "<svg")) and "10,000" in svg


def test_a_file_without_points_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    calibration = tmp_path / "calibration.json"
    calibration.write_bytes(orjson.dumps({"calibration": {"points": []}}))
    with pytest.raises(SystemExit) as exit_:
        fanout_report.main([str(calibration)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "no fan-out points" in err and "\n" not in err
