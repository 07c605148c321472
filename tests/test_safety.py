"""The graft-tx safety features: heartbeat acks and leases, pre-vote, leader
stickiness, leadership transfer, priorities (issue 6).

Two halves. The unit tests play the peers by calling a node's handle_*
methods directly and watch what it sends through a RecordingRpc; they use a
fixed election timeout of exactly 1s and a 0.25s heartbeat, so that every
deadline is exact binary clock arithmetic. The proofs run real nodes on a
MemoryNetwork and check, after every delivered message and every timer (not
only at sampled instants), that no two nodes hold a lease at once.

The nodes of a proof share one task.Clock; each node's monotonic clock runs
on it at rate 1, so leases are compared exactly, except in the one proof that
slows the leader's clock and speeds up the others' within the lease's DRIFT
margin.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import pytest
from fakes import RecordingHandler, RecordingRpc, failure_of, fired, result_of
from twisted.internet.task import Clock
from txnodes import (
    FIXED,
    HEARTBEAT,
    LEASE,
    ME,
    RANGE,
    TIMING,
    C,
    F,
    L,
    Net,
    W,
    X,
    elect,
    lead,
    unit,
)
from zope.interface import implementer

import graft_tx
import graft_tx.lease
from graft_tx import (
    ClusterInfo,
    GraftService,
    Heartbeat,
    HeartbeatAck,
    Leadership,
    Node,
    NodeClosedError,
    ProtocolModeError,
    RpcRequiredError,
    State,
    StateChange,
    Timing,
    TransferError,
    VoteRequest,
    VoteResponse,
)
from graft_tx.interfaces import IElectionNode, IRpc
from graft_tx.statefile import PersistentState


@implementer(IRpc)
class PlainRpc:
    """An IRpc that cannot carry heartbeat acknowledgements (no IAckingRpc)."""

    def __init__(self) -> None:
        self.node: IElectionNode | None = None

    def init(self, node: IElectionNode) -> None:
        self.node = node

    def close(self) -> None:
        pass

    def request_vote(self, req: VoteRequest) -> None:
        pass

    def heartbeat(self, hb: Heartbeat) -> None:
        pass

    def send_vote_response(self, candidate_id: str, resp: VoteResponse) -> None:
        pass


# -- heartbeat acknowledgements ------------------------------------------------


def test_follower_acks_each_accepted_heartbeat(tmp_path: Path) -> None:
    """A follower answers every accepted heartbeat with HeartbeatAck(term, id, seq, priority)."""
    u = unit(tmp_path, priority=3)
    u.node.handle_heartbeat(Heartbeat(2, "L", 1))
    u.node.handle_heartbeat(Heartbeat(2, "L", 2))
    u.node.handle_heartbeat(Heartbeat(3, "K", 7))
    assert u.rpc.acks == [
        ("L", HeartbeatAck(2, ME, 1, 3, W)),
        ("L", HeartbeatAck(2, ME, 2, 3, W)),
        ("K", HeartbeatAck(3, ME, 7, 3, W)),
    ]


def test_stale_heartbeat_is_answered_with_the_higher_term(tmp_path: Path) -> None:
    """A heartbeat of a lower term changes nothing, and gets an ack carrying the node's own
    higher term, so that the stale leader steps down."""
    u = unit(tmp_path, saved=PersistentState(5, ""))
    u.node.handle_heartbeat(Heartbeat(4, "old", 9))
    assert u.rpc.acks == [("old", HeartbeatAck(5, u.node.id, 9, 1, W))]
    assert u.node.leader == ""
    assert u.memory() == (5, "", F)


def test_leader_steps_down_on_an_ack_of_a_higher_term(tmp_path: Path) -> None:
    """A leader that gets an ack of a higher term (from a node it cannot otherwise reach,
    because stickiness hides vote requests) adopts the term and steps down."""
    u = unit(tmp_path, size=1)
    u.clock.advance(2.0)
    assert u.node.state is State.LEADER
    term = u.node.current_term
    u.node.handle_heartbeat_ack(HeartbeatAck(term + 3, "other", 1))
    assert (u.node.state, u.node.current_term, u.node.is_leader()) == (F, term + 3, False)


@pytest.mark.protocol("graft")
def test_graft_mode_sends_no_acks(tmp_path: Path) -> None:
    """In protocol "graft" a follower never acknowledges heartbeats (Go graft has no acks)."""
    u = unit(tmp_path)
    assert u.node.protocol == "graft"
    u.node.handle_heartbeat(Heartbeat(2, "L", 1))
    u.node.handle_heartbeat(Heartbeat(2, "L"))
    assert u.node.leader == "L"
    assert u.rpc.acks == []


# -- pre-vote: asking ----------------------------------------------------------


def test_election_timeout_sends_pre_vote_and_changes_nothing(tmp_path: Path) -> None:
    """The election timeout sends a pre-vote for term+1; term, vote, file and state stay."""
    u = unit(tmp_path, saved=PersistentState(4, "x"), position=b"pos")
    u.clock.advance(0.75)
    assert u.rpc.vote_requests == []
    u.clock.advance(0.25)
    assert u.rpc.vote_requests == [VoteRequest(5, ME, b"pos", pre_vote=True)]
    assert u.memory() == (4, "x", F)
    assert u.on_disk() == PersistentState(4, "x")
    assert u.changes() == []
    assert u.node.stats().elections_started == 0


def test_quorum_of_pre_votes_starts_the_real_campaign(tmp_path: Path) -> None:
    """Granted pre-votes from a quorum (self included) start the campaign in term+1."""
    u = unit(tmp_path, saved=PersistentState(4, "x"), position=b"pos")
    u.clock.advance(1.0)
    u.node.handle_vote_response(VoteResponse(5, True, "a", pre_vote=True))
    assert u.memory() == (5, ME, C)
    assert u.on_disk() == PersistentState(5, ME)
    assert u.rpc.vote_requests == [
        VoteRequest(5, ME, b"pos", pre_vote=True),
        VoteRequest(5, ME, b"pos"),
    ]
    assert u.changes() == [StateChange(F, C)]


def test_duplicate_pre_votes_count_once(tmp_path: Path) -> None:
    """In a cluster of 5, two grants from one voter are one pre-vote: no campaign until a third."""
    u = unit(tmp_path, size=5)
    u.clock.advance(1.0)
    u.node.handle_vote_response(VoteResponse(1, True, "a", pre_vote=True))
    u.node.handle_vote_response(VoteResponse(1, True, "a", pre_vote=True))
    u.node.handle_vote_response(VoteResponse(1, True, "a", pre_vote=True))
    assert u.memory() == (0, "", F)
    assert len(u.rpc.vote_requests) == 1
    u.node.handle_vote_response(VoteResponse(1, True, "b", pre_vote=True))
    assert u.memory() == (1, ME, C)
    assert u.rpc.vote_requests[-1] == VoteRequest(1, ME)


def test_pre_votes_for_another_term_do_not_count(tmp_path: Path) -> None:
    """Pre-votes granted for a term other than term+1, or outside a round, are ignored."""
    u = unit(tmp_path, saved=PersistentState(4, ""))
    # Before the node asks: no round is open.
    u.node.handle_vote_response(VoteResponse(5, True, "a", pre_vote=True))
    assert u.memory() == (4, "", F)
    u.clock.advance(1.0)
    assert u.rpc.vote_requests == [VoteRequest(5, ME, pre_vote=True)]
    u.node.handle_vote_response(VoteResponse(4, True, "b", pre_vote=True))
    u.node.handle_vote_response(VoteResponse(6, True, "b", pre_vote=True))
    u.node.handle_vote_response(VoteResponse(9, True, "b", pre_vote=True))
    assert u.memory() == (4, "", F)
    assert u.on_disk() == PersistentState(4, "")
    u.node.handle_vote_response(VoteResponse(5, True, "b", pre_vote=True))
    assert u.memory() == (5, ME, C)


def test_pre_vote_rejection_with_higher_term_is_adopted(tmp_path: Path) -> None:
    """A pre-vote refused with a higher term makes the node adopt it; a lower one does not."""
    u = unit(tmp_path, saved=PersistentState(4, "x"))
    u.clock.advance(1.0)
    u.node.handle_vote_response(VoteResponse(4, False, "a", pre_vote=True))
    assert u.memory() == (4, "x", F)
    u.node.handle_vote_response(VoteResponse(9, False, "a", pre_vote=True))
    assert u.memory() == (9, "", F)
    assert u.on_disk() == PersistentState(9, "")
    # The round of term 5 is over: a late grant for it counts for nothing.
    u.node.handle_vote_response(VoteResponse(5, True, "b", pre_vote=True))
    assert u.memory() == (9, "", F)
    assert u.changes() == []
    u.clock.advance(1.0)
    assert u.rpc.vote_requests[-1] == VoteRequest(10, ME, pre_vote=True)


# -- pre-vote: answering -------------------------------------------------------


def test_no_pre_vote_granted_in_first_min_timeout_after_start(tmp_path: Path) -> None:
    """A node just started refuses pre-votes until election_timeout_min has passed."""
    u = unit(tmp_path, saved=PersistentState(2, "x"))
    u.clock.advance(0.75)
    u.node.handle_vote_request(VoteRequest(3, "c", pre_vote=True))
    assert u.rpc.vote_responses == [("c", VoteResponse(2, False, ME, pre_vote=True))]
    u.clock.advance(0.25)
    u.node.handle_vote_request(VoteRequest(3, "c", pre_vote=True))
    assert u.rpc.vote_responses[-1] == ("c", VoteResponse(3, True, ME, pre_vote=True))
    assert u.memory() == (2, "x", F)
    assert u.on_disk() == PersistentState(2, "x")
    assert u.changes() == []


def test_pre_vote_granted_only_for_a_higher_term(tmp_path: Path) -> None:
    """A pre-vote is granted only when its term exceeds the node's; answering changes nothing."""
    u = unit(tmp_path, saved=PersistentState(2, "x"))
    u.clock.advance(1.0)
    for term in (1, 2):
        u.node.handle_vote_request(VoteRequest(term, "c", pre_vote=True))
        assert u.rpc.vote_responses[-1] == ("c", VoteResponse(2, False, ME, pre_vote=True))
    for term in (3, 100):
        u.node.handle_vote_request(VoteRequest(term, "c", pre_vote=True))
        assert u.rpc.vote_responses[-1] == ("c", VoteResponse(term, True, ME, pre_vote=True))
    assert u.memory() == (2, "x", F)
    assert u.on_disk() == PersistentState(2, "x")
    assert u.changes() == []


