"""What the chaos tests check, shared by their modules.

Each check reads what the nodes say about themselves (status pages, state
files, event logs) and records every invariant it finds broken as a
violation of the test's L{ChaosReport}, with the evidence printed to the
test's output. Waiting helpers poll with a deadline and never fail by
themselves: not reaching agreement in time is itself reported.
"""

from __future__ import annotations

import itertools
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.logger import formatEvent

from graft_tx.errors import LogCorruptError
from graft_tx.local import LocalCluster, LocalNode, describe
from graft_tx.statefile import PersistentState, decode_state

if TYPE_CHECKING:
    from .conftest import ChaosReport

# The machine is small and busy: wait generously, judge strictly.
AGREEMENT_TIMEOUT = 30.0
NODE_NAMESPACE = "graft_tx.node.Node"


def read_state(path: Path) -> PersistentState:
    """A state file's content, checked as a node would load it.

    @raise ValueError: the file is missing, empty or corrupt (the message says which).
    """
    try:
        content = path.read_bytes()
    except OSError as e:
        raise ValueError(f"cannot be read: {e}") from None
    try:
        state = decode_state(content, str(path))
    except LogCorruptError as e:
        raise ValueError(f"is corrupt: {e}") from None
    if state is None:
        raise ValueError("is empty: the node's term and vote are lost")
    return state


def show(name: str, event: dict[str, Any]) -> str:
    """One event log record, readably, for the evidence."""
    return f"  {name} @{float(event.get('log_time', 0)):.3f}: {formatEvent(event)}"


def evidence(title: str, lines: Iterable[str]) -> None:
    """Print evidence for a violation; pytest shows it with the failing test."""
    print(f"--- {title}")
    for line in lines:
        print(line)


@dataclass
class Answer:
    """One request to a node's /leader page: its code (None: no answer) and when."""

    node: str
    code: int | None
    sent: float  # time.monotonic()
    answered: float
    sent_wall: float  # time.time(), the clock of the nodes' log_time
    answered_wall: float


class Watch:
    """Everything each node said about its term and vote, to catch one going back.

    A node writes a new term or vote to its state file before it acts on it
    or shows it on its status page, so a term seen anywhere (status page or
    state file) is a floor for every later status and state file of that
    node, restarts included; and a vote seen in a term is the only vote that
    node may ever show in that term. And a term has one leader: two nodes
    that each said they were Leader of the same term, at any two moments,
    break RAFT's promise.
    """

    def __init__(self, report: ChaosReport) -> None:
        self.report = report
        self.floor: dict[str, tuple[int, str]] = {}  # name -> (term, where it was seen)
        self.votes: dict[str, tuple[int, str, str]] = {}  # name -> (term, vote, where)
        self.leaders: dict[int, set[str]] = defaultdict(set)  # term -> who said it led

    def _see_term(self, name: str, term: int, where: str) -> None:
        # After a violation the new value is followed, so that each one is
        # reported once, not at every poll that follows.
        floor, seen_at = self.floor.get(name, (0, "start"))
        if term < floor:
            self.report.violation(
                f"{name}'s term went back from {floor} ({seen_at}) to {term} ({where})"
            )
        if term != floor:
            self.floor[name] = (term, where)

    def _see(self, name: str, term: int, vote: str, where: str) -> None:
        self._see_term(name, term, where)
        known = self.votes.get(name)
        if known is not None and known[0] == term and vote != known[1]:
            self.report.violation(
                f"{name} showed vote {known[1]!r} in term {term} ({known[2]}), "
                f"then {vote!r} ({where})"
            )
            self.votes[name] = (term, vote, where)
        elif vote and (known is None or term > known[0]):
            self.votes[name] = (term, vote, where)

    def statuses(self, statuses: dict[str, dict[str, Any]], when: str) -> None:
        for name, status in statuses.items():
            if "error" in status:
                continue
            term = int(status["term"])
            self._see(name, term, str(status["vote"]), f"status, {when}")
            if status["state"] == "Leader" and name not in self.leaders[term]:
                self.leaders[term].add(name)
                if len(self.leaders[term]) > 1:
                    self.report.violation(
                        f"{sorted(self.leaders[term])} each said they led term {term} ({when})"
                    )

    def restart(self, node: LocalNode) -> tuple[float, int, str]:
        """Start C{node} again; what L{started} needs to check the term it loads."""
        floor, seen_at = self.floor.get(node.name, (0, "start"))
        restarted_at = time.time()
        node.start()
        return restarted_at, floor, seen_at

    def started(self, node: LocalNode, restart: tuple[float, int, str], when: str) -> None:
        """The term C{node} loaded from its file on restarting is no lower than
        any term seen from it before (its node_started event says which)."""
        restarted_at, floor, seen_at = restart
        loaded = [
            int(e["term"])
            for e in node.events()
            if e.get("event") == "node_started" and float(e["log_time"]) >= restarted_at
        ]
        if not loaded:
            self.report.violation(f"{when}: {node.name} logged no node_started")
        elif loaded[0] < floor:
            self.report.violation(
                f"{node.name} restarted in term {loaded[0]}, below the {floor} seen before "
                f"({seen_at}; {when})"
            )

    def state_files(self, nodes: Sequence[LocalNode], when: str) -> None:
        """Every node's state file is there, valid, and no older than what it showed."""
        for node in nodes:
            path = node.state_file
            try:
                state = read_state(path)
            except ValueError as e:
                self.report.violation(f"{when}: {node.name}'s state file {path.name} {e}")
                continue
            self._see(node.name, state.term, state.voted_for, f"state file, {when}")


