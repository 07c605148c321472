"""TCP partitions between real `twistd graft` nodes, each in a network namespace of its own.

Three nodes over TCP, node i in namespace i behind one switch (netns.py).
The harness stays in the root namespace and reads the nodes' status pages
over Unix sockets; the nodes use only their namespaces' own addresses.
Without root or `ip netns`, every test here is skipped, saying why.

Faults, each held for seconds and then healed, rounds(full=10, short=2)
times per test, on whichever node leads at the time (ten rounds give every
node a turn and the heal paths their variety; two keep CI under two minutes):

- the leader's link down: it is cut off both ways;
- a pairwise cut between the leader and one follower (blackhole routes on
  both sides), the third node still reaching both;
- a one-way cut between the leader and both followers, in each direction:
  the leader cannot send to them, or they cannot send to it;
- the leader's link down for LONG_CUT (15 s), and a follower crashed one
  second after the heal (rounds(full=2, short=1): each round is long).

What a one-way cut does to TCP: a blackhole on A for B's address drops A's
packets to B, ACKs included. On A's own connection to B nothing A sends
arrives. On B's connection to A, A receives what B sends but cannot
acknowledge it, so B's kernel keeps retransmitting the first unacknowledged
segment and sends nothing new after one retransmission timeout (~0.2 s),
and no new connection completes either way (the SYN or the SYN-ACK is
lost). After that brief leak the cut is, for TcpRpc, a two-way cut: the
leader hears no acknowledgement, so its lease lapses and it steps down on
its own; the two followers still reach each other, so they elect one of
themselves. That is what is asserted, exactly as for a link down; the
transient differs (in "cannot-send" the old leader may still hear the new
leader's first requests and heartbeats, in "cannot-hear" the followers
still get the old leader's heartbeats for ~0.2 s).

Every round checks, with the library's default timings (election timeout
0.5-1.0 s, heartbeat 0.1 s, lease 0.5 s less 5%):

- the old leader, once cut off from the majority, answers /leader 200 to no
  request sent more than a lease (0.475 s) after the cut, and its event log
  shows Leader -> Follower within a minimum election timeout plus a
  heartbeat (plus SLACK for scheduling) of the cut;
- the majority agrees on a leader among itself within ELECT_WITHIN, keeps
  it while the cut holds, and the cut-off node never campaigns (pre-vote);
- after the heal every node names that same leader, in the same term, and
  has had a heartbeat from it since the heal (a node back from a partition
  cannot depose a healthy leader); the next round starts only once no TCP
  connection holds unacknowledged data (`ss`), so that rounds are independent.

How a heal reaches TCP: a connection whose packets were lost on the wire
(a link down, or a blackhole on the receiving side) retransmits on the
kernel's exponential backoff, so without help the first message after the
heal would arrive at the next retransmission: ~10 s after a cut of 15 s,
up to TCP_RTO_MAX (120 s) after a long one, with every stale message queued
meanwhile. TcpRpc sets TCP_USER_TIMEOUT (stall_timeout, 1 s), so such a
connection is dropped and redialled instead. The long-cut round asserts
what the README promises: a peer reachable again is heard within
retry_max_delay (HEARD_WITHIN), and the two nodes left when a third crashes
just after the heal elect a leader within ELECT_WITHIN. (It failed, with
12 s without a leader, before stall_timeout existed.)

Through each whole test a poller (L{Watch}) reads every node's /leader and
/status over and over; at the end (see L{check_watch}): no two nodes' leases
overlap and no /leader 200 falls inside another node's lease, one leader per
term, and no node's term goes back. The event logs are checked for the same
(one leader per term, terms never back).
"""

from __future__ import annotations

import bisect
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from graft_tx.lease import DRIFT
from graft_tx.local import LocalCluster, describe

from . import netns
from .conftest import ChaosReport, rounds
from .netns import NetnsError, Network

