"""graft-tx nodes under test: one played by hand (L{Unit}), or many on one
MemoryNetwork (L{Net}).

A L{Unit} is a node "me" whose peers the test plays by calling its handle_*
methods, watching what it sends through a RecordingRpc; with the L{FIXED}
timing and the L{Lowest} rng every deadline is exact binary clock
arithmetic. A L{Net} runs real nodes and checks, after every delivered
message and every timer, that no two hold a lease at once.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fakes import Lowest, PolicyHandler, RecordingHandler, RecordingRpc, term_and_vote
from twisted.internet.task import Clock

import graft_tx
import graft_tx.lease
from graft_tx import (
    ClusterInfo,
    HeartbeatAck,
    Node,
    State,
    StateChange,
    Timing,
    VoteResponse,
)
from graft_tx.statefile import PersistentState, StateFile
from graft_tx.testing import Delivery, MemoryNetwork

F, C, L, X = State.FOLLOWER, State.CANDIDATE, State.LEADER, State.CLOSED
ME = "me"
F, C, L, X = State.FOLLOWER, State.CANDIDATE, State.LEADER, State.CLOSED
# Exactly 1s of election timeout (no randomness), heartbeats every 0.25s.
# Election timeouts of exactly 1s with the Lowest rng; heartbeats every 0.25s.
FIXED = Timing(election_timeout_min=1.0, election_timeout_max=1.25, heartbeat_interval=0.25)
RANGE = Timing(election_timeout_min=1.0, election_timeout_max=2.0, heartbeat_interval=0.25)
# How long a lease of the FIXED timing lasts after the acknowledged heartbeat was sent.
LEASE = FIXED.election_timeout_min * (1 - graft_tx.lease.DRIFT)
# The promise each of this node's acknowledgements carries, in microseconds.
W = 1_000_000


# -- unit helpers --------------------------------------------------------------


@dataclass
class Unit:
    """One node under test, its clock, transport, handler and state file."""

    node: Node
    clock: Clock
    rpc: RecordingRpc
    handler: PolicyHandler
    path: str

    def changes(self) -> list[StateChange]:
        """The state changes the handler heard, once queued deliveries have run."""
        self.clock.advance(0)
        return self.handler.changes

    def advance(self, seconds: float) -> None:
        """Advance in heartbeat-sized steps: task.Clock runs every due call at
        the end time of one advance(), so a leader's ticks need small steps."""
        while seconds > 0:
            step = min(seconds, FIXED.heartbeat_interval)
            self.clock.advance(step)
            seconds -= step

    def on_disk(self) -> PersistentState:
        return term_and_vote(self.path)

    def memory(self) -> tuple[int, str, State]:
        return self.node.current_term, self.node.current_vote, self.node.state


def unit(
    tmp_path: Path,
    *,
    size: int = 3,
    timing: Timing = FIXED,
    priority: int = 1,
    protocol: str | None = None,
    saved: PersistentState | None = None,
    position: bytes = b"",
    seed: int = 0,
    name: str = "node",
) -> Unit:
    """A node "me" of a cluster of C{size}, started at time 0 of a fresh Clock."""
    path = str(tmp_path / name)
    # A node that ran before under this id (a new identity acks nothing at
    # first; its own tests say so).
    saved = saved if saved is not None else PersistentState()
    StateFile(path).save(PersistentState(saved.term, saved.voted_for, saved.node_id or ME))
    clock = Clock()
    rpc = RecordingRpc()
    handler = PolicyHandler(position=position)
    extra: dict[str, Any] = {} if protocol is None else {"protocol": protocol}
    node = graft_tx.new(
        ClusterInfo("cluster", size),
        handler,
        rpc,
        path,
        clock=clock,
        timing=timing,
        node_id=ME,
        rng=Lowest() if timing is FIXED else random.Random(seed),
        priority=priority,
        **extra,
    )
    return Unit(node, clock, rpc, handler, path)


