"""The election engine: graft's half of RAFT, driven by an injected clock.

The node does no I/O of its own besides its small state file: it reacts to
messages that a transport hands it and to its own timers, and it sends
through the transport. The election and heartbeat timer belongs to the
state that armed it and is cancelled when that state ends, so a stale
election timeout can never act (graft's classic race); a leadership
transfer has a timer of its own, which ends with the transfer.
"""

from __future__ import annotations

import math
import os
import random
import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, cast

from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from zope.interface import implementer

from graft_tx.clocks import steady_clock
from graft_tx.cluster import ClusterInfo, State, StateChangeDetail, Timing, quorum

# The protocol names, where they always were.
from graft_tx.config import GRAFT as GRAFT
from graft_tx.config import GRAFT_TX as GRAFT_TX
from graft_tx.config import PROTOCOLS as PROTOCOLS
from graft_tx.config import NodeConfig, check_cluster
from graft_tx.errors import (
    HandlerError,
    HandlerRequiredError,
    LogAccessError,
    NodeClosedError,
    NodeIdError,
    RpcRequiredError,
    TransferError,
)
from graft_tx.interfaces import (
    IAckingRpc,
    IDetailedStateHandler,
    IElectionNode,
    IRpc,
    IStateHandler,
    IStateMachineHandler,
)
from graft_tx.lease import Lease
from graft_tx.messages import (
    MAX_TERM,
    Heartbeat,
    HeartbeatAck,
    VoteRequest,
    VoteResponse,
)
from graft_tx.ratelimit import RateLimitedLog
from graft_tx.statefile import PersistentState, StateFile

# A message whose term is further than this above the receiver's is dropped,
# and the receiver's term moves up by this much only: no single message can
# use up the 64-bit terms, yet a node far behind (or ahead) of the others
# catches up with a few of their messages (see README).
TERM_JUMP = 2**32
# A leader waits this many maximum election timeouts before it hands over to
# the same higher-priority follower again, doubling each time up to 8 times.
HANDOVER_BACKOFF = 10
HANDOVER_BACKOFF_MAX = 8
MIN_WAIT = 0.001


@dataclass
class NodeStats:
    """What a node has done since it started. Times are the clock's seconds
    (wall-clock time on a real reactor); None until it happened.

    The node counts in one of these; L{Node.stats} hands out copies."""

    elections_started: int = 0
    elections_won: int = 0
    votes_granted: int = 0
    heartbeats_sent: int = 0
    heartbeats_received: int = 0
    leader_changes: int = 0
    last_state_change: float | None = None
    last_heartbeat: float | None = None


@dataclass(frozen=True)
class Leadership:
    """Who leads, as this node sees it, for fencing.

    The term is the fencing token: RAFT promises at most one leader per term,
    so a resource that remembers the highest term it has seen can refuse an
    older leader. C{lease_expiry} (on the node's monotonic clock) is set only
    on a leader whose lease holds: until then no other node can be elected.
    """

    state: State
    term: int
    leader: str
    lease_expiry: float | None


@dataclass
class _Transfer:
    done: Deferred[str]
    target: str
    term: int
    timer: IDelayedCall
    # The hand-over heartbeat goes out again every heartbeat interval while
    # the transfer lasts: one lost copy, or a target still in its start
    # window, must not cost a full election. Monotonic times of the first
    # and the latest copy.
    started: float
    sent: float
    repeat: IDelayedCall | None = None


@dataclass
class _Backoff:
    """When this node may next hand over to a higher-priority follower, and
    how long it waits after that."""

    not_before: float
    delay: float


