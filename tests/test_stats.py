"""Node.stats(): the counters behind the status page and the metrics."""

from __future__ import annotations

from pathlib import Path

import pytest
from fakes import Lowest, RecordingHandler, RecordingRpc
from twisted.internet.task import Clock

import graft_tx
from graft_tx import ClusterInfo, Heartbeat, State, Timing, VoteRequest, VoteResponse

# Graft's algorithm as Go graft runs it; graft-tx features are tested on their own.
pytestmark = pytest.mark.protocol("graft")

TIMING = Timing(1.0, 1.25, 0.25)


def make(tmp_path: Path, clock: Clock, size: int = 3) -> tuple[graft_tx.Node, RecordingRpc]:
    rpc = RecordingRpc()
    node = graft_tx.new(
        ClusterInfo("stats", size),
        RecordingHandler(),
        rpc,
        str(tmp_path / "state"),
        clock=clock,
        timing=TIMING,
        node_id="me",
        rng=Lowest(),
    )
    return node, rpc


def test_fresh_node_has_counted_nothing(tmp_path: Path) -> None:
    """A new node's counters are zero and its times unset."""
    node, _ = make(tmp_path, Clock())
    stats = node.stats()
    assert (stats.elections_started, stats.elections_won, stats.votes_granted) == (0, 0, 0)
    assert (stats.heartbeats_sent, stats.heartbeats_received, stats.leader_changes) == (0, 0, 0)
    assert (stats.last_state_change, stats.last_heartbeat) == (None, None)


def test_campaign_win_and_heartbeats_are_counted(tmp_path: Path) -> None:
    """Elections started and won, heartbeats sent and the time of the change are counted."""
    clock = Clock()
    node, rpc = make(tmp_path, clock)
    clock.advance(1.0)
    assert node.stats().elections_started == 1
    assert node.stats().last_state_change == 1.0
    clock.advance(1.0)  # no votes: a second round
    assert node.stats().elections_started == 2
    node.handle_vote_response(VoteResponse(2, True, "a"))
    assert node.state is State.LEADER
    clock.pump([0.25] * 4)
    stats = node.stats()
    assert (stats.elections_won, stats.heartbeats_sent) == (1, len(rpc.heartbeats)) == (1, 5)
    assert stats.leader_changes == 1


def test_heartbeats_received_and_leader_changes(tmp_path: Path) -> None:
    """Accepted heartbeats are counted with their time; stale ones are not; a new leader counts."""
    clock = Clock()
    node, _ = make(tmp_path, clock)
    clock.advance(0.5)
    node.handle_heartbeat(Heartbeat(1, "a"))
    node.handle_heartbeat(Heartbeat(1, "a"))
    clock.advance(0.25)
    node.handle_heartbeat(Heartbeat(2, "b"))
    node.handle_heartbeat(Heartbeat(1, "a"))  # stale: ignored
    stats = node.stats()
    assert stats.heartbeats_received == 3
    assert stats.last_heartbeat == 0.75
    assert stats.leader_changes == 2


def test_votes_granted_are_counted(tmp_path: Path) -> None:
    """Each granted vote counts once; denials do not count."""
    node, _ = make(tmp_path, Clock())
    node.handle_vote_request(VoteRequest(1, "a"))
    node.handle_vote_request(VoteRequest(1, "b"))  # denied: voted for a
    node.handle_vote_request(VoteRequest(2, "b"))
    assert node.stats().votes_granted == 2
