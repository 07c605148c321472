"""Pauses: SIGSTOP the leader past the election timeout, then SIGCONT it.

While the leader is stopped the others elect a new one; on waking, the old
leader must step down at once and must never answer /leader with 200 on
its lapsed lease. Throughout the test one poller thread per node asks its
/leader page in a tight loop (one thread per node, so that the stopped
node's unanswered requests never delay the questions to the others), and
the nodes' event logs say when each one became leader and when it stepped
down.

Two nodes "answer 200 at the same time" is judged twice:

- strictly, from the poller alone: a 200 from node A and a 200 from node B
  whose requests' [sent, answered] intervals overlap count as a violation,
  although each node may have answered at a different instant of its
  interval. It is sound here because leadership moves only when a leader
  is stopped for longer than an election timeout, so a correct cluster
  leaves a gap of half a second between the last 200 of one leader and the
  first of the next; and because the leader is stopped between two of its
  poller's requests (L{LeaderPoller.pause}), so no answer it decided
  before the pause reaches the poller after it;
- exactly, from the poller and the event logs together: a 200 from A,
  leading in term T, sent after B logged that it became leader of a later
  term T' is a violation, because B's election proves that A's lease had
  lapsed (a node that acknowledged A grants no vote until A's lease is
  over) and A answered 200 on it after it had.

Both transports run in the short mode too: over NATS, the messages sent to
the stopped node wait in the server, over TCP in the kernel, and each
transport delivers that backlog on waking in its own way.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from graft_tx.local import LocalCluster, LocalNode, agreement_time

from .checks import (
    Answer,
    Watch,
    check_event_logs,
    evidence,
    first_event_after,
    no_agreement,
    own_transitions,
    show,
    start_agreed,
    wait_for_agreement,
)
from .conftest import ChaosReport, rounds

# How long a request to /leader may wait: a stopped node answers nothing.
POLL_TIMEOUT = 0.25


class LeaderPoller:
    """One thread per node asking its /leader page again and again, recording each answer.

    C{retry}: seconds to wait after a request that got no answer (a killed
    node refuses at once, and a tight loop would take a core).
    """

    def __init__(self, nodes: list[LocalNode], retry: float = 0.0) -> None:
        self._nodes = nodes
        self._retry = retry
        self._stop = threading.Event()
        self._answers: dict[str, list[Answer]] = {node.name: [] for node in nodes}
        # Held by a node's thread for each request, from sending it to reading the answer.
        self._busy = {node.name: threading.Lock() for node in nodes}
        self._threads = [
            threading.Thread(target=self._poll, args=(node,), daemon=True) for node in nodes
        ]

    def _poll(self, node: LocalNode) -> None:
        answers = self._answers[node.name]
        busy = self._busy[node.name]
        while not self._stop.is_set():
            with busy:
                sent, sent_wall = time.monotonic(), time.time()
                code = node.leader_page(POLL_TIMEOUT)
                answered, answered_wall = time.monotonic(), time.time()
            answers.append(Answer(node.name, code, sent, answered, sent_wall, answered_wall))
            if code is None and self._retry:
                self._stop.wait(self._retry)

    def pause(self, node: LocalNode) -> float:
        """SIGSTOP C{node} between two of its requests, and wait until it is stopped.

        Otherwise a 200 that the node decided just before it stopped, while
        its lease held, could reach us only after it woke, and look like a
        200 on a lapsed lease. Once it is stopped, every answer it gives was
        decided after it woke. Returns when the signal was sent (wall clock).
        """
        with self._busy[node.name]:
            paused_at = time.time()
            node.pause()
            wait_stopped(node)
        return paused_at

    def __enter__(self) -> LeaderPoller:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)

    def answers(self) -> list[Answer]:
        return [a for answers in self._answers.values() for a in list(answers)]


def wait_stopped(node: LocalNode, timeout: float = 10.0) -> None:
    """Wait until the kernel shows C{node}'s process as stopped (state T)."""
    stat = Path(f"/proc/{node.pid}/stat")
    deadline = time.monotonic() + timeout
    # The state is the field after the command name, which is in parentheses.
    while stat.read_text().rsplit(")", 1)[1].split()[0] != "T":
        if time.monotonic() > deadline:
            pytest.fail(f"{node.name} did not stop within {timeout}s of SIGSTOP")
        time.sleep(0.001)


