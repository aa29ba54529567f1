"""What may go into a log line (marketdata.logs): rate-limited lines and URLs without passwords."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from marketdata import logs
from marketdata.logs import Throttled, redact


def test_redact_hides_only_the_password() -> None:
    assert redact("redis://u:secret@h:6379/0") == "redis://u:***@h:6379/0"
    assert redact("redis://h:6379/0") == "redis://h:6379/0"
    assert redact("rediss://:secret@[::1]:6380/2") == "rediss://:***@[::1]:6380/2"
    assert redact("redis://u:secret@cache/0") == "redis://u:***@cache/0"


def test_a_throttled_line_is_logged_once_a_period_with_the_count_held_back(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    clock = [100.0]
    monkeypatch.setattr(logs, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    logger = logging.getLogger("tests.throttled")
    say = Throttled(logger, every=10.0)
    with caplog.at_level(logging.WARNING, logger="tests.throttled"):
        for n in range(5):  # the first line goes out, four are held back
            say(logging.WARNING, "slow socket %s", n)
            clock[0] += 1.0
        clock[0] = 110.0
        say(logging.WARNING, "slow socket %s", 9)
        clock[0] = 125.0
        say(logging.WARNING, "slow socket %s", 10)
    assert [r.getMessage() for r in caplog.records] == [
        "slow socket 0",
        "slow socket 9 (and 4 more like it since the last report)",
        "slow socket 10",
    ]


def test_redact_copes_with_urls_it_cannot_fully_parse() -> None:
    assert redact("redis://u:secret@h:bad/0") == "redis://u:***@h:bad/0"
    assert redact("redis://u:p@ss@h/0") == "redis://u:***@h/0"
    assert "secret" not in redact("redis://u:secret@[::1/0")


@pytest.mark.parametrize("argv, env", [
    (["ingest", "--redis-url", "http://u:secret@h/0"], {}),
    (["bridge"], {"MD_REDIS_URL": "http://bridge:secret@h/0"}),
])  # fmt: skip
def test_the_cli_never_prints_a_password(argv: list[str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    from marketdata.cli import main

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit):
        main(argv)
    out, err = capsys.readouterr()
    assert "***@h/0" in out + err, (out, err)  # the URL is named, without its password
    assert "secret" not in out + err