# The library's defaults, which the cluster runs with.
MIN, MAX, HEARTBEAT = 0.5, 1.0, 0.1
# How long a leader's lease can outlive the last heartbeat a quorum acknowledged.
LEASE = MIN * (1 - DRIFT)
# For a process that the busy machine schedules late.
SLACK = 0.3
# The lease lapses within LEASE of the cut; the leader notices at its next heartbeat.
STEP_DOWN_WITHIN = MIN + HEARTBEAT + SLACK
# A pre-vote and a vote after a follower's timeout: ~0.5-1.5 s, more after a split vote.
ELECT_WITHIN = 4 * MAX + 2.0
# After a heal TCP retransmits on its own backoff, seconds after a cut of seconds.
HEAL_WITHIN = 30.0
START_WITHIN = 30.0
# How long a cut is held once the majority has a leader: the cut-off node's
# election timer fires at least once meanwhile, and nothing may change.
HOLD = 2 * MAX
# A cut long enough for TCP's retransmission backoff to reach ~10 s.
LONG_CUT = 15.0
# TcpRpc's default: a peer that is reachable again is reconnected within this.
RETRY_MAX_DELAY = 2.0
# After a heal, the cut-off node hears the leader within a reconnect and a heartbeat.
HEARD_WITHIN = RETRY_MAX_DELAY + HEARTBEAT + SLACK


# -- the poller -------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One request to a node: sent and answered on the harness's monotonic clock."""

    node: str
    sent: float
    answered: float
    code: int | None = None  # of /leader
    status: dict[str, Any] | None = None  # /status, None if it did not answer

    @property
    def leads(self) -> bool:
        """The node said it leads with a lease: /leader 200, or is_leader in /status."""
        return self.code == 200 or bool(self.status and self.status.get("is_leader"))


class Watch:
    """A thread that reads every node's /leader then /status, node after node, all test long.

    Nodes run on the same machine, so their monotonic clock (on which leases
    run) is the harness's.
    """

    def __init__(self, cluster: LocalCluster, pause: float = 0.01) -> None:
        self._cluster = cluster
        self._pause = pause
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="leader-watch", daemon=True)
        self.started = time.monotonic()

    def start(self) -> Watch:
        self.started = time.monotonic()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            for node in self._cluster.nodes:
                sent = time.monotonic()
                code = node.leader_page(timeout=0.5)
                self.samples.append(Sample(node.name, sent, time.monotonic(), code=code))
                sent = time.monotonic()
                status = node.status(timeout=0.5)
                answered = time.monotonic()
                self.samples.append(
                    Sample(node.name, sent, answered, status=None if "error" in status else status)
                )
            self._stop.wait(self._pause)

    def between(self, start: float, end: float) -> list[Sample]:
        return [s for s in list(self.samples) if start <= s.sent and s.answered <= end]


@dataclass(frozen=True, order=True)
class Span:
    """A stretch of time during which C{node} surely held its lease."""

    start: float
    end: float
    node: str
    term: int


def lease_spans(samples: list[Sample]) -> list[Span]:
    """From each /status that says is_leader with lease_remaining r: the node
    answered at some instant t in [sent, answered] and its lease then ran
    until t + r, so it surely held it over [answered, sent + r]."""
    spans = []
    for sample in samples:
        status = sample.status
        if not status or not status.get("is_leader") or status.get("lease_remaining") is None:
            continue
        end = sample.sent + float(status["lease_remaining"])
        if end > sample.answered:
            spans.append(Span(sample.answered, end, sample.node, int(status["term"])))
    return sorted(spans)