def test_no_pre_vote_while_a_live_leader_is_heard(tmp_path: Path) -> None:
    """Pre-votes are refused within election_timeout_min of a heartbeat and granted after."""
    u = unit(tmp_path, saved=PersistentState(2, ""))
    u.clock.advance(1.0)
    u.node.handle_heartbeat(Heartbeat(2, "L", 1))
    u.clock.advance(0.75)
    u.node.handle_vote_request(VoteRequest(3, "c", pre_vote=True))
    assert u.rpc.vote_responses[-1] == ("c", VoteResponse(2, False, ME, pre_vote=True))
    u.clock.advance(0.25)
    u.node.handle_vote_request(VoteRequest(3, "c", pre_vote=True))
    assert u.rpc.vote_responses[-1] == ("c", VoteResponse(3, True, ME, pre_vote=True))
    assert u.memory() == (2, "", F)
    assert u.on_disk() == PersistentState(2, "")


def test_leader_grants_no_pre_vote(tmp_path: Path) -> None:
    """A leader refuses pre-votes of a higher term, with or without its lease, and stays leader."""
    u = unit(tmp_path)
    elect(u)
    assert not u.node.is_leader()
    u.node.handle_vote_request(VoteRequest(2, "c", pre_vote=True))
    assert u.rpc.vote_responses[-1] == ("c", VoteResponse(1, False, ME, pre_vote=True))
    u.node.handle_heartbeat_ack(HeartbeatAck(1, "a", 1))
    u.node.handle_vote_request(VoteRequest(5, "c", pre_vote=True))
    assert u.rpc.vote_responses[-1] == ("c", VoteResponse(1, False, ME, pre_vote=True))
    assert u.memory() == (1, ME, L)
    assert u.node.is_leader()