@implementer(IElectionNode)
class Node:
    """One member of an election. Build it with L{graft_tx.new}."""

    log = Logger()

    def __init__(
        self,
        config: NodeConfig,
        handler: IStateHandler,
        rpc: IRpc,
        store: StateFile,
        saved: PersistentState,
        *,
        node_id: str,
        clock: IReactorTime,
        rng: random.Random,
        monotonic: Callable[[], float] | None = None,
    ) -> None:
        info, timing, protocol = config.info, config.timing, config.protocol
        priority = config.priority
        self._config = config
        self._id = node_id
        self._info = info
        self._handler = handler
        self._machine = handler if IStateMachineHandler.providedBy(handler) else None
        self._detailed = handler if IDetailedStateHandler.providedBy(handler) else None
        self._rpc = rpc
        self._store = store
        self._clock = clock
        self._timing = timing
        self._rng = rng
        self._state = State.FOLLOWER
        self._term = saved.term
        self._vote = saved.voted_for
        self._leader = ""
        self._timer: IDelayedCall | None = None
        self._timer_serial = 0
        # What the armed timer will do; None once disarmed, which every state
        # change does, so an armed timer always belongs to the current state.
        self._timer_action: Callable[[], None] | None = None
        self._votes: set[str] = set()
        self._anonymous_votes = 0
        self._events: deque[tuple[Callable[..., object], tuple[Any, ...]]] = deque()
        self._flush_call: IDelayedCall | None = None
        self._closing: Deferred[None] | None = None
        self._closed = False
        self._counts = NodeStats()
        self._known_leader = ""
        self._known_term = 0
        self._protocol = protocol
        self._tx = protocol == GRAFT_TX
        self._priority = priority
        self._monotonic = monotonic if monotonic is not None else clock.seconds
        self._started_at = self._monotonic()
        # The promise a follower makes with each acknowledgement: no vote for
        # anyone else for this long after it heard the leader.
        self._window = timing.election_timeout_min
        # (Clamped to what the wire carries: timings have no upper bound.)
        self._window_us = min(int(self._window * 1e6), MAX_TERM)
        # A restart with shorter timings still keeps the promises its earlier
        # self made: the state file records the longest, for the start window.
        self._start_window = max(self._window, saved.window_us / 1e6)
        # An id the state file did not record is a new identity: a restart
        # that lost its file, or one under another id. Its old self's acks
        # may still count in a leader's lease, so it acks nothing until
        # those have run out, or one process would count twice.
        new_identity = saved.node_id != node_id
        self._acks_from = self._started_at + self._start_window if new_identity else -1.0
        # Promises: when this node last heard the leader it follows (and of
        # which term), when it last heard any other, and whom that leader
        # handed over to. A transfer's vote request passes only a promise
        # whose own leader named the candidate.
        self._last_contact: float | None = None
        self._promised: tuple[str, int] | None = None
        self._other_contact = -math.inf
        self._release: tuple[str, int, str] | None = None
        self._leader_since = self._started_at
        self._lease: Lease | None = None
        self._pre_votes: set[str] | None = None
        self._transfer: _Transfer | None = None
        self._backoffs: dict[str, _Backoff] = {}
        self._odd = RateLimitedLog(self.log, clock)
        self._leader_waiters: list[Deferred[int]] = []
        self._not_leader_waiters: list[Deferred[None]] = []

    # -- what users read ------------------------------------------------

    @property
    def id(self) -> str:
        return self._id

    @property
    def cluster_info(self) -> ClusterInfo:
        return self._info

    @property
    def state(self) -> State:
        return self._state

    @property
    def leader(self) -> str:
        """The id of the leader this node follows or is; C{""} when unknown."""
        return self._leader

    @property
    def current_term(self) -> int:
        return self._term

    @property
    def current_vote(self) -> str:
        """Whom this node voted for in the current term; C{""} for nobody."""
        return self._vote

    @property
    def log_path(self) -> str:
        return self._store.path

    @property
    def config(self) -> NodeConfig:
        """The configuration this node was made with (its C{node_id} as given)."""
        return self._config

    @property
    def timing(self) -> Timing:
        return self._timing

    @property
    def protocol(self) -> str:
        """C{"graft-tx"} (every safety feature) or C{"graft"} (Go graft's behaviour)."""
        return self._protocol

    @property
    def priority(self) -> int:
        return self._priority

    def monotonic(self) -> float:
        """The node's monotonic clock, on which lease expiries are given."""
        return self._monotonic()

    def is_leader(self) -> bool:
        """Whether this node leads now. In graft-tx mode: only while its lease
        holds, that is while no other node can have been elected."""
        if self._state is not State.LEADER:
            return False
        if not self._tx:
            return True
        return self._lease is not None and self._lease.holds(self._monotonic())

    def leadership(self) -> Leadership:
        """State, term, leader and lease expiry, read together (see L{Leadership})."""
        expiry = None
        if self.is_leader() and self._lease is not None:
            expiry = self._lease.expiry
        return Leadership(self._state, self._term, self._leader, expiry)

    def when_leader(self) -> Deferred[int]:
        """Fires with the term once this node leads with a lease (at once if it does).

        Fails with L{NodeClosedError} if the node closes first.
        """
        if self.is_leader():
            return succeed(self._term)
        if self._state is State.CLOSED:
            return fail(NodeClosedError(f"node {self._id} is closed"))
        waiter: Deferred[int] = Deferred(lambda d: self._leader_waiters.remove(d))
        self._leader_waiters.append(waiter)
        return waiter

    def when_not_leader(self) -> Deferred[None]:
        """Fires when this node stops leading (at once if L{is_leader} is false).

        A leader whose lease lapsed steps down at its next heartbeat, so this
        fires at most a heartbeat interval after L{is_leader} turned false.
        """
        if not self.is_leader():
            return succeed(None)
        waiter: Deferred[None] = Deferred(lambda d: self._not_leader_waiters.remove(d))
        self._not_leader_waiters.append(waiter)
        return waiter

    def transfer_leadership(self, target_id: str | None = None) -> Deferred[str]:
        """Hand leadership to C{target_id} (default: the most up-to-date follower).

        The leader stops leading at once and tells the target to campaign
        without waiting, which it wins in about one round trip.

        @return: a Deferred that fires with the new leader's id, or fails
            with L{TransferError} (not the leader, no follower to take over,
            or no new leader within the maximum election timeout; the old
            leader then campaigns again as usual).
        """
        if not self._tx:
            return fail(TransferError("leadership transfer needs protocol='graft-tx'"))
        if not self.is_leader() or self._lease is None:
            return fail(TransferError(f"node {self._id} is not the leader (with a lease)"))
        lease = self._lease
        if target_id is None:
            target_id = lease.best_follower()
            if target_id is None:
                return fail(TransferError("no follower that can lead has acknowledged this leader"))
        elif target_id not in lease.acked:
            return fail(TransferError(f"{target_id!r} is not a follower heard by this leader"))
        if lease.priorities.get(target_id, 1) == 0:
            return fail(TransferError(f"{target_id!r} has priority 0 and never leads"))
        done: Deferred[str] = Deferred()
        # A transfer still pending from an earlier term has failed: we lead again.
        self._end_transfer(None, f"node {self._id} leads again in term {self._term}")
        seq = lease.next_heartbeat(self._monotonic())
        self._send(self._rpc.heartbeat, Heartbeat(self._term, self._id, seq, target_id))
        self.log.info(
            "node {node} hands leadership of {cluster} to {target} in term {term}",
            node=self._id,
            cluster=self._info.name,
            target=target_id,
            term=self._term,
        )
        timer = self._clock.callLater(self._timing.election_timeout_max, self._transfer_timed_out)
        now = self._monotonic()
        self._transfer = _Transfer(done, target_id, self._term, timer, now, now)
        self._leader = ""
        self._set_state(State.FOLLOWER)
        self._reset_election_timer()
        self._repeat_handover()
        return done

    def _repeat_handover(self) -> None:
        transfer = self._transfer
        if transfer is not None:
            transfer.repeat = self._clock.callLater(
                self._timing.heartbeat_interval, self._send_handover, transfer
            )

    def _send_handover(self, transfer: _Transfer) -> None:
        transfer.repeat = None
        now = self._monotonic()
        if (
            self._transfer is not transfer
            # A newer term: the target campaigned (its heartbeat ends the transfer).
            or self._term != transfer.term
            or self._leader
            # Never after a pause, which a leader would not have survived.
            or now - transfer.sent > 2 * self._timing.heartbeat_interval
        ):
            return
        transfer.sent = now
        self._send(self._rpc.heartbeat, Heartbeat(self._term, self._id, 0, transfer.target))
        self._repeat_handover()

    def step_down(self) -> Deferred[str]:
        """L{transfer_leadership} to whichever follower is best placed."""
        return self.transfer_leadership()

    def _transfer_timed_out(self) -> None:
        transfer = self._transfer
        if transfer is not None:
            self._end_transfer(
                None,
                f"{transfer.target} did not take over within {self._timing.election_timeout_max}s",
            )

    def _end_transfer(self, leader: str | None, error: str = "") -> None:
        """Fire the pending transfer with the new C{leader}, or fail it with C{error}."""
        transfer, self._transfer = self._transfer, None
        if transfer is None:
            return
        for call in (transfer.timer, transfer.repeat):
            if call is not None and call.active():
                call.cancel()
        if leader is None:
            transfer.done.errback(TransferError(error))
        else:
            transfer.done.callback(leader)

    def stats(self) -> NodeStats:
        """A snapshot of this node's counters, for status pages and metrics."""
        return replace(self._counts)

    def __repr__(self) -> str:
        return (
            f"<Node {self._id} of {self._info.name!r}: {self._state} "
            f"term={self._term} leader={self._leader!r}>"
        )

    # -- life cycle -----------------------------------------------------

    def start(self) -> None:
        """Begin as a follower with the election timer armed (done by L{new})."""
        if self._state is State.FOLLOWER and self._timer is None:
            self._reset_election_timer()

    def close(self) -> Deferred[None]:
        """Stop timers and the transport and move to CLOSED, keeping the state file.

        Emits no state change. Handler calls for events that happened before
        are still made, during this call. Idempotent.

        @return: a Deferred that fires (never fails) once the transport is closed.
        """
        if self._state is not State.CLOSED:
            self._disarm()
            was_leader = self._state is State.LEADER
            self._state = State.CLOSED
            self._votes.clear()
            self._lease = None
            self._end_transfer(None, f"node {self._id} closed")
            if was_leader:
                self._release_not_leader()
            self._fail_leader_waiters()
            self.log.info("node {node} of {cluster} closed", node=self._id, cluster=self._info.name)
            self._closing = maybeDeferred(self._close_rpc)
            self._closing.addErrback(self._log_close_failure)
            self._closing.addCallback(self._mark_closed)
            self._flush_events()
        if self._closed:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        assert self._closing is not None
        self._closing.addCallback(lambda _: waiter.callback(None))
        return waiter

    def _close_rpc(self) -> Deferred[None]:
        closed = self._rpc.close()
        return succeed(None) if closed is None else closed

    def _log_close_failure(self, failure: Failure) -> None:
        self.log.failure("closing the transport of node {node} failed", failure, node=self._id)

    def _mark_closed(self, _: object) -> None:
        self._closed = True

    # -- inbound messages ----------------------------------------------

    def _admit(self, term: int, sender: str, kind: str) -> bool:
        """Whether a message of C{term} from C{sender} is worth reading."""
        if self._state is State.CLOSED or sender == self._id:
            return False
        if term - self._term <= TERM_JUMP:
            return True
        self._odd.warn(
            "node {node} dropped a {kind} from {sender} of term {term}, more than 2**32 above "
            "its own term {own}",
            node=self._id,
            kind=kind,
            sender=sender,
            term=term,
            own=self._term,
        )
        if kind != "pre-vote request":
            # Step towards it: one message cannot use the terms up, and a node
            # left behind is with the others after a few of theirs.
            self._step_down(min(self._term + TERM_JUMP, MAX_TERM))
        return False

    def handle_vote_request(self, req: VoteRequest) -> None:
        kind = "pre-vote request" if req.pre_vote else "vote request"
        if not self._admit(req.term, req.candidate, kind):
            return
        if self._tx:
            if req.pre_vote:
                self._answer_pre_vote(req)
                return
            # While a live leader is heard (or just after a start, when this
            # node may have acknowledged one before), a vote request changes
            # nothing, not even the term (RAFT thesis 4.2.3): a node back from
            # a partition cannot depose a healthy leader. A transfer's request
            # passes once the start window is over, if the leader this node
            # promised named that candidate itself.
            released = req.transfer and self._released_for(req.candidate, req.term)
            if self._in_start_window() or (self._hears_leader() and not released):
                resp = VoteResponse(self._term, False, self._id)
                self._send(self._rpc.send_vote_response, req.candidate, resp)
                return
        if req.term > self._term:
            self._step_down(req.term)
        granted = self._decide_vote(req)
        self._send(
            self._rpc.send_vote_response, req.candidate, VoteResponse(self._term, granted, self._id)
        )

    def handle_vote_response(self, resp: VoteResponse) -> None:
        if not self._admit(resp.term, resp.voter, "vote response"):
            return
        if resp.pre_vote:
            if resp.granted:
                self._count_pre_vote(resp)
            elif resp.term > self._term:
                self._step_down(resp.term)
            return
        if resp.term > self._term:
            self._step_down(resp.term)
            return
        if self._state is not State.CANDIDATE or resp.term != self._term or not resp.granted:
            return
        if resp.voter:
            self._votes.add(resp.voter)
        else:
            # Go graft's nodes do not say who they are; count them as graft does.
            self._anonymous_votes += 1
        if self._has_quorum():
            self._become_leader()

    def handle_heartbeat(self, hb: Heartbeat) -> None:
        if not self._admit(hb.term, hb.leader, "heartbeat"):
            return
        if hb.term < self._term:
            if self._tx:
                # Tell the stale leader our term. Stickiness keeps it from
                # learning it from our vote requests, and a quorum acking it
                # would keep it leading while we ignore it forever.
                self._ack(hb.leader, hb.seq)
            return
        if hb.term > self._term:
            self._step_down(hb.term, leader=hb.leader)
        elif self._state is State.LEADER or self._leader not in ("", hb.leader):
            # One leader per term: a second one is a stranger or a bug. A
            # leader keeps leading; a follower follows the newest, so that a
            # stranger who spoke first cannot keep it from its real leader.
            self._odd.warn(
                "node {node} knows {leader} as the leader of term {term} of {cluster} but got "
                "a heartbeat from {other} in the same term",
                node=self._id,
                leader=self._leader,
                term=self._term,
                cluster=self._info.name,
                other=hb.leader,
            )
            if self._state is State.LEADER:
                return
        else:
            # A candidate of this term keeps its vote: it voted for itself.
            self._follow(hb.leader)
            self._set_state(State.FOLLOWER)
        self._counts.heartbeats_received += 1
        self._counts.last_heartbeat = self._clock.seconds()
        self._follow(hb.leader)
        self._reset_election_timer()
        if not self._tx:
            return
        now = self._monotonic()
        if self._promised != (hb.leader, hb.term):
            if self._last_contact is not None:
                self._other_contact = self._last_contact
            self._promised = (hb.leader, hb.term)
        self._last_contact = now
        if hb.transfer_to:
            self._release = (hb.leader, hb.term, hb.transfer_to)
        self._pre_votes = None
        if self._transfer is not None and hb.term > self._transfer.term:
            self._end_transfer(hb.leader)
        backoff = self._backoffs.get(hb.leader)
        if backoff is not None and now - self._leader_since >= backoff.delay:
            # It held leadership all this while: hand over to it freely again.
            del self._backoffs[hb.leader]
        if now >= self._acks_from:
            self._ack(hb.leader, hb.seq)
        # The target votes for itself too: only if its promises allow it.
        if (
            hb.transfer_to == self._id
            and self._priority > 0
            and not self._in_start_window()
            and self._released_for(self._id, self._term + 1)
        ):
            self._campaign(transfer=True)

    def _ack(self, leader: str, seq: int) -> None:
        ack = HeartbeatAck(self._term, self._id, seq, self._priority, self._window_us)
        self._send(cast(IAckingRpc, self._rpc).send_heartbeat_ack, leader, ack)

    def handle_heartbeat_ack(self, ack: HeartbeatAck) -> None:
        if not self._tx or not self._admit(ack.term, ack.follower, "heartbeat ack"):
            return
        if ack.term > self._term:
            self._step_down(ack.term)
            return
        lease = self._lease
        if self._state is not State.LEADER or ack.term != self._term or lease is None:
            return
        now = self._monotonic()
        held = lease.holds(now)
        crowded = lease.crowded
        if lease.ack(ack.follower, ack.seq, ack.priority, now, ack.window_us / 1e6) and not held:
            self._release_leader()
        if lease.crowded > crowded:
            self._odd.warn(
                "node {node} dropped an acknowledgement from {follower}: more ids acknowledge "
                "than {cluster} has nodes ({size}), some made up",
                node=self._id,
                follower=ack.follower,
                cluster=self._info.name,
                size=self._info.size,
            )

    # -- the algorithm --------------------------------------------------
    #
    # Every safety decision reads the monotonic clock: the reactor's clock
    # (wall time, which steps) only schedules, and a timer that fires early
    # checks again before it acts.

    def _in_start_window(self) -> bool:
        """Whether this node started less than a minimum election timeout ago
        (its earlier self's, if that was longer): it may have acknowledged a
        leader just before a restart."""
        return self._monotonic() - self._started_at < self._start_window

    def _quiet_until(self) -> float:
        """Until when this node grants no vote and campaigns not: its promise
        to the last leader it heard, and its start window."""
        contact = self._last_contact if self._last_contact is not None else -math.inf
        return max(self._started_at + self._start_window, contact + self._window)

    def _hears_leader(self) -> bool:
        """Whether a live leader was heard within the minimum election timeout
        (or this node leads with a lease, or it has just started)."""
        now = self._monotonic()
        if self._state is State.LEADER:
            return self._lease is not None and self._lease.holds(now)
        return now < self._quiet_until()

    def _released_for(self, candidate: str, term: int) -> bool:
        """Whether every promise this node still keeps was made to a leader
        that handed over to C{candidate}, for C{term}."""
        if self._monotonic() < self._other_contact + self._window:
            return False
        release = self._release
        return (
            release is not None
            and self._promised == release[:2]
            and release[2] == candidate
            and term == release[1] + 1
        )

    def _answer_pre_vote(self, req: VoteRequest) -> None:
        grant = (
            req.term > self._term
            and self._state is not State.LEADER
            and not self._hears_leader()
            and self._allow_vote(req.current_state)
        )
        resp = VoteResponse(req.term if grant else self._term, grant, self._id, pre_vote=True)
        self._send(self._rpc.send_vote_response, req.candidate, resp)

    def _count_pre_vote(self, resp: VoteResponse) -> None:
        votes = self._pre_votes
        if votes is None or resp.term != self._term + 1 or not resp.voter:
            return
        votes.add(resp.voter)
        if len(votes) >= quorum(self._info.size):
            self._pre_votes = None
            self._campaign()

    def _election_timeout(self) -> None:
        if not self._tx:
            self._campaign()
            return
        wait = self._quiet_until() - self._monotonic()
        if wait > 0:
            # The reactor's clock ran ahead of the monotonic one (a wall-clock
            # step): the promise to the leader still holds, so wait it out (in
            # steps of at least a millisecond: a shorter one could be lost in
            # the clock's rounding and fire at once, again and again).
            self._arm(max(wait, MIN_WAIT), self._election_timeout)
            return
        if self._at_last_term():
            return
        try:
            position = self._position()
        except HandlerError as e:
            self._report_error(e)
            self._reset_election_timer()
            return
        # Pre-vote: ask before raising the term; no state change is reported.
        self._pre_votes = {self._id}
        self._reset_election_timer()
        if len(self._pre_votes) >= quorum(self._info.size):
            self._pre_votes = None
            self._campaign()
            return
        req = VoteRequest(self._term + 1, self._id, position, pre_vote=True)
        self._send(self._rpc.request_vote, req)

    def _at_last_term(self) -> bool:
        """Whether no term is left to campaign in; the node still votes and follows."""
        if self._term < MAX_TERM:
            return False
        self._odd.warn(
            "node {node} cannot campaign: its term is the last one, 2**64-1", node=self._id
        )
        self._reset_election_timer()
        return True

    def _decide_vote(self, req: VoteRequest) -> bool:
        if req.term < self._term or self._state is State.LEADER:
            return False
        if self._vote not in ("", req.candidate):
            return False
        if not self._allow_vote(req.current_state):
            return False
        if self._vote != req.candidate:
            if not self._persist(self._term, req.candidate):
                return False
            self._vote = req.candidate
        self._counts.votes_granted += 1
        self._reset_election_timer()
        return True

    def _campaign(self, transfer: bool = False) -> None:
        self._pre_votes = None
        if self._at_last_term():
            return
        try:
            position = self._position()
        except HandlerError as e:
            self._report_error(e)
            self._reset_election_timer()
            return
        term = self._term + 1
        if not self._persist(term, self._id):
            # Never campaign in a term this node could not record.
            self._reset_election_timer()
            return
        self._term, self._vote, self._leader = term, self._id, ""
        self._votes = {self._id}
        self._anonymous_votes = 0
        self._counts.elections_started += 1
        self._set_state(State.CANDIDATE)
        self.log.info(
            "node {node} campaigns in term {term} of {cluster}",
            node=self._id,
            term=term,
            cluster=self._info.name,
        )
        self._reset_election_timer()
        if self._has_quorum():
            self._become_leader()
        else:
            req = VoteRequest(term, self._id, position, transfer=transfer)
            self._send(self._rpc.request_vote, req)

    def _become_leader(self) -> None:
        self._end_transfer(None, f"node {self._id} won term {self._term} itself")
        self._follow(self._id)
        self._set_state(State.LEADER)
        self._counts.elections_won += 1
        self._votes.clear()
        if self._tx:
            self._lease = Lease(
                self._monotonic(),
                self._timing.election_timeout_min,
                quorum(self._info.size),
                gap=self._window / 2,
                room=2 * self._info.size,
            )
        else:
            self._release_leader()
        self.log.info(
            "node {node} became leader of {cluster} in term {term}",
            node=self._id,
            cluster=self._info.name,
            term=self._term,
        )
        self._send_heartbeat()

    def _send_heartbeat(self) -> None:
        hb = Heartbeat(self._term, self._id)
        lease = self._lease
        if lease is not None:
            now = self._monotonic()
            if lease.lost(now):
                self._lose_quorum()
                return
            held = lease.holds(now)
            hb = Heartbeat(self._term, self._id, lease.next_heartbeat(now))
            if lease.holds(now) and not held:
                self._release_leader()
        self._counts.heartbeats_sent += 1
        self._send(self._rpc.heartbeat, hb)
        self._arm(self._timing.heartbeat_interval, self._send_heartbeat)
        target = self._priority_handover(lease) if lease is not None else None
        if target is not None:
            self._back_off(target)
            self.transfer_leadership(target).addErrback(lambda _: None)

    def _priority_handover(self, lease: Lease) -> str | None:
        """A follower of higher priority, heard steadily for a while, to hand over to."""
        now = self._monotonic()
        if self._transfer is not None or not lease.holds(now):
            return None
        steady = self._timing.election_timeout_max
        # Fresh: its newest ack is for a heartbeat sent within half a lease,
        # whatever the round trip (a heartbeat interval can be shorter).
        fresh = self._window / 2
        better = [
            f
            for f, p in lease.priorities.items()
            if p > self._priority
            and now - lease.sent_at(lease.acked.get(f, 0)) <= fresh
            and now - lease.steady_since.get(f, now) >= steady
            and now >= (b.not_before if (b := self._backoffs.get(f)) else now)
        ]
        return max(better, key=lambda f: (lease.priorities[f], f)) if better else None

    def _back_off(self, target: str) -> None:
        """The next hand-over to C{target} waits, twice as long each time, until
        it has held leadership that long: a target that cannot keep a quorum
        must not make the cluster flap."""
        base = HANDOVER_BACKOFF * self._timing.election_timeout_max
        backoff = self._backoffs.get(target)
        delay = base if backoff is None else min(2 * backoff.delay, HANDOVER_BACKOFF_MAX * base)
        self._backoffs[target] = _Backoff(self._monotonic() + delay, delay)

    def _lose_quorum(self) -> None:
        self.log.warn(
            "node {node} heard no quorum of {cluster} within {window}s in term {term}: "
            "stepping down",
            node=self._id,
            cluster=self._info.name,
            window=self._timing.election_timeout_min,
            term=self._term,
        )
        self._leader = ""
        self._set_state(State.FOLLOWER)
        self._reset_election_timer()

    def _step_down(self, term: int, leader: str = "") -> None:
        """Adopt a higher term seen in any message: no vote, FOLLOWER of C{leader}
        (C{""}: unknown)."""
        self._term, self._vote, self._leader = term, "", ""
        self._pre_votes = None
        if leader:
            self._follow(leader)
        # Stepping down is the safe direction: do it even if the write fails.
        self._persist(term, "")
        self._votes.clear()
        self._set_state(State.FOLLOWER)
        if self._timer is None:
            self._reset_election_timer()

    def _follow(self, leader: str) -> None:
        self._leader = leader
        if leader != self._known_leader:
            # A second leader in one term comes from a stranger or a bug, and
            # as often as it sends: then the line has a budget.
            same_term = self._known_leader != "" and self._known_term == self._term
            self._known_leader, self._known_term = leader, self._term
            self._leader_since = self._monotonic()
            self._counts.leader_changes += 1
            # A follower learns of a new leader without changing state: say so,
            # so a log shows when each node agreed on it.
            emit = partial(self._odd.emit, LogLevel.info) if same_term else self.log.info
            emit(
                "node {node} of {cluster}: leader is {leader} in term {term}",
                event="leader_known",
                node=self._id,
                cluster=self._info.name,
                leader=leader,
                term=self._term,
            )

    def _has_quorum(self) -> bool:
        return len(self._votes) + self._anonymous_votes >= quorum(self._info.size)

    # -- timers ---------------------------------------------------------

    def _arm(self, delay: float, action: Callable[[], None]) -> None:
        """Replace the timer with one that runs C{action} unless the state changed."""
        self._disarm()
        owner = self._state
        self._timer_action = action
        # A number, not the DelayedCall itself: a closure holding its own call
        # is a reference cycle, left for the garbage collector on every reset.
        serial = self._timer_serial

        def fire() -> None:
            if self._timer_serial != serial or self._state is not owner:
                return
            self._timer = None
            action()

        self._timer = self._clock.callLater(delay, fire)

    def _disarm(self) -> None:
        self._timer_serial += 1
        self._timer_action = None
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    def _reset_election_timer(self) -> None:
        if self._tx and self._priority == 0:
            # An observer: it votes but never campaigns.
            self._disarm()
            return
        low = self._timing.election_timeout_min
        high = self._timing.election_timeout_max
        # A higher priority draws from the low end of the range: it campaigns first.
        spread = (high - low) / max(self._priority, 1) if self._tx else high - low
        delay = low + self._rng.random() * spread
        timer = self._timer
        if timer is not None and timer.active() and self._timer_action == self._election_timeout:
            # Every heartbeat resets the timer: moving it is far cheaper for
            # the reactor than cancelling it and scheduling another.
            timer.reset(delay)
            return
        self._arm(delay, self._election_timeout)

    # -- effects --------------------------------------------------------

    def _set_state(self, new: State) -> None:
        old = self._state
        if new is old:
            return
        # The old state's timer and pre-vote round end with it.
        self._disarm()
        self._pre_votes = None
        self._state = new
        if old is State.LEADER:
            self._lease = None
            self._release_not_leader()
        self._counts.last_state_change = self._clock.seconds()
        self.log.info(
            "node {node} of {cluster}: {from_state} -> {to_state} in term {term}",
            node=self._id,
            cluster=self._info.name,
            from_state=str(old),
            to_state=str(new),
            term=self._term,
        )
        self._notify(self._report_change, StateChangeDetail(old, new, self._term, self._leader))

    def _persist(self, term: int, vote: str) -> bool:
        try:
            self._store.save(PersistentState(term, vote, self._id, self._promise_us()))
        except LogAccessError as e:
            self.log.error("node {node}: {error}", node=self._id, error=str(e))
            self._report_error(e)
            return False
        return True

    def _promise_us(self) -> int:
        """The longest promise this node may still keep, for its state file."""
        if self._in_start_window():
            return max(self._window_us, int(self._start_window * 1e6))
        return self._window_us

    def _send(self, method: Callable[..., object], *args: object) -> None:
        try:
            method(*args)
        except Exception as e:
            self.log.failure("node {node}: the transport failed to send", node=self._id)
            self._report_error(e)

    def _position(self) -> bytes:
        if self._machine is None:
            return b""
        try:
            position = self._machine.current_state()
        except Exception as e:
            self.log.failure("node {node}: current_state() raised", node=self._id)
            raise HandlerError(f"current_state() raised {e!r}") from e
        if not isinstance(position, bytes):
            raise HandlerError(f"current_state() must return bytes, not {position!r}")
        return position

    def _allow_vote(self, position: bytes) -> bool:
        if self._machine is None:
            return True
        try:
            granted = self._machine.grant_vote(position)
        except Exception as e:
            self.log.failure("node {node}: grant_vote() raised", node=self._id)
            self._report_error(HandlerError(f"grant_vote() raised {e!r}"))
            return False
        if not isinstance(granted, bool):
            self._report_error(HandlerError(f"grant_vote() must return a bool, not {granted!r}"))
            return False
        return granted

    # -- handler delivery -----------------------------------------------

    def _release_leader(self) -> None:
        waiters, self._leader_waiters = self._leader_waiters, []
        for waiter in waiters:
            waiter.callback(self._term)

    def _fail_leader_waiters(self) -> None:
        waiters, self._leader_waiters = self._leader_waiters, []
        for waiter in waiters:
            waiter.errback(NodeClosedError(f"node {self._id} closed before it led"))

    def _release_not_leader(self) -> None:
        waiters, self._not_leader_waiters = self._not_leader_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _report_change(self, change: StateChangeDetail) -> None:
        if self._detailed is not None:
            self._detailed.state_changed_detail(change)
        else:
            self._handler.state_changed(change.from_state, change.to_state)

    def _report_error(self, error: Exception) -> None:
        self._notify(self._handler.async_error, error)

    def _notify(self, fn: Callable[..., object], *args: Any) -> None:
        """Call a handler method on a later turn, after those queued before it."""
        self._events.append((fn, args))
        if self._flush_call is None and self._state is not State.CLOSED:
            self._flush_call = self._clock.callLater(0, self._flush_events)

    def _flush_events(self) -> None:
        if self._flush_call is not None:
            if self._flush_call.active():
                self._flush_call.cancel()
            self._flush_call = None
        while self._events:
            fn, args = self._events.popleft()
            try:
                fn(*args)
            except Exception:
                self.log.failure("node {node}: the handler raised; carrying on", node=self._id)


