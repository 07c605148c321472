"""Whole clusters of real nodes on a MemoryNetwork, driven by a task.Clock.

Default timing (0.5-1.0s election timeout, 0.1s heartbeat) and a small
network latency; the clock advances in steps of 0.01s so that every check
sees the cluster as it is at that moment.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fakes import RecordingHandler
from twisted.internet import task
from zope.interface.verify import verifyObject

import graft_tx
from graft_tx import State, StateChange
from graft_tx.interfaces import IStateHandler
from graft_tx.testing import Delivery, MemoryNetwork

# Graft's algorithm as Go graft runs it; graft-tx features are tested on their own.
pytestmark = pytest.mark.protocol("graft")

STEP = 0.01
TIMING = graft_tx.Timing()
# One maximum election timeout plus a little, for votes to travel.
ELECTION = TIMING.election_timeout_max + 0.2


class Cluster:
    """A cluster of real nodes with ids n0, n1, ... on one clock and network."""

    def __init__(self, directory: Path, size: int = 5, seed: int = 0) -> None:
        self.directory = directory
        self.seed = seed
        self.clock = task.Clock()
        self.network = MemoryNetwork(self.clock, latency=(0.001, 0.01), seed=seed)
        self.info = graft_tx.ClusterInfo("cluster", size)
        self.ids = [f"n{i}" for i in range(size)]
        self.nodes: dict[str, graft_tx.Node] = {}
        self.handlers: dict[str, RecordingHandler] = {}
        self.wire: list[tuple[float, Delivery]] = []
        self.network.observe(lambda delivery: self.wire.append((self.clock.seconds(), delivery)))

    def start(self, node_id: str) -> graft_tx.Node:
        """Start (or restart, from its state file) the node C{node_id}."""
        handler = RecordingHandler()
        node = graft_tx.new(
            self.info,
            handler,
            self.network.rpc(),
            str(self.directory / node_id),
            clock=self.clock,
            node_id=node_id,
            rng=random.Random(f"{self.seed}-{node_id}-{self.clock.seconds()}"),
        )
        self.nodes[node_id] = node
        self.handlers[node_id] = handler
        return node

    def start_all(self) -> None:
        for node_id in self.ids:
            self.start(node_id)

    def stop(self, node_id: str) -> None:
        self.nodes.pop(node_id).close()

    @property
    def up(self) -> list[graft_tx.Node]:
        return list(self.nodes.values())

    def leaders(self) -> list[graft_tx.Node]:
        return [node for node in self.up if node.state is State.LEADER]

    def agreed_leader(self) -> graft_tx.Node | None:
        """The one leader that every running node follows, in its term; else None."""
        leaders = self.leaders()
        if len(leaders) != 1:
            return None
        leader = leaders[0]
        for node in self.up:
            if node.leader != leader.id or node.current_term != leader.current_term:
                return None
            if node is not leader and node.state is not State.FOLLOWER:
                return None
        return leader

    def advance(self, seconds: float) -> None:
        for _ in range(round(seconds / STEP)):
            self.clock.advance(STEP)
            self.check_one_leader_per_term()

    def advance_until_agreed(self, limit: float) -> graft_tx.Node:
        """Advance until all running nodes follow one leader; fail after C{limit}."""
        for _ in range(round(limit / STEP)):
            self.clock.advance(STEP)
            self.check_one_leader_per_term()
            leader = self.agreed_leader()
            if leader is not None:
                return leader
        raise AssertionError(f"no agreed leader after {limit}s: {self.up}")

    def check_one_leader_per_term(self) -> None:
        terms = [node.current_term for node in self.leaders()]
        assert len(terms) == len(set(terms)), f"two leaders in one term: {self.up}"

    def close(self) -> None:
        for node in self.up:
            node.close()
        assert self.clock.getDelayedCalls() == []
        assert all(handler.errors == [] for handler in self.handlers.values())


MakeCluster = Callable[..., Cluster]


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[MakeCluster]:
    """Build clusters that are closed (and checked for errors) after the test."""
    clusters: list[Cluster] = []

    def make(size: int = 5, seed: int = 0) -> Cluster:
        cluster = Cluster(tmp_path, size, seed)
        clusters.append(cluster)
        return cluster

    yield make
    for cluster in clusters:
        cluster.close()


def test_recording_handler_provides_istatehandler() -> None:
    """The handler used by these tests is a real IStateHandler."""
    assert verifyObject(IStateHandler, RecordingHandler())


@pytest.mark.parametrize("seed", range(8))
def test_five_nodes_elect_one_leader_within_an_election_timeout(
    make_cluster: MakeCluster, seed: int
) -> None:
    """Five fresh nodes elect exactly one leader, followed by four, within 1.0s + 0.2s."""
    cluster = make_cluster(seed=seed)
    cluster.start_all()
    leader = cluster.advance_until_agreed(ELECTION)
    assert cluster.clock.seconds() <= ELECTION
    followers = [node for node in cluster.up if node is not leader]
    assert len(followers) == 4
    assert all(node.state is State.FOLLOWER for node in followers)
    assert {node.leader for node in cluster.up} == {leader.id}
    assert {node.current_term for node in cluster.up} == {leader.current_term}
    assert leader.current_term >= 1
    assert cluster.handlers[leader.id].changes == [
        StateChange(State.FOLLOWER, State.CANDIDATE),
        StateChange(State.CANDIDATE, State.LEADER),
    ]


def test_staggered_starts_elect_one_leader(make_cluster: MakeCluster) -> None:
    """Nodes started at different times end with one leader; late joiners just follow it."""
    cluster = make_cluster(seed=3)
    for node_id, delay in zip(cluster.ids[:3], (0.0, 0.3, 0.45), strict=True):
        cluster.advance(delay - cluster.clock.seconds())
        cluster.start(node_id)
    leader = cluster.advance_until_agreed(2 * ELECTION)
    term = leader.current_term
    for node_id in cluster.ids[3:]:
        cluster.advance(0.7)
        late = cluster.start(node_id)
        assert late.current_term == 0
    cluster.advance(2.0)
    assert cluster.agreed_leader() is leader
    assert len(cluster.up) == 5
    assert leader.current_term == term
    for node_id in cluster.ids[3:]:
        assert cluster.handlers[node_id].changes == []


@pytest.mark.parametrize("seed", range(4))
def test_nodes_started_during_an_election_still_elect_one_leader(
    make_cluster: MakeCluster, seed: int
) -> None:
    """Five nodes started 0.25s apart, while the first ones campaign, agree on one leader."""
    cluster = make_cluster(seed=seed)
    for index, node_id in enumerate(cluster.ids):
        cluster.advance(0.25 * index - cluster.clock.seconds())
        cluster.start(node_id)
    leader = cluster.advance_until_agreed(2 * ELECTION)
    assert len(cluster.up) == 5
    cluster.advance(2.0)
    assert cluster.agreed_leader() is leader


def test_the_rest_elect_a_new_leader_when_the_leader_closes(make_cluster: MakeCluster) -> None:
    """When the leader closes, the other four elect another leader in a higher term."""
    cluster = make_cluster(seed=1)
    cluster.start_all()
    old = cluster.advance_until_agreed(ELECTION)
    old_term = old.current_term
    cluster.stop(old.id)
    assert old.state is State.CLOSED
    new = cluster.advance_until_agreed(TIMING.election_timeout_max + ELECTION)
    assert new is not old
    assert new.current_term > old_term
    assert len(cluster.up) == 4
    assert old.state is State.CLOSED and old.current_term == old_term


def test_a_cluster_shrinks_to_one_node_and_grows_back(make_cluster: MakeCluster) -> None:
    """Shrunk to one, only a quorum elects; regrown from files, the term is >= the survivor's."""
    cluster = make_cluster(seed=2)
    cluster.start_all()
    leader = cluster.advance_until_agreed(ELECTION)
    saved_terms: dict[str, int] = {}
    # Five, four, then three nodes: each time the leader goes, a quorum remains.
    for _ in range(2):
        saved_terms[leader.id] = leader.current_term
        cluster.stop(leader.id)
        new = cluster.advance_until_agreed(TIMING.election_timeout_max + ELECTION)
        assert new.current_term > saved_terms[leader.id]
        leader = new
    assert len(cluster.up) == 3
    # Two, then one node: no quorum of five, so nobody may win, however long.
    while len(cluster.up) > 1:
        victim = leader if leader.id in cluster.nodes else cluster.up[0]
        saved_terms[victim.id] = victim.current_term
        cluster.stop(victim.id)
        for _ in range(round(5.0 / STEP)):
            cluster.advance(STEP)
            assert cluster.leaders() == [], f"a leader without a quorum: {cluster.up}"
    (survivor,) = cluster.up
    assert survivor.state is State.CANDIDATE
    survivor_term = survivor.current_term
    assert survivor_term > max(saved_terms.values())
    # Grow back: restart the closed nodes from their state files, one at a time.
    for node_id in sorted(saved_terms):
        node = cluster.start(node_id)
        assert node.current_term == saved_terms[node_id], "the term did not survive"
        if len(cluster.up) < graft_tx.quorum(5):
            for _ in range(round(2.0 / STEP)):
                cluster.advance(STEP)
                assert cluster.leaders() == []
    leader = cluster.advance_until_agreed(4 * ELECTION)
    assert leader.current_term >= survivor_term
    assert len(cluster.up) == 5