def test_pre_vote_asks_the_vote_policy(tmp_path: Path) -> None:
    """A pre-vote is refused when the handler's grant_vote refuses the candidate's position."""
    u = unit(tmp_path)
    u.handler.grant = False
    u.clock.advance(1.0)
    u.node.handle_vote_request(VoteRequest(1, "c", b"behind", pre_vote=True))
    assert u.rpc.vote_responses[-1] == ("c", VoteResponse(0, False, ME, pre_vote=True))
    assert u.handler.asked == [b"behind"]


# -- leader stickiness ---------------------------------------------------------


def test_vote_refused_without_adopting_term_while_leader_heard(tmp_path: Path) -> None:
    """Within election_timeout_min of a heartbeat a higher-term vote is refused, term kept."""
    u = unit(tmp_path, saved=PersistentState(2, ""))
    u.clock.advance(1.0)
    u.node.handle_heartbeat(Heartbeat(2, "L", 1))
    u.clock.advance(0.75)
    u.node.handle_vote_request(VoteRequest(3, "c"))
    assert u.rpc.vote_responses[-1] == ("c", VoteResponse(2, False, ME))
    assert u.memory() == (2, "", F)
    assert u.on_disk() == PersistentState(2, "")
    assert u.node.leader == "L"
    u.clock.advance(0.25)
    u.node.handle_vote_request(VoteRequest(3, "c"))
    assert u.rpc.vote_responses[-1] == ("c", VoteResponse(3, True, ME))
    assert u.memory() == (3, "c", F)
    assert u.on_disk() == PersistentState(3, "c")


def test_vote_refused_without_adopting_term_just_after_start(tmp_path: Path) -> None:
    """In its first election_timeout_min a node refuses votes and keeps its term; then votes."""
    u = unit(tmp_path, saved=PersistentState(2, ""))
    u.clock.advance(0.75)
    u.node.handle_vote_request(VoteRequest(3, "c"))
    assert u.rpc.vote_responses == [("c", VoteResponse(2, False, ME))]
    assert u.memory() == (2, "", F)
    assert u.on_disk() == PersistentState(2, "")
    u.clock.advance(0.25)
    u.node.handle_vote_request(VoteRequest(3, "c"))
    assert u.rpc.vote_responses[-1] == ("c", VoteResponse(3, True, ME))
    assert u.on_disk() == PersistentState(3, "c")


def test_transfer_vote_granted_despite_stickiness(tmp_path: Path) -> None:
    """A transfer's vote request is granted just after a heartbeat of the leader that named
    that candidate: the leader released this node's promise for it."""
    u = unit(tmp_path)
    u.clock.advance(1.25)
    u.node.handle_heartbeat(Heartbeat(2, "L", 1))
    u.node.handle_heartbeat(Heartbeat(2, "L", 0, "t"))
    u.node.handle_vote_request(VoteRequest(3, "t", transfer=True))
    assert u.rpc.vote_responses == [("t", VoteResponse(3, True, ME))]
    assert u.memory() == (3, "t", F)
    assert u.on_disk() == PersistentState(3, "t")


@pytest.mark.parametrize(
    "named",
    [
        pytest.param(None, id="nobody-named-it"),
        pytest.param(Heartbeat(2, "L", 0, "u"), id="another-named"),
        pytest.param(Heartbeat(3, "x", 0, "t"), id="a-stranger-named-it"),
        pytest.param(Heartbeat(1, "L", 0, "t"), id="an-older-term"),
    ],
)
def test_transfer_vote_refused_while_a_promise_holds_that_did_not_name_it(
    tmp_path: Path, named: Heartbeat | None
) -> None:
    """A transfer request passes only a promise whose leader named the candidate for that term:
    a stranger's hand-over to a member cannot get it elected during the leader's lease."""
    u = unit(tmp_path)
    u.clock.advance(1.25)
    u.node.handle_heartbeat(Heartbeat(2, "L", 1))
    if named is not None:
        u.node.handle_heartbeat(named)
    term = u.node.current_term
    u.node.handle_vote_request(VoteRequest(term + 1, "t", transfer=True))
    assert u.rpc.last_response() == VoteResponse(term, False, ME)
    assert u.node.current_term == term


# -- leader lease --------------------------------------------------------------


def test_leader_has_no_lease_until_a_quorum_acks(tmp_path: Path) -> None:
    """A new leader is LEADER but not is_leader() until a quorum acks; then when_leader fires."""
    u = unit(tmp_path)
    wl = u.node.when_leader()
    elect(u)
    assert u.rpc.heartbeats == [Heartbeat(1, ME, 1)]
    assert u.node.state is L
    assert not u.node.is_leader()
    assert u.node.leadership() == Leadership(L, 1, ME, None)
    assert not fired(wl)
    u.clock.advance(0.25)
    assert u.rpc.heartbeats[-1] == Heartbeat(1, ME, 2)
    # Acks of another term, or of a heartbeat never sent, grant nothing.
    u.node.handle_heartbeat_ack(HeartbeatAck(0, "a", 1))
    u.node.handle_heartbeat_ack(HeartbeatAck(1, "a", 3))
    assert not u.node.is_leader()
    assert not fired(wl)
    u.node.handle_heartbeat_ack(HeartbeatAck(1, "a", 1))
    assert u.node.is_leader()
    assert result_of(wl) == 1
    assert u.node.leadership() == Leadership(L, 1, ME, 1.0 + LEASE)
    assert result_of(u.node.when_leader()) == 1
    u.node.handle_heartbeat_ack(HeartbeatAck(1, "a", 2))
    assert u.node.leadership() == Leadership(L, 1, ME, 1.25 + LEASE)
    # An older ack from another follower does not shorten the lease.
    u.node.handle_heartbeat_ack(HeartbeatAck(1, "b", 1))
    assert u.node.leadership() == Leadership(L, 1, ME, 1.25 + LEASE)
    assert u.changes() == [StateChange(F, C), StateChange(C, L)]


