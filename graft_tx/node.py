"""The election engine: graft's half of RAFT, driven by an injected clock.

The node does no I/O of its own besides its small state file: it reacts to
messages that a transport hands it and to its own timers, and it sends
through the transport. Every timer belongs to the state that armed it and
is cancelled when that state ends, so a stale election timeout can never
act (graft's classic race).
"""

from __future__ import annotations

import os
import random
import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from graft_tx.cluster import ClusterInfo, State, StateChangeDetail, Timing, quorum
from graft_tx.errors import (
    ClusterNameError,
    ClusterSizeError,
    HandlerError,
    HandlerRequiredError,
    LogAccessError,
    LogRequiredError,
    MessageError,
    NodeIdError,
    RpcRequiredError,
    TimingError,
)
from graft_tx.interfaces import (
    IDetailedStateHandler,
    IElectionNode,
    IRpc,
    IStateHandler,
    IStateMachineHandler,
)
from graft_tx.messages import Heartbeat, VoteRequest, VoteResponse, check_id
from graft_tx.statefile import PersistentState, StateFile


@dataclass
class _Counts:
    elections_started: int = 0
    elections_won: int = 0
    votes_granted: int = 0
    heartbeats_sent: int = 0
    heartbeats_received: int = 0
    leader_changes: int = 0
    last_state_change: float | None = None
    last_heartbeat: float | None = None


@dataclass(frozen=True)
class NodeStats:
    """What a node has done since it started. Times are the clock's seconds
    (wall-clock time on a real reactor); None until it happened."""

    elections_started: int
    elections_won: int
    votes_granted: int
    heartbeats_sent: int
    heartbeats_received: int
    leader_changes: int
    last_state_change: float | None
    last_heartbeat: float | None


