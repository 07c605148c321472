"""QueueHandler: graft's ChanHandler as two unbounded DeferredQueues."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from fakes import PolicyHandler, RecordingHandler, RecordingRpc, result_of
from twisted.internet.task import Clock

import graft_tx
import graft_tx.statefile
from graft_tx import (
    ClusterInfo,
    Heartbeat,
    LogAccessError,
    Node,
    QueueHandler,
    State,
    StateChange,
    VoteRequest,
)

# Graft's algorithm as Go graft runs it; graft-tx features are tested on their own.
pytestmark = pytest.mark.protocol("graft")

FOLLOWER, CANDIDATE, LEADER = State.FOLLOWER, State.CANDIDATE, State.LEADER


def drain(queue: object) -> list[object]:
    """Everything already waiting in a DeferredQueue, in order."""
    items = []
    while queue.pending:  # type: ignore[attr-defined]
        items.append(result_of(queue.get()))  # type: ignore[attr-defined]
    return items


def make_node(
    tmp_path: Path,
    clock: Clock,
    handler: object,
    *,
    size: int = 3,
    rpc: RecordingRpc | None = None,
    directory: str = "",
) -> Node:
    where = tmp_path / directory if directory else tmp_path
    where.mkdir(exist_ok=True)
    return graft_tx.new(
        ClusterInfo("c", size),
        handler,  # type: ignore[arg-type]
        rpc if rpc is not None else RecordingRpc(),
        str(where / "state"),
        clock=clock,
        node_id="me",
    )


def test_state_changes_in_order(tmp_path: Path) -> None:
    """A real node's state changes arrive in state_changes as StateChange values, in order."""
    clock = Clock()
    handler = QueueHandler()
    node = make_node(tmp_path, clock, handler, size=1)
    clock.advance(1.0)
    assert node.state is LEADER
    node.handle_heartbeat(Heartbeat(node.current_term + 1, "other"))
    assert node.state is FOLLOWER
    clock.advance(0)
    got = [result_of(handler.state_changes.get()) for _ in range(3)]
    assert got == [
        StateChange(FOLLOWER, CANDIDATE),
        StateChange(CANDIDATE, LEADER),
        StateChange(LEADER, FOLLOWER),
    ]
    assert handler.state_changes.pending == []
    node.close()


def test_waiting_reader_gets_change(tmp_path: Path) -> None:
    """A get() made before any event fires when the node changes state, not before."""
    clock = Clock()
    handler = QueueHandler()
    node = make_node(tmp_path, clock, handler)
    waiting = handler.state_changes.get()
    assert not waiting.called
    clock.advance(0.49)
    assert not waiting.called
    clock.advance(0.51)
    assert node.state is CANDIDATE
    assert result_of(waiting) == StateChange(FOLLOWER, CANDIDATE)
    node.close()


def test_close_puts_no_change(tmp_path: Path) -> None:
    """close() adds no state change to the queue."""
    clock = Clock()
    handler = QueueHandler()
    node = make_node(tmp_path, clock, handler)
    node.close()
    clock.advance(5)
    assert handler.state_changes.pending == []


def test_transport_error_arrives(tmp_path: Path, logged_errors: list[object]) -> None:
    """An error from the transport arrives in handler.errors, the very exception raised."""
    clock = Clock()
    handler = QueueHandler()
    rpc = RecordingRpc()
    boom = OSError("wire cut")
    rpc.fail_send = boom
    node = make_node(tmp_path, clock, handler, rpc=rpc)
    clock.advance(1.0)
    assert node.state is CANDIDATE
    assert result_of(handler.errors.get()) is boom
    assert handler.errors.pending == []
    assert logged_errors
    node.close()


def test_state_file_error_arrives(tmp_path: Path, logged_errors: list[object]) -> None:
    """A failed state-file write arrives in handler.errors as a LogAccessError."""
    clock = Clock()
    handler = QueueHandler()
    node = make_node(tmp_path, clock, handler, directory="d")
    shutil.rmtree(tmp_path / "d")
    clock.advance(1.0)
    error = result_of(handler.errors.get())
    assert isinstance(error, LogAccessError)
    # It did not campaign in a term it could not record.
    assert node.state is FOLLOWER
    assert node.current_term == 0
    assert handler.state_changes.pending == []
    assert logged_errors
    node.close()