def test_leader_without_acks_steps_down_at_first_tick_after_lease_length(tmp_path: Path) -> None:
    """Unacknowledged, a leader elected at 1.0 steps down at its tick at 2.0 (>= 1.0 + lease)."""
    u = unit(tmp_path)
    elect(u)
    # Without a lease it is not is_leader(): when_not_leader() says so at once.
    assert fired(u.node.when_not_leader())
    u.advance(0.75)
    assert u.node.state is L
    assert [hb.seq for hb in u.rpc.heartbeats] == [1, 2, 3, 4]
    u.clock.advance(0.25)
    assert u.node.state is F
    assert u.node.leader == ""
    assert [hb.seq for hb in u.rpc.heartbeats] == [1, 2, 3, 4]
    assert u.memory() == (1, ME, F)
    assert u.changes() == [StateChange(F, C), StateChange(C, L), StateChange(L, F)]
    # Back to a follower's life: its next election timeout sends a pre-vote.
    u.clock.advance(1.0)
    assert u.rpc.vote_requests[-1] == VoteRequest(2, ME, pre_vote=True)


def test_is_leader_ends_exactly_at_lease_expiry(tmp_path: Path) -> None:
    """is_leader() turns False at the lease expiry, before the tick at which the node steps down."""
    u = unit(tmp_path)
    elect(u)
    u.clock.advance(0.25)
    u.node.handle_heartbeat_ack(HeartbeatAck(1, "a", 1))
    expiry = 1.0 + LEASE
    assert u.node.leadership().lease_expiry == expiry
    wnl = u.node.when_not_leader()
    u.advance(0.5)
    u.clock.advance(0.15)
    assert u.clock.seconds() < expiry
    assert u.node.is_leader()
    u.clock.advance(expiry - u.clock.seconds())
    assert u.clock.seconds() == expiry
    assert not u.node.is_leader()
    assert u.node.state is L
    assert u.node.leadership() == Leadership(L, 1, ME, None)
    assert not fired(wnl)
    u.clock.advance(2.0 - expiry)
    assert u.node.state is F
    assert fired(wnl)


def test_when_not_leader_agrees_with_is_leader(tmp_path: Path) -> None:
    """A LEADER without a lease (none yet, or lapsed) is not is_leader(), and
    when_not_leader() says so at once; with the lease it waits."""
    u = unit(tmp_path)
    elect(u)
    assert u.node.state is L and not u.node.is_leader()
    assert fired(u.node.when_not_leader())
    u.clock.advance(0.25)
    u.node.handle_heartbeat_ack(HeartbeatAck(1, "a", 1))
    assert u.node.is_leader()
    waiting = u.node.when_not_leader()
    assert not fired(waiting)
    expiry = 1.0 + LEASE
    u.advance(0.5)
    u.clock.advance(0.15)
    assert u.node.is_leader()
    u.clock.advance(expiry - u.clock.seconds())
    assert u.node.state is L and not u.node.is_leader()
    assert fired(u.node.when_not_leader())
    assert not fired(waiting)
    u.clock.advance(2.0 - expiry)
    assert u.node.state is F
    assert fired(waiting)


def test_close_fails_the_when_leader_waiters(tmp_path: Path) -> None:
    """close() fails pending when_leader() Deferreds with NodeClosedError, and a
    when_leader() asked of a closed node fails at once."""
    u = unit(tmp_path)
    waiting = u.node.when_leader()
    result_of(u.node.close())
    assert failure_of(waiting).check(NodeClosedError)
    assert failure_of(u.node.when_leader()).check(NodeClosedError)
    assert fired(u.node.when_not_leader())


def test_single_node_cluster_leads_with_lease_at_once(tmp_path: Path) -> None:
    """A cluster of one elects itself without pre-vote messages and holds its lease at once."""
    u = unit(tmp_path, size=1)
    wl = u.node.when_leader()
    u.clock.advance(1.0)
    assert u.rpc.vote_requests == []
    assert u.node.is_leader()
    assert result_of(wl) == 1
    assert u.node.leadership() == Leadership(L, 1, ME, 1.0 + LEASE)
    for _ in range(40):
        u.clock.advance(0.25)
        assert u.node.is_leader()
    assert u.changes() == [StateChange(F, C), StateChange(C, L)]


# -- leadership transfer -------------------------------------------------------


def test_transfer_hands_over_and_fires_with_new_leader(tmp_path: Path) -> None:
    """transfer_leadership(b) tells b and steps down at once; fires with b on b's heartbeat."""
    u = unit(tmp_path)
    lead(u, ("a", "b"))
    assert u.node.is_leader()
    wnl = u.node.when_not_leader()
    d = u.node.transfer_leadership("b")
    assert u.rpc.heartbeats[-1] == Heartbeat(1, ME, 2, transfer_to="b")
    assert u.node.state is F
    assert not u.node.is_leader()
    assert u.node.leader == ""
    assert fired(wnl)
    assert not fired(d)
    assert u.changes()[-1] == StateChange(L, F)
    u.clock.advance(0.5)
    u.node.handle_vote_request(VoteRequest(2, "b", transfer=True))
    assert u.rpc.vote_responses[-1] == ("b", VoteResponse(2, True, ME))
    assert not fired(d)
    u.node.handle_heartbeat(Heartbeat(2, "b", 1))
    assert result_of(d) == "b"
    assert u.node.leader == "b"
    # The transfer's timeout was cancelled with it.
    u.clock.advance(0.75)
    assert u.node.state is F
    assert u.rpc.vote_requests == [VoteRequest(1, ME, pre_vote=True), VoteRequest(1, ME)]


def test_transfer_fires_with_whoever_leads_next(tmp_path: Path) -> None:
    """A transfer to a fires with b when b's heartbeat of a higher term arrives first."""
    u = unit(tmp_path)
    lead(u, ("a", "b"))
    d = u.node.transfer_leadership("a")
    u.node.handle_heartbeat(Heartbeat(1, "a", 1))
    assert not fired(d)
    u.node.handle_heartbeat(Heartbeat(3, "b", 1))
    assert result_of(d) == "b"
    assert (u.node.leader, u.node.current_term) == ("b", 3)


