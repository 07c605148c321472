"""The README's example runs as written."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

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
    cluster.stopService()
    assert clock.getDelayedCalls() == []
    assert all(node.state is graft_tx.State.CLOSED for node in nodes)