def _random_id() -> str:
    return secrets.token_hex(12)


def owner_id(saved: PersistentState, node_id: str | None, path: str) -> str:
    """The id a node started on state file C{path} runs under: C{node_id},
    else the id the file records, else a new one.

    @raise NodeIdError: C{node_id} is not the id the file records.
    """
    if node_id is None:
        return saved.node_id or _random_id()
    if saved.node_id and saved.node_id != node_id:
        raise NodeIdError(
            f"state file {path!r} belongs to node {saved.node_id!r}, not {node_id!r}: "
            "start it as that node (or without a node id), or give this node a file of its own"
        )
    return node_id


def new(
    info: ClusterInfo,
    handler: IStateHandler | None,
    rpc: IRpc | None,
    log_path: str | os.PathLike[str],
    *,
    clock: IReactorTime | None = None,
    timing: Timing | None = None,
    node_id: str | None = None,
    rng: random.Random | None = None,
    protocol: str = GRAFT_TX,
    monotonic: Callable[[], float] | None = None,
    priority: int = 1,
) -> Node:
    """Create a node, attach it to C{rpc} and start it as a FOLLOWER.

    Mirrors graft's C{New}. C{rng} seeds the election timeouts, for
    reproducible simulations.

    @raise GraftError: an argument is missing or wrong (checked in the
        order of the parameters), the state file cannot be read or is
        corrupt. An exception from C{rpc.init} propagates, and the node is
        then not started.
    """
    check_cluster(info)
    check_collaborators(handler, rpc)
    assert handler is not None and rpc is not None
    config = NodeConfig(
        info,
        log_path,  # type: ignore[arg-type]  # NodeConfig takes a PathLike too
        timing,  # type: ignore[arg-type]  # None: the defaults
        node_id,
        protocol,
        priority,
    )
    return start_node(config, handler, rpc, clock=clock, rng=rng, monotonic=monotonic)


