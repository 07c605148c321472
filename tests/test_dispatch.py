"""graft_tx.dispatch: one switch from a message's kind to the node method that takes it."""

from __future__ import annotations

from typing import Any

import pytest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from graft_tx import ClusterInfo, Heartbeat, HeartbeatAck, VoteRequest, VoteResponse
from graft_tx.dispatch import Message, deliver
from graft_tx.interfaces import IElectionNode


@implementer(IElectionNode)
class CallRecorder:
    """A node that records which handle_* method got which message."""

    def __init__(self) -> None:
        self.id = "n"
        self.cluster_info = ClusterInfo("c", 3)
        self.protocol = "graft-tx"
        self.calls: list[tuple[str, Message]] = []

    def handle_vote_request(self, req: VoteRequest) -> None:
        self.calls.append(("handle_vote_request", req))

    def handle_vote_response(self, resp: VoteResponse) -> None:
        self.calls.append(("handle_vote_response", resp))

    def handle_heartbeat(self, hb: Heartbeat) -> None:
        self.calls.append(("handle_heartbeat", hb))

    def handle_heartbeat_ack(self, ack: HeartbeatAck) -> None:
        self.calls.append(("handle_heartbeat_ack", ack))


def test_call_recorder_provides_ielectionnode() -> None:
    """The fake node these tests deliver to really provides IElectionNode."""
    assert verifyObject(IElectionNode, CallRecorder())


@pytest.mark.parametrize(
    ("message", "method"),
    [
        (VoteRequest(1, "c", b"s"), "handle_vote_request"),
        (VoteResponse(1, True, "v"), "handle_vote_response"),
        (Heartbeat(1, "l", 2), "handle_heartbeat"),
        (HeartbeatAck(1, "f", 2), "handle_heartbeat_ack"),
    ],
    ids=["VoteRequest", "VoteResponse", "Heartbeat", "HeartbeatAck"],
)
def test_each_kind_goes_to_its_own_method(message: Message, method: str) -> None:
    """deliver calls exactly the handle_* method of the message's kind, once, with it."""
    node = CallRecorder()
    deliver(node, message)
    assert node.calls == [(method, message)]


@pytest.mark.parametrize("thing", [None, b"bytes", {"type": "heartbeat"}], ids=repr)
def test_anything_else_is_a_type_error(thing: Any) -> None:
    """Something that is not a message raises TypeError and reaches no method."""
    node = CallRecorder()
    with pytest.raises(TypeError, match="not a message"):
        deliver(node, thing)
    assert node.calls == []