def check_watch(watch: Watch, report: ChaosReport) -> None:
    """Judge everything the poller saw.

    Two leaders overlap, precisely, when (a) the sure lease spans (see
    L{lease_spans}) of two nodes intersect, or (b) a node answered /leader
    200 to a request sent and answered entirely within another node's sure
    lease span: both then said, at one same instant, that they lead. A
    request only dates its answer to within [sent, answered], so two 200s
    close in time prove nothing by themselves; these two cases do. Also:
    one node in state Leader per term, and no node's term going back.
    """
    samples = sorted(watch.samples, key=lambda s: s.sent)
    t0 = watch.started
    spans = lease_spans(samples)
    seen: set[tuple[str, int, str, int]] = set()
    for i, a in enumerate(spans):
        for b in spans[i + 1 :]:
            if b.start >= a.end:
                break
            key = (a.node, a.term, b.node, b.term)
            if b.node != a.node and key not in seen:
                seen.add(key)
                report.violation(
                    f"two leases at once: {a.node} (term {a.term}) surely held its lease "
                    f"{a.start - t0:.3f}-{a.end - t0:.3f} s and {b.node} (term {b.term}) "
                    f"{b.start - t0:.3f}-{b.end - t0:.3f} s into the test"
                )
    starts = [span.start for span in spans]
    for sample in samples:
        if sample.code != 200:
            continue
        j = bisect.bisect_right(starts, sample.sent) - 1
        while j >= 0 and spans[j].start > sample.sent - 2 * MIN:
            other = spans[j]
            j -= 1
            if other.node == sample.node or sample.answered > other.end:
                continue
            key = (other.node, other.term, sample.node, -1)
            if key not in seen:
                seen.add(key)
                report.violation(
                    f"{sample.node} answered /leader 200 "
                    f"({sample.sent - t0:.3f}-{sample.answered - t0:.3f} s) while {other.node} "
                    f"surely held its lease of term {other.term} "
                    f"({other.start - t0:.3f}-{other.end - t0:.3f} s)"
                )
    leaders: dict[int, set[str]] = {}
    last: dict[str, tuple[int, float]] = {}
    for sample in samples:
        status = sample.status
        if not status:
            continue
        term = int(status["term"])
        if status.get("state") == "Leader":
            leaders.setdefault(term, set()).add(sample.node)
        before = last.get(sample.node)
        if before is not None and term < before[0]:
            report.violation(
                f"{sample.node}'s /status term went back from {before[0]} "
                f"({before[1] - t0:.3f} s) to {term} ({sample.sent - t0:.3f} s)"
            )
        last[sample.node] = (term, sample.sent)
    for term, names in sorted(leaders.items()):
        if len(names) > 1:
            report.violation(f"/status: {sorted(names)} all said Leader in term {term}")
    report.leaderless(longest_leaderless(samples))


def longest_leaderless(samples: list[Sample]) -> float:
    """The longest time no node surely led, from the first time one did: the
    gaps between the sure lease spans (L{lease_spans}) and the answers of
    /leader 200 (each at its answer)."""
    stretches = [(span.start, span.end) for span in lease_spans(samples)]
    stretches += [(s.answered, s.answered) for s in samples if s.code == 200]
    stretches.sort()
    longest = 0.0
    covered: float | None = None
    for start, end in stretches:
        if covered is not None:
            longest = max(longest, start - covered)
        covered = end if covered is None else max(covered, end)
    return longest


# -- the event logs ----------------------------------------------------------


def state_changes(cluster: LocalCluster, name: str, since: float = 0.0) -> list[dict[str, Any]]:
    """The node's state_changed events logged at or after C{since} (wall clock)."""
    return [
        event
        for event in cluster.node(name).events()
        if event.get("event") == "state_changed" and float(event.get("log_time", 0)) >= since
    ]


def check_history(cluster: LocalCluster, report: ChaosReport) -> int:
    """One leader per term and no term going back, from the event logs; how
    many times a node became leader."""
    winners: dict[int, set[str]] = {}
    became = 0
    for name, events in cluster.events().items():
        last = 0
        for event in events:
            if event.get("event") not in ("state_changed", "leader_known"):
                continue
            term = int(event["term"])
            if term < last:
                report.violation(f"{name}'s event log: term went back from {last} to {term}")
            last = max(last, term)
            if event.get("event") == "state_changed" and event.get("state") == "Leader":
                winners.setdefault(term, set()).add(name)
                became += 1
    for term, names in sorted(winners.items()):
        if len(names) > 1:
            report.violation(f"event logs: term {term} had {len(names)} leaders: {sorted(names)}")
    return became


