"""The README's example runs as written."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from natsserver import free_port
from realtime import wait_until
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

import graft_tx
from graft_tx.interfaces import IStateHandler

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def test_example_cluster_elects_one_leader(tmp_path: Path) -> None:
    """The README's make_cluster composes three GraftServices that elect one leader."""
    namespace: dict[str, Any] = {}
    exec(compile(python_blocks()[0], str(README), "exec"), namespace)
    clock = Clock()
    seen: list[tuple[str, str]] = []
    cluster = namespace["make_cluster"](clock, str(tmp_path), seen)
    assert verifyObject(IStateHandler, namespace["Announcer"]("x", []))
    cluster.startService()
    for _ in range(200):
        clock.advance(0.01)
    nodes = [service.node for service in cluster]
    leaders = [node for node in nodes if node.state is graft_tx.State.LEADER]
    assert len(leaders) == 1
    assert {node.leader for node in nodes} == {leaders[0].id}
    assert (leaders[0].id, "Leader") in seen
    stopped = cluster.stopService()
    # The leader first tries to hand over, to peers that are stopping too: it
    # gives up after the maximum election timeout.
    clock.advance(1.0)
    assert stopped.called
    assert clock.getDelayedCalls() == []
    assert all(node.state is graft_tx.State.CLOSED for node in nodes)


@pytest_twisted.ensureDeferred
async def test_tcp_example_elects_one_leader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's three-node TCP cluster, on free loopback ports, elects one leader."""
    block = next(b for b in python_blocks() if "def tcp_node" in b)
    namespace: dict[str, Any] = {}
    exec(compile(block, str(README), "exec"), namespace)
    namespace["ports"].update({name: free_port() for name in namespace["ports"]})
    monkeypatch.chdir(tmp_path)
    nodes = [namespace["tcp_node"](name) for name in ("a", "b", "c")]
    try:
        await wait_until(
            lambda: (
                sum(n.state is graft_tx.State.LEADER for n in nodes) == 1
                and len({n.leader for n in nodes}) == 1
            ),
            10,
            "one leader that all follow",
        )
    finally:
        for node in nodes:
            await node.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.state", "b.state", "c.state"]
