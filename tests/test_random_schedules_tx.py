"""Seeded random schedules for graft-tx: leases, pre-vote, transfers, priorities and pauses.

Each schedule runs a cluster of 3 or 5 real graft-tx nodes on a L{MemoryNetwork}
with random latencies and message loss, through a random list of events: let
time pass, split the network into random groups (often the leader with a
minority; sometimes two groups that a third part still hears), heal it,
crash a node (its state file stays) and restart it from its state file under
the same id with a fresh priority (0, 1 or 2, with a quorum of nodes at 1 or
more), later or at once, hand leadership over (with or without a target),
change the loss rate, and freeze a node's process for a while: shorter than
a lease, about as long, or longer than any election timeout.

Process pauses are modelled faithfully. Every node has a L{task.Clock} of its
own, used as its clock and its monotonic clock; the network has another. The
simulation runs them as one discrete-event simulation: it finds the next
instant at which any running clock has something due, moves every running
clock to that instant, and only then runs what is due, so that no clock ever
lags behind another. A frozen node's clock stands still and it runs nothing,
so it sends nothing; the network still delivers to it, but the messages wait
at its door (L{_Pausable}, between the network and the node). When it resumes
its clock jumps by the whole pause at once, its stale timers fire late, as
after a real SIGSTOP, and only then does it read the messages that waited.

At every instant at which anything happens, after every event, and at a
resumed node's first instant, these must hold:

  (a) at most one leader per term, ever: from every heartbeat on the wire,
      from sampling the nodes and from what followers believe; and a leader
      of a term collected granted votes from a quorum in that term;
  (b) no node votes for two candidates in one term, across restarts: from
      every vote request and granted vote on the wire (pre-votes aside), and
      from sampling; no node's term goes backwards, across restarts;
  (c) no two nodes hold a lease at once: at most one running node has
      C{is_leader()} true, and a frozen leader counts as well until the lease
      it held when it froze runs out (were it resumed then, it would still
      lead, before it could learn anything);
  (d) a frozen-then-resumed leader never acts as leader once its lease is
      gone: at the instant it resumes, before it runs anything, it does not
      say C{is_leader()} if its lease expired or if its last heartbeat is an
      election timeout old; and no leader ever sends a heartbeat an election
      timeout or more after its previous one in the same term (it must step
      down at its first tick instead). A frozen node sends nothing;
  nothing is logged at error level and no handler hears of an error;
  (e) at the end, with the network healed, no loss and every node running,
      there is soon exactly one node whose C{is_leader()} is true, which
      every node follows; it is soon one of the highest priority present,
      and then it holds.

The default run plays 2,000 schedules, and the seeds in L{KNOWN}, which
once broke an invariant in a longer search. A failure names its seed and shows
the schedule; replay one with C{GRAFT_TX_SEED=<seed>}, or play another
number with C{GRAFT_TX_SCHEDULES=<n>}:

    GRAFT_TX_SEED=123 python -m pytest tests/test_random_schedules_tx.py -q
    GRAFT_TX_SCHEDULES=100000 python -m pytest tests/test_random_schedules_tx.py -q
"""

from __future__ import annotations

import math
import os
import random
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from ledger import Ledger
from twisted.internet import task
from twisted.logger import LogEvent, LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import implementer
from zope.interface.verify import verifyObject

import graft_tx
from graft_tx import Heartbeat, HeartbeatAck, State, VoteRequest, VoteResponse
from graft_tx.interfaces import IAckingRpc, IElectionNode, IStateHandler
from graft_tx.statefile import PersistentState, StateFile
from graft_tx.testing import Delivery, MemoryNetwork, MemoryRpc, Message