def elect(u: Unit) -> None:
    """Make the node leader of term current+1 at its first election timeout (t=1.0).

    Voters a, b, ... (a quorum with the node) grant the pre-vote, then the vote.
    """
    assert u.node.state is F and u.clock.seconds() == 0
    u.clock.advance(FIXED.election_timeout_min)
    term = u.node.current_term + 1
    voters = [chr(ord("a") + i) for i in range(u.node.cluster_info.size // 2)]
    for voter in voters:
        u.node.handle_vote_response(VoteResponse(term, True, voter, pre_vote=True))
    assert u.node.state is C
    for voter in voters:
        u.node.handle_vote_response(VoteResponse(term, True, voter))
    assert u.node.state is L
    assert u.node.current_term == term


def lead(u: Unit, acks: Iterable[str] = ("a",)) -> None:
    """L{elect}, then have C{acks} acknowledge the first heartbeat."""
    elect(u)
    for follower in acks:
        u.node.handle_heartbeat_ack(HeartbeatAck(u.node.current_term, follower, 1))


STEP = 0.005
TIMING = Timing()
HEARTBEAT = TIMING.heartbeat_interval


class DriftingClock:
    """A node's monotonic clock: the shared Clock's time at an adjustable rate."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._rate = 1.0
        self._since = clock.seconds()
        self._base = clock.seconds()

    def __call__(self) -> float:
        return self._base + self._rate * (self._clock.seconds() - self._since)

    def set_rate(self, rate: float) -> None:
        """Run at C{rate} from now on, continuing from the current reading."""
        self._base, self._since, self._rate = self(), self._clock.seconds(), rate


class Net:
    """Real graft-tx nodes n0, n1, ... on one Clock and MemoryNetwork.

    L{run} moves the clock from one delayed call to the next (and at least
    every C{step} seconds), checking after each that no two nodes hold a lease
    and that no term ever had two leaders.
    """

    def __init__(
        self,
        directory: Path,
        size: int = 5,
        seed: int = 0,
        latency: tuple[float, float] = (0.001, 0.005),
        timing: Timing = TIMING,
        step: float = STEP,
        drifting: bool = False,
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.seed = seed
        self.timing = timing
        self.step = step
        self.clock = Clock()
        self.network = MemoryNetwork(self.clock, latency=latency, seed=seed)
        self.info = ClusterInfo("cluster", size)
        self.ids = [f"n{i}" for i in range(size)]
        # Unless drifting, every node uses its default monotonic clock:
        # the Clock's seconds.
        self.monotonic = (
            {node_id: DriftingClock(self.clock) for node_id in self.ids} if drifting else {}
        )
        self.nodes: dict[str, Node] = {}
        self.leader_of_term: dict[int, str] = {}
        self.wire: list[tuple[float, Delivery]] = []
        self.network.observe(lambda d: self.wire.append((self.clock.seconds(), d)))

    def start(
        self,
        node_id: str,
        priority: int = 1,
        *,
        timing: Timing | None = None,
        anonymous: bool = False,
        fresh: bool = False,
    ) -> Node:
        """Start C{node_id} from its state file C{directory/node_id}.

        C{anonymous}: without a node id, as C{twistd graft} without
        C{--node-id} (the node takes the id its file records, or a new one).
        C{fresh}: the state file is lost first.
        """
        path = self.directory / node_id
        if fresh:
            path.unlink(missing_ok=True)
        node = graft_tx.new(
            self.info,
            RecordingHandler(),
            self.network.rpc(),
            str(path),
            clock=self.clock,
            timing=timing or self.timing,
            node_id=None if anonymous else node_id,
            rng=random.Random(f"{self.seed}-{node_id}"),
            priority=priority,
            monotonic=self.monotonic.get(node_id),
        )
        self.nodes[node.id] = node
        return node

    def crash(self, node: Node) -> None:
        """Stop C{node} at once; its state file stays."""
        node.close()
        del self.nodes[node.id]

    def start_all(self) -> Net:
        for node_id in self.ids:
            self.start(node_id)
        return self

    def leaders(self) -> list[Node]:
        """The nodes whose is_leader() is true now."""
        return [node for node in self.nodes.values() if node.is_leader()]

    def check(self) -> None:
        leading = self.leaders()
        now = self.clock.seconds()
        assert len(leading) <= 1, f"t={now}: two leases at once: {leading}"
        for node in self.nodes.values():
            if node.state is L:
                first = self.leader_of_term.setdefault(node.current_term, node.id)
                assert first == node.id, f"t={now}: two leaders of term {node.current_term}"

    def run(
        self,
        seconds: float,
        until: Callable[[], object] | None = None,
        each: Callable[[], None] | None = None,
    ) -> float:
        """Run C{seconds} (or until C{until()} holds); returns the time reached."""
        end = self.clock.seconds() + seconds
        while self.clock.seconds() < end:
            step_end = min(end, self.clock.seconds() + self.step)
            while True:
                due = [c.getTime() for c in self.clock.getDelayedCalls()]
                due = [t for t in due if t <= step_end]
                if not due:
                    break
                # Land exactly on the next call's time (advance() by a
                # difference could fall an ulp short of it) and run it.
                self.clock.rightNow = max(self.clock.rightNow, min(due))
                self.clock.advance(0)
                self.check()
            self.clock.rightNow = max(self.clock.rightNow, step_end)
            self.clock.advance(0)
            self.check()
            if each is not None:
                each()
            if until is not None and until():
                break
        return self.clock.seconds()

    def elect(self, limit: float = 5.0) -> Node:
        """Run until one node leads with a lease and every node follows it."""
        self.run(limit, until=self.agreed)
        leader = self.agreed()
        assert leader is not None, f"no agreed leader after {limit}s: {list(self.nodes.values())}"
        return leader

    def agreed(self) -> Node | None:
        leading = self.leaders()
        if len(leading) != 1:
            return None
        leader = leading[0]
        for node in self.nodes.values():
            if node.leader != leader.id or node.current_term != leader.current_term:
                return None
        return leader

    def close(self) -> None:
        for node in self.nodes.values():
            node.close()
        assert self.clock.getDelayedCalls() == []
