"""Helpers for the tests that run on the real reactor (real servers, real sockets)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.task import deferLater

from graft_tx import Node, State


def reactor() -> Any:
    """The installed reactor, imported late: importing it early installs the wrong one."""
    from twisted.internet import reactor as installed

    return installed


def sole_leader(nodes: Iterable[Node], leads: Callable[[Node], bool] | None = None) -> Node | None:
    """The leader, if exactly one node leads and every other follows it in its term.

    C{leads}: how to tell a leader (default: its state; the lease-aware
    C{Node.is_leader} where leases matter).
    """
    nodes = list(nodes)
    leaders = [n for n in nodes if (leads(n) if leads else n.state is State.LEADER)]
    if len(leaders) != 1:
        return None
    leader = leaders[0]
    for node in nodes:
        if node is not leader and (
            node.state is not State.FOLLOWER
            or node.leader != leader.id
            or node.current_term != leader.current_term
        ):
            return None
    return leader


async def sleep(seconds: float) -> None:
    await deferLater(reactor(), seconds, lambda: None)


async def wait_until(
    predicate: Callable[[], bool], timeout: float = 10.0, what: str = "the condition"
) -> float:
    """Poll C{predicate} until it holds; return how long that took, in seconds.

    @raise AssertionError: it did not hold within C{timeout} seconds.
    """
    running = reactor()
    start = running.seconds()
    while not predicate():
        if running.seconds() - start > timeout:
            raise AssertionError(f"{what} did not hold within {timeout}s")
        await sleep(0.02)
    return float(running.seconds() - start)