def test_transfer_fails_after_max_timeout_and_node_campaigns_again(tmp_path: Path) -> None:
    """With no new leader within election_timeout_max the transfer fails; then it pre-votes."""
    u = unit(tmp_path)
    lead(u, ("a",))
    d = u.node.transfer_leadership("a")
    u.clock.advance(1.0)
    assert not fired(d)
    assert u.rpc.vote_requests[-1] == VoteRequest(2, ME, pre_vote=True)
    u.clock.advance(0.25)
    assert failure_of(d).check(TransferError)
    u.node.handle_vote_response(VoteResponse(2, True, "b", pre_vote=True))
    assert u.memory() == (2, ME, C)
    assert u.rpc.vote_requests[-1] == VoteRequest(2, ME)


def test_transfer_refused_by_follower(tmp_path: Path) -> None:
    """A node that does not lead cannot transfer leadership, with or without a target."""
    u = unit(tmp_path)
    assert failure_of(u.node.transfer_leadership()).check(TransferError)
    assert failure_of(u.node.transfer_leadership("a")).check(TransferError)
    assert failure_of(u.node.step_down()).check(TransferError)
    assert u.rpc.heartbeats == []


def test_transfer_refused_before_any_follower_acked(tmp_path: Path) -> None:
    """A leader no follower has acknowledged has nobody to hand over to, and keeps leading."""
    u = unit(tmp_path)
    elect(u)
    assert failure_of(u.node.transfer_leadership()).check(TransferError)
    assert failure_of(u.node.transfer_leadership("a")).check(TransferError)
    assert u.node.state is L
    assert all(hb.transfer_to == "" for hb in u.rpc.heartbeats)


def test_transfer_to_unknown_target_refused(tmp_path: Path) -> None:
    """A target that never acked this leader (or itself) is refused; the node keeps leading."""
    u = unit(tmp_path)
    lead(u, ("a",))
    for target in ("zz", "b", ME):
        assert failure_of(u.node.transfer_leadership(target)).check(TransferError)
    assert u.node.is_leader()
    assert all(hb.transfer_to == "" for hb in u.rpc.heartbeats)


@pytest.mark.protocol("graft")
def test_transfer_refused_in_graft_mode(tmp_path: Path) -> None:
    """In protocol "graft" a leader cannot transfer leadership (Go graft has no such message)."""
    u = unit(tmp_path)
    u.clock.advance(1.0)
    u.node.handle_vote_response(VoteResponse(1, True, "a"))
    assert u.node.state is L
    assert failure_of(u.node.transfer_leadership("a")).check(TransferError)
    assert failure_of(u.node.step_down()).check(TransferError)
    assert u.node.state is L
    assert u.rpc.heartbeats == [Heartbeat(1, ME)]


def test_step_down_picks_most_up_to_date_follower(tmp_path: Path) -> None:
    """step_down() hands over to the follower that acked the latest heartbeat."""
    u = unit(tmp_path)
    elect(u)
    u.node.handle_heartbeat_ack(HeartbeatAck(1, "b", 1))
    u.clock.advance(0.25)
    u.node.handle_heartbeat_ack(HeartbeatAck(1, "a", 2))
    d = u.node.step_down()
    assert u.rpc.heartbeats[-1] == Heartbeat(1, ME, 3, transfer_to="a")
    assert u.node.state is F
    u.node.handle_heartbeat(Heartbeat(2, "a", 1))
    assert result_of(d) == "a"


def test_step_down_skips_followers_that_never_lead(tmp_path: Path) -> None:
    """step_down() hands over to the best follower that can lead, not to a priority-0 observer."""
    u = unit(tmp_path, size=5)
    elect(u)
    u.node.handle_heartbeat_ack(HeartbeatAck(1, "b", 1, 1))
    u.node.handle_heartbeat_ack(HeartbeatAck(1, "c", 1, 1))
    u.clock.advance(0.25)
    u.node.handle_heartbeat_ack(HeartbeatAck(1, "z", 2, 0))
    assert u.node.is_leader()
    assert failure_of(u.node.transfer_leadership("z")).check(TransferError)
    assert u.node.is_leader()
    outcome: list[object] = []
    u.node.step_down().addBoth(outcome.append)
    assert outcome == [], f"step_down() failed: {outcome}"
    assert u.rpc.heartbeats[-1] == Heartbeat(1, ME, 3, transfer_to="c")
    u.node.handle_heartbeat(Heartbeat(2, "c", 1))
    assert outcome == ["c"]


def test_transfer_target_campaigns_at_once_without_pre_vote(tmp_path: Path) -> None:
    """A follower named in a heartbeat's transfer_to acks it and campaigns with transfer=True."""
    u = unit(tmp_path, position=b"pos")
    u.clock.advance(0.75)
    u.node.handle_heartbeat(Heartbeat(3, "L", 4, transfer_to="other"))
    assert u.memory() == (3, "", F)
    # Past its start window (it may not vote for itself in it), before its timeout.
    u.clock.advance(0.5)
    u.node.handle_heartbeat(Heartbeat(3, "L", 5, transfer_to=ME))
    assert u.rpc.acks == [("L", HeartbeatAck(3, ME, 4, 1, W)), ("L", HeartbeatAck(3, ME, 5, 1, W))]
    assert u.rpc.vote_requests == [VoteRequest(4, ME, b"pos", transfer=True)]
    assert u.memory() == (4, ME, C)
    assert u.on_disk() == PersistentState(4, ME)
    assert u.changes() == [StateChange(F, C)]


# -- priorities ----------------------------------------------------------------