# -- the cluster -------------------------------------------------------------


def leadership(
    cluster: LocalCluster, names: list[str], heard_since: float | None = None
) -> tuple[str, int] | None:
    """(leader, term) if all of C{names} name one leader among them, which
    holds its lease and is the only one of them in state Leader; with
    C{heard_since} (wall clock), only once each of the others has also had a
    heartbeat from it since then."""
    statuses = {name: cluster.node(name).status(timeout=1.0) for name in names}
    if any("error" in status for status in statuses.values()):
        return None
    named = {status.get("leader") for status in statuses.values()}
    leading = [name for name, status in statuses.items() if status.get("state") == "Leader"]
    if len(named) != 1 or len(leading) != 1 or leading[0] not in named:
        return None
    leader = leading[0]
    if not statuses[leader].get("is_leader"):
        return None
    if heard_since is not None and any(
        (status.get("last_heartbeat") or 0) < heard_since
        for name, status in statuses.items()
        if name != leader
    ):
        return None
    return leader, int(statuses[leader]["term"])


def wait_leadership(
    cluster: LocalCluster,
    groups: list[list[str]],
    within: float,
    heard_since: float | None = None,
) -> tuple[str, int, float]:
    """Wait until one of C{groups} agrees on a leader (L{leadership}):
    (leader, term, seconds waited).

    @raise TimeoutError: none did within C{within} seconds.
    """
    start = time.monotonic()
    while True:
        for names in groups:
            found = leadership(cluster, names, heard_since)
            if found is not None:
                return found[0], found[1], time.monotonic() - start
        if time.monotonic() - start > within:
            raise TimeoutError(
                f"no leader agreed by {' or '.join('+'.join(g) for g in groups)} "
                f"within {within} s: {describe(cluster.statuses())}"
            )
        time.sleep(0.05)


def seconds(value: float | None) -> str:
    return "?" if value is None else f"{value:.3f} s"


@dataclass
class Cut:
    kind: str
    started: float  # wall clock (event logs), before the first command
    ended: float  # wall clock, after the last
    ended_mono: float  # monotonic (the poller), after the last


