"""The committed generated modules are exactly what the pinned grpcio-tools makes of the .proto."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from marketdata import book
from marketdata.v1 import market_data_pb2 as pb

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ("market_data_pb2.py", "market_data_pb2.pyi", "market_data_pb2_grpc.py")


def test_generated_modules_are_up_to_date(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "proto", tmp_path / "proto")
    done = subprocess.run(
        [
            sys.executable, "-m", "grpc_tools.protoc", "-Iproto", "--python_out=.", "--pyi_out=.",
            "--grpc_python_out=.", "proto/marketdata/v1/market_data.proto",
        ],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"protoc failed:\n{done.stderr}"
    stale = []
    for name in GENERATED:
        fresh = (tmp_path / "marketdata" / "v1" / name).read_bytes()
        committed = ROOT / "marketdata" / "v1" / name
        if not committed.exists() or committed.read_bytes() != fresh:
            stale.append(name)
    if stale:
        pytest.fail(f"marketdata/v1/{', '.join(stale)} differ from proto/marketdata/v1/market_data.proto: run `make proto`")


def test_book_sides_are_the_proto_sides() -> None:
    assert book.BID == pb.SIDE_BID == 1
    assert book.ASK == pb.SIDE_ASK == 2