def test_priority_zero_never_campaigns_but_votes(tmp_path: Path) -> None:
    """A priority-0 node has no election timer at all, never campaigns, and still grants votes."""
    u = unit(tmp_path, priority=0)
    assert u.clock.getDelayedCalls() == []
    u.clock.advance(10.0)
    assert u.rpc.vote_requests == []
    assert u.memory() == (0, "", F)
    u.node.handle_vote_request(VoteRequest(1, "c", pre_vote=True))
    assert u.rpc.vote_responses[-1] == ("c", VoteResponse(1, True, ME, pre_vote=True))
    u.node.handle_vote_request(VoteRequest(1, "c"))
    assert u.rpc.vote_responses[-1] == ("c", VoteResponse(1, True, ME))
    assert u.memory() == (1, "c", F)
    u.node.handle_heartbeat(Heartbeat(1, "c", 1, transfer_to=ME))
    assert u.rpc.acks == [("c", HeartbeatAck(1, ME, 1, 0, W))]
    u.clock.advance(0)
    assert u.clock.getDelayedCalls() == []
    u.clock.advance(10.0)
    assert u.rpc.vote_requests == []
    assert u.memory() == (1, "c", F)


def _timeouts(tmp_path: Path, priority: int) -> list[float]:
    """Successive election timeouts (time from arming to the pre-vote) over 50 seeds."""
    timeouts: list[float] = []
    for seed in range(50):
        u = unit(tmp_path, timing=RANGE, priority=priority, seed=seed, name=f"{priority}-{seed}")
        for round_ in range(4):
            (call,) = u.clock.getDelayedCalls()
            timeouts.append(call.getTime() - u.clock.seconds())
            # Land exactly on the timeout (see Net.run) and let it fire.
            u.clock.rightNow = call.getTime()
            u.clock.advance(0)
            assert len(u.rpc.vote_requests) == round_ + 1
            assert u.rpc.vote_requests[-1].pre_vote
    return timeouts


def test_priority_two_campaigns_in_first_half_of_range(tmp_path: Path) -> None:
    """Priority 2 draws timeouts from [min, min + (max-min)/2); priority 1 from [min, max)."""
    high = _timeouts(tmp_path, 2)
    assert all(1.0 <= t < 1.5 for t in high), sorted(high)[-3:]
    assert max(high) > 1.4
    assert min(high) < 1.1
    equal = _timeouts(tmp_path, 1)
    assert all(1.0 <= t < 2.0 for t in equal)
    assert max(equal) > 1.9


def test_lower_priority_leader_hands_over_to_steady_higher_priority(tmp_path: Path) -> None:
    """A priority-1 leader hands over to a priority-2 follower acking steadily for max timeout."""
    u = unit(tmp_path)
    elect(u)
    handover: list[tuple[float, Heartbeat]] = []
    while u.clock.seconds() < 4.0 and not handover:
        # Both followers acknowledge every heartbeat before the next one.
        seq = u.rpc.heartbeats[-1].seq
        u.node.handle_heartbeat_ack(HeartbeatAck(1, "a", seq, 2))
        u.node.handle_heartbeat_ack(HeartbeatAck(1, "b", seq, 1))
        assert u.node.is_leader()
        u.clock.advance(0.25)
        handover = [(u.clock.seconds(), hb) for hb in u.rpc.heartbeats if hb.transfer_to]
    assert handover, f"no handover by t={u.clock.seconds()}: {u.rpc.heartbeats[-3:]}"
    ((when, hb),) = handover
    # Led (and acked) steadily for election_timeout_max = 1.0 since t=1.0.
    assert 2.0 <= when <= 2.25
    assert hb.transfer_to == "a"
    assert hb.term == 1
    assert u.node.state is F


def test_no_handover_to_higher_priority_follower_heard_only_briefly(tmp_path: Path) -> None:
    """A priority-2 follower that starts acking late gets the lead only after max of steady acks."""
    u = unit(tmp_path)
    elect(u)
    joined = 3.0
    handover: list[tuple[float, Heartbeat]] = []
    while u.clock.seconds() < 5.0 and not handover:
        seq = u.rpc.heartbeats[-1].seq
        u.node.handle_heartbeat_ack(HeartbeatAck(1, "b", seq, 1))
        if u.clock.seconds() >= joined:
            u.node.handle_heartbeat_ack(HeartbeatAck(1, "a", seq, 2))
        u.clock.advance(0.25)
        handover = [(u.clock.seconds(), hb) for hb in u.rpc.heartbeats if hb.transfer_to]
    assert handover, "no handover"
    ((when, hb),) = handover
    assert hb.transfer_to == "a"
    assert joined + FIXED.election_timeout_max <= when <= joined + 1.25


def test_equal_priority_or_unsteady_follower_gets_no_handover(tmp_path: Path) -> None:
    """No handover to a follower of equal priority, nor to a priority-2 one that stopped acking."""
    u = unit(tmp_path)
    elect(u)
    u.node.handle_heartbeat_ack(HeartbeatAck(1, "a", 1, 2))
    while u.clock.seconds() < 5.0:
        seq = u.rpc.heartbeats[-1].seq
        u.node.handle_heartbeat_ack(HeartbeatAck(1, "b", seq, 1))
        u.clock.advance(0.25)
    assert u.node.is_leader()
    assert all(hb.transfer_to == "" for hb in u.rpc.heartbeats)


@pytest.mark.parametrize("priority", [-1, 2**32, True, 1.5, "2", None])
def test_invalid_priority_refused(tmp_path: Path, priority: Any) -> None:
    """A priority that is not a whole number in [0, 2**32-1] raises ProtocolModeError."""
    with pytest.raises(ProtocolModeError):
        unit(tmp_path, priority=priority)


@pytest.mark.parametrize("protocol", ["raft", "", "GRAFT", None])
def test_invalid_protocol_refused(tmp_path: Path, protocol: Any) -> None:
    """A protocol other than "graft-tx" or "graft" raises ProtocolModeError."""
    with pytest.raises(ProtocolModeError):
        graft_tx.new(
            ClusterInfo("cluster", 3),
            RecordingHandler(),
            RecordingRpc(),
            str(tmp_path / "node"),
            clock=Clock(),
            protocol=protocol,
        )