def overlapping_200s(answers: list[Answer]) -> list[tuple[Answer, Answer]]:
    """Pairs of 200s from different nodes whose requests' intervals overlap.

    Sorted by sending time, a request overlaps an earlier-sent one of node N
    exactly when it was sent before N's latest answer so far.
    """
    found: list[tuple[Answer, Answer]] = []
    latest: dict[str, Answer] = {}
    for answer in sorted((a for a in answers if a.code == 200), key=lambda a: a.sent):
        for node, earlier in latest.items():
            if node != answer.node and earlier.answered >= answer.sent:
                found.append((earlier, answer))
        if answer.node not in latest or answer.answered > latest[answer.node].answered:
            latest[answer.node] = answer
    return found


def report_overlapping_200s(report: ChaosReport, answers: list[Answer]) -> None:
    """A violation for each of the first five pairs L{overlapping_200s} finds."""
    for earlier, later in overlapping_200s(answers)[:5]:
        report.violation(
            f"{earlier.node} and {later.node} answered 200 to overlapping requests "
            f"({earlier.sent_wall:.3f}-{earlier.answered_wall:.3f} and "
            f"{later.sent_wall:.3f}-{later.answered_wall:.3f})"
        )


def stale_200s(
    answers: list[Answer], events: dict[str, list[dict[str, Any]]]
) -> list[tuple[Answer, int, str, int, float]]:
    """200s sent after another node logged becoming leader of a later term.

    Each 200 belongs to the term of its node's latest Leader transition
    logged before the answer (logged synchronously, before any request can
    see the new state). Returns (answer, its term, other node, later term,
    when that one became leader).
    """
    won = {
        name: sorted(
            (float(e["log_time"]), int(e["term"]))
            for e in own_transitions(log)
            if e["to_state"] == "Leader"
        )
        for name, log in events.items()
    }
    found = []
    for answer in (a for a in answers if a.code == 200):
        mine = [term for at, term in won[answer.node] if at <= answer.answered_wall]
        if not mine:
            found.append((answer, -1, answer.node, -1, 0.0))  # 200 from a node never leader
            continue
        term = mine[-1]
        for name, wins in won.items():
            later = [(at, t) for at, t in wins if t > term and at < answer.sent_wall]
            if name != answer.node and later:
                found.append((answer, term, name, later[0][1], later[0][0]))
                break
    return found


def show_answer(answer: Answer) -> str:
    return (
        f"{answer.node} answered {answer.code} to a request sent at {answer.sent_wall:.3f}, "
        f"answered at {answer.answered_wall:.3f}"
    )