@dataclass
class Partitions:
    """One test's cluster, network, poller and report, and its rounds."""

    cluster: LocalCluster
    network: Network
    report: ChaosReport
    watch: Watch
    rng: random.Random = field(default_factory=random.Random)
    log: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [node.name for node in self.cluster.nodes]

    def addresses(self) -> str:
        pairs = zip(self.names, self.network.addresses, strict=True)
        return ", ".join(f"{name}={address}" for name, address in pairs)

    def index(self, name: str) -> int:
        return self.names.index(name)

    def note(self, text: str) -> None:
        self.log.append(text)
        print(text)

    def settled(self) -> tuple[str, int]:
        """Wait for every node to agree on a leader and for TCP to have
        delivered everything, so that no round inherits the last one's
        retransmission backoff; a short random wait so that cuts fall at any
        phase of the heartbeats. (leader, term)."""
        wait_leadership(self.cluster, [self.names], HEAL_WITHIN)
        self.network.wait_drained(HEAL_WITHIN)
        time.sleep(self.rng.uniform(0, 2 * HEARTBEAT))
        leader, term, _ = wait_leadership(self.cluster, [self.names], HEAL_WITHIN)
        return leader, term

    def agreed(self, names: list[str]) -> tuple[str, int] | None:
        """Whom C{names} agree on now (asking again for a while if a node is
        slow to answer, or they disagree): (leader, term), or None."""
        try:
            leader, term, _ = wait_leadership(self.cluster, [names], ELECT_WITHIN)
        except TimeoutError:
            return None
        return leader, term

    def cut(self, kind: str, apply: Callable[[], None]) -> Cut:
        started = time.time()
        apply()
        self.report.fault(kind)
        return Cut(kind, started, time.time(), time.monotonic())

    def heal(self) -> tuple[str, int, float, float | None]:
        """Heal every fault and wait until all agree on a leader that every
        other node has heard since the heal, and for TCP to drain; then all
        must still agree. (leader, term, seconds to agree, seconds to drain)."""
        healed_at = time.time()
        self.network.heal()
        try:
            leader, term, took = wait_leadership(
                self.cluster, [self.names], HEAL_WITHIN, heard_since=healed_at
            )
            drained = self.network.wait_drained(HEAL_WITHIN)
            if drained is not None:
                drained += took
        except TimeoutError as e:
            self.report.violation(f"after the heal: {e}")
            raise
        after = self.agreed(self.names)
        if after != (leader, term):
            self.report.violation(
                f"after the heal all agreed on {leader} in term {term}, then, once TCP had "
                f"delivered everything, no longer: {describe(self.cluster.statuses())}"
            )
        return leader, term, took, drained

    # -- checks ---------------------------------------------------------

    def check_stepped_down(self, old: str, cut: Cut) -> float | None:
        """The old leader's Leader -> Follower in its event log, within
        STEP_DOWN_WITHIN of the cut; seconds after the cut, or None."""
        deadline = cut.ended + STEP_DOWN_WITHIN + 5.0
        while True:
            downs = [
                e
                for e in state_changes(self.cluster, old, cut.started)
                if e["previous"] == "Leader"
            ]
            if downs or time.time() > deadline:
                break
            time.sleep(0.05)
        if not downs:
            self.report.violation(
                f"{cut.kind}: {old}, cut off from the majority, never stepped down "
                f"(its state: {describe({old: self.cluster.node(old).status()})})"
            )
            return None
        after = float(downs[0]["log_time"]) - cut.ended
        if after > STEP_DOWN_WITHIN:
            self.report.violation(
                f"{cut.kind}: {old} stepped down {after:.3f} s after the cut "
                f"(bound {STEP_DOWN_WITHIN:.3f} s; event {downs[0]})"
            )
        return after

    def check_no_lease_after(self, old: str, cut: Cut, until: float) -> None:
        """No answer of the cut-off old leader says it leads, for requests sent
        more than a lease after the cut (its lease rests on heartbeats sent
        before the cut)."""
        late = [
            s
            for s in self.watch.between(cut.ended_mono + LEASE, until)
            if s.node == old and s.leads
        ]
        if late:
            first = late[0]
            self.report.violation(
                f"{cut.kind}: {old} still said it leads {first.sent - cut.ended_mono:.3f} s after "
                f"the cut (lease {LEASE:.3f} s): /leader {first.code}, /status {first.status}"
            )

    def check_never_campaigned(self, name: str, cut: Cut) -> None:
        campaigns = [
            e for e in state_changes(self.cluster, name, cut.started) if e["state"] == "Candidate"
        ]
        if campaigns:
            self.report.violation(
                f"{cut.kind}: {name}, cut off, campaigned (pre-vote should stop it): "
                f"{len(campaigns)} times, first in term {campaigns[0]['term']} "
                f"{float(campaigns[0]['log_time']) - cut.ended:.3f} s after the cut"
            )

    # -- rounds ---------------------------------------------------------

    def leader_cut_off(self, kind: str, apply: Callable[[int, list[int]], None]) -> None:
        """A round where the leader loses the majority (link down or a one-way cut):
        it steps down, the majority elects one of its own, and keeps it after the heal."""
        old, old_term = self.settled()
        self.report.rounds += 1
        leader = self.index(old)
        followers = [i for i in range(len(self.names)) if i != leader]
        majority = [self.names[i] for i in followers]
        cut = self.cut(kind, lambda: apply(leader, followers))
        new: tuple[str, int] | None = None
        try:
            try:
                name, term, took = wait_leadership(self.cluster, [majority], ELECT_WITHIN)
                new = (name, term)
            except TimeoutError as e:
                self.report.violation(f"{kind}: {e}")
                took = float("nan")
            stepped = self.check_stepped_down(old, cut)
            time.sleep(HOLD)
            if new is not None:
                still = self.agreed(majority)
                if still != new:
                    self.report.violation(
                        f"{kind}: the majority's leader {new} changed to {still} while "
                        f"{old} was cut off: {describe(self.cluster.statuses())}"
                    )
            self.check_no_lease_after(old, cut, time.monotonic())
            learned = [
                f"{e['leader']} (term {e['term']})"
                for e in self.cluster.node(old).events()
                if e.get("event") == "leader_known"
                and e.get("leader") != old
                and float(e.get("log_time", 0)) >= cut.started
            ]
        finally:
            agreed = self.heal()
        self.check_never_campaigned(old, cut)
        if new is not None and agreed[:2] != new:
            self.report.violation(
                f"{kind}: after the heal the leader is {agreed[0]} in term {agreed[1]}, "
                f"not {new[0]} in term {new[1]} (elected while {old} was cut off)"
            )
        self.note(
            f"{kind}: {old} (term {old_term}) cut off; heard of "
            f"{', '.join(learned) or 'no leader'} while cut off; stepped down after "
            f"{seconds(stepped)}; {new} agreed after "
            f"{took:.3f} s; healed: {agreed[0]} term {agreed[1]} agreed after {agreed[2]:.3f} s, "
            f"TCP drained after {seconds(agreed[3])}"
        )

    def pairwise(self) -> None:
        """A round where the leader and one follower cannot reach each other and
        the third node reaches both: one leader, agreed by the third node and
        the leader's side, at every step."""
        old, old_term = self.settled()
        self.report.rounds += 1
        leader = self.index(old)
        cut_from, third = self.rng.sample([i for i in range(len(self.names)) if i != leader], 2)
        a, b, c = old, self.names[cut_from], self.names[third]

        def apply() -> None:
            self.network.block(leader, cut_from)
            self.network.block(cut_from, leader)

        cut = self.cut("pairwise-cut", apply)
        # Either the old leader keeps a quorum with the third node, or (if the
        # third stopped hearing it for a minimum election timeout) the cut-off
        # follower wins with the third's vote.
        groups = [[a, c], [b, c]]
        outcome: tuple[str, int] | None = None
        held: tuple[str, int, float] | None = None
        try:
            try:
                name, term, took = wait_leadership(self.cluster, groups, ELECT_WITHIN)
                outcome = (name, term)
            except TimeoutError as e:
                self.report.violation(f"pairwise-cut: {e}")
                took = float("nan")
            time.sleep(HOLD)
            try:
                held = wait_leadership(self.cluster, groups, ELECT_WITHIN)
            except TimeoutError as e:
                self.report.violation(f"pairwise-cut, after {HOLD} s: {e}")
            if outcome is not None and held is not None and held[:2] != outcome:
                self.note(f"pairwise-cut: the leader changed from {outcome} to {held[:2]}")
        finally:
            agreed = self.heal()
        kept = outcome == (old, old_term) and held is not None and held[:2] == outcome
        if held is not None and agreed[:2] != held[:2]:
            self.report.violation(
                f"pairwise-cut: after the heal the leader is {agreed[0]} in term {agreed[1]}, "
                f"not {held[0]} in term {held[1]} as at the end of the cut"
            )
        if kept:
            # The third node acknowledged the leader all along, so it granted
            # the cut-off follower no pre-vote: that one never raised its term.
            self.check_never_campaigned(b, cut)
        self.note(
            f"pairwise-cut: {a} (leader, term {old_term}) x {b}, {c} reaching both: "
            f"{'kept' if kept else 'now'} {outcome} after {took:.3f} s; healed: {agreed[0]} "
            f"term {agreed[1]} agreed after {agreed[2]:.3f} s, "
            f"TCP drained after {seconds(agreed[3])}"
        )

    def long_cut_then_failure(self) -> None:
        """A round where the leader's link is down for LONG_CUT, and one second
        after the heal the other follower crashes: the cut-off node hears the
        new leader within HEARD_WITHIN of the heal, and it and the new leader,
        two of three, have a leader within ELECT_WITHIN of the crash."""
        old, old_term = self.settled()
        self.report.rounds += 1
        leader = self.index(old)
        majority = [name for name in self.names if name != old]
        cut = self.cut("link-down", lambda: self.network.link_down(leader))
        try:
            new, term, took = wait_leadership(self.cluster, [majority], ELECT_WITHIN)
            time.sleep(max(0.0, cut.ended + LONG_CUT - time.time()))
        finally:
            healed_at = time.time()
            self.network.heal()
        third = next(name for name in majority if name != new)
        time.sleep(1.0)
        status = self.cluster.node(old).status()
        heard_before_crash = (status.get("last_heartbeat") or 0) >= healed_at
        stalled = self.network.unsent()
        self.cluster.node(third).kill()
        self.report.fault("SIGKILL follower")
        # From then on a lease rests on the acknowledgements of the pair alone.
        time.sleep(LEASE + HEARTBEAT)
        pair = [old, new]
        try:
            elected = wait_leadership(self.cluster, [pair], HEAL_WITHIN + LONG_CUT)
            elected = (*elected[:2], elected[2] + LEASE + HEARTBEAT)
        except TimeoutError as e:
            self.report.violation(f"long cut, then {third} crashed: {e}")
            elected = None
        if elected is not None and elected[2] > ELECT_WITHIN:
            self.report.violation(
                f"{old} was cut off for {LONG_CUT:.0f} s; 1 s after the heal {third} crashed; "
                f"{old} and {new}, two of three on a healed network, had no leader for "
                f"{elected[2]:.1f} s (bound {ELECT_WITHIN:.1f} s): "
                f"{describe_events(self.cluster, pair, healed_at)}; TCP connections with "
                f"unacknowledged data at the crash: {stalled} "
                f"({self.addresses()})"
            )
        heard = first_heartbeat_after(self.cluster, old, healed_at)
        if heard is None or heard > HEARD_WITHIN:
            self.report.violation(
                f"{old}, cut off for {LONG_CUT:.0f} s, first heard a leader "
                f"{seconds(heard)} after the heal (bound {HEARD_WITHIN:.1f} s)"
            )
        self.cluster.node(third).start()
        agreed = self.agreed(self.names)
        self.note(
            f"long link-down: {old} (term {old_term}) cut off {LONG_CUT:.0f} s; {new} term {term} "
            f"agreed after {took:.3f} s; healed; {old} heard a leader "
            f"{'before' if heard_before_crash else 'not before'} {third} crashed 1 s later; "
            f"{old}+{new} had a leader {seconds(elected[2] if elected else None)} after the "
            f"crash; {third} restarted, all agree on {agreed}"
        )


