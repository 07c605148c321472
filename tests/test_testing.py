"""graft_tx.testing.MemoryNetwork: the in-process network our users test with.

The network is public API, so it is tested on its own, with fake nodes that
record what reaches them and when.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import task
from zope.interface import implementer
from zope.interface.verify import verifyObject

from graft_tx import ClusterInfo, GraftError, Heartbeat, HeartbeatAck, VoteRequest, VoteResponse
from graft_tx.interfaces import IElectionNode, IRpc
from graft_tx.testing import Delivery, MemoryNetwork, MemoryRpc

Message = VoteRequest | VoteResponse | Heartbeat | HeartbeatAck


@implementer(IElectionNode)
class FakeNode:
    """A node that records every message delivered to it, with the clock's time."""

    def __init__(self, node_id: str, clock: task.Clock) -> None:
        self.id = node_id
        self.cluster_info = ClusterInfo("test", 5)
        self.protocol = "graft-tx"
        self._clock = clock
        self.received: list[tuple[float, Message]] = []

    def handle_vote_request(self, req: VoteRequest) -> None:
        assert isinstance(req, VoteRequest)
        self.received.append((self._clock.seconds(), req))

    def handle_vote_response(self, resp: VoteResponse) -> None:
        assert isinstance(resp, VoteResponse)
        self.received.append((self._clock.seconds(), resp))

    def handle_heartbeat(self, hb: Heartbeat) -> None:
        assert isinstance(hb, Heartbeat)
        self.received.append((self._clock.seconds(), hb))

    def handle_heartbeat_ack(self, ack: HeartbeatAck) -> None:
        assert isinstance(ack, HeartbeatAck)
        self.received.append((self._clock.seconds(), ack))

    def messages(self) -> list[Message]:
        return [message for _, message in self.received]


def join(network: MemoryNetwork, clock: task.Clock, *ids: str) -> list[tuple[FakeNode, MemoryRpc]]:
    """Attach one fake node per id to the network."""
    members = []
    for node_id in ids:
        node = FakeNode(node_id, clock)
        rpc = network.rpc()
        rpc.init(node)
        members.append((node, rpc))
    return members


def test_memory_rpc_provides_irpc() -> None:
    """MemoryRpc provides IRpc, before and after it carries a node (and the fake is a node)."""
    clock = task.Clock()
    network = MemoryNetwork(clock)
    rpc = network.rpc()
    assert verifyObject(IRpc, rpc)
    node = FakeNode("a", clock)
    assert verifyObject(IElectionNode, node)
    rpc.init(node)
    assert verifyObject(IRpc, rpc)


def test_delivery_never_happens_inside_a_send() -> None:
    """Even with no latency, every kind of message waits for the clock to be delivered."""
    clock = task.Clock()
    network = MemoryNetwork(clock)
    (a, rpc_a), (b, rpc_b) = join(network, clock, "a", "b")
    rpc_a.heartbeat(Heartbeat(1, "a"))
    rpc_a.request_vote(VoteRequest(2, "a"))
    rpc_b.send_vote_response("a", VoteResponse(2, True, "b"))
    assert a.received == [] and b.received == []
    assert len(clock.getDelayedCalls()) == 3
    clock.advance(0)
    assert b.messages() == [Heartbeat(1, "a"), VoteRequest(2, "a")]
    assert a.messages() == [VoteResponse(2, True, "b")]


def test_fixed_latency_delays_delivery_exactly() -> None:
    """A fixed latency delivers at exactly that delay after the send, not before."""
    clock = task.Clock()
    network = MemoryNetwork(clock, latency=0.25)
    (_, rpc_a), (b, _) = join(network, clock, "a", "b")
    clock.advance(1.0)
    rpc_a.heartbeat(Heartbeat(1, "a"))
    assert [call.getTime() for call in clock.getDelayedCalls()] == [1.25]
    clock.advance(0.125)
    assert b.received == []
    clock.advance(0.125)
    assert b.received == [(1.25, Heartbeat(1, "a"))]


def test_latency_range_stays_within_bounds() -> None:
    """A (low, high) latency draws each message's delay within the range, and does spread."""
    clock = task.Clock()
    network = MemoryNetwork(clock, latency=(0.1, 0.3), seed=4)
    (_, rpc_a), (b, _) = join(network, clock, "a", "b")
    for term in range(1, 301):
        rpc_a.heartbeat(Heartbeat(term, "a"))
    delays = [call.getTime() for call in clock.getDelayedCalls()]
    assert len(delays) == 300
    assert all(0.1 <= delay <= 0.3 for delay in delays)
    assert min(delays) < 0.12 and max(delays) > 0.28
    clock.advance(0.0999)
    assert b.received == []
    clock.advance(0.2001)
    assert len(b.received) == 300
    assert all(0.1 <= at <= 0.3 for at, _ in b.received)


