"""The `marketdata` command line: flags, MD_* variables, help, one-line errors with exit code 2.

main() runs in-process; the role's entry function is replaced by one that records the
settings it is handed, so nothing starts.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import os
from collections.abc import Iterator
from typing import Any

import pytest

from marketdata import cli
from marketdata.settings import (
    BridgeSettings,
    ClientSettings,
    IngestSettings,
    LoadtestSettings,
    SimSettings,
    UpSettings,
)

COMMANDS = ("up", "sim", "ingest", "bridge", "client", "loadtest")
# the settings dataclass each command builds, whose fields' defaults are its flags' defaults
SETTINGS = {
    "up": UpSettings, "sim": SimSettings, "ingest": IngestSettings,
    "bridge": BridgeSettings, "client": ClientSettings, "loadtest": LoadtestSettings,
}  # fmt: skip

# docs/architecture.md's table of public flags, with the variable each one reads, a good value and
# the settings field and value it gives.
PUBLIC: list[tuple[str, str, str, str, str, Any]] = [
    ("sim", "--host", "MD_SIM_HOST", "0.0.0.0", "host", "0.0.0.0"),
    ("sim", "--port", "MD_SIM_PORT", "50100", "port", 50100),
    ("sim", "--seed", "MD_SEED", "99", "seed", 99),
    ("sim", "--instruments", "MD_INSTRUMENTS", "BTC-USD, ETH-USD,BTC-USD", "instruments", ("BTC-USD", "ETH-USD")),
    ("sim", "--rate", "MD_RATE", "250.5", "rate", 250.5),
    ("ingest", "--sim", "MD_SIM", "sim.local:6000", "sim", "sim.local:6000"),
    ("ingest", "--redis-url", "MD_REDIS_URL", "redis://cache:6380/1", "redis_url", "redis://cache:6380/1"),
    ("ingest", "--depth", "MD_DEPTH", "40", "depth", 40),
    ("bridge", "--host", "MD_BRIDGE_HOST", "0.0.0.0", "host", "0.0.0.0"),
    ("bridge", "--port", "MD_BRIDGE_PORT", "8100", "port", 8100),
    ("bridge", "--redis-url", "MD_REDIS_URL", "rediss://cache:6380/0", "redis_url", "rediss://cache:6380/0"),
    ("up", "--bridges", "MD_BRIDGES", "4", "bridges", 4),
    ("up", "--port", "MD_BRIDGE_PORT", "9000", "port", 9000),
    ("up", "--redis-url", "MD_REDIS_URL", "redis://cache:6379/0", "redis_url", "redis://cache:6379/0"),
    ("up", "--rate", "MD_RATE", "5", "rate", 5.0),
    ("up", "--seed", "MD_SEED", "3", "seed", 3),
    ("client", "--sim", "MD_SIM", "[::1]:50051", "sim", "[::1]:50051"),
    ("client", "--instruments", "MD_INSTRUMENTS", "AAPL", "instruments", ("AAPL",)),
    ("client", "--depth", "MD_CLIENT_DEPTH", "3", "depth", 3),
    ("client", "--count", "MD_COUNT", "12", "count", 12),
    ("client", "--json", "MD_JSON", "true", "json", True),
    ("loadtest", "--url", "MD_URL", "http://bridge:8000/", "url", "http://bridge:8000"),
    ("loadtest", "--clients", "MD_CLIENTS", "500", "clients", 500),
    ("loadtest", "--instruments", "MD_INSTRUMENTS", "EUR-USD,AAPL", "instruments", ("EUR-USD", "AAPL")),
    ("loadtest", "--duration", "MD_DURATION", "2.5", "duration", 2.5),
    ("loadtest", "--json", "MD_JSON", "1", "json", True),
]

# Another good value for each public flag, different from the one above: the flag's.
OTHER = {
    "--host": "10.0.0.1", "--port": "1234", "--seed": "7", "--instruments": "SOL-USD", "--rate": "2",
    "--sim": "other:1", "--redis-url": "redis://other:1/0", "--depth": "11", "--bridges": "1",
    "--count": "1", "--url": "https://other", "--clients": "1", "--duration": "1",
}  # fmt: skip


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No MD_* variable of the machine leaks in; help is laid out wide enough not to wrap flags."""
    for name in list(os.environ):
        if name.startswith("MD_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("COLUMNS", "200")
    yield


@pytest.fixture
def entry(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    """Replace every role's entry: it records (command, settings) and returns 0."""
    calls: list[tuple[str, Any]] = []

    def fake_entry(command: str) -> Any:
        return lambda settings: calls.append((command, settings)) or 0

    monkeypatch.setattr(cli, "_entry", fake_entry)
    return calls


def settings_of(entry: list[tuple[str, Any]], *argv: str) -> Any:
    assert cli.main(list(argv)) == 0
    command, settings = entry[-1]
    assert command == argv[0]
    return settings


def exits(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        cli.main(list(argv))
    out, err = capsys.readouterr()
    return info.value.code, out, err


def folded(text: str) -> str:
    return " ".join(text.split())


# -- help ------------------------------------------------------------------------


def test_root_help_lists_commands_and_env(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = exits(capsys, "--help")
    assert code == 0
    for command in COMMANDS:
        assert f"    {command} " in out, f"`marketdata --help` does not list {command}"
    assert "MD_*" in out and "environment variable" in out


@pytest.mark.parametrize("command", COMMANDS)
def test_command_help_names_flag_and_env(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = exits(capsys, command, "--help")
    assert code == 0
    text = folded(out)
    for cmd, flag, env, *_ in PUBLIC:
        if cmd == command:
            assert flag in text, f"{command} --help lacks {flag}"
            assert f"[env {env}; default " in text, f"{command} --help lacks {env}"
    # every option, public or not, says its variable
    parser = cli.build_parser().commands[command]  # type: ignore[attr-defined]
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            assert "[env MD_" in (action.help or ""), f"{command} {action.option_strings[0]} has no MD_* variable"


def test_help_shows_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    assert "[env MD_SIM_PORT; default 50051]" in folded(exits(capsys, "sim", "--help")[1])
    assert "[env MD_BRIDGE_PORT; default 8000]" in folded(exits(capsys, "bridge", "--help")[1])
    assert "[env MD_COALESCE; default on]" in folded(exits(capsys, "ingest", "--help")[1])


def test_help_shows_env_value_as_default(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MD_SIM_PORT", "6001")
    # A URL's password never shows (--help output lands in terminals, logs, bug reports), and a
    # "%" left in a value prints as it is, not as a format.
    monkeypatch.setenv("MD_REDIS_URL", "redis://:p%40ss%s@cache:6379/0?client_name=a%25b")
    assert "[env MD_SIM_PORT; default 6001]" in folded(exits(capsys, "sim", "--help")[1])
    out = folded(exits(capsys, "ingest", "--help")[1])
    assert "[env MD_REDIS_URL; default redis://:***@cache:6379/0?client_name=a%25b]" in out
    assert "p%40ss" not in out


# -- defaults, env, flags ----------------------------------------------------------


def test_defaults_match_settings(entry: list[tuple[str, Any]]) -> None:
    for command in COMMANDS:
        assert settings_of(entry, command) == SETTINGS[command](), f"`marketdata {command}` defaults differ from settings.py"
    assert settings_of(entry, "sim").port == 50051
    assert settings_of(entry, "bridge").port == 8000
    assert settings_of(entry, "ingest").coalesce is True
    assert settings_of(entry, "ingest", "--no-coalesce").coalesce is False


@pytest.mark.parametrize("command", COMMANDS)
def test_every_flag_default_is_its_settings_field_default(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    parser = cli.build_parser().commands[command]  # type: ignore[attr-defined]
    assert parser.settings is SETTINGS[command]
    fields = {f.name: f.default for f in dataclasses.fields(SETTINGS[command])}
    flags = {a.dest: a.default for a in parser._actions if a.option_strings and a.dest not in ("help", "log_level")}
    assert flags.keys() == fields.keys(), f"{command}: flags and {SETTINGS[command].__name__} fields differ"
    for name, default in fields.items():
        assert flags[name] == default, f"{command} --{name.replace('_', '-')} defaults to {flags[name]!r}, its settings field to {default!r}"
    # and --help shows the field's default
    help_text = folded(exits(capsys, command, "--help")[1])
    for name, default in fields.items():
        if isinstance(default, (int, float, str)) and not isinstance(default, bool) and default != "":
            assert f"; default {default}]" in help_text, f"{command} --help does not show {name}'s default {default}"


def test_cli_writes_no_default_of_its_own() -> None:
    """Defaults live in settings.py: no opt()/flag() call in build_parser passes one (but --log-level's)."""
    tree = ast.parse(inspect.getsource(cli))
    offenders = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("opt", "flag"):
            flag = node.args[0].value if node.args and isinstance(node.args[0], ast.Constant) else "?"
            if flag != "--log-level" and (len(node.args) > 4 or any(k.arg == "default" for k in node.keywords)):
                offenders.append(f"{flag} (line {node.lineno})")
    assert offenders == [], f"cli.py writes these defaults itself instead of taking them from settings.py: {offenders}"


@pytest.mark.parametrize(("command", "flag", "env", "value", "field", "expected"), PUBLIC, ids=[f"{c} {f}" for c, f, *_ in PUBLIC])
def test_env_sets_default_and_flag_wins(
    command: str, flag: str, env: str, value: str, field: str, expected: Any, entry: list[tuple[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    default = getattr(settings_of(entry, command), field)
    assert default != expected, "pick a test value that is not the default"

    if flag == "--json":
        assert getattr(settings_of(entry, command, flag), field) is True
        monkeypatch.setenv(env, value)
        assert getattr(settings_of(entry, command), field) is True
        assert getattr(settings_of(entry, command, "--no-json"), field) is False
        return

    assert getattr(settings_of(entry, command, flag, value), field) == expected
    monkeypatch.setenv(env, value)
    assert getattr(settings_of(entry, command), field) == expected, f"{env} does not set {command} {flag}"
    other = getattr(settings_of(entry, command, flag, OTHER[flag]), field)
    assert other != expected, f"{command} {flag} does not win over {env}"


def test_bool_env_values(entry: list[tuple[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    for raw, want in [("0", False), ("off", False), ("", False), ("YES", True), ("on", True)]:
        monkeypatch.setenv("MD_COALESCE", raw)
        assert settings_of(entry, "ingest").coalesce is want, raw


def test_env_of_another_command_is_ignored(entry: list[tuple[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MD_BRIDGE_PORT", "not a port")
    assert settings_of(entry, "sim").port == 50051


# -- errors ------------------------------------------------------------------------

BAD_FLAGS = [
    (("sim", "--port", "70000"), "port 70000 is outside 0-65535"),
    (("sim", "--port", "abc"), "--port"),
    (("sim", "--rate", "0"), "0 is not a positive number"),
    (("sim", "--rate", "nan"), "nan is not a positive number"),
    (("sim", "--seed", "1.5"), "--seed"),
    (("sim", "--bogus", "1"), "unrecognized arguments: --bogus"),
    (("ingest", "--sim", "nohost"), "'nohost' is not host:port"),
    (("ingest", "--sim", "host:99999"), "outside 0-65535"),
    (("ingest", "--redis-url", "http://cache:6379"), "is not a redis://"),
    (("ingest", "--depth", "5"), "at least 10 levels"),
    (("ingest", "--depth", "0"), "0 is not a positive integer"),
    (("bridge", "--ws", "tornado"), "'tornado' is not one of"),
    (("bridge", "--loop", "trio"), "'trio' is not one of"),
    (("up", "--bridges", "0"), "0 is not a positive integer"),
    (("up", "--depth", "9"), "at least 10 levels"),
    (("client", "--count", "-1"), "-1 is negative"),
    (("loadtest", "--url", "ftp://x"), "is not an http:// or ws:// URL"),
    (("sim", "--log-level", "loud"), "'loud' is not one of"),
    (("nosuchcommand",), "invalid choice"),
    ((), "required: COMMAND"),
]


@pytest.mark.parametrize(("argv", "reason"), BAD_FLAGS, ids=[" ".join(a) or "(none)" for a, _ in BAD_FLAGS])
def test_bad_flags_exit_2_with_one_line(argv: tuple[str, ...], reason: str, entry: list[tuple[str, Any]], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = exits(capsys, *argv)
    assert code == 2
    assert out == ""
    assert err.endswith("\n") and err.count("\n") == 1, f"not one line: {err!r}"
    assert "error:" in err and reason in err, err
    assert "Traceback" not in err
    assert entry == [], "nothing may start on a bad flag"


BAD_ENV = [
    ("sim", "MD_SIM_PORT", "abc"),
    ("sim", "MD_RATE", "-3"),
    ("ingest", "MD_REDIS_URL", "localhost:6379"),
    ("ingest", "MD_DEPTH", "4"),
    ("ingest", "MD_COALESCE", "maybe"),
    ("bridge", "MD_SEND_TIMEOUT", "inf"),
    ("client", "MD_JSON", "sometimes"),
    ("loadtest", "MD_CLIENTS", "0"),
    ("up", "MD_BRIDGES", "many"),
]


@pytest.mark.parametrize(("command", "env", "raw"), BAD_ENV, ids=[f"{c} {e}" for c, e, _ in BAD_ENV])
def test_bad_env_exit_2_with_one_line(
    command: str, env: str, raw: str, entry: list[tuple[str, Any]], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(env, raw)
    code, _, err = exits(capsys, command)
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert f"marketdata {command}: error:" in err
    # the bad variable is named, except for MD_DEPTH, whose value parses but is too small
    assert env in err or "at least 10 levels" in err, err
    assert entry == []


def test_core_errors_are_one_line_exit_1(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from marketdata.errors import UnknownInstrument

    def failing(settings: Any) -> int:
        raise UnknownInstrument("DOGE-USD")

    monkeypatch.setattr(cli, "_entry", lambda command: failing)
    assert cli.main(["sim"]) == 1
    assert capsys.readouterr().err == "marketdata sim: unknown instrument 'DOGE-USD'\n"


def test_sim_universe_flag_and_variable(entry: list[tuple[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    assert settings_of(entry, "sim").universe == 8, "the default universe is the eight named instruments"
    assert settings_of(entry, "sim", "--universe", "1000").universe == 1000
    monkeypatch.setenv("MD_UNIVERSE", "250")
    assert settings_of(entry, "sim").universe == 250
    assert settings_of(entry, "sim", "--universe", "10000").universe == 10000


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        (("sim", "--universe", "0"), "argument --universe: 0 is outside 1-10000"),
        (("sim", "--universe", "-3"), "argument --universe: -3 is outside 1-10000"),
        (("sim", "--universe", "10001"), "argument --universe: 10001 is outside 1-10000"),
        (("sim", "--universe", "many"), "argument --universe"),
    ],
)
def test_sim_bad_universe_exits_2_with_one_line(
    argv: tuple[str, ...], reason: str, entry: list[tuple[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = exits(capsys, *argv)
    assert (code, out) == (2, "")
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("marketdata sim: error:") and reason in err, err
    assert entry == [], "nothing may start on a bad flag"


def test_sim_bad_universe_variable_exits_2(entry: list[tuple[str, Any]], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MD_UNIVERSE", "0")
    code, _, err = exits(capsys, "sim")
    assert code == 2 and err.count("\n") == 1 and "MD_UNIVERSE='0'" in err, err
    assert entry == []


def test_loadtest_deltas(entry: list[tuple[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    assert settings_of(entry, "loadtest").deltas is False
    assert settings_of(entry, "loadtest", "--deltas").deltas is True
    monkeypatch.setenv("MD_DELTAS", "1")
    assert settings_of(entry, "loadtest").deltas is True
    assert settings_of(entry, "loadtest", "--no-deltas").deltas is False
