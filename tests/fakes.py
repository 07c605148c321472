"""Test doubles shared by the test modules."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from zope.interface import implementer

from graft_tx import Heartbeat, HeartbeatAck, State, StateChange, VoteRequest, VoteResponse
from graft_tx.interfaces import (
    IAckingRpc,
    IElectionNode,
    IStateHandler,
    IStateMachineHandler,
)
from graft_tx.statefile import PersistentState, StateFile

T = TypeVar("T")


def _outcome(d: Deferred[T]) -> tuple[list[T], list[Failure]]:
    """What a Deferred that must already have fired gave: results or failures."""
    results: list[T] = []
    failures: list[Failure] = []
    d.addCallbacks(results.append, failures.append)
    assert results or failures, "the Deferred has not fired"
    return results, failures


def result_of(d: Deferred[T]) -> T:
    """The result of a Deferred that must already have fired successfully."""
    results, failures = _outcome(d)
    assert not failures, failures
    return results[0]


def failure_of(d: Deferred[Any]) -> Failure:
    """The failure of a Deferred that must already have failed (consumed here)."""
    results, failures = _outcome(d)
    assert not results, results
    return failures[0]


def fired(d: Deferred[Any]) -> bool:
    return bool(d.called)


@implementer(IAckingRpc)
class RecordingRpc:
    """An rpc that records what the node sends and delivers nothing.

    Tests play the peers by calling the node's handle_* methods directly.
    Set C{fail_init} or C{fail_send} to make the transport raise.
    """

    def __init__(self) -> None:
        self.node: IElectionNode | None = None
        self.closed = False
        self.vote_requests: list[VoteRequest] = []
        self.heartbeats: list[Heartbeat] = []
        self.vote_responses: list[tuple[str, VoteResponse]] = []
        self.acks: list[tuple[str, HeartbeatAck]] = []
        self.fail_init: Exception | None = None
        self.fail_send: Exception | None = None

    def init(self, node: IElectionNode) -> None:
        if self.fail_init is not None:
            raise self.fail_init
        self.node = node

    def close(self) -> None:
        self.closed = True

    def request_vote(self, req: VoteRequest) -> None:
        if self.fail_send is not None:
            raise self.fail_send
        self.vote_requests.append(req)

    def heartbeat(self, hb: Heartbeat) -> None:
        if self.fail_send is not None:
            raise self.fail_send
        self.heartbeats.append(hb)

    def send_vote_response(self, candidate_id: str, resp: VoteResponse) -> None:
        if self.fail_send is not None:
            raise self.fail_send
        self.vote_responses.append((candidate_id, resp))

    def send_heartbeat_ack(self, leader_id: str, ack: HeartbeatAck) -> None:
        if self.fail_send is not None:
            raise self.fail_send
        self.acks.append((leader_id, ack))

    def last_response(self) -> VoteResponse:
        return self.vote_responses[-1][1]


@implementer(IStateHandler)
class RecordingHandler:
    """A plain IStateHandler (no vote policy) that records its calls."""

    def __init__(self) -> None:
        self.changes: list[StateChange] = []
        self.errors: list[Exception] = []

    def state_changed(self, from_state: State, to_state: State) -> None:
        self.changes.append(StateChange(from_state, to_state))

    def async_error(self, error: Exception) -> None:
        self.errors.append(error)


@implementer(IStateMachineHandler)
@dataclass
class PolicyHandler:
    """An IStateMachineHandler with a settable position and vote policy."""

    position: bytes = b""
    grant: bool = True
    asked: list[bytes] = field(default_factory=list)
    changes: list[StateChange] = field(default_factory=list)
    errors: list[Exception] = field(default_factory=list)

    def state_changed(self, from_state: State, to_state: State) -> None:
        self.changes.append(StateChange(from_state, to_state))

    def async_error(self, error: Exception) -> None:
        self.errors.append(error)

    def current_state(self) -> bytes:
        return self.position

    def grant_vote(self, position: bytes) -> bool:
        self.asked.append(position)
        return self.grant


class Lowest(random.Random):
    """An rng that always draws the lowest value: every election timeout is
    exactly the minimum, so unit tests can name the instant a node campaigns."""

    def random(self) -> float:
        return 0.0


def term_and_vote(path: str, owner: str = "me") -> PersistentState:
    """The term and vote in a node's state file, which must name C{owner}."""
    state = StateFile(path).load()
    assert state.node_id == owner, f"{path} names {state.node_id!r}, not {owner!r}"
    return PersistentState(state.term, state.voted_for)