def test_loss_one_drops_everything() -> None:
    """loss=1.0 loses every message, and counts them as dropped."""
    clock = task.Clock()
    network = MemoryNetwork(clock, loss=1.0)
    (a, rpc_a), (b, rpc_b) = join(network, clock, "a", "b")
    for term in range(1, 101):
        rpc_a.heartbeat(Heartbeat(term, "a"))
        rpc_b.send_vote_response("a", VoteResponse(term, True, "b"))
    assert clock.getDelayedCalls() == []
    clock.advance(10)
    assert a.received == [] and b.received == []
    assert (network.sent, network.dropped, network.delivered) == (200, 200, 0)


def test_loss_zero_drops_nothing() -> None:
    """loss=0.0 delivers every message."""
    clock = task.Clock()
    network = MemoryNetwork(clock, latency=(0.0, 0.1), loss=0.0, seed=1)
    (a, rpc_a), (b, rpc_b) = join(network, clock, "a", "b")
    for term in range(1, 101):
        rpc_a.heartbeat(Heartbeat(term, "a"))
        rpc_b.send_vote_response("a", VoteResponse(term, True, "b"))
    clock.advance(1)
    assert len(a.received) == 100 and len(b.received) == 100
    assert (network.sent, network.dropped, network.delivered) == (200, 0, 200)


def _survivors(seed: int, loss: float, count: int = 2000) -> list[int]:
    """The terms of the heartbeats that got through a lossy network."""
    clock = task.Clock()
    network = MemoryNetwork(clock, loss=loss, seed=seed)
    (_, rpc_a), (b, _) = join(network, clock, "a", "b")
    for term in range(1, count + 1):
        rpc_a.heartbeat(Heartbeat(term, "a"))
    clock.advance(0)
    return [message.term for message in b.messages()]


def test_partial_loss_drops_about_that_share() -> None:
    """loss=0.3 drops roughly 30% of many messages."""
    survivors = _survivors(seed=11, loss=0.3)
    assert 0.26 <= 1 - len(survivors) / 2000 <= 0.34


def test_partial_loss_is_reproducible_with_a_seed() -> None:
    """The same seed loses the same messages; another seed loses others."""
    assert _survivors(seed=5, loss=0.3) == _survivors(seed=5, loss=0.3)
    assert _survivors(seed=5, loss=0.3) != _survivors(seed=6, loss=0.3)


def test_latency_is_reproducible_with_a_seed() -> None:
    """The same seed draws the same latencies."""

    def delays(seed: int) -> list[float]:
        clock = task.Clock()
        network = MemoryNetwork(clock, latency=(0.0, 1.0), seed=seed)
        (_, rpc_a), _ = join(network, clock, "a", "b")
        for term in range(1, 51):
            rpc_a.heartbeat(Heartbeat(term, "a"))
        return [call.getTime() for call in clock.getDelayedCalls()]

    assert delays(3) == delays(3)
    assert delays(3) != delays(4)


def test_loss_can_be_changed_while_running() -> None:
    """Setting network.loss takes effect for the messages sent after it."""
    clock = task.Clock()
    network = MemoryNetwork(clock)
    (_, rpc_a), (b, _) = join(network, clock, "a", "b")
    network.loss = 1.0
    rpc_a.heartbeat(Heartbeat(1, "a"))
    network.loss = 0.0
    rpc_a.heartbeat(Heartbeat(2, "a"))
    clock.advance(0)
    assert b.messages() == [Heartbeat(2, "a")]


def test_broadcasts_reach_every_other_node_and_responses_only_their_candidate() -> None:
    """A heartbeat or vote request goes to every node but its sender; a response to one."""
    clock = task.Clock()
    network = MemoryNetwork(clock, latency=0.01)
    (a, rpc_a), (b, rpc_b), (c, _) = join(network, clock, "a", "b", "c")
    rpc_a.request_vote(VoteRequest(1, "a"))
    rpc_a.heartbeat(Heartbeat(1, "a"))
    rpc_b.send_vote_response("c", VoteResponse(1, False, "b"))
    clock.advance(0.01)
    assert a.messages() == []
    assert b.messages() == [VoteRequest(1, "a"), Heartbeat(1, "a")]
    assert c.messages() == [VoteRequest(1, "a"), Heartbeat(1, "a"), VoteResponse(1, False, "b")]
    assert network.node_ids == {"a", "b", "c"}