def wait_for_agreement(
    cluster: LocalCluster,
    names: Sequence[str],
    timeout: float = AGREEMENT_TIMEOUT,
    exclude: Sequence[str] = (),
    watch: Watch | None = None,
) -> tuple[str | None, dict[str, dict[str, Any]]]:
    """Poll the status pages of C{names} until they agree on one leader.

    Agreement: every one of them answers; exactly one is in state Leader,
    with a valid lease, not in C{exclude}; its term is the highest among
    them; and all name it as leader. Only C{names} are asked, so a paused
    node does not slow the polling down. Returns (leader, statuses), or
    (None, the last statuses) at the deadline.
    """
    deadline = time.monotonic() + timeout
    statuses: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        statuses = {name: cluster.node(name).status() for name in names}
        if watch is not None:
            watch.statuses(statuses, "while waiting for a leader")
        if all("error" not in s for s in statuses.values()):
            leading = [name for name, s in statuses.items() if s["state"] == "Leader"]
            top = max(int(s["term"]) for s in statuses.values())
            if len(leading) == 1:
                leader = leading[0]
                own = statuses[leader]
                if (
                    leader not in exclude
                    and own["is_leader"]
                    and int(own["term"]) == top
                    and all(s["leader"] == leader for s in statuses.values())
                ):
                    return leader, statuses
        time.sleep(0.02)
    return None, statuses


def start_agreed(
    cluster: LocalCluster, report: ChaosReport, watch: Watch | None = None
) -> str | None:
    """Start the cluster and wait until all its nodes agree on a leader: that leader, or
    None after reporting the violation."""
    cluster.start()
    leader, last = wait_for_agreement(cluster, [node.name for node in cluster.nodes], watch=watch)
    if leader is None:
        no_agreement(report, cluster, "at start", last)
    return leader


def no_agreement(report: ChaosReport, cluster: LocalCluster, when: str, last: Any) -> None:
    """Report that the nodes did not agree on a leader in time, with the evidence."""
    report.violation(f"{when}: no agreed leader within {AGREEMENT_TIMEOUT:.0f}s ({describe(last)})")
    evidence(
        f"{when}: the last events of each node",
        (show(name, e) for name, events in cluster.events().items() for e in events[-12:]),
    )


def own_transitions(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The node's own record of each state change, logged as it happens."""
    return [
        e
        for e in events
        if e.get("log_namespace") == NODE_NAMESPACE and "to_state" in e and "term" in e
    ]


def state_changes(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The C{state_changed} events the hook handler logs a turn after each change."""
    return [e for e in events if e.get("event") == "state_changed"]


def leaderships(events: dict[str, list[dict[str, Any]]]) -> dict[int, dict[str, float]]:
    """term -> {node: when it became leader of that term}, from every event log."""
    leaders: dict[int, dict[str, float]] = defaultdict(dict)
    for name, log in events.items():
        won = [e for e in own_transitions(log) if e["to_state"] == "Leader"]
        won += [e for e in state_changes(log) if e.get("state") == "Leader"]
        for e in won:
            at = float(e["log_time"])
            leaders[int(e["term"])][name] = min(at, leaders[int(e["term"])].get(name, at))
    return dict(leaders)


def check_event_logs(
    report: ChaosReport, events: dict[str, list[dict[str, Any]]]
) -> dict[int, dict[str, float]]:
    """At most one leader per term, and no node's term going back, in the event logs.

    The logs of killed nodes count: a restarted node appends to its log, so
    its whole history is there. A node's own records of its state changes
    and leaders are logged as they happen, in order, each with its term at
    that moment; its state_changed events are delivered in order too. Each
    sequence must therefore never go back in term, across restarts as well.
    Returns L{leaderships}.
    """
    for name, log in events.items():
        own = [e for e in log if e.get("log_namespace") == NODE_NAMESPACE and "term" in e]
        for what, sequence in (("its own log", own), ("state_changed", state_changes(log))):
            for before, after in itertools.pairwise(sequence):
                if int(after["term"]) < int(before["term"]):
                    report.violation(
                        f"{name}'s term went back from {before['term']} to {after['term']} "
                        f"in {what} at {float(after['log_time']):.3f}"
                    )
                    evidence(f"{name}'s term went back", [show(name, before), show(name, after)])
        won: dict[int, int] = defaultdict(int)
        for e in own_transitions(log):
            if e["to_state"] == "Leader":
                won[int(e["term"])] += 1
        for term, times in won.items():
            if times > 1:
                report.violation(f"{name} became leader of term {term} {times} times")
    leaders = leaderships(events)
    for term, who in sorted(leaders.items()):
        if len(who) > 1:
            report.violation(f"two leaders in term {term}: {sorted(who)}")
            evidence(
                f"leaders of term {term}",
                (
                    show(name, e)
                    for name in who
                    for e in events[name]
                    if e.get("term") == term and (e.get("to_state") or e.get("state"))
                ),
            )
    return leaders


def first_event_after(
    node: LocalNode, after: float, timeout: float, match: Any
) -> dict[str, Any] | None:
    """Wait up to C{timeout} for an event in C{node}'s log, logged after C{after}, that matches."""
    deadline = time.monotonic() + timeout
    while True:
        for event in node.events():
            if float(event.get("log_time", 0)) >= after and match(event):
                return event
        if time.monotonic() > deadline:
            return None
        time.sleep(0.02)