SCHEDULES = 2000
CHUNK = 50
TIMING = graft_tx.Timing()
# The longest any lease can last: a follower that acknowledged a heartbeat
# refuses other candidates for this long after it got it.
LEASE_BOUND = TIMING.election_timeout_min
# Steps while waiting for the healed cluster at the end.
STEP = 0.05
SETTLE = 10.0
HANDOVER = 20.0
HOLD = 1.0
REPLAY = "GRAFT_TX_SEED={seed} python -m pytest tests/test_random_schedules_tx.py -q"
# Seeds beyond the default range that broke an invariant in a longer search,
# played in every run as well. All four broke (e) the same way, until nodes
# answered a stale leader's heartbeat with their higher term (94a74bd): a
# node whose term ran ahead of the leader's (it won a pre-vote, then nobody
# heard its vote request) never rejoined, as the leader's side refused its
# pre-votes and it ignored their lower-term heartbeats and answers.
KNOWN = (2123, 2369, 11656, 21344)


def _seed_chunks() -> list[Any]:
    if os.environ.get("GRAFT_TX_SEED"):
        seed = int(os.environ["GRAFT_TX_SEED"])
        return [pytest.param([seed], id=f"seed{seed}")]
    count = int(os.environ.get("GRAFT_TX_SCHEDULES", SCHEDULES))
    chunks = [list(range(i, min(i + CHUNK, count))) for i in range(0, count, CHUNK)]
    known = [seed for seed in KNOWN if seed >= count]
    return [pytest.param(seeds, id=f"seeds{seeds[0]}-{seeds[-1]}") for seeds in chunks] + (
        [pytest.param(known, id="known-seeds")] if known else []
    )


def _set_time(clock: task.Clock, when: float) -> None:
    """Move C{clock} to C{when} without running what falls due.

    C{Clock.advance} runs a clock's due calls the moment it moves; the
    simulation first brings every running clock to the next instant and
    only then runs that instant's calls, so that a message sent by one node
    is stamped with the same time on the network's clock.
    """
    clock.rightNow = when


@implementer(IElectionNode)
class _Pausable:
    """The door between the network and one node: messages pass through,
    or wait while the node's process is frozen."""

    def __init__(self, node: IElectionNode) -> None:
        self.node = node
        self.frozen = False
        self.waiting: list[tuple[Callable[[Any], None], Message]] = []

    @property
    def id(self) -> str:
        return str(self.node.id)

    @property
    def cluster_info(self) -> graft_tx.ClusterInfo:
        info: graft_tx.ClusterInfo = self.node.cluster_info
        return info

    @property
    def protocol(self) -> str:
        return str(self.node.protocol)

    def handle_vote_request(self, req: VoteRequest) -> None:
        self._pass(self.node.handle_vote_request, req)

    def handle_vote_response(self, resp: VoteResponse) -> None:
        self._pass(self.node.handle_vote_response, resp)

    def handle_heartbeat(self, hb: Heartbeat) -> None:
        self._pass(self.node.handle_heartbeat, hb)

    def handle_heartbeat_ack(self, ack: HeartbeatAck) -> None:
        self._pass(self.node.handle_heartbeat_ack, ack)

    def _pass(self, handle: Callable[[Any], None], message: Message) -> None:
        if self.frozen:
            self.waiting.append((handle, message))
        else:
            handle(message)

    def resume(self) -> None:
        """Let the node read, in order, what arrived while it was frozen."""
        self.frozen = False
        waiting, self.waiting = self.waiting, []
        for handle, message in waiting:
            handle(message)


@implementer(IAckingRpc)
class _PausableRpc:
    """A L{MemoryRpc} that attaches its node to the network through a L{_Pausable}."""

    def __init__(self, inner: MemoryRpc) -> None:
        self._inner = inner
        self.door: _Pausable | None = None

    def init(self, node: IElectionNode) -> None:
        door = _Pausable(node)
        self._inner.init(door)
        self.door = door

    def close(self) -> None:
        self._inner.close()

    def request_vote(self, req: VoteRequest) -> None:
        self._inner.request_vote(req)

    def heartbeat(self, hb: Heartbeat) -> None:
        self._inner.heartbeat(hb)

    def send_vote_response(self, candidate_id: str, resp: VoteResponse) -> None:
        self._inner.send_vote_response(candidate_id, resp)

    def send_heartbeat_ack(self, leader_id: str, ack: HeartbeatAck) -> None:
        self._inner.send_heartbeat_ack(leader_id, ack)