def first_heartbeat_after(cluster: LocalCluster, name: str, since: float) -> float | None:
    """Seconds from C{since} (wall clock) until C{name} first learned of a
    leader or got a heartbeat, by its event log and /status; None if never."""
    times = [
        float(e["log_time"])
        for e in cluster.node(name).events()
        if e.get("event") == "leader_known" and float(e.get("log_time", 0)) >= since
    ]
    last = cluster.node(name).status().get("last_heartbeat")
    if last is not None and last >= since:
        times.append(float(last))
    return min(times) - since if times else None


def describe_events(cluster: LocalCluster, names: list[str], since: float) -> str:
    """The nodes' state changes since C{since}, as seconds after it."""
    return "; ".join(
        f"{name}: "
        + ", ".join(
            f"{e['previous']}->{e['state']} t{e['term']} +{float(e['log_time']) - since:.2f}s"
            for e in state_changes(cluster, name, since)
        )
        for name in names
    )


# -- fixtures ----------------------------------------------------------------


@pytest.fixture
def network() -> Iterator[Network]:
    """Namespaces for three nodes and a switch; always deleted afterwards."""
    reason = netns.unavailable()
    if reason is not None:
        pytest.skip(reason)
    try:
        netns.sweep_leftovers()
    except NetnsError as e:
        pytest.skip(f"ip netns does not work here: {e}")
    net = Network(3)
    try:
        try:
            net.create()
        except NetnsError as e:
            pytest.skip(f"cannot build network namespaces here: {e}")
        yield net
    finally:
        net.destroy()


