"""Unit tests of the election engine (graft_tx.node) on a task.Clock.

Every test plays the peers by calling the node's handle_* methods directly
and watches what the node sends through a RecordingRpc, what its handler
hears (after the clock turns), what its state file holds and which delayed
calls it leaves on the clock. No real time passes.

Most tests use a fixed election timeout of exactly 1s and a heartbeat of
0.25s, so that "was the timer reset?" is a matter of exact, binary-exact
clock arithmetic: a message delivered 0.5s into a timeout either pushes the
campaign to 1.5s or leaves it at 1.0s.
"""

from __future__ import annotations

import gc
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import LoggedErrors
from fakes import Lowest, PolicyHandler, RecordingHandler, RecordingRpc, term_and_vote
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from zope.interface import implementer
from zope.interface.verify import verifyObject

import graft_tx
from graft_tx import (
    ClusterInfo,
    HandlerError,
    Heartbeat,
    LogAccessError,
    Node,
    State,
    StateChange,
    Timing,
    VoteRequest,
    VoteResponse,
)
from graft_tx.interfaces import IElectionNode, IRpc, IStateHandler, IStateMachineHandler
from graft_tx.statefile import PersistentState, StateFile

# Graft's algorithm as Go graft runs it; graft-tx features are tested on their own.
pytestmark = pytest.mark.protocol("graft")

ME = "me"
# Election timeouts of exactly 1s with the Lowest rng; heartbeats every 0.25s.
FIXED = Timing(election_timeout_min=1.0, election_timeout_max=1.25, heartbeat_interval=0.25)
RANDOM = Timing(election_timeout_min=1.0, election_timeout_max=2.0, heartbeat_interval=0.25)

F, C, L, X = State.FOLLOWER, State.CANDIDATE, State.LEADER, State.CLOSED


# -- doubles of our own ------------------------------------------------------