@implementer(IStateHandler)
class _ErrorRecorder:
    """A handler that turns any background error into a violation."""

    def __init__(self, violations: list[str], node_id: str) -> None:
        self._violations = violations
        self._node_id = node_id

    def state_changed(self, from_state: State, to_state: State) -> None:
        pass

    def async_error(self, error: Exception) -> None:
        self._violations.append(f"node {self._node_id} reported an error: {error!r}")


@dataclass
class _Pause:
    """A frozen node: since when, until when, and the lease it held when it froze."""

    since: float
    until: float
    lease_expiry: float | None


class Simulation:
    """One seeded schedule, with the invariants it watches."""

    def __init__(self, seed: int, directory: Path) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.directory = directory
        size = self.rng.choice((3, 5))
        self.info = graft_tx.ClusterInfo("sim-tx", size)
        self.quorum = graft_tx.quorum(size)
        self.ids = [f"n{i}" for i in range(size)]
        # Mostly a LAN's latencies; sometimes slow enough that vote rounds
        # overlap, messages overtake each other and a lease is short (a
        # round trip eats into it).
        slowest = self.rng.uniform(0.001, 0.05) if self.rng.random() < 0.7 else 0.12
        latency = (0.0, slowest)
        # The network's clock is the simulation's time.
        self.clock = task.Clock()
        self.network = MemoryNetwork(
            self.clock, latency=latency, loss=self.rng.uniform(0.0, 0.2), seed=seed
        )
        self.network.observe(self._on_wire)
        self.priorities = {node_id: self.rng.choice((0, 1, 2)) for node_id in self.ids}
        while sum(p >= 1 for p in self.priorities.values()) < self.quorum:
            idle = [i for i, p in self.priorities.items() if p == 0]
            self.priorities[self.rng.choice(idle)] = self.rng.choice((1, 2))
        self.nodes: dict[str, graft_tx.Node] = {}
        self.clocks: dict[str, task.Clock] = {}
        self.doors: dict[str, _Pausable] = {}
        self.paused: dict[str, _Pause] = {}
        self.ledger = Ledger(graft_tx.quorum(size), tags=("(a) ", "(b) "))
        self.leaders, self.votes = self.ledger.leaders, self.ledger.votes
        self.terms, self.sent_terms = self.ledger.terms, self.ledger.sent_terms
        self.last_heartbeat: dict[tuple[str, int], float] = {}
        self.sampled: dict[str, tuple[int, str, State, str]] = {}
        self.violations = self.ledger.violations
        self.replay = REPLAY.format(seed=seed)
        self.history: list[str] = [
            f"size {size}, latency {latency}, loss {self.network.loss:.3f}, "
            f"priorities {self.priorities}"
        ]

    @property
    def now(self) -> float:
        return self.clock.seconds()

    def record(self, event: str) -> None:
        self.history.append(f"t={self.now:.3f} {event}")

    # -- recording and checking -----------------------------------------

    def _on_wire(self, delivery: Delivery) -> None:
        ledger = self.ledger
        message = delivery.message
        sender = delivery.sender
        if sender in self.paused:
            self.violations.append(f"(d) {sender} sent {message} while frozen")
        term = message.term
        if isinstance(message, VoteRequest) and message.pre_vote:
            # A pre-vote asks about the next term without entering it.
            term -= 1
        if not (isinstance(message, VoteResponse) and message.pre_vote and message.granted):
            # (A granted pre-vote carries the asker's next term, not the voter's.)
            ledger.claim_term(self.sent_terms, sender, term, f"a message it sent: {message}")
        if isinstance(message, Heartbeat):
            self._on_heartbeat(sender, delivery.target, message)
        elif isinstance(message, VoteRequest):
            if not message.pre_vote:
                candidate = message.candidate
                ledger.claim_vote(candidate, message.term, candidate, "vote request")
        elif isinstance(message, VoteResponse) and message.granted and not message.pre_vote:
            ledger.claim_vote(sender, message.term, delivery.target, "granted vote on the wire")

    def _on_heartbeat(self, sender: str, target: str, hb: Heartbeat) -> None:
        self.ledger.claim_leader(hb.term, hb.leader, f"heartbeat to {target}")
        # A broadcast reaches the observer once per peer, at the same instant.
        now = self.clocks[sender].seconds()
        last = self.last_heartbeat.get((sender, hb.term))
        if last is not None and now - last >= LEASE_BOUND:
            self.violations.append(
                f"(d) {sender} sent a heartbeat in term {hb.term} {now - last:.3f}s after its "
                f"previous one: its lease was gone, it had to step down instead"
            )
        self.last_heartbeat[(sender, hb.term)] = now

    def _on_log(self, event: LogEvent) -> None:
        if event.get("log_level", LogLevel.info) >= LogLevel.error:
            self.violations.append(f"logged an error: {formatEvent(event)}")

    def check(self, event: str) -> None:
        now = self.now
        holders = []
        for node_id, node in self.nodes.items():
            term = node.current_term
            seen = (term, node.current_vote, node.state, node.leader)
            # The claims of a node whose state did not change were made already.
            if self.sampled.get(node_id) != seen:
                self.sampled[node_id] = seen
                self.sample(node_id, node)
            pause = self.paused.get(node_id)
            if pause is None:
                if node.is_leader():
                    holders.append(f"{node_id} (term {term})")
            elif pause.lease_expiry is not None and now < pause.lease_expiry:
                holders.append(f"{node_id} (term {term}, frozen, lease until {pause.lease_expiry})")
        if len(holders) > 1:
            self.violations.append(f"(c) two nodes hold a lease at once: {', '.join(holders)}")
        if self.violations:
            pytest.fail(self.report(event), pytrace=False)

    def sample(self, node_id: str, node: graft_tx.Node) -> None:
        term = node.current_term
        self.ledger.claim_term(self.terms, node_id, term, "a sample")
        if node.current_vote:
            self.ledger.claim_vote(node_id, term, node.current_vote, "a sample")
        if node.state is State.LEADER:
            self.ledger.claim_leader(term, node_id, "sampling the nodes")
        elif node.leader:
            self.ledger.claim_leader(term, node.leader, f"{node_id}, which follows it")

    def report(self, event: str) -> str:
        states = []
        for node_id, node in sorted(self.nodes.items()):
            frozen = (
                f", frozen since {self.paused[node_id].since:.3f}" if node_id in self.paused else ""
            )
            states.append(
                f"{node_id}: {node.state} term={node.current_term} vote={node.current_vote!r} "
                f"leader={node.leader!r} is_leader={node.is_leader()} "
                f"priority={node.priority}{frozen}"
            )
        return (
            f"seed {self.seed} broke an invariant at t={self.now:.3f}s during {event}:\n  "
            + "\n  ".join(dict.fromkeys(self.violations))
            + "\nnodes up:\n  "
            + "\n  ".join(states)
            + "\nschedule so far:\n  "
            + "\n  ".join(self.history[-40:])
            + f"\nreplay: {self.replay}"
        )

    # -- time -----------------------------------------------------------

    def running_clocks(self) -> list[task.Clock]:
        return [self.clock] + [c for i, c in self.clocks.items() if i not in self.paused]

    def advance(self, seconds: float, event: str) -> None:
        """Run every running clock together, instant by instant, for C{seconds}."""
        target = self.now + seconds
        while True:
            clocks = self.running_clocks()
            due = min((c.calls[0].getTime() for c in clocks if c.calls), default=math.inf)
            wake = min((p.until for p in self.paused.values()), default=math.inf)
            instant = min(due, wake)
            if instant > target:
                break
            for clock in clocks:
                _set_time(clock, instant)
            if wake <= due:
                for node_id in [i for i, p in self.paused.items() if p.until <= instant]:
                    self.resume(node_id, event)
            else:
                for clock in clocks:
                    if clock.calls and clock.calls[0].getTime() <= instant:
                        clock.advance(0)
            self.check(event)
        for clock in self.running_clocks():
            _set_time(clock, target)
        self.check(event)

    # -- the events -----------------------------------------------------

    def start(self, node_id: str) -> None:
        clock = task.Clock()
        _set_time(clock, self.now)
        rpc = _PausableRpc(self.network.rpc())
        self.nodes[node_id] = graft_tx.new(
            self.info,
            _ErrorRecorder(self.violations, node_id),
            rpc,
            str(self.directory / node_id),
            clock=clock,
            node_id=node_id,
            rng=random.Random(self.rng.getrandbits(32)),
            protocol="graft-tx",
            priority=self.priorities[node_id],
        )
        assert rpc.door is not None
        self.clocks[node_id] = clock
        self.doors[node_id] = rpc.door

    def crash(self, node_id: str) -> None:
        # A frozen process can be killed too: what waited for it is lost.
        self.paused.pop(node_id, None)
        self.doors.pop(node_id)
        self.nodes.pop(node_id).close()
        self.clocks.pop(node_id)

    def restart(self, node_id: str) -> None:
        priority = self.rng.choice((0, 1, 2))
        others = sum(p >= 1 for i, p in self.priorities.items() if i != node_id)
        if priority == 0 and others < self.quorum:
            priority = self.rng.choice((1, 2))
        self.priorities[node_id] = priority
        self.start(node_id)

    def freeze(self, node_id: str, seconds: float) -> None:
        node = self.nodes[node_id]
        self.paused[node_id] = _Pause(self.now, self.now + seconds, node.leadership().lease_expiry)
        self.doors[node_id].frozen = True

    def resume(self, node_id: str, event: str) -> None:
        """Thaw a frozen node: its clock jumps, its stale timers fire, then it reads."""
        pause = self.paused.pop(node_id)
        node = self.nodes[node_id]
        now = self.now
        was = "leader" if node.state is State.LEADER else str(node.state).lower()
        self.record(f"resume {node_id} ({was}) after {now - pause.since:.3f}s frozen")
        event = f"{event}, resuming {node_id}"
        clock = self.clocks[node_id]
        # The whole pause at once; nothing runs yet. This is the instant a
        # user's code, resumed with the node, would first ask is_leader().
        _set_time(clock, now)
        if node.state is State.LEADER and node.is_leader():
            expired = pause.lease_expiry is not None and now >= pause.lease_expiry
            last = self.last_heartbeat.get((node_id, node.current_term), -math.inf)
            if expired or now - last >= LEASE_BOUND:
                self.violations.append(
                    f"(d) {node_id} resumed after {now - pause.since:.3f}s and says "
                    f"is_leader() although its lease (until {pause.lease_expiry}, last "
                    f"heartbeat at {last:.3f}) is gone"
                )
        self.check(event + " (before it runs anything)")
        # Its stale timers fire, late, as after a real pause...
        clock.advance(0)
        self.check(event + " (its stale timers)")
        # ...and then it reads what arrived while it was frozen.
        self.doors[node_id].resume()

    def transfer(self, leader: str, target: str | None) -> None:
        done = self.nodes[leader].transfer_leadership(target)
        done.addCallbacks(self._transferred, self._transfer_failed, (leader,), None, (leader,))

    def _transferred(self, new_leader: str, leader: str) -> None:
        self.record(f"transfer from {leader} done: {new_leader} leads")

    def _transfer_failed(self, failure: Failure, leader: str) -> None:
        if failure.check(graft_tx.TransferError):
            self.record(f"transfer from {leader} failed: {failure.value}")
        else:
            self.violations.append(f"transfer from {leader} failed with {failure.value!r}")

    def random_event(self) -> None:
        roll = self.rng.random()
        if roll < 0.38:
            self.let_time_pass()
        elif roll < 0.48:
            self.split()
        elif roll < 0.55:
            self.network.restore()
            self.record("restore")
        elif roll < 0.72:
            self.crash_or_restart(roll)
        elif roll < 0.82:
            self.hand_over()
        elif roll < 0.95:
            self.pause()
        else:
            self.network.loss = self.rng.uniform(0.0, 0.2)
            self.record(f"loss {self.network.loss:.3f}")
        self.check(self.history[-1])

    def let_time_pass(self) -> None:
        seconds = self.rng.uniform(0.0, 0.5)
        event = f"advance {seconds:.3f}s"
        self.record(event)
        self.advance(seconds, event)

    def leader_ids(self, *, awake: bool = False) -> list[str]:
        return [
            i
            for i, n in self.nodes.items()
            if n.state is State.LEADER and not (awake and i in self.paused)
        ]

    def split(self) -> None:
        rng = self.rng
        ids = self.ids[:]
        rng.shuffle(ids)
        leaders = self.leader_ids()
        kind = rng.random()
        if leaders and kind < 0.5:
            # The leader with a minority, cut off from the majority.
            leader = rng.choice(leaders)
            ids.remove(leader)
            cut = rng.randint(0, self.quorum - 2)
            a, b = [leader, *ids[:cut]], ids[cut:]
        elif kind < 0.8:
            cut = rng.randint(1, len(ids) - 1)
            a, b = ids[:cut], ids[cut:]
        else:
            # Two groups cut from each other, and at least one node that
            # still hears both: partitions need not be transitive.
            cut = rng.randint(1, len(ids) - 2)
            end = rng.randint(cut + 1, len(ids) - 1)
            a, b = ids[:cut], ids[cut:end]
        self.network.split(a, b)
        self.record(f"split {sorted(a)} | {sorted(b)}")

    def crash_or_restart(self, roll: float) -> None:
        rng = self.rng
        down = [i for i in self.ids if i not in self.nodes]
        if self.nodes and (roll < 0.65 or not down):
            leaders = self.leader_ids()
            victim = rng.choice(leaders if leaders and rng.random() < 0.5 else sorted(self.nodes))
            frozen = " (frozen)" if victim in self.paused else ""
            self.crash(victim)
            if roll < 0.62:
                self.record(f"crash {victim}{frozen}")
                return
            # A supervisor restarts it at once.
            self.restart(victim)
            self.record(
                f"crash {victim}{frozen} and restart it with priority {self.priorities[victim]}"
            )
        else:
            revived = rng.choice(down)
            self.restart(revived)
            self.record(f"restart {revived} with priority {self.priorities[revived]}")

    def hand_over(self) -> None:
        # The cluster is often between leaders: give it a moment to elect one.
        waited = 0.0
        while not (leaders := self.leader_ids(awake=True)) and waited < 1.0:
            self.advance(STEP, "waiting for a leader to hand over")
            waited += STEP
        if not leaders:
            self.record("transfer: no leader awake after waiting 1s")
            return
        leader = self.rng.choice(leaders)
        target = None
        if self.rng.random() < 0.5:
            target = self.rng.choice([i for i in self.ids if i != leader])
        self.record(f"transfer from {leader} to {target or 'the best follower'}")
        self.transfer(leader, target)

    def pause(self) -> None:
        rng = self.rng
        awake = [i for i in self.nodes if i not in self.paused]
        if not awake:
            self.record("freeze: every node is frozen or down")
            return
        leaders = self.leader_ids(awake=True)
        victim = rng.choice(leaders if leaders and rng.random() < 0.6 else sorted(awake))
        # Short pauses, pauses about as long as a lease, and pauses longer
        # than any lease and election timeout.
        kind = rng.random()
        if kind < 0.4:
            seconds = rng.uniform(0.02, 0.4)
        elif kind < 0.6:
            seconds = rng.uniform(0.4, 0.6)
        else:
            seconds = rng.uniform(0.6, 2.0)
        self.freeze(victim, seconds)
        self.record(f"freeze {victim} ({self.nodes[victim].state}) for {seconds:.3f}s")

    # -- the end --------------------------------------------------------

    def settle(self) -> None:
        """Heal everything, then demand one leasing leader that all follow and that holds."""
        event = "the final healing (restore, no loss, every node running)"
        self.record(event)
        self.network.restore()
        self.network.loss = 0.0
        for node_id in list(self.paused):
            self.resume(node_id, event)
        for node_id in self.ids:
            if node_id not in self.nodes:
                self.restart(node_id)
        self.check(event)
        self.advance(TIMING.election_timeout_max, event)
        self.wait_for(
            lambda: self.agreed_leader() is not None, SETTLE, "one leader that all follow"
        )
        # Then the priority handover, which waits for a steady follower:
        # with jittery latencies that can take a few rounds.
        self.wait_for(self.highest_priority_leads, HANDOVER, "the highest priority leading")
        agreed = self.agreed_leader()
        held = 0.0
        while held < HOLD:
            self.advance(STEP, event + ", holding")
            held += STEP
            if self.agreed_leader() != agreed:
                self.violations.append(
                    f"(e) the leader and term {agreed} did not hold for {HOLD}s after healing"
                )
                self.check(event)

    def wait_for(self, condition: Callable[[], bool], limit: float, what: str) -> None:
        event = f"the final healing, waiting for {what}"
        waited = 0.0
        while not condition():
            if waited >= limit:
                self.violations.append(f"(e) no {what} {limit}s after healing")
                self.check(event)
            self.advance(STEP, event)
            waited += STEP

    def agreed_leader(self) -> tuple[str, int] | None:
        """The one node leading with a lease, that all follow."""
        nodes = list(self.nodes.values())
        leaders = [n for n in nodes if n.is_leader()]
        if len(leaders) != 1:
            return None
        leader = leaders[0]
        for node in nodes:
            if node.current_term != leader.current_term or node.leader != leader.id:
                return None
        return leader.id, leader.current_term

    def highest_priority_leads(self) -> bool:
        agreed = self.agreed_leader()
        if agreed is None:
            return False
        priorities = [n.priority for n in self.nodes.values()]
        return self.nodes[agreed[0]].priority == max(priorities)

    def run(self) -> None:
        globalLogPublisher.addObserver(self._on_log)
        try:
            for node_id in self.ids:
                self.start(node_id)
            self.check("the start")
            for _ in range(self.rng.randint(30, 50)):
                self.random_event()
            self.settle()
        finally:
            globalLogPublisher.removeObserver(self._on_log)
            for node in self.nodes.values():
                node.close()


