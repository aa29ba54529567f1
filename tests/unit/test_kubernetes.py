"""The Kubernetes manifests are valid Kubernetes (offline schemas) and agree with the CLI and the bridge.

Checked as written (the files kustomization.yaml lists) and, where kubectl is on PATH, as
`kubectl kustomize` builds them, with and without the managed-redis component. Each check
returns the problems it finds; a made-up break per check shows that it can fail.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from bridge.app import STUCK_GRACE, build_server, create_app
from marketdata.cli import build_parser
from marketdata.settings import BridgeSettings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
IMAGE = "marketdata-fanout"
OLDEST = "1.27"  # native gRPC probes are GA from Kubernetes 1.27
# Set for work landing in parallel (standby ingestor's metrics, bridge workers): checked once the CLI has them.
PENDING = {"ingest": {"MD_INGEST_METRICS_PORT"}, "bridge": {"MD_BRIDGE_WORKERS"}}
# The CLI's name for each port a role listens on, and the containerPort name it must match.
LISTEN = {"sim": ("MD_SIM_PORT", "grpc"), "bridge": ("MD_BRIDGE_PORT", "http"), "ingest": ("MD_INGEST_METRICS_PORT", "metrics")}
Resources = list[dict]


def _docs(text: str) -> Resources:
    return [d for d in yaml.safe_load_all(text) if d]


def _kustomization() -> dict:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def _manifests() -> Resources:
    return [d for name in _kustomization()["resources"] for d in _docs((K8S / name).read_text())]


def _kustomize(folder: Path, managed_redis: bool) -> Resources:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not on PATH: the kustomize build is checked where it is")
    shutil.copytree(K8S, folder)
    if managed_redis:
        (folder / "kustomization.yaml").write_text(yaml.safe_dump({**_kustomization(), "components": ["managed-redis"]}))
    out = subprocess.run([kubectl, "kustomize", str(folder)], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, f"kubectl kustomize failed: {out.stderr}"
    return _docs(out.stdout)


@pytest.fixture(scope="module", params=["manifests", "kustomize", "kustomize+managed-redis"])
def resources(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Resources:
    folder = tmp_path_factory.mktemp("k") / "kubernetes"
    return _manifests() if request.param == "manifests" else _kustomize(folder, request.param.endswith("redis"))


# -- reading the resources ---------------------------------------------------------------


def _pods(res: Resources) -> Iterator[tuple[dict, dict]]:
    """(workload, pod template) of every Deployment and StatefulSet."""
    for r in res:
        if r["kind"] in ("Deployment", "StatefulSet"):
            yield r, r["spec"]["template"]


def _ours(res: Resources) -> Iterator[tuple[dict, dict, str]]:
    """(pod template, container, role) of every container running the project's image."""
    for _, pod in _pods(res):
        for c in pod["spec"]["containers"]:
            if c["image"].rsplit("/", 1)[-1].split(":")[0] == IMAGE:
                yield pod, c, c["command"][1] if len(c.get("command", ())) > 1 else "?"


def _env(c: dict) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in c.get("env", ())}


def _port(c: dict, ref: int | str) -> int | None:
    """A probe's or Service's port (a number or a port name) as a number of `c`, or None."""
    for p in c.get("ports", ()):
        if ref in (p["containerPort"], p.get("name")):
            return p["containerPort"]
    return None


def _probes(c: dict) -> Iterator[tuple[str, dict]]:
    return ((kind, c[kind]) for kind in ("readinessProbe", "livenessProbe", "startupProbe") if kind in c)


def _known(command: str) -> set[str]:
    text = " ".join(build_parser().commands[command].format_help().split())  # type: ignore[attr-defined]
    return set(re.findall(r"env (MD_\w+);", text))


def _first(res: Resources, kind: str) -> dict:
    return next(r for r in res if r["kind"] == kind)


