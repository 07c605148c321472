"""An in-process network for tests: ours, and our users' own.

    clock = task.Clock()
    network = MemoryNetwork(clock, latency=0.01)
    nodes = [graft_tx.new(info, handler, network.rpc(), path, clock=clock) ...]
    clock.advance(1.0)

Every delivery goes through the clock, never synchronously inside a send,
so a whole cluster runs deterministically on L{twisted.internet.task.Clock}.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from zope.interface import implementer

from graft_tx.dispatch import Message, deliver
from graft_tx.errors import GraftError
from graft_tx.interfaces import IAckingRpc, IElectionNode
from graft_tx.messages import Heartbeat, HeartbeatAck, VoteRequest, VoteResponse

Latency = float | tuple[float, float]


@dataclass(frozen=True)
class Delivery:
    """One message on the wire, as seen by L{MemoryNetwork} observers."""

    sender: str
    target: str
    message: Message


@implementer(IAckingRpc)
class MemoryRpc:
    """One node's attachment to a L{MemoryNetwork}; build it with C{network.rpc()}."""

    def __init__(self, network: MemoryNetwork) -> None:
        self._network = network
        self.node: IElectionNode | None = None

    def init(self, node: IElectionNode) -> None:
        if self.node is not None:
            raise GraftError(f"this rpc already carries node {self.node.id}")
        self._network._attach(self, node)
        self.node = node

    def close(self) -> None:
        if self.node is not None:
            self._network._detach(self)
            self.node = None

    def request_vote(self, req: VoteRequest) -> None:
        self._network._broadcast(self, req)

    def heartbeat(self, hb: Heartbeat) -> None:
        self._network._broadcast(self, hb)

    def send_vote_response(self, candidate_id: str, resp: VoteResponse) -> None:
        self._network._send(self, candidate_id, resp)

    def send_heartbeat_ack(self, leader_id: str, ack: HeartbeatAck) -> None:
        self._network._send(self, leader_id, ack)


class MemoryNetwork:
    """Carries messages between nodes of one cluster, through a clock.

    @param latency: seconds each message takes, or a C{(low, high)} range
        to draw each message's latency from.
    @param loss: the probability (0 to 1) that any one message is lost.
    @param seed: seeds the latency and loss draws, for reproducible runs.
    """

    def __init__(
        self,
        clock: IReactorTime,
        *,
        latency: Latency = 0,
        loss: float = 0.0,
        seed: int | None = None,
    ) -> None:
        if not 0.0 <= loss <= 1.0:
            raise ValueError(f"loss must be a probability between 0 and 1, not {loss!r}")
        low, high = latency if isinstance(latency, tuple) else (latency, latency)
        if not 0 <= low <= high:
            raise ValueError(f"latency must be >= 0 (and low <= high), not {latency!r}")
        self._clock = clock
        self._latency = (float(low), float(high))
        self.loss = loss
        self._rng = random.Random(seed)
        self._rpcs: dict[str, MemoryRpc] = {}
        self._splits: list[tuple[frozenset[str], frozenset[str]]] = []
        self._in_flight: dict[IDelayedCall, tuple[MemoryRpc, str]] = {}
        self._observers: list[Callable[[Delivery], None]] = []
        self.sent = 0
        self.delivered = 0
        self.dropped = 0

    def rpc(self) -> MemoryRpc:
        """A new transport attached to this network (it joins on C{init})."""
        return MemoryRpc(self)

    @property
    def node_ids(self) -> frozenset[str]:
        """The ids of the nodes attached now."""
        return frozenset(self._rpcs)

    def split(
        self, group_a: Iterable[IElectionNode | str], group_b: Iterable[IElectionNode | str]
    ) -> None:
        """Stop all traffic between the two groups (nodes or ids), both ways,
        including messages already in flight."""
        a, b = _ids(group_a), _ids(group_b)
        if a & b:
            raise ValueError(f"a node cannot be on both sides of a split: {sorted(a & b)}")
        self._splits.append((a, b))

    def restore(self) -> None:
        """Heal every split."""
        self._splits.clear()

    def observe(self, observer: Callable[[Delivery], None]) -> None:
        """Call C{observer} with every message a node sends, lost or not,
        at the moment it is sent."""
        self._observers.append(observer)

    def connected(self, a: str, b: str) -> bool:
        """Whether messages currently pass between node ids C{a} and C{b}."""
        return not any((a in x and b in y) or (a in y and b in x) for x, y in self._splits)

    # -- used by MemoryRpc ----------------------------------------------

    def _attach(self, rpc: MemoryRpc, node: IElectionNode) -> None:
        if node.id in self._rpcs:
            raise GraftError(f"a node with id {node.id!r} is already on this network")
        self._rpcs[node.id] = rpc

    def _detach(self, rpc: MemoryRpc) -> None:
        assert rpc.node is not None
        self._rpcs.pop(rpc.node.id, None)
        # Nothing sent by or to a closed node stays on the clock.
        for call, (sender, target) in list(self._in_flight.items()):
            if sender is rpc or target == rpc.node.id:
                call.cancel()
                del self._in_flight[call]

    def _broadcast(self, sender: MemoryRpc, message: Message) -> None:
        if sender.node is None:
            return
        for target in list(self._rpcs):
            if target != sender.node.id:
                self._send(sender, target, message)

    def _send(self, sender: MemoryRpc, target: str, message: Message) -> None:
        if sender.node is None:
            return
        source = sender.node.id
        self.sent += 1
        for observer in self._observers:
            observer(Delivery(source, target, message))
        if not self.connected(source, target) or (self.loss and self._rng.random() < self.loss):
            self.dropped += 1
            return
        low, high = self._latency
        delay = low if low == high else self._rng.uniform(low, high)
        call: IDelayedCall | None = None

        def arrive() -> None:
            assert call is not None
            del self._in_flight[call]
            self._deliver(source, target, message)

        call = self._clock.callLater(delay, arrive)
        self._in_flight[call] = (sender, target)

    def _deliver(self, source: str, target: str, message: Message) -> None:
        rpc = self._rpcs.get(target)
        if rpc is None or rpc.node is None or not self.connected(source, target):
            self.dropped += 1
            return
        self.delivered += 1
        deliver(rpc.node, message)


def _ids(group: Iterable[IElectionNode | str]) -> frozenset[str]:
    return frozenset(member if isinstance(member, str) else member.id for member in group)