def _network_node(directory: Path) -> tuple[graft_tx.Node, _PausableRpc]:
    clock = task.Clock()
    network = MemoryNetwork(clock)
    rpc = _PausableRpc(network.rpc())
    node = graft_tx.new(
        graft_tx.ClusterInfo("doors", 3),
        _ErrorRecorder([], "n0"),
        rpc,
        str(directory / "n0"),
        clock=clock,
        node_id="n0",
        protocol="graft-tx",
    )
    return node, rpc


def test_doors_provide_their_interfaces(tmp_path: Path) -> None:
    """The simulation's rpc, door and handler provide the interfaces they are wired by."""
    node, rpc = _network_node(tmp_path)
    assert verifyObject(IAckingRpc, rpc)
    assert rpc.door is not None
    assert verifyObject(IElectionNode, rpc.door)
    assert (rpc.door.id, rpc.door.cluster_info, rpc.door.protocol) == (
        "n0",
        node.cluster_info,
        "graft-tx",
    )
    assert verifyObject(IStateHandler, _ErrorRecorder([], "n"))
    node.close()


def test_frozen_door_holds_messages_until_resumed(tmp_path: Path) -> None:
    """A frozen node reads nothing; on resume it reads what waited, in order."""
    node, rpc = _network_node(tmp_path)
    door = rpc.door
    assert door is not None
    door.frozen = True
    door.handle_heartbeat(Heartbeat(5, "n1", 1))
    door.handle_heartbeat(Heartbeat(6, "n2", 1))
    assert (node.current_term, node.leader) == (0, "")
    door.resume()
    assert (node.current_term, node.leader) == (6, "n2")
    door.handle_heartbeat(Heartbeat(7, "n1", 1))
    assert (node.current_term, node.leader) == (7, "n1")
    node.close()


