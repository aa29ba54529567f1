"""The ACL rules of the roles (marketdata.supervisor.acl), and the shell script that writes the same ones.

What each user may do against a real server is tested in tests/integration/test_acl.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from marketdata.supervisor import acl
from tests.unit.test_purity import FORBIDDEN, loaded_roots

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "kubernetes" / "redis-acl.sh"
PASSWORDS = {"ingest": "in-Gest_1", "bridge": "bridge-2", "inspect": "in_spect-3"}


def _script(prefix: str | None) -> list[str]:
    if shutil.which("sh") is None or shutil.which("sha256sum") is None:
        pytest.skip("no sh and sha256sum to run deploy/kubernetes/redis-acl.sh")
    env = {k: v for k, v in os.environ.items() if k != "MD_PREFIX"}
    env.update({f"REDIS_{role.upper()}_PASSWORD": p for role, p in PASSWORDS.items()})
    if prefix is not None:
        env["MD_PREFIX"] = prefix
    done = subprocess.run(["sh", str(SCRIPT), "-"], env=env, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


@pytest.mark.parametrize("prefix", [None, "feed"])
def test_the_kubernetes_script_writes_the_modules_lines(prefix: str | None) -> None:
    assert _script(prefix) == acl.acl_lines(PASSWORDS, prefix or "md")


def test_the_module_is_pure() -> None:
    assert not loaded_roots("marketdata.supervisor.acl") & set(FORBIDDEN)


def test_the_default_user_is_off_and_no_password_is_in_cleartext() -> None:
    lines = acl.acl_lines({**PASSWORDS, "admin": "adm1n"})
    assert lines[0] == "user default off resetpass nocommands resetkeys resetchannels"
    assert [line.split()[1] for line in lines] == ["default", *acl.ROLES, "admin"]
    text = "\n".join(lines)
    assert not any(p in text for p in [*PASSWORDS.values(), "adm1n"])
    assert f"#{acl.password_hash('in-Gest_1')}" in lines[1]
    assert acl.password_hash("x") == "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"


def test_the_roles_stay_under_the_prefix_and_only_ingest_writes() -> None:
    for role in acl.ROLES:
        rules = acl.rules(role, "feed")
        assert "~*" not in rules and "&*" not in rules and "+@all" not in rules
        assert rules[:2] == ("resetkeys", "resetchannels")
        assert all(r.startswith(("~feed:", "%R~feed:", "&feed:")) for r in rules if r[0] in "~%&"), rules
        writes = {"+set", "+publish", "+eval", "+@write", "+del"} & set(rules)
        assert bool(writes) == (role == "ingest"), (role, writes)
        assert rules.index("-@dangerous") > rules.index("+@connection")
    assert "-@dangerous" in acl.rules("inspect")[acl.rules("inspect").index("+@read"):]
    assert "+psubscribe" in acl.rules("inspect") and "+psubscribe" not in acl.rules("bridge")
    assert acl.admin_line("adm1n").endswith(" ~* &* +@all")


@pytest.mark.parametrize("passwords, prefix, message", [
    ({"ingest": "a", "bridge": "b"}, "md", "no password for inspect"),
    ({**PASSWORDS, "bridge": ""}, "md", "no password for bridge"),
    ({**PASSWORDS, "bridge": "two words"}, "md", "password of bridge"),
    (PASSWORDS, "m d", "key prefix"),
])  # fmt: skip
def test_what_cannot_go_into_an_acl_line_is_refused(passwords: dict[str, str], prefix: str, message: str) -> None:
    with pytest.raises(acl.AclError, match=message):
        acl.acl_lines(passwords, prefix)


def test_an_unknown_role_is_refused() -> None:
    with pytest.raises(acl.AclError, match="no role 'admin'"):
        acl.rules("admin")