@implementer(IRpc)
class FileCheckingRpc(RecordingRpc):
    """Records what the state file holds at the moment each vote request or response is sent."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.on_disk: list[PersistentState] = []

    def request_vote(self, req: VoteRequest) -> None:
        self.on_disk.append(term_and_vote(self.path))
        super().request_vote(req)

    def send_vote_response(self, candidate_id: str, resp: VoteResponse) -> None:
        self.on_disk.append(term_and_vote(self.path))
        super().send_vote_response(candidate_id, resp)


@implementer(IRpc)
class CountingRpc(RecordingRpc):
    """Counts calls to close()."""

    def __init__(self) -> None:
        super().__init__()
        self.close_calls = 0

    def close(self) -> None:
        self.close_calls += 1
        super().close()


@implementer(IRpc)
class SlowCloseRpc(RecordingRpc):
    """An rpc whose close() returns a Deferred the test fires (or fails)."""

    def __init__(self) -> None:
        super().__init__()
        self.closing: Deferred[None] = Deferred()
        self.close_calls = 0

    def close(self) -> Deferred[None]:  # type: ignore[override]
        self.close_calls += 1
        super().close()
        return self.closing


@implementer(IStateHandler)
class ExplodingHandler(RecordingHandler):
    """Records every call, and raises from the first C{explode} state_changed calls."""

    def __init__(self, explode: int = 1) -> None:
        super().__init__()
        self.explode = explode

    def state_changed(self, from_state: State, to_state: State) -> None:
        super().state_changed(from_state, to_state)
        if self.explode:
            self.explode -= 1
            raise RuntimeError("handler bug")


@implementer(IStateHandler)
class ClosingHandler(RecordingHandler):
    """Closes its node from the first state_changed call."""

    def __init__(self) -> None:
        super().__init__()
        self.node: Node | None = None
        self.close_results: list[object] = []

    def state_changed(self, from_state: State, to_state: State) -> None:
        super().state_changed(from_state, to_state)
        assert self.node is not None
        self.node.close().addCallback(self.close_results.append)


@implementer(IStateHandler)
class CallLog(RecordingHandler):
    """Records, for each handler call, whether it came from inside a handle_* call."""

    def __init__(self) -> None:
        super().__init__()
        self.inside = False
        self.calls_inside: list[str] = []

    def state_changed(self, from_state: State, to_state: State) -> None:
        if self.inside:
            self.calls_inside.append("state_changed")
        super().state_changed(from_state, to_state)

    def async_error(self, error: Exception) -> None:
        if self.inside:
            self.calls_inside.append("async_error")
        super().async_error(error)


@implementer(IStateMachineHandler)
@dataclass
class WitnessPolicy(PolicyHandler):
    """A vote policy that records what the node looks like when it is asked."""

    node: Node | None = None
    path: str = ""
    seen: list[tuple[int, str, State, PersistentState]] = field(default_factory=list)

    def grant_vote(self, position: bytes) -> bool:
        assert self.node is not None
        self.seen.append(
            (
                self.node.current_term,
                self.node.current_vote,
                self.node.state,
                term_and_vote(self.path),
            )
        )
        return super().grant_vote(position)


@implementer(IStateMachineHandler)
@dataclass
class BrokenPolicy(PolicyHandler):
    """A state machine handler whose methods raise or answer nonsense on demand."""

    raise_in_grant: bool = False
    raise_in_state: bool = False
    bad_grant: object = None
    bad_state: object = None

    def current_state(self) -> bytes:
        if self.raise_in_state:
            raise ValueError("no position")
        if self.bad_state is not None:
            return self.bad_state  # type: ignore[return-value]
        return super().current_state()

    def grant_vote(self, position: bytes) -> bool:
        self.asked.append(position)
        if self.raise_in_grant:
            raise ValueError("no opinion")
        if self.bad_grant is not None:
            return self.bad_grant  # type: ignore[return-value]
        return self.grant


# -- building nodes ----------------------------------------------------------


@dataclass
class Harness:
    """A node on a Clock with its rpc, handler and state file."""

    node: Node
    clock: Clock
    rpc: RecordingRpc
    handler: RecordingHandler | PolicyHandler
    path: str

    def saved(self) -> PersistentState:
        return term_and_vote(self.path)

    def changes(self) -> list[tuple[State, State]]:
        return [(c.from_state, c.to_state) for c in self.handler.changes]

    def flush(self) -> None:
        self.clock.advance(0)


def start(
    tmp_path: Path,
    *,
    size: int = 3,
    handler: RecordingHandler | PolicyHandler | None = None,
    rpc: RecordingRpc | None = None,
    timing: Timing = FIXED,
    seed: int = 0,
    saved: PersistentState | None = None,
    path: str | None = None,
) -> Harness:
    """Start a node "me" as graft_tx.new does, optionally from a saved state."""
    path = path or str(tmp_path / "state")
    if saved is not None:
        StateFile(path).save(saved)
    clock = Clock()
    handler = handler if handler is not None else RecordingHandler()
    rpc = rpc if rpc is not None else RecordingRpc()
    node = graft_tx.new(
        ClusterInfo("test", size),
        handler,
        rpc,
        path,
        clock=clock,
        timing=timing,
        node_id=ME,
        rng=Lowest() if timing is FIXED else random.Random(seed),
    )
    return Harness(node, clock, rpc, handler, path)


def candidate(tmp_path: Path, term: int = 1, **kwargs: object) -> Harness:
    """A candidate of C{term}, just after its timeout (handler events delivered)."""
    h = start(tmp_path, saved=PersistentState(term - 1, ""), **kwargs)  # type: ignore[arg-type]
    h.clock.advance(1.0)
    h.flush()
    assert (h.node.state, h.node.current_term) == (C, term)
    return h


def leader(tmp_path: Path, term: int = 1, **kwargs: object) -> Harness:
    """A leader of C{term} in a cluster of 3 (one granted vote wins)."""
    h = candidate(tmp_path, term, **kwargs)
    h.node.handle_vote_response(VoteResponse(term, True, "a"))
    h.flush()
    assert h.node.state is L
    return h


def follower(tmp_path: Path, term: int = 5, leader_id: str = "old", **kwargs: object) -> Harness:
    """A follower of C{term} (no vote) that follows C{leader_id}, at time 0."""
    h = start(tmp_path, saved=PersistentState(term, ""), **kwargs)  # type: ignore[arg-type]
    h.node.handle_heartbeat(Heartbeat(term, leader_id))
    h.flush()
    assert (h.node.state, h.node.leader) == (F, leader_id)
    return h


def timer_outcome(h: Harness) -> str:
    """Watch the 1s after a message delivered 0.5s into a 1s election timeout.

    "kept": the old timer fired at its time (0.5s later); "reset": the
    campaign came a full timeout after the message; "none": no campaign at
    all (a leader).
    """
    before = len(h.rpc.vote_requests)
    # Step by the heartbeat interval: Clock.advance runs a repeating call
    # only once per advance, as a late reactor would.
    h.clock.pump([0.25] * 3)
    early = len(h.rpc.vote_requests) > before
    h.clock.advance(0.25)
    late = len(h.rpc.vote_requests) > before
    if early:
        return "kept"
    if late:
        return "reset"
    return "none"


def rmtree_state_dir(tmp_path: Path) -> tuple[str, Path]:
    directory = tmp_path / "dir"
    directory.mkdir()
    return str(directory / "state"), directory


# -- the doubles are what they claim ------------------------------------------


def test_doubles_provide_their_interfaces(tmp_path: Path) -> None:
    """Every double in this module, and the node itself, verifies against its interface."""
    for rpc in (FileCheckingRpc(str(tmp_path / "s")), CountingRpc(), SlowCloseRpc()):
        assert verifyObject(IRpc, rpc)
    for handler in (ExplodingHandler(), ClosingHandler(), CallLog()):
        assert verifyObject(IStateHandler, handler)
    for policy in (WitnessPolicy(), BrokenPolicy()):
        assert verifyObject(IStateMachineHandler, policy)
    h = start(tmp_path)
    assert verifyObject(IElectionNode, h.node)


# -- start -----------------------------------------------------------------


def test_new_node_is_follower_with_one_timer(tmp_path: Path) -> None:
    """A new node is a FOLLOWER of term 0, no vote, no leader, with only its election timer."""
    h = start(tmp_path)
    assert (h.node.state, h.node.current_term, h.node.current_vote, h.node.leader) == (
        F,
        0,
        "",
        "",
    )
    assert h.node.id == ME
    assert h.rpc.node is h.node
    [call] = h.clock.getDelayedCalls()
    assert call.getTime() == 1.0
    h.flush()
    assert h.changes() == []


def test_restarted_node_remembers_term_and_vote(tmp_path: Path) -> None:
    """A node started from a state file resumes its term and vote and will not vote twice."""
    h = start(tmp_path, saved=PersistentState(7, "c"))
    assert (h.node.current_term, h.node.current_vote) == (7, "c")
    h.node.handle_vote_request(VoteRequest(7, "d"))
    assert h.rpc.vote_responses == [("d", VoteResponse(7, False, ME))]
    h.node.handle_vote_request(VoteRequest(7, "c"))
    assert h.rpc.vote_responses[-1] == ("c", VoteResponse(7, True, ME))


# -- the matrix: each state, each message, lower / equal / higher term ----------


@dataclass(frozen=True)
class Case:
    state: State
    message: VoteRequest | VoteResponse | Heartbeat
    to_state: State
    term: int
    vote: str
    leader: str
    responses: tuple[tuple[str, VoteResponse], ...] = ()
    heartbeats: tuple[Heartbeat, ...] = ()
    changes: tuple[tuple[State, State], ...] = ()
    timer: str = "kept"
    errors: int = 0


def deny(term: int) -> tuple[tuple[str, VoteResponse], ...]:
    return (("c", VoteResponse(term, False, ME)),)


def grant(term: int) -> tuple[tuple[str, VoteResponse], ...]:
    return (("c", VoteResponse(term, True, ME)),)


# Every node starts at term 5: a follower of "old" with no vote, a candidate
# that voted for itself, or the leader. Peers: candidate "c", voter "a",
# leader "L". A vote response of a higher term is a DENIAL (graft ignored it).
MATRIX = {
    # follower
    "F-request-lower": Case(F, VoteRequest(4, "c"), F, 5, "", "old", deny(5)),
    "F-request-equal": Case(F, VoteRequest(5, "c"), F, 5, "c", "old", grant(5), timer="reset"),
    "F-request-higher": Case(F, VoteRequest(6, "c"), F, 6, "c", "", grant(6), timer="reset"),
    "F-response-lower": Case(F, VoteResponse(4, True, "a"), F, 5, "", "old"),
    "F-response-equal": Case(F, VoteResponse(5, True, "a"), F, 5, "", "old"),
    "F-response-higher": Case(F, VoteResponse(6, False, "a"), F, 6, "", ""),
    "F-heartbeat-lower": Case(F, Heartbeat(4, "L"), F, 5, "", "old"),
    "F-heartbeat-equal": Case(F, Heartbeat(5, "L"), F, 5, "", "L", timer="reset"),
    "F-heartbeat-higher": Case(F, Heartbeat(6, "L"), F, 6, "", "L", timer="reset"),
    # candidate
    "C-request-lower": Case(C, VoteRequest(4, "c"), C, 5, ME, "", deny(5)),
    "C-request-equal": Case(C, VoteRequest(5, "c"), C, 5, ME, "", deny(5)),
    "C-request-higher": Case(
        C, VoteRequest(6, "c"), F, 6, "c", "", grant(6), changes=((C, F),), timer="reset"
    ),
    "C-response-lower": Case(C, VoteResponse(4, True, "a"), C, 5, ME, ""),
    "C-response-equal": Case(
        C,
        VoteResponse(5, True, "a"),
        L,
        5,
        ME,
        ME,
        heartbeats=(Heartbeat(5, ME),),
        changes=((C, L),),
        timer="none",
    ),
    "C-response-higher": Case(
        C, VoteResponse(6, False, "a"), F, 6, "", "", changes=((C, F),), timer="reset"
    ),
    "C-heartbeat-lower": Case(C, Heartbeat(4, "L"), C, 5, ME, ""),
    "C-heartbeat-equal": Case(
        C, Heartbeat(5, "L"), F, 5, ME, "L", changes=((C, F),), timer="reset"
    ),
    "C-heartbeat-higher": Case(
        C, Heartbeat(6, "L"), F, 6, "", "L", changes=((C, F),), timer="reset"
    ),
    # leader
    "L-request-lower": Case(L, VoteRequest(4, "c"), L, 5, ME, ME, deny(5), timer="none"),
    "L-request-equal": Case(L, VoteRequest(5, "c"), L, 5, ME, ME, deny(5), timer="none"),
    "L-request-higher": Case(
        L, VoteRequest(6, "c"), F, 6, "c", "", grant(6), changes=((L, F),), timer="reset"
    ),
    "L-response-lower": Case(L, VoteResponse(4, True, "a"), L, 5, ME, ME, timer="none"),
    "L-response-equal": Case(L, VoteResponse(5, True, "b"), L, 5, ME, ME, timer="none"),
    "L-response-higher": Case(
        L, VoteResponse(6, False, "a"), F, 6, "", "", changes=((L, F),), timer="reset"
    ),
    "L-heartbeat-lower": Case(L, Heartbeat(4, "L"), L, 5, ME, ME, timer="none"),
    # Two leaders in one term cannot happen in a sound cluster: the leader
    # keeps its place and says so at error level.
    "L-heartbeat-equal": Case(L, Heartbeat(5, "L"), L, 5, ME, ME, timer="none"),
    "L-heartbeat-higher": Case(
        L, Heartbeat(6, "L"), F, 6, "", "L", changes=((L, F),), timer="reset"
    ),
}


def deliver(node: Node, message: VoteRequest | VoteResponse | Heartbeat) -> None:
    if isinstance(message, VoteRequest):
        node.handle_vote_request(message)
    elif isinstance(message, VoteResponse):
        node.handle_vote_response(message)
    else:
        node.handle_heartbeat(message)


@pytest.mark.parametrize("name", sorted(MATRIX))
def test_state_message_term_matrix(tmp_path: Path, logged_errors: LoggedErrors, name: str) -> None:
    """Each state reacts to each message at a lower, equal and higher term as RAFT says."""
    case = MATRIX[name]
    if case.state is F:
        h = follower(tmp_path, 5)
    elif case.state is C:
        h = candidate(tmp_path, 5)
    else:
        h = leader(tmp_path, 5)
    h.clock.advance(0.5)
    responses, beats, changes = (
        len(h.rpc.vote_responses),
        len(h.rpc.heartbeats),
        len(h.handler.changes),
    )

    deliver(h.node, case.message)

    node = h.node
    assert (node.state, node.current_term, node.current_vote, node.leader) == (
        case.to_state,
        case.term,
        case.vote,
        case.leader,
    )
    assert h.saved() == PersistentState(case.term, case.vote)
    assert tuple(h.rpc.vote_responses[responses:]) == case.responses
    assert tuple(h.rpc.heartbeats[beats:]) == case.heartbeats
    h.flush()
    assert tuple(h.changes()[changes:]) == case.changes
    assert h.handler.errors == []
    assert len(logged_errors) == case.errors
    if case.errors:
        assert "heartbeat from L in the same term" in logged_errors.messages()[0]

    beats = len(h.rpc.heartbeats)
    assert timer_outcome(h) == case.timer
    if case.timer == "none":
        assert node.state is L
        assert len(h.rpc.heartbeats) - beats == 4
    else:
        # The campaign the timer started is for the next term.
        assert h.rpc.vote_requests[-1] == VoteRequest(case.term + 1, ME)


# -- election timeout ----------------------------------------------------------


def test_timeout_makes_follower_candidate(tmp_path: Path) -> None:
    """On timeout a follower becomes CANDIDATE at term+1, votes for itself, persists, asks."""
    handler = PolicyHandler(position=b"log-index-42")
    h = start(tmp_path, handler=handler, saved=PersistentState(3, "x"))
    h.clock.advance(0.75)
    assert h.node.state is F and h.rpc.vote_requests == []
    h.clock.advance(0.25)
    node = h.node
    assert (node.state, node.current_term, node.current_vote, node.leader) == (C, 4, ME, "")
    assert h.saved() == PersistentState(4, ME)
    assert h.rpc.vote_requests == [VoteRequest(4, ME, b"log-index-42")]
    h.flush()
    assert h.changes() == [(F, C)]


def test_campaign_forgets_the_leader(tmp_path: Path) -> None:
    """A follower whose leader went silent campaigns with no leader known."""
    h = follower(tmp_path, 2, "L")
    h.clock.advance(1.0)
    assert (h.node.state, h.node.current_term, h.node.leader) == (C, 3, "")


def test_candidate_timeout_starts_new_round_without_event(tmp_path: Path) -> None:
    """A candidate timing out again campaigns at term+1 with no CANDIDATE->CANDIDATE event."""
    h = start(tmp_path, handler=PolicyHandler(position=b"p"))
    h.clock.advance(1.0)
    h.clock.advance(1.0)
    assert (h.node.state, h.node.current_term, h.node.current_vote) == (C, 2, ME)
    assert h.saved() == PersistentState(2, ME)
    assert h.rpc.vote_requests == [VoteRequest(1, ME, b"p"), VoteRequest(2, ME, b"p")]
    h.flush()
    assert h.changes() == [(F, C)]


@pytest.mark.parametrize("seed", range(8))
def test_election_timeouts_fall_in_min_max(tmp_path: Path, seed: int) -> None:
    """Both the follower's and the candidate's timeouts fall in [min, max)."""
    h = start(tmp_path, timing=RANDOM, seed=seed)
    [call] = h.clock.getDelayedCalls()
    assert 1.0 <= call.getTime() < 2.0
    h.clock.advance(1.0 - 2**-10)
    assert h.node.state is F and h.rpc.vote_requests == []
    h.clock.advance(1.0 + 2**-10)
    assert h.node.state is C and h.node.current_term == 1
    h.flush()
    [call] = h.clock.getDelayedCalls()
    campaigned_at = h.clock.seconds()
    assert 1.0 <= call.getTime() - campaigned_at < 2.0 + 2**-10


def test_election_timeouts_are_random(tmp_path: Path) -> None:
    """Different rng seeds give different election timeouts (they are not a constant)."""
    deadlines = set()
    for seed in range(8):
        h = start(tmp_path, timing=RANDOM, seed=seed, path=str(tmp_path / f"s{seed}"))
        [call] = h.clock.getDelayedCalls()
        deadlines.add(call.getTime())
    assert len(deadlines) > 4


def test_min_equal_max_timeout_is_exact(tmp_path: Path) -> None:
    """With min == max the campaign happens exactly at that timeout, not a tick before."""
    h = start(tmp_path)
    h.clock.advance(1.0 - 2**-20)
    assert h.node.state is F
    h.clock.advance(2**-20)
    assert h.node.state is C


# -- quorum ----------------------------------------------------------------


def test_duplicate_grants_from_one_voter_count_once(tmp_path: Path) -> None:
    """Grants from the same voter id count once: two from "a" do not make 3 of 5."""
    h = candidate(tmp_path, size=5)
    h.node.handle_vote_response(VoteResponse(1, True, "a"))
    h.node.handle_vote_response(VoteResponse(1, True, "a"))
    h.node.handle_vote_response(VoteResponse(1, True, "a"))
    assert h.node.state is C
    h.node.handle_vote_response(VoteResponse(1, True, "b"))
    assert h.node.state is L


def test_own_id_as_voter_does_not_add_a_vote(tmp_path: Path) -> None:
    """A grant naming this node itself as voter adds nothing to its own vote."""
    h = candidate(tmp_path, size=3)
    h.node.handle_vote_response(VoteResponse(1, True, ME))
    assert h.node.state is C


def test_grants_without_voter_each_count(tmp_path: Path) -> None:
    """Grants with an empty voter (Go graft's) each count, as graft counts them."""
    h = candidate(tmp_path, size=5)
    h.node.handle_vote_response(VoteResponse(1, True, ""))
    assert h.node.state is C
    h.node.handle_vote_response(VoteResponse(1, True, ""))
    assert (h.node.state, h.node.leader) == (L, ME)


def test_denials_and_stale_grants_do_not_count(tmp_path: Path) -> None:
    """Denials and grants of an earlier term are not votes."""
    h = candidate(tmp_path, term=2, size=3)
    h.node.handle_vote_response(VoteResponse(2, False, "a"))
    h.node.handle_vote_response(VoteResponse(1, True, "b"))
    h.node.handle_vote_response(VoteResponse(1, True, ""))
    assert (h.node.state, h.node.current_term) == (C, 2)


def test_votes_of_an_earlier_round_do_not_carry_over(tmp_path: Path) -> None:
    """A new round starts its count afresh: grants of the last round are forgotten."""
    h = candidate(tmp_path, size=7)
    h.node.handle_vote_response(VoteResponse(1, True, "a"))
    h.node.handle_vote_response(VoteResponse(1, True, ""))
    h.clock.advance(1.0)
    assert (h.node.state, h.node.current_term) == (C, 2)
    h.node.handle_vote_response(VoteResponse(2, True, "b"))
    h.node.handle_vote_response(VoteResponse(2, True, "c"))
    assert h.node.state is C
    h.node.handle_vote_response(VoteResponse(2, True, "d"))
    assert h.node.state is L


def test_size_one_cluster_leads_at_once(tmp_path: Path) -> None:
    """A cluster of one becomes LEADER as soon as it campaigns, and sends a heartbeat."""
    h = start(tmp_path, size=1)
    h.clock.advance(1.0)
    node = h.node
    assert (node.state, node.current_term, node.current_vote, node.leader) == (L, 1, ME, ME)
    assert h.saved() == PersistentState(1, ME)
    assert h.rpc.heartbeats == [Heartbeat(1, ME)]
    h.flush()
    assert h.changes() == [(F, C), (C, L)]


def test_leader_heartbeats_at_once_then_every_interval(tmp_path: Path) -> None:
    """The new leader sends a heartbeat at once, then one per heartbeat_interval."""
    h = candidate(tmp_path)
    h.node.handle_vote_response(VoteResponse(1, True, "a"))
    assert h.rpc.heartbeats == [Heartbeat(1, ME)]
    h.clock.advance(0.25 - 2**-10)
    assert len(h.rpc.heartbeats) == 1
    h.clock.advance(2**-10)
    assert h.rpc.heartbeats == [Heartbeat(1, ME)] * 2
    h.clock.pump([0.25] * 2)
    assert h.rpc.heartbeats == [Heartbeat(1, ME)] * 4
    h.clock.pump([0.25] * 40)
    assert len(h.rpc.heartbeats) == 44
    assert (h.node.state, h.node.current_term) == (L, 1)
    assert h.rpc.vote_requests == [VoteRequest(1, ME)]


# -- higher terms ----------------------------------------------------------


def test_higher_term_denial_steps_candidate_down(tmp_path: Path) -> None:
    """A vote DENIAL with a higher term makes a candidate adopt it and follow (graft ignored it)."""
    h = candidate(tmp_path)
    h.node.handle_vote_response(VoteResponse(9, False, "a"))
    node = h.node
    assert (node.state, node.current_term, node.current_vote, node.leader) == (F, 9, "", "")
    assert h.saved() == PersistentState(9, "")
    h.flush()
    assert h.changes() == [(F, C), (C, F)]


def test_higher_term_request_adopts_term_before_grant_vote(tmp_path: Path) -> None:
    """With a vote policy, a higher-term request is adopted (and persisted) before grant_vote."""
    path = str(tmp_path / "state")
    policy = WitnessPolicy(path=path)
    h = leader(tmp_path, handler=policy)
    policy.node = h.node
    h.node.handle_vote_request(VoteRequest(4, "c", b"pos"))
    assert policy.seen == [(4, "", F, PersistentState(4, ""))]
    assert policy.asked == [b"pos"]
    assert h.rpc.last_response() == VoteResponse(4, True, ME)
    assert (h.node.current_vote, h.saved()) == ("c", PersistentState(4, "c"))


def test_refused_higher_term_request_still_adopts_term(tmp_path: Path) -> None:
    """A refused higher-term request still makes a leader adopt the term and step down."""
    h = leader(tmp_path, handler=PolicyHandler(grant=False))
    h.node.handle_vote_request(VoteRequest(4, "c"))
    assert h.rpc.last_response() == VoteResponse(4, False, ME)
    assert (h.node.state, h.node.current_term, h.node.current_vote) == (F, 4, "")
    assert h.saved() == PersistentState(4, "")


# -- votes -------------------------------------------------------------------


def test_lower_term_request_denied_without_asking_policy(tmp_path: Path) -> None:
    """A lower-term request is denied with our term, and the vote policy is not even asked."""
    policy = PolicyHandler()
    h = start(tmp_path, handler=policy, saved=PersistentState(5, ""))
    h.node.handle_vote_request(VoteRequest(4, "c", b"pos"))
    assert h.rpc.vote_responses == [("c", VoteResponse(5, False, ME))]
    assert policy.asked == []
    assert h.node.current_vote == ""


def test_vote_for_another_in_same_term_denied(tmp_path: Path) -> None:
    """A follower that voted for "c" in this term denies "d" and keeps its vote."""
    h = start(tmp_path, saved=PersistentState(5, ""))
    h.node.handle_vote_request(VoteRequest(5, "c"))
    h.node.handle_vote_request(VoteRequest(5, "d"))
    assert h.rpc.vote_responses == [
        ("c", VoteResponse(5, True, ME)),
        ("d", VoteResponse(5, False, ME)),
    ]
    assert (h.node.current_vote, h.saved()) == ("c", PersistentState(5, "c"))


def test_policy_refusal_denies_vote(tmp_path: Path) -> None:
    """A vote policy that refuses makes the vote denied, unrecorded and the timer untouched."""
    policy = PolicyHandler(grant=False)
    h = start(tmp_path, handler=policy, saved=PersistentState(5, ""))
    h.clock.advance(0.5)
    h.node.handle_vote_request(VoteRequest(5, "c", b"behind"))
    assert policy.asked == [b"behind"]
    assert h.rpc.vote_responses == [("c", VoteResponse(5, False, ME))]
    assert (h.node.current_vote, h.saved()) == ("", PersistentState(5, ""))
    assert timer_outcome(h) == "kept"


def test_policy_grant_gets_position(tmp_path: Path) -> None:
    """The vote policy is asked with the candidate's position and its yes grants the vote."""
    policy = PolicyHandler(grant=True)
    h = start(tmp_path, handler=policy)
    h.node.handle_vote_request(VoteRequest(1, "c", b"ahead"))
    assert policy.asked == [b"ahead"]
    assert h.rpc.vote_responses == [("c", VoteResponse(1, True, ME))]


def test_vote_persisted_before_response_sent(tmp_path: Path) -> None:
    """The state file already holds the vote when the granted response is sent."""
    path = str(tmp_path / "state")
    rpc = FileCheckingRpc(path)
    h = start(tmp_path, rpc=rpc, saved=PersistentState(2, ""))
    h.node.handle_vote_request(VoteRequest(3, "c"))
    assert rpc.vote_responses == [("c", VoteResponse(3, True, ME))]
    assert rpc.on_disk == [PersistentState(3, "c")]


def test_campaign_persisted_before_request_sent(tmp_path: Path) -> None:
    """The state file holds the new term and the self-vote when the vote request goes out."""
    rpc = FileCheckingRpc(str(tmp_path / "state"))
    h = start(tmp_path, rpc=rpc, saved=PersistentState(6, "c"))
    h.clock.advance(1.0)
    assert rpc.vote_requests == [VoteRequest(7, ME)]
    assert rpc.on_disk == [PersistentState(7, ME)]


def test_granting_resets_election_timer(tmp_path: Path) -> None:
    """Granting a vote pushes the election timeout a full timeout away."""
    h = start(tmp_path)
    h.clock.advance(0.5)
    h.node.handle_vote_request(VoteRequest(1, "c"))
    assert timer_outcome(h) == "reset"
    assert h.rpc.vote_requests == [VoteRequest(2, ME)]


def test_state_handler_only_grants_every_allowed_vote(tmp_path: Path) -> None:
    """A handler with only IStateHandler gets every vote the rules allow granted."""
    handler = RecordingHandler()
    assert not IStateMachineHandler.providedBy(handler)
    h = start(tmp_path, handler=handler)
    h.node.handle_vote_request(VoteRequest(1, "c", b"anything at all"))
    h.node.handle_vote_request(VoteRequest(2, "d", b""))
    assert h.rpc.vote_responses == [
        ("c", VoteResponse(1, True, ME)),
        ("d", VoteResponse(2, True, ME)),
    ]


def test_same_candidate_rerequest_granted_again(tmp_path: Path) -> None:
    """A candidate asking twice in the same term gets the vote twice (its answer was lost)."""
    h = start(tmp_path, saved=PersistentState(3, ""))
    h.node.handle_vote_request(VoteRequest(3, "c"))
    h.clock.advance(0.5)
    h.node.handle_vote_request(VoteRequest(3, "c"))
    assert h.rpc.vote_responses == [("c", VoteResponse(3, True, ME))] * 2
    assert (h.node.current_vote, h.saved()) == ("c", PersistentState(3, "c"))
    assert timer_outcome(h) == "reset"


def test_own_vote_request_echo_ignored(tmp_path: Path) -> None:
    """A candidate's own request echoed back by the transport is not answered."""
    h = candidate(tmp_path)
    h.node.handle_vote_request(VoteRequest(1, ME))
    assert h.rpc.vote_responses == []
    assert (h.node.state, h.node.current_vote) == (C, ME)


# -- heartbeats ---------------------------------------------------------------


def test_stale_heartbeat_ignored(tmp_path: Path) -> None:
    """A lower-term heartbeat changes nothing: no leader change, no timer reset."""
    h = follower(tmp_path, 5, "L5")
    h.clock.advance(0.5)
    h.node.handle_heartbeat(Heartbeat(4, "old"))
    assert (h.node.leader, h.node.current_term, h.node.state) == ("L5", 5, F)
    assert timer_outcome(h) == "kept"


def test_stale_heartbeat_never_sets_leader_when_unknown(tmp_path: Path) -> None:
    """A follower with no leader does not take one from a stale heartbeat (graft did)."""
    h = start(tmp_path, saved=PersistentState(5, ""))
    h.node.handle_heartbeat(Heartbeat(4, "old"))
    assert h.node.leader == ""


def test_heartbeat_sets_leader_and_resets_timer(tmp_path: Path) -> None:
    """An equal-term heartbeat sets the leader and resets the timer, again and again."""
    h = start(tmp_path)
    for _ in range(10):
        h.clock.advance(0.75)
        h.node.handle_heartbeat(Heartbeat(0, "L"))
    assert (h.node.state, h.node.leader, h.rpc.vote_requests) == (F, "L", [])
    h.flush()
    assert h.changes() == []


def test_heartbeats_move_one_election_timer(tmp_path: Path) -> None:
    """Each heartbeat moves the follower's one election timer rather than scheduling a new
    one, and the timer still fires a full timeout after the last heartbeat."""
    h = start(tmp_path)
    h.node.handle_heartbeat(Heartbeat(0, "L"))
    [timer] = h.clock.getDelayedCalls()
    for _ in range(100):
        h.clock.advance(0.5)
        h.node.handle_heartbeat(Heartbeat(0, "L"))
        assert h.clock.getDelayedCalls() == [timer]
    h.clock.advance(FIXED.election_timeout_min - 0.01)
    assert h.node.state is F
    h.clock.advance(0.02)
    assert h.node.state is not F
    assert not timer.active()


def test_timers_leave_no_garbage_cycles(tmp_path: Path) -> None:
    """Fired timers (a leader's heartbeats) are freed at once, not left in reference
    cycles for the garbage collector (with thousands of nodes, those cost most of a core)."""
    h = start(tmp_path, size=1)
    h.clock.advance(FIXED.election_timeout_max)
    assert h.node.state is State.LEADER
    gc.collect()
    gc.disable()
    try:
        for _ in range(500):
            h.clock.advance(FIXED.heartbeat_interval)
        unreachable = gc.collect()
    finally:
        gc.enable()
    assert len(h.rpc.heartbeats) >= 500
    assert unreachable < 50, unreachable


def test_higher_heartbeat_adopts_term(tmp_path: Path) -> None:
    """A higher-term heartbeat makes a follower adopt the term, clear its vote and persist."""
    h = start(tmp_path, saved=PersistentState(2, "c"))
    h.node.handle_heartbeat(Heartbeat(3, "L"))
    assert (h.node.current_term, h.node.current_vote, h.node.leader) == (3, "", "L")
    assert h.saved() == PersistentState(3, "")


def test_candidate_follows_same_term_leader_and_keeps_vote(tmp_path: Path) -> None:
    """A candidate hearing a leader of its own term follows it and keeps its self-vote."""
    h = candidate(tmp_path, term=4)
    h.node.handle_heartbeat(Heartbeat(4, "L"))
    node = h.node
    assert (node.state, node.current_term, node.current_vote, node.leader) == (F, 4, ME, "L")
    assert h.saved() == PersistentState(4, ME)
    node.handle_vote_request(VoteRequest(4, "other"))
    assert h.rpc.vote_responses == [("other", VoteResponse(4, False, ME))]
    assert node.current_vote == ME


def test_higher_term_request_alone_does_not_reset_timer(tmp_path: Path) -> None:
    """Adopting a higher term from a refused vote request leaves the election timer alone."""
    h = start(tmp_path, handler=PolicyHandler(grant=False))
    h.clock.advance(0.5)
    h.node.handle_vote_request(VoteRequest(3, "c"))
    assert (h.node.current_term, h.node.state) == (3, F)
    assert timer_outcome(h) == "kept"
    assert h.rpc.vote_requests == [VoteRequest(4, ME)]


def test_higher_term_request_granted_resets_timer(tmp_path: Path) -> None:
    """Adopting a higher term and granting the vote resets the election timer."""
    h = start(tmp_path, handler=PolicyHandler(grant=True))
    h.clock.advance(0.5)
    h.node.handle_vote_request(VoteRequest(3, "c"))
    assert timer_outcome(h) == "reset"
    assert h.rpc.vote_requests == [VoteRequest(4, ME)]


# -- handler calls --------------------------------------------------------


def test_only_real_changes_reported_in_order(tmp_path: Path) -> None:
    """The handler hears every real change once, in order, and never FOLLOWER->FOLLOWER."""
    h = start(tmp_path)
    h.node.handle_heartbeat(Heartbeat(0, "L"))  # F->F: nothing
    h.node.handle_heartbeat(Heartbeat(1, "L"))  # F->F, higher term: nothing
    h.node.handle_vote_response(VoteResponse(2, False, "a"))  # F->F again
    h.clock.advance(1.0)  # F->C
    h.clock.advance(1.0)  # C->C: nothing
    h.node.handle_vote_response(VoteResponse(4, True, "a"))  # C->L
    h.node.handle_heartbeat(Heartbeat(5, "L"))  # L->F
    h.node.handle_heartbeat(Heartbeat(6, "M"))  # F->F
    h.clock.advance(1.0)  # F->C
    h.node.handle_heartbeat(Heartbeat(7, "M"))  # C->F
    h.flush()
    assert h.changes() == [(F, C), (C, L), (L, F), (F, C), (C, F)]
    assert all(isinstance(c, StateChange) for c in h.handler.changes)


def test_handler_called_on_a_later_turn(tmp_path: Path, logged_errors: LoggedErrors) -> None:
    """State changes and errors reach the handler after the clock turns, never inside handle_*."""
    handler = CallLog()
    h = candidate(tmp_path, handler=handler)
    h.rpc.fail_send = RuntimeError("down")
    handler.inside = True
    h.node.handle_heartbeat(Heartbeat(1, "L"))
    h.node.handle_vote_request(VoteRequest(2, "c"))  # the send fails: an error
    handler.inside = False
    assert handler.calls_inside == []
    assert h.changes() == [(F, C)]
    assert handler.errors == []
    h.flush()
    assert h.changes() == [(F, C), (C, F)]
    assert handler.errors == [h.rpc.fail_send]
    assert logged_errors.messages() == ["node me: the transport failed to send"]


def test_raising_handler_logged_and_node_carries_on(
    tmp_path: Path, logged_errors: LoggedErrors
) -> None:
    """A handler that raises is logged; the node carries on and later events still arrive."""
    handler = ExplodingHandler(explode=1)
    h = start(tmp_path, size=1, handler=handler)
    h.clock.advance(1.0)
    h.flush()
    assert h.changes() == [(F, C), (C, L)]
    assert len(logged_errors) == 1
    assert "handler raised" in logged_errors.messages()[0]
    assert logged_errors[0]["log_failure"].check(RuntimeError)
    h.node.handle_heartbeat(Heartbeat(2, "L"))
    h.flush()
    assert h.changes() == [(F, C), (C, L), (L, F)]
    assert h.node.state is F


def test_handler_may_close_node_from_state_changed(tmp_path: Path) -> None:
    """A handler that calls node.close() from state_changed closes it cleanly."""
    handler = ClosingHandler()
    h = start(tmp_path, handler=handler)
    handler.node = h.node
    h.clock.advance(1.0)
    h.flush()
    assert h.node.state is X
    assert handler.close_results == [None]
    assert h.changes() == [(F, C)]
    assert h.rpc.closed
    assert h.clock.getDelayedCalls() == []
    h.clock.advance(10.0)
    assert h.rpc.vote_requests == [VoteRequest(1, ME)]


def test_handler_close_from_first_of_several_events(tmp_path: Path) -> None:
    """Closing from the first of two pending events still delivers the second, once."""
    handler = ClosingHandler()
    h = start(tmp_path, size=1, handler=handler)
    handler.node = h.node
    h.clock.advance(1.0)
    h.flush()
    assert h.changes() == [(F, C), (C, L)]
    assert h.node.state is X
    assert h.clock.getDelayedCalls() == []


# -- stale timers ------------------------------------------------------------


def test_follower_timer_due_with_heartbeat_never_campaigns(tmp_path: Path) -> None:
    """A heartbeat delivered at the very instant the timeout is due cancels the campaign."""
    clock = Clock()
    box: list[Node] = []
    # Scheduled before the node exists, so it runs first at t=1.0.
    clock.callLater(1.0, lambda: box[0].handle_heartbeat(Heartbeat(0, "L")))
    rpc = RecordingRpc()
    node = graft_tx.new(
        ClusterInfo("test", 3),
        RecordingHandler(),
        rpc,
        str(tmp_path / "state"),
        clock=clock,
        timing=FIXED,
        node_id=ME,
        rng=Lowest(),
    )
    box.append(node)
    clock.advance(1.0)
    assert (node.state, node.current_term, node.leader, rpc.vote_requests) == (F, 0, "L", [])
    clock.advance(0.75)
    assert rpc.vote_requests == []


def test_candidate_timer_due_with_winning_vote_never_fires(tmp_path: Path) -> None:
    """A vote that wins at the instant the candidate's timeout is due leaves no stale campaign."""
    clock = Clock()
    box: list[Node] = []
    clock.callLater(2.0, lambda: box[0].handle_vote_response(VoteResponse(1, True, "a")))
    rpc = RecordingRpc()
    node = graft_tx.new(
        ClusterInfo("test", 3),
        RecordingHandler(),
        rpc,
        str(tmp_path / "state"),
        clock=clock,
        timing=FIXED,
        node_id=ME,
        rng=Lowest(),
    )
    box.append(node)
    clock.advance(1.0)
    clock.advance(1.0)
    assert (node.state, node.current_term) == (L, 1)
    clock.advance(5.0)
    assert (node.state, node.current_term, rpc.vote_requests) == (L, 1, [VoteRequest(1, ME)])


def test_leader_never_campaigns_from_candidate_timer(tmp_path: Path) -> None:
    """A candidate that wins mid-timeout never runs its old election timeout."""
    h = candidate(tmp_path)
    h.clock.advance(0.5)
    h.node.handle_vote_response(VoteResponse(1, True, "a"))
    h.clock.advance(5.0)
    assert (h.node.state, h.node.current_term, len(h.rpc.vote_requests)) == (L, 1, 1)


def test_stepped_down_leader_stops_heartbeats(tmp_path: Path) -> None:
    """A leader that steps down sends no more heartbeats from its old timer."""
    h = leader(tmp_path)
    h.clock.advance(0.1)
    h.node.handle_heartbeat(Heartbeat(2, "L"))
    beats = len(h.rpc.heartbeats)
    h.clock.advance(0.9)
    assert len(h.rpc.heartbeats) == beats
    assert h.node.state is F


def test_one_timer_per_state(tmp_path: Path) -> None:
    """After every transition the clock holds exactly one timer, plus a pending handler flush."""
    h = start(tmp_path)

    def calls() -> list[float]:
        return sorted(c.getTime() - h.clock.seconds() for c in h.clock.getDelayedCalls())

    assert calls() == [1.0]
    h.clock.advance(0.5)
    h.node.handle_heartbeat(Heartbeat(0, "L"))
    assert calls() == [1.0]
    h.node.handle_vote_request(VoteRequest(1, "c"))
    assert calls() == [1.0]
    h.clock.advance(1.0)  # campaign at term 2; its flush runs within the advance
    assert (h.node.state, calls()) == (C, [1.0])
    h.node.handle_vote_response(VoteResponse(2, True, "a"))
    assert calls() == [0.0, 0.25]
    h.flush()
    assert calls() == [0.25]
    h.clock.advance(0.25)
    assert calls() == [0.25]
    h.node.handle_heartbeat(Heartbeat(3, "L"))
    assert calls() == [0.0, 1.0]
    h.flush()
    assert calls() == [1.0]


# -- close --------------------------------------------------------------------


def fired(d: Deferred[None]) -> list[object]:
    results: list[object] = []
    d.addBoth(results.append)
    return results


@pytest.mark.parametrize("where", ["follower", "candidate", "leader", "pending-events"])
def test_close_in_every_state(tmp_path: Path, where: str) -> None:
    """close() moves to CLOSED quietly, closes the rpc once, and leaves no delayed call."""
    rpc = CountingRpc()
    if where == "follower":
        h = follower(tmp_path, 2, rpc=rpc)
    elif where == "candidate":
        h = candidate(tmp_path, 2, rpc=rpc)
    elif where == "leader":
        h = leader(tmp_path, 2, rpc=rpc)
    else:
        h = candidate(tmp_path, 2, rpc=rpc)
        h.node.handle_vote_response(VoteResponse(2, True, "a"))  # C->L, not yet delivered
        assert len(h.clock.getDelayedCalls()) == 2
    saved = h.saved()
    before = h.changes()

    assert fired(h.node.close()) == [None]

    assert h.node.state is X
    assert h.clock.getDelayedCalls() == []
    assert rpc.closed and rpc.close_calls == 1
    h.clock.advance(0)
    changes = h.changes()
    assert all(X not in change for change in changes)
    if where == "pending-events":
        # The events that happened before close() are not lost.
        assert before == [(F, C)] and changes == [(F, C), (C, L)]
    else:
        assert changes == before
    assert os.path.exists(h.path) and h.saved() == saved

    assert fired(h.node.close()) == [None]
    assert h.node.state is X and rpc.close_calls == 1
    assert h.clock.getDelayedCalls() == []


def test_messages_after_close_ignored(tmp_path: Path) -> None:
    """A closed node answers nothing, changes nothing and runs no timer."""
    h = candidate(tmp_path)
    h.node.close()
    h.node.handle_vote_request(VoteRequest(5, "c"))
    h.node.handle_vote_response(VoteResponse(1, True, "a"))
    h.node.handle_vote_response(VoteResponse(7, False, "a"))
    h.node.handle_heartbeat(Heartbeat(6, "L"))
    h.clock.advance(10.0)
    node = h.node
    assert (node.state, node.current_term, node.current_vote, node.leader) == (X, 1, ME, "")
    assert h.rpc.vote_responses == [] and h.rpc.heartbeats == []
    assert h.rpc.vote_requests == [VoteRequest(1, ME)]
    assert h.saved() == PersistentState(1, ME)
    assert h.clock.getDelayedCalls() == []
    assert h.changes() == [(F, C)]


def test_close_waits_for_rpc_close(tmp_path: Path) -> None:
    """close() fires once the rpc's close Deferred fires, even when called twice."""
    rpc = SlowCloseRpc()
    h = start(tmp_path, rpc=rpc)
    first = fired(h.node.close())
    second = fired(h.node.close())
    assert h.node.state is X and rpc.close_calls == 1
    assert first == [] and second == []
    assert h.clock.getDelayedCalls() == []
    rpc.closing.callback(None)
    assert first == [None] and second == [None]
    assert fired(h.node.close()) == [None]


def test_close_survives_failing_rpc_close(tmp_path: Path, logged_errors: LoggedErrors) -> None:
    """An rpc whose close fails is logged, and close() still fires with None."""
    rpc = SlowCloseRpc()
    h = start(tmp_path, rpc=rpc)
    result = fired(h.node.close())
    rpc.closing.errback(RuntimeError("socket stuck"))
    assert result == [None]
    assert h.node.state is X
    assert len(logged_errors) == 1
    assert "closing the transport" in logged_errors.messages()[0]


# -- state file write failures ------------------------------------------------


def test_unwritable_state_denies_vote(tmp_path: Path, logged_errors: LoggedErrors) -> None:
    """A vote that cannot be recorded is denied, and the failure reported and logged."""
    path, directory = rmtree_state_dir(tmp_path)
    h = start(tmp_path, path=path, saved=PersistentState(2, ""))
    shutil.rmtree(directory)
    h.clock.advance(0.5)
    h.node.handle_vote_request(VoteRequest(2, "c"))
    assert h.rpc.vote_responses == [("c", VoteResponse(2, False, ME))]
    assert h.node.current_vote == ""
    h.flush()
    [error] = h.handler.errors
    assert isinstance(error, LogAccessError)
    assert error.path == path
    assert any("cannot write state file" in m for m in logged_errors.messages())
    # A denied vote did not reset the timer either: it is still due at 1.0.
    [timer] = h.clock.getDelayedCalls()
    assert timer.getTime() == 1.0


def test_unwritable_state_blocks_campaign(tmp_path: Path, logged_errors: LoggedErrors) -> None:
    """A node that cannot record term+1 does not campaign, re-arms, and campaigns once it can."""
    path, directory = rmtree_state_dir(tmp_path)
    h = start(tmp_path, path=path, saved=PersistentState(2, "x"))
    shutil.rmtree(directory)
    h.clock.advance(1.0)
    node = h.node
    assert (node.state, node.current_term, node.current_vote) == (F, 2, "x")
    assert h.rpc.vote_requests == []
    h.flush()
    assert h.changes() == []
    assert [type(e) for e in h.handler.errors] == [LogAccessError]
    assert len(logged_errors) == 1
    [timer] = h.clock.getDelayedCalls()
    assert timer.getTime() == h.clock.seconds() + 1.0
    h.clock.advance(1.0)
    assert (node.state, node.current_term, len(h.handler.errors)) == (F, 2, 2)
    directory.mkdir()
    h.clock.advance(1.0)
    assert (node.state, node.current_term, node.current_vote) == (C, 3, ME)
    assert h.saved() == PersistentState(3, ME)
    assert h.rpc.vote_requests == [VoteRequest(3, ME)]


@pytest.mark.parametrize("message", ["heartbeat", "response", "request"])
def test_unwritable_state_still_steps_down(
    tmp_path: Path, logged_errors: LoggedErrors, message: str
) -> None:
    """A leader seeing a higher term steps down to FOLLOWER even if it cannot persist it."""
    path, directory = rmtree_state_dir(tmp_path)
    h = leader(tmp_path, path=path)
    shutil.rmtree(directory)
    if message == "heartbeat":
        h.node.handle_heartbeat(Heartbeat(4, "L"))
    elif message == "response":
        h.node.handle_vote_response(VoteResponse(4, False, "a"))
    else:
        h.node.handle_vote_request(VoteRequest(4, "c"))
        # It could not record the vote, so it does not give it.
        assert h.rpc.vote_responses == [("c", VoteResponse(4, False, ME))]
    assert (h.node.state, h.node.current_term, h.node.current_vote) == (F, 4, "")
    h.flush()
    assert h.changes()[-1] == (L, F)
    assert h.handler.errors and all(isinstance(e, LogAccessError) for e in h.handler.errors)
    assert logged_errors
    beats = len(h.rpc.heartbeats)
    h.clock.advance(0.75)
    assert len(h.rpc.heartbeats) == beats


# -- transport failures ------------------------------------------------------


def test_send_failures_reported_and_survived(tmp_path: Path, logged_errors: LoggedErrors) -> None:
    """A transport that raises on send is reported through async_error; the node carries on."""
    h = start(tmp_path)
    boom = RuntimeError("network down")
    h.rpc.fail_send = boom
    h.clock.advance(1.0)  # request_vote raises
    assert (h.node.state, h.node.current_term) == (C, 1)
    h.node.handle_vote_response(VoteResponse(1, True, "a"))  # heartbeat raises
    assert h.node.state is L
    h.clock.pump([0.25] * 2)  # two more heartbeats raise
    h.flush()
    assert h.handler.errors == [boom] * 4
    assert len(logged_errors) == 4
    assert all("transport failed to send" in m for m in logged_errors.messages())
    h.rpc.fail_send = None
    h.clock.advance(0.25)
    assert h.rpc.heartbeats == [Heartbeat(1, ME)]


def test_response_send_failure_keeps_vote(tmp_path: Path, logged_errors: LoggedErrors) -> None:
    """A vote response that cannot be sent is reported; the vote given stays recorded."""
    h = start(tmp_path)
    h.rpc.fail_send = RuntimeError("unreachable")
    h.node.handle_vote_request(VoteRequest(1, "c"))
    assert (h.node.current_vote, h.saved()) == ("c", PersistentState(1, "c"))
    h.flush()
    assert h.handler.errors == [h.rpc.fail_send]
    assert len(logged_errors) == 1


# -- state machine handler failures --------------------------------------------


def test_grant_vote_raising_denies(tmp_path: Path, logged_errors: LoggedErrors) -> None:
    """grant_vote raising denies the vote and reports a HandlerError."""
    policy = BrokenPolicy(raise_in_grant=True)
    h = start(tmp_path, handler=policy)
    h.node.handle_vote_request(VoteRequest(1, "c", b"pos"))
    assert h.rpc.vote_responses == [("c", VoteResponse(1, False, ME))]
    assert (h.node.current_vote, h.saved()) == ("", PersistentState(1, ""))
    h.flush()
    [error] = policy.errors
    assert isinstance(error, HandlerError)
    assert "no opinion" in str(error)
    assert any("grant_vote() raised" in m for m in logged_errors.messages())


def test_grant_vote_non_bool_denies(tmp_path: Path) -> None:
    """grant_vote answering something other than a bool denies the vote and reports it."""
    policy = BrokenPolicy(bad_grant="yes")
    h = start(tmp_path, handler=policy)
    h.node.handle_vote_request(VoteRequest(1, "c"))
    assert h.rpc.last_response() == VoteResponse(1, False, ME)
    h.flush()
    assert [type(e) for e in policy.errors] == [HandlerError]


def test_current_state_raising_skips_campaign(tmp_path: Path, logged_errors: LoggedErrors) -> None:
    """current_state raising means no campaign this round, a HandlerError, and a retry later."""
    policy = BrokenPolicy(raise_in_state=True, position=b"p")
    h = start(tmp_path, handler=policy)
    h.clock.advance(1.0)
    node = h.node
    assert (node.state, node.current_term, node.current_vote) == (F, 0, "")
    assert h.rpc.vote_requests == []
    assert h.saved() == PersistentState(0, "")
    h.flush()
    [error] = policy.errors
    assert isinstance(error, HandlerError)
    assert h.changes() == []
    assert any("current_state() raised" in m for m in logged_errors.messages())
    policy.raise_in_state = False
    h.clock.advance(1.0)
    assert (node.state, node.current_term) == (C, 1)
    assert h.rpc.vote_requests == [VoteRequest(1, ME, b"p")]


def test_current_state_non_bytes_skips_campaign(tmp_path: Path) -> None:
    """current_state answering something other than bytes skips the campaign and reports it."""
    policy = BrokenPolicy(bad_state="not bytes")
    h = start(tmp_path, handler=policy)
    h.clock.advance(1.0)
    assert (h.node.state, h.node.current_term, h.rpc.vote_requests) == (F, 0, [])
    h.flush()
    assert [type(e) for e in policy.errors] == [HandlerError]