def test_a_long_pause_lets_the_clock_jump_and_the_lease_run_out(tmp_path: Path) -> None:
    """A leader frozen past its lease keeps its stopped clock, and resumes no longer leading."""
    simulation = Simulation(0, tmp_path)
    # Equal priorities: no handover back to the resumed node.
    simulation.priorities = dict.fromkeys(simulation.ids, 1)
    simulation.network.loss = 0.0
    for node_id in simulation.ids:
        simulation.start(node_id)
    simulation.advance(3.0, "electing")
    (leader,) = [i for i, n in simulation.nodes.items() if n.is_leader()]
    node = simulation.nodes[leader]
    term = node.current_term
    simulation.freeze(leader, 3.0)
    simulation.advance(2.0, "frozen")
    assert simulation.clocks[leader].seconds() == 3.0
    assert (node.state, node.current_term) == (State.LEADER, term)
    # Another node leads with a lease (a frozen node's is_leader() answers for
    # its stopped clock, so it is not asked).
    (successor,) = [i for i, n in simulation.nodes.items() if i != leader and n.is_leader()]
    simulation.advance(1.0, "resuming at the end")
    assert leader not in simulation.paused
    assert simulation.clocks[leader].seconds() == simulation.now == 6.0
    assert node.state is State.FOLLOWER
    assert not node.is_leader()
    assert simulation.nodes[successor].is_leader()
    for other in simulation.nodes.values():
        other.close()


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    """Where the simulated nodes keep their state files: in memory where the
    system has a RAM-backed directory (the schedules write tens of thousands
    of them, and a busy disk doubles the run's time), else in C{tmp_path}."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK | os.X_OK)):
        yield tmp_path
        return
    with tempfile.TemporaryDirectory(dir=shm, prefix="graft-tx-schedules-") as name:
        yield Path(name)


@pytest.mark.parametrize("seeds", _seed_chunks())
def test_random_schedules_keep_leases_safe(
    seeds: list[int], state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Random schedules with pauses keep one leader per term and one lease at a time, and heal."""
    # A crash here is close(), not a power cut: the state files are really
    # written, renamed and read back on restart, but flushing them to the
    # disk would only cost time (test_statefile covers durability).
    monkeypatch.setattr(os, "fsync", lambda fd: None)
    for seed in seeds:
        directory = state_dir / f"seed{seed}"
        directory.mkdir()
        simulation = Simulation(seed, directory)
        simulation.run()
        assert simulation.leaders, f"seed {seed} never elected a leader"
        shutil.rmtree(directory)