def _matches(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _quantity(text: str | int) -> float:
    m = re.fullmatch(r"([0-9.]+)(m|Ki|Mi|Gi|)", str(text))
    assert m, f"unreadable quantity {text!r}"
    return float(m[1]) * {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}.get(m[2], 1)


# -- the checks: each returns what is wrong ------------------------------------------------


def commands(res: Resources) -> list[str]:
    roles = {role for _, _, role in _ours(res)}
    bad = [] if roles == {"sim", "ingest", "bridge"} else [f"roles run: {sorted(roles)}, wanted sim, ingest, bridge"]
    for _, c, role in _ours(res):
        cmd = c.get("command", [])
        if cmd[:1] != ["marketdata"] or len(cmd) != 2 or role not in build_parser().commands or c.get("args"):  # type: ignore[attr-defined]
            bad.append(f"{c['name']}: {cmd} {c.get('args', '')} is not `marketdata SUBCOMMAND`")
    return bad


def environment(res: Resources) -> list[str]:
    bad = []
    for _, c, role in _ours(res):
        known = _known(role) if role in build_parser().commands else set()  # type: ignore[attr-defined]
        seen: set[str] = set()
        for e in c.get("env", ()):
            name, value = e["name"], e.get("value", "")
            if name.startswith("MD_") and name not in known and name not in PENDING.get(role, ()):
                bad.append(f"{role}: {name} is not a setting of `marketdata {role}`")
            if not name.startswith("MD_") and "secretKeyRef" not in e.get("valueFrom", {}):
                bad.append(f"{role}: {name} is neither a setting nor a secret")
            for ref in re.findall(r"\$\((\w+)\)", value):
                if ref not in seen:
                    bad.append(f"{role}: {name} uses $({ref}) before it is defined: Kubernetes would leave it as text")
            seen.add(name)
        with pytest.MonkeyPatch.context() as mp:  # what the CLI makes of them, secrets replaced
            for name, value in _env(c).items():
                if name in known:
                    mp.setenv(name, re.sub(r"\$\(\w+\)", "secret", value))
            parser = build_parser()
            errors = parser.commands[role].env_errors if role in parser.commands else []  # type: ignore[attr-defined]
            bad += [f"{role}: {err}" for err in errors]
    return bad


def no_secret_in_argv(res: Resources) -> list[str]:
    bad = []
    for _, pod in _pods(res):
        for c in pod["spec"]["containers"] + pod["spec"].get("initContainers", []):
            argv = c.get("command", []) + c.get("args", []) + [a for _, p in _probes(c) for a in p.get("exec", {}).get("command", [])]
            if any(re.search(r"\$\(|PASSWORD|--pass\b|(^|\s)-a(\s|$)", a) for a in argv):
                bad.append(f"{c['name']}: a secret in argv: {argv}")
    return bad


def ports(res: Resources) -> list[str]:
    bad = []
    for pod, c, role in _ours(res):
        env = _env(c)
        setting, port_name = LISTEN[role]
        if setting not in env or str(_port(c, port_name)) != env[setting]:
            bad.append(f"{role}: {setting}={env.get(setting)} but containerPort {port_name} is {_port(c, port_name)}")
    for _, pod in _pods(res):
        declared = {p["containerPort"] for c in pod["spec"]["containers"] for p in c.get("ports", ())}
        for c in pod["spec"]["containers"]:
            for kind, probe in _probes(c):
                for action in ("httpGet", "tcpSocket", "grpc"):
                    if action in probe and _port(c, probe[action]["port"]) is None:
                        bad.append(f"{c['name']} {kind}: port {probe[action]['port']} is not a port of the container")
        scrape = pod["metadata"].get("annotations", {}).get("prometheus.io/port")
        if scrape is not None and int(scrape) not in declared:
            bad.append(f"prometheus.io/port {scrape} is not a containerPort of its pod")
    for svc in (r for r in res if r["kind"] == "Service"):
        targets = [pod for _, pod in _pods(res) if _matches(svc["spec"]["selector"], pod["metadata"]["labels"])]
        if not targets:
            bad.append(f"Service {svc['metadata']['name']} selects no pod")
        for p in svc["spec"]["ports"]:
            for pod in targets:
                if not any(_port(c, p["targetPort"]) for c in pod["spec"]["containers"]):
                    bad.append(f"Service {svc['metadata']['name']}: targetPort {p['targetPort']} is no port of its pods")
    return bad


def addresses(res: Resources) -> list[str]:
    services = {r["metadata"]["name"]: {p["port"] for p in r["spec"]["ports"]} for r in res if r["kind"] == "Service"}
    bad = []
    for _, c, role in _ours(res):
        env = _env(c)
        wanted: list[tuple[str, int]] = []
        if "MD_SIM" in env:
            host, _, port = env["MD_SIM"].rpartition(":")
            wanted.append((host, int(port)))
        if "MD_REDIS_URL" in env:
            url = urlsplit(env["MD_REDIS_URL"])
            wanted.append((url.hostname or "", url.port or 6379))
            if (url.username, url.password) != (role, f"$(REDIS_{role.upper()}_PASSWORD)"):
                bad.append(f"{role}: MD_REDIS_URL must log in as the {role} user with REDIS_{role.upper()}_PASSWORD")
        for host, port in wanted:
            if "." not in host and port not in services.get(host, ()):  # a bare name is a Service of ours
                bad.append(f"{role}: {host}:{port} is no Service port")
    return bad


def routes(res: Resources) -> list[str]:
    known = {getattr(r, "path", None) for r in create_app(BridgeSettings()).routes}
    bad = []
    for pod, c, role in _ours(res):
        paths = {kind: p["httpGet"]["path"] for kind, p in _probes(c) if "httpGet" in p}
        scrape = pod["metadata"].get("annotations", {}).get("prometheus.io/path")
        if role == "bridge":
            if paths != {"readinessProbe": "/readyz", "livenessProbe": "/healthz"}:
                bad.append(f"bridge probes {paths}: readiness must ask /readyz, liveness /healthz")
            bad += [f"bridge: {path} is not a bridge route" for path in [*paths.values(), scrape] if path not in known]
        elif paths or scrape not in (None, "/metrics"):
            bad.append(f"{role}: HTTP paths {paths} {scrape}; it serves /metrics only")
    return bad


def grace(res: Resources) -> list[str]:
    uvicorn_grace = build_server(BridgeSettings(), create_app(BridgeSettings())).config.timeout_graceful_shutdown or 0
    bad = []
    for pod, c, _ in (o for o in _ours(res) if o[2] == "bridge"):
        stop = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
        pre = float(stop[1]) if stop[:1] == ["sleep"] else 0.0
        needed = pre + STUCK_GRACE + uvicorn_grace
        if pod["spec"].get("terminationGracePeriodSeconds", 30) < needed + 5:
            bad.append(f"bridge: terminationGracePeriodSeconds under {needed} s of preStop and 1001 drain plus 5 s")
    return bad


def security(res: Resources) -> list[str]:
    bad = []
    for w, pod in _pods(res):
        spec, name = pod["spec"], w["metadata"]["name"]
        ctx = spec.get("securityContext", {})
        if ctx.get("runAsNonRoot") is not True or not ctx.get("runAsUser") or spec.get("automountServiceAccountToken") is not False:
            bad.append(f"{name}: pod must run as a non-root uid without a service account token")
        for c in spec["containers"] + spec.get("initContainers", []):
            s = c.get("securityContext", {})
            locked = (s.get("allowPrivilegeEscalation"), s.get("readOnlyRootFilesystem"), s.get("capabilities", {}).get("drop"))
            if locked != (False, True, ["ALL"]):
                bad.append(f"{name}/{c['name']}: needs allowPrivilegeEscalation false, readOnlyRootFilesystem, drop ALL")
            r = c.get("resources", {})
            for key in ("cpu", "memory"):
                req, lim = r.get("requests", {}).get(key), r.get("limits", {}).get(key)
                if req is None or lim is None or _quantity(req) > _quantity(lim):
                    bad.append(f"{name}/{c['name']}: {key} request {req} and limit {lim}")
    return bad


def references(res: Resources) -> list[str]:
    names = {(r["kind"], r["metadata"]["name"]) for r in res}
    configmaps = {n for k, n in names if k == "ConfigMap"} | {g["name"] for g in _kustomization().get("configMapGenerator", ())}
    secrets = {r["metadata"]["name"]: set(r.get("stringData", {})) | set(r.get("data", {})) for r in res if r["kind"] == "Secret"}
    bad = []
    for w, pod in _pods(res):
        if not _matches(w["spec"]["selector"]["matchLabels"], pod["metadata"]["labels"]):
            bad.append(f"{w['metadata']['name']}: selector does not match its own pods")
        for v in pod["spec"].get("volumes", ()):
            if "configMap" in v and not any(v["configMap"]["name"].startswith(n) for n in configmaps):
                bad.append(f"{w['metadata']['name']}: no ConfigMap {v['configMap']['name']}")
        for c in pod["spec"]["containers"] + pod["spec"].get("initContainers", []):
            for e in c.get("env", ()):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref and ref["key"] not in secrets.get(ref["name"], set()):
                    bad.append(f"{c['name']}: {e['name']} needs key {ref['key']} of Secret {ref['name']}")
    for r in res:
        spec = r.get("spec", {})
        covered = [p for _, p in _pods(res) if _matches(spec.get("selector", {}).get("matchLabels", {}), p["metadata"]["labels"])]
        if r["kind"] == "PodDisruptionBudget" and not covered:
            bad.append(f"PodDisruptionBudget {r['metadata']['name']} covers no pod")
        if r["kind"] == "HorizontalPodAutoscaler" and (spec["scaleTargetRef"]["kind"], spec["scaleTargetRef"]["name"]) not in names:
            bad.append(f"HorizontalPodAutoscaler {r['metadata']['name']} scales nothing")
        backends = [p["backend"]["service"]["name"] for rule in spec.get("rules", ()) for p in rule["http"]["paths"]]
        bad += [f"Ingress {r['metadata']['name']}: no Service {b}" for b in backends if ("Service", b) not in names]
    return bad


def ingress(res: Resources) -> list[str]:
    bad = []
    for r in (r for r in res if r["kind"] == "Ingress"):
        notes = r["metadata"].get("annotations", {})
        for key in ("proxy-read-timeout", "proxy-send-timeout"):
            if int(notes.get(f"nginx.ingress.kubernetes.io/{key}", 60)) < 600:
                bad.append(f"Ingress {r['metadata']['name']}: {key} under 10 minutes cuts quiet WebSockets")
    return bad


CHECKS: list[Callable[[Resources], list[str]]] = [
    commands, environment, no_secret_in_argv, ports, addresses, routes, grace, security, references, ingress,
]


@pytest.mark.parametrize("check", CHECKS, ids=lambda f: f.__name__)
def test_the_manifests_pass(resources: Resources, check: Callable[[Resources], list[str]]) -> None:
    assert check(resources) == []


def _container(res: Resources, role: str) -> dict:
    return next(c for _, c, r in _ours(res) if r == role)


def _password_last(res: Resources) -> None:
    env = _container(res, "bridge")["env"]
    env.append(env.pop(0))  # the password variable after the MD_REDIS_URL that uses it


BREAKS: list[tuple[Callable[[Resources], list[str]], Callable[[Resources], object]]] = [
    (commands, lambda res: _container(res, "bridge")["command"].__setitem__(1, "bridges")),
    (environment, lambda res: _container(res, "sim")["env"].append({"name": "MD_NO_SUCH_SETTING", "value": "1"})),
    (environment, _password_last),
    (no_secret_in_argv, lambda res: _container(res, "ingest").__setitem__("args", ["--redis-url", "$(REDIS_INGEST_PASSWORD)"])),
    (ports, lambda res: _container(res, "bridge")["ports"][0].__setitem__("containerPort", 8001)),
    (addresses, lambda res: _container(res, "ingest")["env"].append({"name": "MD_SIM", "value": "sim:50052"})),
    (routes, lambda res: _container(res, "bridge")["readinessProbe"]["httpGet"].__setitem__("path", "/ready")),
    (grace, lambda res: next(p for p, _, r in _ours(res) if r == "bridge")["spec"].__setitem__("terminationGracePeriodSeconds", 8)),
    (security, lambda res: _container(res, "sim")["securityContext"].__setitem__("readOnlyRootFilesystem", False)),
    (references, lambda res: _first(res, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"].update(app="none")),
    (ingress, lambda res: _first(res, "Ingress")["metadata"]["annotations"].pop("nginx.ingress.kubernetes.io/proxy-read-timeout")),
]


@pytest.mark.parametrize(("check", "breaks"), BREAKS, ids=lambda f: f.__name__)
def test_each_check_sees_a_made_up_break(check: Callable[[Resources], list[str]], breaks: Callable[[Resources], object]) -> None:
    broken = copy.deepcopy(_manifests())
    breaks(broken)
    assert check(broken), f"{check.__name__} did not notice the break"
    assert {c for c, _ in BREAKS} == set(CHECKS)


@pytest.mark.parametrize("version", [OLDEST, kubernetes_validate.latest_version()])
def test_every_resource_is_valid_kubernetes(resources: Resources, version: str) -> None:
    errors = []
    for r in resources:
        try:
            kubernetes_validate.validate(r, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{r['kind']}/{r['metadata']['name']}: {'.'.join(map(str, exc.path))}: {exc.message}")
    assert errors == []


@pytest.mark.parametrize("path", [("spec", "replica"), ("spec", "template", "spec", "terminationGracePeriodSeconds")])
def test_the_validator_rejects_unknown_fields_and_wrong_types(path: tuple[str, ...]) -> None:
    broken = copy.deepcopy(_first(_manifests(), "Deployment"))
    place = broken
    for key in path[:-1]:
        place = place[key]
    place[path[-1]] = "thirty"  # `replica` is no field; a grace period is an integer
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, kubernetes_validate.latest_version(), strict=True)


def test_kustomization_lists_every_manifest() -> None:
    k = _kustomization()
    assert set(k["resources"]) == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert all((K8S / f).is_file() for g in k["configMapGenerator"] for f in g["files"])


def test_managed_redis_component_patches_what_exists() -> None:
    folder = K8S / "managed-redis"
    component = yaml.safe_load((folder / "kustomization.yaml").read_text())
    assert component["kind"] == "Component"
    base = _manifests()
    names = {(r["kind"], r["metadata"]["name"]) for r in base} | {("ConfigMap", g["name"]) for g in _kustomization()["configMapGenerator"]}
    deleted = {(p["kind"], p["metadata"]["name"]) for e in component["patches"] if "patch" in e for p in _docs(e["patch"])}
    assert deleted == {("StatefulSet", "redis"), ("Service", "redis"), ("ConfigMap", "redis-acl")} and deleted <= names
    patched = [d for e in component["patches"] if "path" in e for d in _docs((folder / e["path"]).read_text())]
    assert {d["metadata"]["name"] for d in patched} == {"ingest", "bridge"}
    for d in patched:
        (c,) = d["spec"]["template"]["spec"]["containers"]
        assert (d["kind"], d["metadata"]["name"]) in names and c["name"] == d["metadata"]["name"]
        # the password variable first, so that the merged list keeps it before the URL
        assert [e["name"] for e in c["env"]] == [f"REDIS_{c['name'].upper()}_PASSWORD", "MD_REDIS_URL"]
        assert urlsplit(c["env"][1]["value"]).username == c["name"]


def test_the_image_runs_as_the_pods_numeric_user() -> None:
    user = re.findall(r"^USER\s+([1-9]\d*)(?::\d+)?\s*$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert user, "Dockerfile: USER must be a numeric uid, which Kubernetes can check against runAsNonRoot"
    assert {str(pod["spec"]["securityContext"]["runAsUser"]) for pod, _, _ in _ours(_manifests())} == {user[-1]}


def test_the_example_secret_is_a_url_safe_placeholder() -> None:
    (secret,) = [r for r in _manifests() if r["kind"] == "Secret"]
    for key, value in secret["stringData"].items():
        assert value.startswith("replace-me") and re.fullmatch(r"[A-Za-z0-9._~-]+", value), key