def test_thousands_of_changes_unread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Thousands of unread state changes never raise and the node keeps its exact pace."""
    # Each campaign persists its term; durability is not under test here, and
    # thousands of real fsyncs would make this test slow on a busy disk.
    monkeypatch.setattr(graft_tx.statefile.os, "fsync", lambda fd: None)
    clock = Clock()
    handler = QueueHandler()
    rpc = RecordingRpc()
    node = make_node(tmp_path, clock, handler, rpc=rpc)
    rounds = 1000
    for _ in range(rounds):
        # The election timer fires within at most one maximum timeout...
        clock.advance(1.0)
        assert node.state is CANDIDATE
        # ...and a leader of that term turns the candidate back into a follower.
        node.handle_heartbeat(Heartbeat(node.current_term, "peer"))
        assert node.state is FOLLOWER
    clock.advance(0)
    assert node.current_term == rounds
    assert len(rpc.vote_requests) == rounds
    assert [r.term for r in rpc.vote_requests] == list(range(1, rounds + 1))
    # No backlog of delivery calls: only the election timer is on the clock.
    assert len(clock.getDelayedCalls()) == 1
    changes = drain(handler.state_changes)
    assert len(changes) == 2 * rounds
    assert changes == [StateChange(FOLLOWER, CANDIDATE), StateChange(CANDIDATE, FOLLOWER)] * rounds
    node.close()


def test_thousands_of_errors_unread(tmp_path: Path, logged_errors: list[object]) -> None:
    """Thousands of unread errors never raise, and a failing leader keeps its heartbeat pace."""
    clock = Clock()
    handler = QueueHandler()
    rpc = RecordingRpc()
    node = make_node(tmp_path, clock, handler, size=1, rpc=rpc)
    clock.advance(1.0)
    assert node.state is LEADER
    beats = 2000
    raised = []
    for i in range(beats):
        # A fresh exception each time: re-raising one instance grows its traceback.
        rpc.fail_send = OSError(f"wire cut {i}")
        raised.append(rpc.fail_send)
        clock.advance(0.1)
    assert node.state is LEADER
    clock.advance(0)
    assert len(clock.getDelayedCalls()) == 1
    errors = drain(handler.errors)
    # One heartbeat per interval, each failure reported in order.
    assert len(errors) in (beats - 1, beats)
    assert errors == raised[beats - len(errors) :]
    node.close()


def test_delegates_to_state_machine() -> None:
    """With a state_machine, current_state and grant_vote are its answers."""
    machine = PolicyHandler(position=b"pos-7", grant=False)
    handler = QueueHandler(machine)
    assert handler.current_state() == b"pos-7"
    assert handler.grant_vote(b"their-pos") is False
    assert machine.asked == [b"their-pos"]
    machine.grant = True
    assert handler.grant_vote(b"other") is True
    assert machine.asked == [b"their-pos", b"other"]


def test_state_machine_decides_through_node(tmp_path: Path) -> None:
    """A node with QueueHandler(machine) sends its position and follows its vote policy."""
    clock = Clock()
    machine = PolicyHandler(position=b"mine", grant=False)
    rpc = RecordingRpc()
    node = make_node(tmp_path, clock, QueueHandler(machine), rpc=rpc)
    node.handle_vote_request(VoteRequest(1, "peer", b"theirs"))
    assert machine.asked == [b"theirs"]
    assert rpc.last_response().granted is False
    assert node.current_vote == ""
    clock.advance(1.0)
    assert rpc.vote_requests[-1].current_state == b"mine"
    node.close()


def test_default_policy_grants() -> None:
    """Without a state_machine the position is empty and every vote is granted."""
    handler = QueueHandler()
    assert handler.current_state() == b""
    assert handler.grant_vote(b"anything") is True
    assert handler.grant_vote(b"") is True


def test_default_policy_through_node(tmp_path: Path) -> None:
    """A node with a plain QueueHandler grants an allowed vote and sends an empty position."""
    clock = Clock()
    rpc = RecordingRpc()
    node = make_node(tmp_path, clock, QueueHandler(), rpc=rpc)
    node.handle_vote_request(VoteRequest(1, "peer", b"theirs"))
    assert rpc.last_response().granted is True
    assert node.current_vote == "peer"
    node.handle_heartbeat(Heartbeat(1, "peer"))
    node.handle_heartbeat(Heartbeat(2, "peer"))
    clock.advance(1.0)
    assert node.state is CANDIDATE
    assert rpc.vote_requests[-1].current_state == b""
    node.close()


@pytest.mark.parametrize(
    "machine",
    [RecordingHandler(), object(), RecordingRpc()],
    ids=["IStateHandler", "object", "IRpc"],
)
def test_rejects_non_state_machine(machine: object) -> None:
    """A state_machine that does not provide IStateMachineHandler is a TypeError."""
    with pytest.raises(TypeError, match="IStateMachineHandler"):
        QueueHandler(machine)  # type: ignore[arg-type]