def test_an_acknowledgement_reaches_only_its_leader() -> None:
    """A heartbeat acknowledgement goes to the one leader named, through handle_heartbeat_ack."""
    clock = task.Clock()
    network = MemoryNetwork(clock, latency=0.01)
    (a, _), (b, rpc_b), (c, _) = join(network, clock, "a", "b", "c")
    rpc_b.send_heartbeat_ack("a", HeartbeatAck(1, "b", 7))
    clock.advance(0.01)
    assert a.messages() == [HeartbeatAck(1, "b", 7)]
    assert b.messages() == c.messages() == []


def test_split_stops_traffic_both_ways_but_not_within_a_group() -> None:
    """split(a, b) cuts every path between the groups (nodes or ids), and no other."""
    clock = task.Clock()
    network = MemoryNetwork(clock, latency=0.01)
    members = join(network, clock, "a", "b", "c", "d", "e")
    (a, rpc_a), (b, _), (c, rpc_c), (d, rpc_d), (e, _) = members
    network.split([a, "b"], [c, "d"])
    rpc_a.heartbeat(Heartbeat(1, "a"))
    rpc_c.heartbeat(Heartbeat(2, "c"))
    rpc_d.send_vote_response("a", VoteResponse(2, True, "d"))
    clock.advance(0.01)
    assert a.messages() == []
    assert b.messages() == [Heartbeat(1, "a")]
    assert c.messages() == []
    assert d.messages() == [Heartbeat(2, "c")]
    assert e.messages() == [Heartbeat(1, "a"), Heartbeat(2, "c")]
    assert not network.connected("a", "c") and not network.connected("d", "b")
    assert network.connected("a", "b") and network.connected("c", "d")
    assert network.connected("a", "e") and network.connected("e", "c")


def test_split_drops_messages_already_in_flight() -> None:
    """A split also stops the messages that were sent before it and not yet delivered."""
    clock = task.Clock()
    network = MemoryNetwork(clock, latency=0.5)
    (a, rpc_a), (b, rpc_b), (c, _) = join(network, clock, "a", "b", "c")
    rpc_a.heartbeat(Heartbeat(1, "a"))
    rpc_b.send_vote_response("a", VoteResponse(1, True, "b"))
    clock.advance(0.25)
    network.split(["a"], ["b"])
    clock.advance(0.25)
    assert a.messages() == [] and b.messages() == []
    assert c.messages() == [Heartbeat(1, "a")]


def test_restore_heals_every_split() -> None:
    """After restore() all nodes talk again, whatever splits were made."""
    clock = task.Clock()
    network = MemoryNetwork(clock)
    (a, rpc_a), (b, rpc_b), (c, _) = join(network, clock, "a", "b", "c")
    network.split(["a"], ["b", "c"])
    network.split(["b"], ["c"])
    rpc_b.heartbeat(Heartbeat(1, "b"))
    clock.advance(0)
    assert a.messages() == [] and c.messages() == []
    network.restore()
    rpc_b.heartbeat(Heartbeat(2, "b"))
    rpc_a.heartbeat(Heartbeat(3, "a"))
    clock.advance(0)
    assert a.messages() == [Heartbeat(2, "b")]
    assert b.messages() == [Heartbeat(3, "a")]
    assert c.messages() == [Heartbeat(2, "b"), Heartbeat(3, "a")]


def test_a_node_cannot_be_on_both_sides_of_a_split() -> None:
    """A split naming one node on both sides (as a node and as an id) is refused and not made."""
    clock = task.Clock()
    network = MemoryNetwork(clock)
    (a, _), (_, rpc_b) = join(network, clock, "a", "b")
    with pytest.raises(ValueError, match="both sides"):
        network.split([a, "b"], ["a"])
    assert network.connected("a", "b")
    rpc_b.heartbeat(Heartbeat(1, "b"))
    clock.advance(0)
    assert a.messages() == [Heartbeat(1, "b")]


def test_two_nodes_with_one_id_are_refused() -> None:
    """A second node with an id already on the network is refused; the first keeps working."""
    clock = task.Clock()
    network = MemoryNetwork(clock)
    (a, _), (_, rpc_b) = join(network, clock, "a", "b")
    intruder_rpc = network.rpc()
    with pytest.raises(GraftError, match="'a'"):
        intruder_rpc.init(FakeNode("a", clock))
    assert intruder_rpc.node is None
    rpc_b.heartbeat(Heartbeat(1, "b"))
    clock.advance(0)
    assert a.messages() == [Heartbeat(1, "b")]


