"""One place that hands a decoded message to the node method for its kind.

Every transport that receives all kinds of message on one channel (the
in-memory network, a TCP connection) delivers through L{deliver}; what a
transport checks before (that a peer speaks only for itself) stays with it.
"""

from __future__ import annotations

from graft_tx.interfaces import IElectionNode
from graft_tx.messages import Heartbeat, HeartbeatAck, VoteRequest, VoteResponse

Message = VoteRequest | VoteResponse | Heartbeat | HeartbeatAck


def deliver(node: IElectionNode, message: Message) -> None:
    """Call the C{handle_*} method of C{node} that takes C{message}'s kind."""
    if isinstance(message, VoteRequest):
        node.handle_vote_request(message)
    elif isinstance(message, VoteResponse):
        node.handle_vote_response(message)
    elif isinstance(message, Heartbeat):
        node.handle_heartbeat(message)
    elif isinstance(message, HeartbeatAck):
        node.handle_heartbeat_ack(message)
    else:
        raise TypeError(f"not a message: {message!r}")