@implementer(IElectionNode)
class Node:
    """One member of an election. Build it with L{graft_tx.new}."""

    log = Logger()

    def __init__(
        self,
        info: ClusterInfo,
        handler: IStateHandler,
        rpc: IRpc,
        store: StateFile,
        saved: PersistentState,
        *,
        clock: IReactorTime,
        timing: Timing,
        node_id: str,
        rng: random.Random,
    ) -> None:
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
        self._votes: set[str] = set()
        self._anonymous_votes = 0
        self._events: deque[tuple[Callable[..., object], tuple[Any, ...]]] = deque()
        self._flush_call: IDelayedCall | None = None
        self._closing: Deferred[None] | None = None
        self._closed = False
        self._counts = _Counts()
        self._known_leader = ""

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
    def timing(self) -> Timing:
        return self._timing

    def stats(self) -> NodeStats:
        """A snapshot of this node's counters, for status pages and metrics."""
        return NodeStats(**vars(self._counts))

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
            self._state = State.CLOSED
            self._votes.clear()
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

    def handle_vote_request(self, req: VoteRequest) -> None:
        if self._state is State.CLOSED or req.candidate == self._id:
            return
        if req.term > self._term:
            self._step_down(req.term)
        granted = self._decide_vote(req)
        self._send(
            self._rpc.send_vote_response, req.candidate, VoteResponse(self._term, granted, self._id)
        )

    def handle_vote_response(self, resp: VoteResponse) -> None:
        if self._state is State.CLOSED:
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
        if self._state is State.CLOSED or hb.leader == self._id or hb.term < self._term:
            return
        if hb.term > self._term:
            self._step_down(hb.term, leader=hb.leader)
        elif self._state is State.LEADER:
            self.log.error(
                "node {node} leads term {term} of {cluster} but got a heartbeat from {other} "
                "in the same term",
                node=self._id,
                term=self._term,
                cluster=self._info.name,
                other=hb.leader,
            )
            return
        else:
            # A candidate of this term keeps its vote: it voted for itself.
            self._follow(hb.leader)
            self._set_state(State.FOLLOWER)
        self._counts.heartbeats_received += 1
        self._counts.last_heartbeat = self._clock.seconds()
        self._follow(hb.leader)
        self._reset_election_timer()

    # -- the algorithm --------------------------------------------------

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

    def _campaign(self) -> None:
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
            self._send(self._rpc.request_vote, VoteRequest(term, self._id, position))

    def _become_leader(self) -> None:
        self._follow(self._id)
        self._set_state(State.LEADER)
        self._counts.elections_won += 1
        self._votes.clear()
        self.log.info(
            "node {node} became leader of {cluster} in term {term}",
            node=self._id,
            cluster=self._info.name,
            term=self._term,
        )
        self._send_heartbeat()

    def _send_heartbeat(self) -> None:
        self._counts.heartbeats_sent += 1
        self._send(self._rpc.heartbeat, Heartbeat(self._term, self._id))
        self._arm(self._timing.heartbeat_interval, self._send_heartbeat)

    def _step_down(self, term: int, leader: str = "") -> None:
        """Adopt a higher term seen in any message: no vote, FOLLOWER of C{leader}
        (C{""}: unknown)."""
        self._term, self._vote, self._leader = term, "", ""
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
            self._known_leader = leader
            self._counts.leader_changes += 1

    def _has_quorum(self) -> bool:
        return len(self._votes) + self._anonymous_votes >= quorum(self._info.size)

    # -- timers ---------------------------------------------------------

    def _arm(self, delay: float, action: Callable[[], None]) -> None:
        """Replace the timer with one that runs C{action} unless the state changed."""
        self._disarm()
        owner = self._state

        def fire() -> None:
            if self._timer is not call or self._state is not owner:
                return
            self._timer = None
            action()

        call = self._clock.callLater(delay, fire)
        self._timer = call

    def _disarm(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    def _reset_election_timer(self) -> None:
        low = self._timing.election_timeout_min
        high = self._timing.election_timeout_max
        self._arm(low + self._rng.random() * (high - low), self._campaign)

    # -- effects --------------------------------------------------------

    def _set_state(self, new: State) -> None:
        old = self._state
        if new is old:
            return
        # The old state's timer ends with it.
        self._disarm()
        self._state = new
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
            self._store.save(PersistentState(term, vote))
        except LogAccessError as e:
            self.log.error("node {node}: {error}", node=self._id, error=str(e))
            self._report_error(e)
            return False
        return True

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
) -> Node:
    """Create a node, attach it to C{rpc} and start it as a FOLLOWER.

    Mirrors graft's C{New}. C{rng} seeds the election timeouts, for
    reproducible simulations.

    @raise GraftError: an argument is missing or wrong (checked in the
        order of the parameters), the state file cannot be read or is
        corrupt. An exception from C{rpc.init} propagates, and the node is
        then not started.
    """
    if not isinstance(info, ClusterInfo):
        raise ClusterNameError(f"info must be a graft_tx.ClusterInfo, not {info!r}")
    if not isinstance(info.name, str) or not info.name:
        raise ClusterNameError(f"the cluster needs a non-empty name, not {info.name!r}")
    if isinstance(info.size, bool) or not isinstance(info.size, int) or info.size < 1:
        raise ClusterSizeError(
            f"cluster {info.name!r} needs a size of at least 1 node, not {info.size!r}"
        )
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
    if isinstance(log_path, os.PathLike):
        log_path = os.fspath(log_path)
    if not isinstance(log_path, str) or not log_path:
        raise LogRequiredError("a path for the node's state file (log_path) is required")
    if node_id is None:
        node_id = _random_id()
    else:
        try:
            check_id("node_id", node_id)
        except MessageError as e:
            raise NodeIdError(str(e)) from None
    if timing is None:
        timing = Timing()
    elif not isinstance(timing, Timing):
        raise TimingError(f"timing must be a graft_tx.Timing, not {timing!r}")
    if clock is None:
        from twisted.internet import reactor

        clock = reactor
    assert clock is not None
    store = StateFile(log_path)
    saved = store.load()
    node = Node(
        info,
        handler,
        rpc,
        store,
        saved,
        clock=clock,
        timing=timing,
        node_id=node_id,
        rng=rng if rng is not None else random.Random(),
    )
    rpc.init(node)
    node.start()
    return node
