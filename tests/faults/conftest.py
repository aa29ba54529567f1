"""One whole system for the fault tests (bench.faults.Suite): Redis, the simulator, two ingestors, two bridges
and 100 checking sockets, started once for the package; each test strikes one fault and the suite leaves the
system whole again (or says why not) before the next."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.faults import Config, FaultResult, Suite

SOCKETS = 100


@pytest.fixture(scope="package")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Suite]:
    logs = tmp_path_factory.mktemp("faults")
    with Suite(Config(rounds=1, sockets=SOCKETS, seed=7, logs=logs)) as running:
        yield running


def assert_clean(result: FaultResult, logs: Path | None = None) -> None:
    """No socket missed a deadline, no message failed a check, the system came back whole; else every line says which socket and why."""
    failures = result.failures
    shown = "\n  ".join(failures[:25]) + (f"\n  ... and {len(failures) - 25} more" if len(failures) > 25 else "")
    where = f" (process logs in {logs})" if logs else ""
    assert not failures, f"{result.kind} fault, victim {result.victim}: {len(failures)} failures{where}\n  {shown}"