def test_a_split_of_two_and_three_and_its_healing(make_cluster: MakeCluster) -> None:
    """Split 2|3, leader in the 2: the 3 elect in a higher term, the 2 nobody; healed, one leads."""
    cluster = make_cluster(seed=4)
    cluster.start_all()
    old = cluster.advance_until_agreed(ELECTION)
    old_term = old.current_term
    others = [node for node in cluster.up if node is not old]
    minority = [old, others[0]]
    majority = others[1:]
    cluster.network.split(minority, [node.id for node in majority])
    majority_leader = None
    for _ in range(round(3 * ELECTION / STEP)):
        cluster.advance(STEP)
        for node in minority:
            if node.state is State.LEADER:
                assert node is old and node.current_term == old_term
        winners = [node for node in majority if node.state is State.LEADER]
        if winners:
            majority_leader = winners[0]
    assert majority_leader is not None, f"the majority elected nobody: {cluster.up}"
    assert majority_leader.current_term > old_term
    assert all(node.leader == majority_leader.id for node in majority)
    # The deposed leader does not know it yet: it still leads its old term.
    assert old.state is State.LEADER and old.current_term == old_term
    assert minority[1].leader == old.id
    cluster.network.restore()
    leader = cluster.advance_until_agreed(2 * ELECTION)
    assert leader.current_term == max(node.current_term for node in cluster.up)
    assert leader.current_term >= majority_leader.current_term
    assert old.state is State.FOLLOWER
    assert all(node.leader == leader.id for node in cluster.up)