@pytest.fixture
def partitions(
    network: Network, make_cluster: Callable[..., LocalCluster], chaos_report: ChaosReport
) -> Iterator[Partitions]:
    """Three nodes, node i in namespace i, with an agreed leader, watched all along.

    The namespaces come first, so they go last: the nodes are stopped before.
    """
    cluster = make_cluster(
        transport="tcp",
        hosts=network.addresses,
        prefixes=[network.prefix(i) for i in range(network.size)],
    )
    cluster.start()
    cluster.wait_for_leader(START_WITHIN, expect_live=cluster.size)
    watch = Watch(cluster).start()
    seed = random.randrange(2**32)
    print(f"seed {seed}; network {network.tag}* on {network.addresses}")
    scene = Partitions(cluster, network, chaos_report, watch, random.Random(seed))
    try:
        yield scene
    finally:
        watch.stop()
        try:
            network.heal()
        finally:
            check_watch(watch, chaos_report)
            chaos_report.leader_changes = max(0, check_history(cluster, chaos_report) - 1)


# -- the tests ---------------------------------------------------------------


def test_isolated_leader(partitions: Partitions) -> None:
    """A leader whose link goes down steps down within a lease and a heartbeat, the
    other two elect one of themselves, and after the heal all follow that leader."""
    network = partitions.network
    for _ in range(rounds(full=10, short=2)):
        partitions.leader_cut_off("link-down", lambda leader, _: network.link_down(leader))