@pytest.mark.parametrize("transport", ["tcp", "nats"])
def test_a_paused_leader_steps_down_on_waking(
    transport: str,
    cluster_over: Callable[..., LocalCluster],
    chaos_report: ChaosReport,
) -> None:
    """A leader woken after its successor's election steps down at once; no two leases overlap."""
    cluster = cluster_over(transport)
    names = [node.name for node in cluster.nodes]
    watch = Watch(chaos_report)
    # On waking, the heartbeat timer of the old leader is long overdue: the
    # first turn of its reactor runs it, finds that no quorum acknowledged
    # a heartbeat within a lease (Lease.lost), and steps down; if a message
    # of the new term is read first, that steps it down instead. The hook
    # handler logs state_changed one turn later. So a few milliseconds on
    # an idle machine. The bound, a minimum election timeout, is generous
    # for a busy one and still shorter than any path that waits for a
    # timer to run its course after waking (an election timeout, or a
    # lease's worth of missing acknowledgements).
    bound = cluster.election_timeout_min
    step_downs: list[float] = []
    # (old leader, new leader, paused at, resumed at, stepped down at), wall clock
    pauses: list[tuple[str, str, float, float, float]] = []
    with LeaderPoller(cluster.nodes) as poller:
        try:
            leader = start_agreed(cluster, chaos_report, watch)
            if leader is None:
                return
            for round_ in range(1, rounds(full=10, short=3) + 1):
                chaos_report.rounds = round_
                old = cluster.node(leader)
                survivors = [name for name in names if name != leader]
                paused_at = poller.pause(old)
                chaos_report.fault("SIGSTOP leader")
                new_leader, last = wait_for_agreement(
                    cluster, survivors, exclude=[leader], watch=watch
                )
                if new_leader is None:
                    old.resume()
                    no_agreement(chaos_report, cluster, f"round {round_}, {leader} paused", last)
                    return
                agreed = agreement_time(cluster.events(), survivors, paused_at, exclude=leader)
                chaos_report.leaderless((agreed[1] if agreed else time.time()) - paused_at)
                # Longer than an election timeout in any case, and long
                # enough for the pollers to see the new leader's 200s while
                # the old one still believes it leads.
                time.sleep(max(0.3, paused_at + cluster.election_timeout_max - time.time()))

                resumed_at = time.time()
                old.resume()
                stepped = first_event_after(
                    old,
                    paused_at,
                    30,
                    lambda e: (
                        e.get("event") == "state_changed"
                        and e.get("previous") == "Leader"
                        and e.get("state") == "Follower"
                    ),
                )
                if stepped is None:
                    chaos_report.violation(
                        f"round {round_}: {leader} never stepped down after waking"
                    )
                    evidence(
                        f"{leader}'s last events", (show(leader, e) for e in old.events()[-12:])
                    )
                    return
                delay = float(stepped["log_time"]) - resumed_at
                step_downs.append(delay)
                pauses.append(
                    (leader, new_leader, paused_at, resumed_at, float(stepped["log_time"]))
                )
                if delay < 0:
                    chaos_report.violation(
                        f"round {round_}: {leader} stepped down {-delay:.3f}s before it was woken: "
                        "it was not stopped"
                    )
                elif delay > bound:
                    chaos_report.violation(
                        f"round {round_}: {leader} stepped down {delay:.3f}s after waking "
                        f"(more than {bound}s)"
                    )
                    evidence(
                        f"{leader} on waking",
                        (
                            show(leader, e)
                            for e in old.events()
                            if float(e.get("log_time", 0)) >= resumed_at
                        ),
                    )

                leader, last = wait_for_agreement(cluster, names, watch=watch)
                if leader is None:
                    no_agreement(chaos_report, cluster, f"round {round_}, {old.name} woken", last)
                    return
        finally:
            events = cluster.events()
            leaders = check_event_logs(chaos_report, events)
            chaos_report.leader_changes = max(0, len(leaders) - 1)
    answers = poller.answers()

    report_overlapping_200s(chaos_report, answers)
    for answer, term, other, later_term, at in stale_200s(answers, events)[:5]:
        if term < 0:
            chaos_report.violation(f"{show_answer(answer)} but never became leader")
        else:
            chaos_report.violation(
                f"{show_answer(answer)} on its lease of term {term}, "
                f"after {other} became leader of term {later_term} at {at:.3f}"
            )
    for old_name, new_name, paused_at, resumed_at, stepped_at in pauses:
        woken = [
            a
            for a in answers
            if a.node == old_name and a.code == 200 and resumed_at <= a.answered_wall <= stepped_at
        ]
        for answer in woken[:3]:
            chaos_report.violation(f"{show_answer(answer)}: after waking, before stepping down")
        # The checks above had something to judge: the new leader answered
        # 200 while the old one was stopped, believing it led.
        assert any(
            a.node == new_name and a.code == 200 and paused_at < a.sent_wall < resumed_at
            for a in answers
        ), f"{new_name} never answered 200 while {old_name} was stopped"

    print(
        f"{chaos_report.name}: step-down delays after SIGCONT (ms): "
        + ", ".join(f"{d * 1000:.0f}" for d in step_downs)
        + f"; {len(answers)} /leader requests, "
        f"{sum(1 for a in answers if a.code == 200)} answered 200"
    )
    chaos_report.note(
        f"step-down after SIGCONT: max {max(step_downs, default=0) * 1000:.0f} ms, "
        f"bound {bound * 1000:.0f} ms"
    )