def test_graft_tx_needs_an_acking_rpc(tmp_path: Path) -> None:
    """graft-tx with an rpc lacking IAckingRpc raises RpcRequiredError; graft mode accepts it."""
    path = str(tmp_path / "node")
    with pytest.raises(RpcRequiredError):
        graft_tx.new(ClusterInfo("cluster", 3), RecordingHandler(), PlainRpc(), path, clock=Clock())
    node = graft_tx.new(
        ClusterInfo("cluster", 3),
        RecordingHandler(),
        PlainRpc(),
        path,
        clock=Clock(),
        protocol="graft",
    )
    assert node.protocol == "graft"
    node.close()


# -- close ---------------------------------------------------------------------


def test_close_fails_pending_transfer(tmp_path: Path) -> None:
    """close() during a transfer fails it with TransferError and leaves no delayed call."""
    u = unit(tmp_path)
    lead(u, ("a",))
    d = u.node.transfer_leadership("a")
    result_of(u.node.close())
    assert failure_of(d).check(TransferError)
    assert u.node.state is X
    assert u.clock.getDelayedCalls() == []


def test_close_of_leader_fires_when_not_leader(tmp_path: Path) -> None:
    """close() of a leader fires when_not_leader, reports no state change, leaves no timer."""
    u = unit(tmp_path)
    lead(u, ("a",))
    wnl = u.node.when_not_leader()
    assert not fired(wnl)
    result_of(u.node.close())
    assert fired(wnl)
    assert not u.node.is_leader()
    assert u.rpc.closed
    assert u.clock.getDelayedCalls() == []
    assert u.changes() == [StateChange(F, C), StateChange(C, L)]


# -- proofs on a MemoryNetwork -------------------------------------------------


def test_inverted_split_old_leader_yields_before_majority_elects(tmp_path: Path) -> None:
    """{leader, follower} vs 3: old leader yields within min+heartbeat, never two leases at once."""
    net = Net(tmp_path).start_all()
    old = net.elect()
    net.run(1.0)
    assert net.agreed() is old
    term = old.current_term
    others = sorted((node for node in net.nodes.values() if node is not old), key=lambda n: n.id)
    partner, rest = others[0], others[1:]
    net.network.split([old, partner], rest)
    split_at = net.clock.seconds()

    net.run(TIMING.election_timeout_min + HEARTBEAT)
    assert old.state is F
    assert not old.is_leader()
    assert old.current_term == term

    net.run(5.0, until=net.leaders)
    (new,) = net.leaders()
    assert new in rest
    assert new.current_term > term
    assert net.clock.seconds() - split_at < 3.0
    net.run(2.0)
    assert net.leaders() == [new]
    # The minority could never raise its term: pre-votes need a quorum.
    assert old.current_term == term
    assert partner.current_term == term
    assert partner.state is F

    net.network.restore()
    net.run(3.0)
    assert net.agreed() is new
    assert {node.current_term for node in net.nodes.values()} == {new.current_term}
    net.close()


def test_isolated_node_rejoins_without_disturbing_the_leader(tmp_path: Path) -> None:
    """A node cut off for 10 election timeouts neither raises its term nor disturbs the leader."""
    net = Net(tmp_path).start_all()
    leader = net.elect()
    net.run(1.0)
    term = leader.current_term
    loner = next(node for node in net.nodes.values() if node is not leader)
    rest = [node for node in net.nodes.values() if node is not loner]
    net.network.split([loner], rest)
    split_at = net.clock.seconds()

    def steady() -> None:
        assert leader.is_leader()
        for node in rest:
            assert (node.leader, node.current_term) == (leader.id, term)

    net.run(10 * TIMING.election_timeout_max, each=steady)
    assert loner.current_term == term
    assert loner.state is F
    # It kept asking, but only ever for pre-votes, all for the same term.
    asked = {d.message for t, d in net.wire if t > split_at and d.sender == loner.id}
    assert asked == {VoteRequest(term + 1, loner.id, pre_vote=True)}
    sent = [t for t, d in net.wire if t > split_at and d.sender == loner.id]
    assert len(sent) >= 9 * (len(net.ids) - 1)

    net.network.restore()
    net.run(2.0, each=steady)
    assert loner.leader == leader.id
    assert loner.current_term == term
    assert loner.state is F
    assert net.agreed() is leader
    net.close()


@pytest.mark.parametrize("named", [True, False], ids=["transfer_leadership", "step_down"])
def test_transfer_moves_leader_within_two_heartbeats(tmp_path: Path, named: bool) -> None:
    """transfer_leadership(target) / step_down() moves the lease within 2 heartbeat intervals."""
    net = Net(tmp_path).start_all()
    old = net.elect()
    net.run(1.0)
    term = old.current_term
    followers = sorted((n for n in net.nodes.values() if n is not old), key=lambda n: n.id)
    target = followers[0] if named else None
    became: list[tuple[str, float, int, bool]] = []

    def watch(node: Node) -> None:
        def record(term: int) -> None:
            became.append((node.id, net.clock.seconds(), term, node.is_leader()))

        # A follower that never leads sees its waiter fail when the net closes.
        node.when_leader().addCallbacks(record, lambda f: f.trap(NodeClosedError))

    for node in followers:
        watch(node)
    outcome: list[object] = []
    start = net.clock.seconds()
    d = old.transfer_leadership(target.id) if target is not None else old.step_down()
    d.addBoth(outcome.append)
    assert not old.is_leader()
    net.run(2 * HEARTBEAT, until=lambda: net.leaders() and outcome)
    assert net.clock.seconds() - start <= 2 * HEARTBEAT
    (new,) = net.leaders()
    assert new is not old
    if target is not None:
        assert new is target
    assert outcome == [new.id]
    ((who, when, when_term, leading),) = became
    assert (who, when_term, leading) == (new.id, term + 1, True)
    assert when - start <= 2 * HEARTBEAT
    net.run(2.0)
    assert net.agreed() is new
    assert new.current_term == term + 1
    net.close()