def test_pairwise_cut(partitions: Partitions) -> None:
    """The leader and one follower cut from each other, both reaching the third node:
    one leader at every moment, agreed by its side, and by all after the heal."""
    for _ in range(rounds(full=10, short=2)):
        partitions.pairwise()


@pytest.mark.parametrize("direction", ["leader-cannot-send", "leader-cannot-hear"])
def test_one_way_cut(partitions: Partitions, direction: str) -> None:
    """Cut one way between the leader and both followers (it cannot send to them, or
    they to it): over TCP the leader loses its acknowledgements either way, so it
    steps down within a lease and a heartbeat, the followers elect one of themselves,
    and after the heal all follow that leader."""
    network = partitions.network

    def apply(leader: int, followers: list[int]) -> None:
        for follower in followers:
            if direction == "leader-cannot-send":
                network.block(leader, follower)
            else:
                network.block(follower, leader)

    for _ in range(rounds(full=10, short=2)):
        partitions.leader_cut_off("one-way-cut", apply)


def test_long_cut_then_failure(partitions: Partitions) -> None:
    """After the leader's link was down for LONG_CUT, the healed node hears the leader
    within TcpRpc's reconnect bound, and if another node crashes just after the heal,
    the two left (a majority, on a healed network) elect a leader at once."""
    for _ in range(rounds(full=2, short=1)):
        partitions.long_cut_then_failure()