def test_an_id_is_free_again_once_its_rpc_closed() -> None:
    """After a node's rpc closes, a new node may join under the same id (a restart)."""
    clock = task.Clock()
    network = MemoryNetwork(clock)
    (_, rpc_a), (_, rpc_b) = join(network, clock, "a", "b")
    rpc_a.close()
    assert network.node_ids == {"b"}
    ((again, _),) = join(network, clock, "a")
    rpc_b.heartbeat(Heartbeat(1, "b"))
    clock.advance(0)
    assert again.messages() == [Heartbeat(1, "b")]


def test_an_rpc_carries_one_node_only() -> None:
    """init() on an rpc that already carries a node is refused."""
    clock = task.Clock()
    network = MemoryNetwork(clock)
    ((_, rpc_a),) = join(network, clock, "a")
    with pytest.raises(GraftError):
        rpc_a.init(FakeNode("z", clock))
    assert network.node_ids == {"a"}


def test_closing_an_rpc_cancels_its_messages_in_flight() -> None:
    """Closing a node's rpc cancels what was in flight to and from it, and nothing else."""
    clock = task.Clock()
    network = MemoryNetwork(clock, latency=0.5)
    (a, rpc_a), (b, rpc_b), (c, rpc_c) = join(network, clock, "a", "b", "c")
    rpc_a.heartbeat(Heartbeat(1, "a"))
    rpc_c.send_vote_response("b", VoteResponse(1, True, "c"))
    rpc_c.send_vote_response("a", VoteResponse(1, True, "c"))
    assert len(clock.getDelayedCalls()) == 4
    rpc_a.close()
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(0.5)
    assert a.messages() == [] and c.messages() == []
    assert b.messages() == [VoteResponse(1, True, "c")]
    rpc_c.heartbeat(Heartbeat(2, "c"))
    rpc_b.close()
    rpc_c.close()
    assert clock.getDelayedCalls() == []


def test_a_closed_rpc_sends_nothing_and_closes_again_quietly() -> None:
    """After close(), sends are ignored (not even observed) and close() is idempotent."""
    clock = task.Clock()
    network = MemoryNetwork(clock)
    seen: list[Delivery] = []
    network.observe(seen.append)
    (_, rpc_a), (b, _) = join(network, clock, "a", "b")
    rpc_a.close()
    rpc_a.close()
    rpc_a.heartbeat(Heartbeat(1, "a"))
    rpc_a.request_vote(VoteRequest(1, "a"))
    rpc_a.send_vote_response("b", VoteResponse(1, True, "a"))
    assert clock.getDelayedCalls() == []
    clock.advance(1)
    assert b.messages() == [] and seen == []


def test_observe_sees_every_message_at_send_time() -> None:
    """Observers hear each message per target when it is sent, lost and split ones too."""
    clock = task.Clock()
    network = MemoryNetwork(clock, latency=0.5, loss=0.0)
    seen: list[Delivery] = []
    also_seen: list[Delivery] = []
    network.observe(seen.append)
    network.observe(also_seen.append)
    (_, rpc_a), (_, rpc_b), _ = join(network, clock, "a", "b", "c")
    rpc_a.request_vote(VoteRequest(1, "a"))
    assert seen == [
        Delivery("a", "b", VoteRequest(1, "a")),
        Delivery("a", "c", VoteRequest(1, "a")),
    ]
    network.split(["a"], ["b"])
    rpc_b.send_vote_response("a", VoteResponse(1, True, "b"))
    network.loss = 1.0
    rpc_a.heartbeat(Heartbeat(1, "a"))
    assert seen[2:] == [
        Delivery("b", "a", VoteResponse(1, True, "b")),
        Delivery("a", "b", Heartbeat(1, "a")),
        Delivery("a", "c", Heartbeat(1, "a")),
    ]
    assert also_seen == seen
    assert network.sent == 5


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"latency": -0.1}, "latency"),
        ({"latency": (0.3, 0.1)}, "latency"),
        ({"latency": (-0.1, 0.2)}, "latency"),
        ({"loss": -0.01}, "loss"),
        ({"loss": 1.5}, "loss"),
    ],
)
def test_bad_latency_or_loss_raises_value_error(kwargs: dict[str, Any], named: str) -> None:
    """A negative or inverted latency, or a loss outside [0, 1], is refused by name."""
    with pytest.raises(ValueError, match=named):
        MemoryNetwork(task.Clock(), **kwargs)
