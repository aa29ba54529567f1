"""The import rules of the layout (docs/architecture.md), checked on the source with `ast`; nothing is imported.

- A role (marketdata.sim, .ingest, .client, .loadtest, .supervisor) imports the core and
  itself, never another role, the bridge or the command surface. The supervisor starts
  the others as processes, not by importing them.
- The bridge imports the core and itself, never a role.
- The core (the top-level marketdata modules and marketdata.v1) imports only the core.
- The command surface (marketdata.cli, marketdata.__main__) parses settings and calls
  one entry function per role: it may import the roles and the bridge, inside a
  function only, so that one command never loads another's dependencies.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ROLES = ("sim", "ingest", "client", "loadtest", "supervisor")
SURFACE = ("marketdata.cli", "marketdata.__main__")
GENERATED = ("v1",)  # the protobuf modules: core


def area(module: str) -> str | None:
    """Which part of the layout a dotted module name belongs to (None: not ours)."""
    parts = module.split(".")
    if parts[0] == "bridge":
        return "bridge"
    if parts[0] != "marketdata":
        return None
    if module in SURFACE or any(module.startswith(s + ".") for s in SURFACE):
        return "surface"
    if len(parts) > 1 and parts[1] in ROLES:
        return f"role {parts[1]}"
    return "core"


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(module: str, source: str, is_package: bool = False) -> list[tuple[str, int, bool]]:
    """(imported module, line, inside a function) for every import in `source`, wherever it stands.

    `from a.b import c` yields a.b and a.b.c, since c may be a module.
    """
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend((alias.name, child.lineno, lazy) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = _resolve(child, module, is_package)
                found.append((base, child.lineno, lazy))
                found.extend((f"{base}.{alias.name}", child.lineno, lazy) for alias in child.names if alias.name != "*")
            visit(child, lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(ast.parse(source), False)
    return found


def violations(module: str, source: str, is_package: bool = False) -> list[str]:
    """Every import in `source` (the text of `module`) that breaks a rule of the layout, as a sentence."""
    mine = area(module)
    out = []
    seen = set()  # one sentence per import statement
    for target, line, lazy in imports(module, source, is_package):
        theirs = area(target)
        if theirs is None or theirs == mine or theirs == "core" or line in seen:
            continue
        seen.add(line)
        if mine == "surface":
            if not lazy:
                out.append(f"{module}:{line} imports {target} at the top; the command surface imports a role's entry inside a function")
            continue
        out.append(f"{module}:{line} ({mine}) imports {target} ({theirs})")
    return out


def our_modules() -> list[tuple[str, Path]]:
    found = []
    for top in ("marketdata", "bridge"):
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts.pop()
            found.append((".".join(parts), path))
    return found


MODULES = our_modules()


def broken(kind: str) -> list[str]:
    out = []
    for module, path in MODULES:
        if (area(module) or "").startswith(kind):
            out.extend(violations(module, path.read_text(), path.name == "__init__.py"))
    return out


def test_the_roles_on_disk_are_the_roles_the_rules_know() -> None:
    packages = {p.parent.name for p in (ROOT / "marketdata").glob("*/__init__.py")}
    assert packages == set(ROLES) | set(GENERATED), "a new subpackage of marketdata: add it to ROLES (or GENERATED)"
    assert {area(m) for m, _ in MODULES} == {"core", "surface", "bridge"} | {f"role {r}" for r in ROLES}


def test_the_roles_import_the_core_never_each_other() -> None:
    assert broken("role") == []


def test_the_bridge_imports_no_role() -> None:
    assert broken("bridge") == []


def test_the_core_imports_no_role_and_no_bridge() -> None:
    assert broken("core") == []


def test_the_command_surface_imports_the_roles_only_inside_a_function() -> None:
    assert broken("surface") == []
    cli = (ROOT / "marketdata" / "cli.py").read_text()
    lazy = {target for target, _, inside in imports("marketdata.cli", cli) if inside}
    assert {f"marketdata.{r}" for r in ROLES} <= {".".join(t.split(".")[:2]) for t in lazy}, "cli.py calls every role"


BREAKS = [
    ("marketdata.sim.server", "from marketdata.ingest.publish_queue import Outbox", "(role sim) imports marketdata.ingest.publish_queue (role ingest)"),
    ("marketdata.client.terminal", "from marketdata import loadtest", "(role client) imports marketdata.loadtest (role loadtest)"),
    ("marketdata.supervisor.up", "def start():\n    import marketdata.sim.server", "(role supervisor) imports marketdata.sim.server (role sim)"),
    ("marketdata.loadtest.runner", "from ..sim import model", "(role loadtest) imports marketdata.sim (role sim)"),
    ("marketdata.ingest.ingestor", "import bridge.hub", "(role ingest) imports bridge.hub (bridge)"),
    ("marketdata.ingest.ingestor", "from marketdata.cli import main", "(role ingest) imports marketdata.cli (surface)"),
    ("bridge.hub", "from marketdata.sim.model import Model", "(bridge) imports marketdata.sim.model (role sim)"),
    ("bridge.app", "from marketdata.ingest import publish_queue", "(bridge) imports marketdata.ingest (role ingest)"),
    ("marketdata.book", "from bridge import protocol", "(core) imports bridge (bridge)"),
    ("marketdata.feed", "if True:\n    from .client.ladder import BookView", "(core) imports marketdata.client.ladder (role client)"),
    ("marketdata.cli", "from marketdata.sim.server import run", "imports marketdata.sim.server at the top"),
]  # fmt: skip


@pytest.mark.parametrize(("module", "source", "says"), BREAKS, ids=[f"{m}: {s.splitlines()[-1].strip()}" for m, s, _ in BREAKS])
def test_the_checker_sees_a_made_up_break(module: str, source: str, says: str) -> None:
    found = violations(module, source)
    assert len(found) == 1 and says in found[0], found


ALLOWED = [
    ("marketdata.client.terminal", "from marketdata.feed import Books\nfrom marketdata.client.ladder import BookView"),
    ("marketdata.loadtest.report", "from . import latency\nfrom .measurement import Plan"),
    ("marketdata.sim.server", "from marketdata.v1 import market_data_pb2 as pb\nimport grpc"),
    ("bridge.app", "from marketdata.settings import BridgeSettings\nfrom bridge.hub import Hub"),
    ("marketdata.cli", "def _entry():\n    from marketdata.sim.server import run\n    from bridge.app import run"),
]


@pytest.mark.parametrize(("module", "source"), ALLOWED, ids=[m for m, _ in ALLOWED])
def test_the_checker_lets_allowed_imports_pass(module: str, source: str) -> None:
    assert violations(module, source) == []