def test_a_split_off_follower_does_not_depose_the_majority_while_split(
    make_cluster: MakeCluster,
) -> None:
    """Split 1|4: the 4's leader keeps its term while the 1 campaigns; healed, one leads."""
    cluster = make_cluster(seed=5)
    cluster.start_all()
    leader = cluster.advance_until_agreed(ELECTION)
    term = leader.current_term
    loner = next(node for node in cluster.up if node is not leader)
    cluster.network.split([loner], [node for node in cluster.up if node is not loner])
    for _ in range(round(3.0 / STEP)):
        cluster.advance(STEP)
        assert leader.state is State.LEADER and leader.current_term == term
        assert loner.state is not State.LEADER
    assert loner.current_term > term
    cluster.network.restore()
    final = cluster.advance_until_agreed(2 * ELECTION)
    assert final.current_term >= loner.current_term
    assert len(cluster.up) == 5


def test_the_leader_holds_steady_without_faults(make_cluster: MakeCluster) -> None:
    """Once elected, a leader keeps its term for 10s: no elections, a heartbeat every 0.1s."""
    cluster = make_cluster(seed=6)
    cluster.start_all()
    leader = cluster.advance_until_agreed(ELECTION)
    term = leader.current_term
    changes = {node_id: list(h.changes) for node_id, h in cluster.handlers.items()}
    del cluster.wire[:]
    for _ in range(round(10.0 / STEP)):
        cluster.advance(STEP)
        assert cluster.agreed_leader() is leader
        assert leader.current_term == term
    assert {node_id: h.changes for node_id, h in cluster.handlers.items()} == changes
    assert not any(isinstance(d.message, graft_tx.VoteRequest) for _, d in cluster.wire)
    heartbeats = [(t, d) for t, d in cluster.wire if isinstance(d.message, graft_tx.Heartbeat)]
    assert {d.sender for _, d in heartbeats} == {leader.id}
    assert {d.message for _, d in heartbeats} == {graft_tx.Heartbeat(term, leader.id)}
    # One broadcast to the four others every interval (as precise as the clock's steps).
    sent_at = sorted({t for t, _ in heartbeats})
    assert len(heartbeats) == 4 * len(sent_at)
    gaps = [later - earlier for earlier, later in itertools.pairwise(sent_at)]
    interval = TIMING.heartbeat_interval
    assert all(interval - 1e-9 <= gap <= interval + STEP + 1e-9 for gap in gaps), gaps
    assert len(sent_at) >= 10.0 / (interval + STEP)