def _services(net: Net) -> dict[str, GraftService]:
    services = {
        node_id: GraftService(
            net.info,
            RecordingHandler(),
            net.network.rpc(),
            str(net.directory / node_id),
            clock=net.clock,
            timing=net.timing,
            node_id=node_id,
            rng=random.Random(f"{net.seed}-{node_id}"),
        )
        for node_id in net.ids
    }
    for node_id, service in services.items():
        service.startService()
        assert service.node is not None
        net.nodes[node_id] = service.node
    return services


def test_stopping_leader_service_hands_over_first(tmp_path: Path) -> None:
    """GraftService.stopService on the leader moves the lease within 2 heartbeats, then closes."""
    net = Net(tmp_path)
    services = _services(net)
    old = net.elect()
    net.run(1.0)
    term = old.current_term
    at_stop: list[tuple[float, State, list[tuple[str, State, int]]]] = []

    def stopped(_: object) -> None:
        others = [(n.id, n.state, n.current_term) for n in net.nodes.values() if n is not old]
        at_stop.append((net.clock.seconds(), old.state, others))

    start = net.clock.seconds()
    services[old.id].stopService().addCallback(stopped)
    assert old.state is not X
    net.run(2 * HEARTBEAT, until=lambda: net.leaders() and at_stop)
    assert net.clock.seconds() - start <= 2 * HEARTBEAT
    (new,) = net.leaders()
    assert new is not old
    ((when, state, others),) = at_stop
    assert state is X
    # When it closed, the new leader had already won its election.
    assert (new.id, L, term + 1) in others
    assert when - start <= 2 * HEARTBEAT
    assert old.id not in net.network.node_ids
    del net.nodes[old.id]
    net.run(1.0)
    assert net.agreed() is new
    net.close()


def test_stopping_follower_service_just_closes(tmp_path: Path) -> None:
    """GraftService.stopService on a follower closes it at once and sends no transfer."""
    net = Net(tmp_path)
    services = _services(net)
    leader = net.elect()
    net.run(1.0)
    follower = next(n for n in net.nodes.values() if n is not leader)
    result_of(services[follower.id].stopService())
    assert follower.state is X
    del net.nodes[follower.id]
    net.run(1.0)
    assert net.agreed() is leader
    assert not any(isinstance(d.message, Heartbeat) and d.message.transfer_to for _, d in net.wire)
    net.close()


def test_higher_priority_node_takes_over_on_memory_network(tmp_path: Path) -> None:
    """A priority-2 node joining a cluster led by a priority-1 node becomes its leader."""
    net = Net(tmp_path, size=3)
    net.start("n0")
    net.start("n1")
    first = net.elect()
    late = net.start("n2", priority=2)
    net.run(TIMING.election_timeout_max + 10 * HEARTBEAT, until=late.is_leader)
    assert late.is_leader(), f"{first} kept leading: {list(net.nodes.values())}"
    net.run(2.0)
    assert net.agreed() is late
    net.close()


SCHEDULES = 200
DRIFT_SCHEDULES = 20


def _random_group(rng: random.Random, ids: list[str]) -> tuple[list[str], list[str]]:
    shuffled = rng.sample(ids, len(ids))
    cut = rng.randint(1, len(ids) - 1)
    return shuffled[:cut], shuffled[cut:]


def _play(directory: Path, seed: int) -> None:
    """One seeded schedule of a 3-node cluster: random latencies, splits, heals and
    transfers, checked at every event (see L{Net}); then healed, it agrees on a leader."""
    rng = random.Random(seed)
    low = rng.uniform(0.0005, 0.01)
    latency = (low, low + rng.uniform(0, 0.04))
    # Every message and timer is checked anyway; the step only adds samples.
    net = Net(directory, size=3, seed=seed, latency=latency, step=0.025)
    net.start_all()
    try:
        for _ in range(14):
            action = rng.random()
            if action < 0.3:
                net.network.restore()
                net.network.split(*_random_group(rng, net.ids))
            elif action < 0.45:
                net.network.restore()
            else:
                leading = [n for n in net.nodes.values() if n.state is L]
                if leading and action < 0.75:
                    target = rng.choice([None, *net.ids])
                    leading[0].transfer_leadership(target).addErrback(lambda _: None)
            net.run(rng.uniform(0.05, 1.5))
        net.network.restore()
        net.run(3.0)
        assert net.agreed() is not None, f"no agreed leader: {list(net.nodes.values())}"
    except AssertionError as e:
        raise AssertionError(f"seed {seed}: {e}") from e
    net.close()


def test_no_two_leases_at_once_under_random_splits_and_transfers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In 200 seeded schedules of splits, heals and transfers, no two leases ever overlap."""
    # The state files are really written and renamed; flushing them to the
    # disk would only cost time (test_statefile covers durability).
    monkeypatch.setattr(os, "fsync", lambda fd: None)
    for seed in range(SCHEDULES):
        _play(tmp_path / str(seed), seed)


def test_no_two_leases_at_once_with_clock_drift_within_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A leader cut off with the slowest clock (others fastest, within DRIFT) yields in time."""
    monkeypatch.setattr(os, "fsync", lambda fd: None)
    # Narrow election timeouts make the others campaign about as early as they may.
    timing = Timing(election_timeout_min=0.5, election_timeout_max=0.6, heartbeat_interval=0.1)
    # (1 - m) / (1 + m) stays just above 1 - DRIFT: the tightest drift the lease allows.
    m = graft_tx.lease.DRIFT / 2
    assert (1 - m) / (1 + m) > 1 - graft_tx.lease.DRIFT - 0.003
    for seed in range(DRIFT_SCHEDULES):
        net = Net(tmp_path / str(seed), size=3, seed=seed, timing=timing, step=0.025, drifting=True)
        net.start_all()
        old = net.elect()
        net.run(1.0)
        rest = [node for node in net.nodes.values() if node is not old]
        net.monotonic[old.id].set_rate(1 - m)
        for node in rest:
            net.monotonic[node.id].set_rate(1 + m)
        net.network.split([old], rest)
        try:
            net.run(3.0)
        except AssertionError as e:
            raise AssertionError(f"seed {seed}: {e}") from e
        assert any(node.is_leader() for node in rest), f"seed {seed}: no new leader"
        net.close()
