"""The ingestor's pure parts (marketdata.ingest.ingestor), its command flags and its metrics; its loops
run against real gRPC and Redis in tests/integration/test_ingest.py and test_standby.py."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from marketdata import cli
from marketdata.ingest.metrics import Gauges, registry
from marketdata.ingest.publish_queue import IngestStats
from marketdata.instruments import DEFAULT_INSTRUMENTS
from marketdata.settings import IngestSettings

BTC = DEFAULT_INSTRUMENTS[0]


# -- the ingest command's lease and metrics flags ------------------------------------------------


def test_lease_and_metrics_flags_and_variables(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    calls: list[IngestSettings] = []
    monkeypatch.setattr(cli, "_entry", lambda command: lambda settings: calls.append(settings) or 0)
    assert cli.main(["ingest"]) == 0
    assert (calls[-1].lease, calls[-1].metrics_port, calls[-1].metrics_host) == (1.0, 0, "127.0.0.1")
    monkeypatch.setenv("MD_INGEST_LEASE", "0.5")
    monkeypatch.setenv("MD_INGEST_METRICS_PORT", "9108")
    assert cli.main(["ingest", "--metrics-host", "0.0.0.0"]) == 0
    assert (calls[-1].lease, calls[-1].metrics_port, calls[-1].metrics_host) == (0.5, 9108, "0.0.0.0")
    assert cli.main(["ingest", "--lease", "2"]) == 0 and calls[-1].lease == 2.0
    # The heartbeat must outlive a takeover (a lease period, and a little more, without a renewal).
    with pytest.raises(SystemExit) as info:
        cli.main(["ingest", "--lease", "2.5"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "--heartbeat-ttl 3 is under 1.5 times --lease 2.5" in err and len(err.splitlines()) == 1


# -- metrics: the names are pinned (a Grafana board reads them) ------------------------------------


def test_metrics_names_and_values() -> None:
    stats = IngestStats(events=120, publishes=40, gaps=1, checksum_mismatches=2, fenced_writes=3, leader_changes=4)
    text = generate_latest(registry(stats, lambda: Gauges(leader=True, sim_live=True, redis_up=False))).decode()
    samples = {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples}
    assert {name: value for name, value in samples.items() if not name.endswith("_created")} == {
        "ingest_leader": 1, "ingest_sim_live": 1, "ingest_redis_up": 0,
        "ingest_leader_changes_total": 4, "ingest_events_total": 120, "ingest_publishes_total": 40,
        "ingest_gaps_total": 1, "ingest_checksum_mismatches_total": 2, "ingest_fenced_writes_total": 3,
    }  # fmt: skip
    assert "# TYPE ingest_fenced_writes_total counter" in text and "# TYPE ingest_leader gauge" in text