def check_collaborators(handler: object, rpc: object) -> None:
    """Raise unless C{handler} provides IStateHandler and C{rpc} IRpc."""
    if handler is None:
        raise HandlerRequiredError("a handler is required, such as graft_tx.QueueHandler()")
    if not IStateHandler.providedBy(handler):
        raise HandlerRequiredError(
            f"handler {handler!r} does not provide IStateHandler: "
            "declare it with @implementer(IStateHandler)"
        )
    if rpc is None:
        raise RpcRequiredError("an rpc (transport) is required, such as NatsRpc or TcpRpc")
    if not IRpc.providedBy(rpc):
        raise RpcRequiredError(f"rpc {rpc!r} does not provide IRpc")


def start_node(
    config: NodeConfig,
    handler: IStateHandler,
    rpc: IRpc,
    *,
    clock: IReactorTime | None = None,
    rng: random.Random | None = None,
    monotonic: Callable[[], float] | None = None,
) -> Node:
    """L{new} for a checked configuration: load the state file, attach, start."""
    if config.leases and not IAckingRpc.providedBy(rpc):
        raise RpcRequiredError(
            f"rpc {rpc!r} cannot carry heartbeat acknowledgements (IAckingRpc), which "
            "protocol 'graft-tx' needs; use protocol='graft'"
        )
    if clock is None:
        from twisted.internet import reactor

        clock = reactor
        # The reactor's clock is wall time, which jumps; leases need a steady one.
        monotonic = monotonic or steady_clock()
    assert clock is not None
    path = config.state_path
    store = StateFile(path)
    saved = store.load()
    node_id = owner_id(saved, config.node_id, path)
    window_us = min(int(config.timing.election_timeout_min * 1e6), MAX_TERM)
    if saved.node_id != node_id or saved.window_us < window_us:
        # From its first start, the file names its node (a restart keeps the
        # id) and the longest promise it may keep.
        promise = max(saved.window_us, window_us)
        store.save(PersistentState(saved.term, saved.voted_for, node_id, promise))
    node = Node(
        config,
        handler,
        rpc,
        store,
        saved,
        node_id=node_id,
        clock=clock,
        rng=rng if rng is not None else random.Random(),
        monotonic=monotonic,
    )
    rpc.init(node)
    node.start()
    return node