def test_a_node_whose_term_ran_ahead_rejoins_the_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node back with a term above the leader's, its campaign unheard, soon follows a leader."""
    monkeypatch.setattr(os, "fsync", lambda fd: None)
    simulation = Simulation(0, tmp_path)
    simulation.replay = "python -m pytest tests/test_random_schedules_tx.py -q -k ran_ahead"
    simulation.priorities = dict.fromkeys(simulation.ids, 1)
    simulation.network.loss = 0.0
    simulation.record("every priority 1, no loss")
    for node_id in simulation.ids:
        simulation.start(node_id)
    simulation.advance(3.0, "electing")
    agreed = simulation.agreed_leader()
    assert agreed is not None, simulation.report("electing")
    leader, term = agreed
    straggler = next(i for i in simulation.ids if i != leader)
    simulation.crash(straggler)
    # As if it had won a pre-vote and campaigned in the next term, and then
    # crashed before anybody heard its vote request.
    StateFile(str(tmp_path / straggler)).save(PersistentState(term + 1, straggler))
    simulation.start(straggler)
    simulation.record(f"{straggler} restarts in term {term + 1}")
    simulation.advance(SETTLE, "rejoining")
    if simulation.agreed_leader() is None:
        simulation.violations.append(
            f"(e) {straggler}, back in term {term + 1}, follows no leader {SETTLE}s later"
        )
    simulation.check("rejoining")
    assert simulation.agreed_leader() is not None
    for node in simulation.nodes.values():
        node.close()


def test_the_simulation_catches_a_leader_that_ignores_its_lease(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With is_leader() blind to the lease, the schedules soon catch a leader without one."""
    monkeypatch.setattr(os, "fsync", lambda fd: None)
    monkeypatch.setattr(graft_tx.Node, "is_leader", lambda self: self.state is State.LEADER)
    for seed in range(200):
        directory = tmp_path / f"seed{seed}"
        directory.mkdir()
        try:
            Simulation(seed, directory).run()
        except pytest.fail.Exception as e:
            report = str(e)
            break
    else:
        pytest.fail("200 schedules with a broken is_leader() broke no invariant")
    assert (
        "(c) two nodes hold a lease at once" in report
        or "says is_leader() although its lease" in report
    ), report
