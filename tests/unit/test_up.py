"""What `marketdata up` starts: the children and the arguments each one gets (marketdata.supervisor.up.plan)."""

from __future__ import annotations

from typing import cast

from marketdata.settings import UpSettings
from marketdata.supervisor.output import Output
from marketdata.supervisor.up import BRIDGE_STOP_TIMEOUT, STOP_TIMEOUT, plan

URLS = {"ingest": "redis://ingest:pw-ingest@127.0.0.1:6399/0", "bridge": "redis://bridge:pw-bridge@127.0.0.1:6399/0"}
NO_OUTPUT = cast(Output, None)  # plan only hands it to the children, which write to it once started


def _plan(**settings: object) -> dict[str, list[str]]:
    children = plan(UpSettings(**settings),  # type: ignore[arg-type]
                     URLS, NO_OUTPUT)
    return {child.name: child.args for child in children}


def test_the_default_is_a_simulator_two_ingestors_and_two_bridges_in_start_order() -> None:
    assert list(_plan()) == ["sim", "ingest-1", "ingest-2", "bridge-1", "bridge-2"]


def test_flags_reach_the_children_that_read_them() -> None:
    args = _plan(ingestors=3, bridges=1, bridge_workers=2, universe=200, port=9100, sim_port=50099)
    assert [name for name in args if name.startswith("ingest")] == ["ingest-1", "ingest-2", "ingest-3"]
    assert args["sim"][args["sim"].index("--universe") + 1] == "200"
    assert args["sim"][args["sim"].index("--port") + 1] == "50099"
    bridge = args["bridge-1"]
    assert bridge[bridge.index("--workers") + 1] == "2"
    assert bridge[bridge.index("--port") + 1] == "9100"
    assert all(a[a.index("--sim") + 1] == "127.0.0.1:50099" for n, a in args.items() if n.startswith("ingest"))


def test_bridges_get_the_longer_grace_their_workers_need() -> None:
    children = plan(UpSettings(bridges=1), URLS, NO_OUTPUT)
    graces = {child.name: child.grace for child in children}
    assert graces["bridge-1"] == BRIDGE_STOP_TIMEOUT > STOP_TIMEOUT == graces["sim"] == graces["ingest-1"]


def test_each_role_gets_its_own_redis_user_through_the_environment_never_argv() -> None:
    children = plan(UpSettings(bridges=1), URLS, NO_OUTPUT)
    for child in children:
        assert not any("pw-" in arg for arg in child.args), f"{child.name} has a password on its command line"
    envs = {child.name: child.env.get("MD_REDIS_URL") for child in children}
    assert envs == {"sim": None, "ingest-1": URLS["ingest"], "ingest-2": URLS["ingest"], "bridge-1": URLS["bridge"]}
