"""The deployment files agree with the CLI (there is no Docker engine here to run them)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from marketdata.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _help(command: str) -> str:
    parser = build_parser()
    # argparse wraps lines; fold white space so "env NAME;" reads as one run
    return " ".join(parser.commands[command].format_help().split())  # type: ignore[attr-defined]


def test_compose_has_every_role(compose: dict) -> None:
    services = compose["services"]
    assert {"redis", "sim", "ingest", "bridge"} <= set(services)
    assert services["sim"]["command"][0] == "sim"
    assert services["ingest"]["command"][0] == "ingest"
    assert services["bridge"]["command"][0] == "bridge"


@pytest.mark.parametrize("role", ["sim", "ingest", "bridge"])
def test_compose_environment_names_real_settings(compose: dict, role: str, monkeypatch: pytest.MonkeyPatch) -> None:
    service = compose["services"][role]
    env = {k: str(v) for k, v in service["environment"].items()}
    help_text = _help(service["command"][0])
    for name in env:
        assert f"env {name};" in help_text, f"{role}: {name} is not a setting of `marketdata {role}`"
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    ns = build_parser().parse_args(service["command"])
    assert ns.command == role


def test_services_point_at_each_other(compose: dict) -> None:
    services = compose["services"]
    sim_port = services["sim"]["environment"]["MD_SIM_PORT"]
    assert services["ingest"]["environment"]["MD_SIM"] == f"sim:{sim_port}"
    for role in ("ingest", "bridge"):  # each role logs in as its own user
        url = services[role]["environment"]["MD_REDIS_URL"]
        assert re.fullmatch(rf"redis://{role}:\$\{{REDIS_{role.upper()}_PASSWORD(:\?[^}}]*)?\}}@redis:6379/0", url), url
    assert services["sim"]["environment"]["MD_SIM_HOST"] == "0.0.0.0"
    assert services["bridge"]["environment"]["MD_BRIDGE_HOST"] == "0.0.0.0"


def test_bridge_port_is_published(compose: dict) -> None:
    bridge = compose["services"]["bridge"]
    port = bridge["environment"]["MD_BRIDGE_PORT"]
    targets = [str(p).rsplit(":", 1)[-1] for p in bridge["ports"]]
    assert port in targets


def test_dockerfile_installs_every_package_and_runs_the_cli() -> None:
    text = (ROOT / "Dockerfile").read_text()
    for folder in ("marketdata", "bridge", "web", "proto"):
        assert re.search(rf"^COPY {folder} {folder}$", text, re.M), f"Dockerfile does not copy {folder}/"
    assert 'ENTRYPOINT ["marketdata"]' in text
    assert (ROOT / "pyproject.toml").read_text().count('"web"') >= 1


def _command_lines(service: dict) -> list[str]:
    """Everything of a service that ends up on a process's command line."""
    found = []
    for key in ("command", "entrypoint"):
        value = service.get(key) or []
        found += [value] if isinstance(value, str) else [str(v) for v in value]
    found += [str(v) for v in (service.get("healthcheck") or {}).get("test", [])]
    return found


def test_no_service_puts_a_password_on_a_command_line(compose: dict) -> None:
    """Any user of the host can read a process's arguments (ps, /proc): passwords go in environments."""
    secret = re.compile(r"PASSWORD|REDISCLI_AUTH=|--pass\b|(^|\s)-a\s|requirepass|\w+://[^/\s]*:[^/\s]*@", re.IGNORECASE)
    for name, service in compose["services"].items():
        for arg in _command_lines(service):
            assert not secret.search(arg), f"{name}: a password on its command line: {arg}"
    redis = compose["services"]["redis"]
    assert any("--aclfile" in arg for arg in _command_lines(redis)), "the redis service runs without its users"
    assert "--user inspect" in " ".join(_command_lines(redis)), "the healthcheck logs in as nobody, which the ACL refuses"


def test_compose_reads_every_password_from_env_and_env_example_names_them() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    used = set(re.findall(r"\$\{(\w+)", text))
    example = dict(line.split("=", 1) for line in (ROOT / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    assert used == set(example) == {"REDIS_INGEST_PASSWORD", "REDIS_BRIDGE_PASSWORD", "REDIS_INSPECT_PASSWORD",
                                    "REDIS_CLUSTER_PASSWORD"}  # the last for the cluster profile's nodes
    assert ".env" in (ROOT / ".gitignore").read_text().split(), ".env holds passwords: git must ignore it"
    script = next(v.split(":")[0] for v in yaml.safe_load(text)["services"]["redis"]["volumes"] if "redis-acl.sh" in v)
    assert (ROOT / script).is_file()


def test_the_cluster_profile_runs_six_nodes_a_creator_and_the_roles_in_cluster_mode(compose: dict,
                                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    services = compose["services"]
    cluster = {name for name, service in services.items() if "cluster" in service.get("profiles", [])}
    nodes = sorted(name for name in cluster if name.startswith("redis-node-"))
    assert nodes == [f"redis-node-{i}" for i in range(1, 7)]
    assert not any(service.get("profiles") for name, service in services.items() if name in ("redis", "sim", "ingest", "bridge"))
    for name in nodes:
        line = " ".join(_command_lines(services[name]))
        assert "--cluster-enabled yes" in line and "--aclfile" in line and "redis-acl.sh" in line, name
        assert "--user inspect" in line, f"{name}: the healthcheck logs in as nobody"
    create = " ".join(_command_lines(services["redis-cluster-create"]))
    assert "--cluster create" in create and "--cluster-replicas 1" in create and "redis-node-$$n" in create
    assert set(services["redis-cluster-create"]["depends_on"]) == set(nodes)
    for role in ("ingest", "bridge"):
        service = services[f"{role}-cluster"]
        assert service["command"] == [role, "--redis-cluster"]
        url = service["environment"]["MD_REDIS_URL"]
        assert re.fullmatch(rf"redis://{role}:\$\{{REDIS_{role.upper()}_PASSWORD(:\?[^}}]*)?\}}@redis-node-1:6379/0", url), url
        assert service["depends_on"]["redis-cluster-create"]["condition"] == "service_completed_successfully"
        help_text = _help(role)
        for name, value in service["environment"].items():
            assert f"env {name};" in help_text, f"{role}-cluster: {name} is not a setting of `marketdata {role}`"
            monkeypatch.setenv(name, str(value))
        ns = build_parser().parse_args(service["command"])
        assert ns.command == role
