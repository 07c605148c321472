"""The seams of graft_tx: transports, handlers, and the node as transports see it.

Data flows one way: a transport decodes a message and hands it to the node
through L{IElectionNode}; the node decides and sends through L{IRpc}; the
node's handlers hear about the outcome on a later reactor turn.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

from graft_tx.cluster import State, StateChangeDetail
from graft_tx.messages import Heartbeat, HeartbeatAck, VoteRequest, VoteResponse


class IElectionNode(Interface):
    """What a transport may see of a node: who it is and where to deliver.

    The C{handle_*} methods must be called on the reactor thread. They never
    raise for a well-formed message; they may send replies through the rpc
    before they return.
    """

    id = Attribute("This node's id (str, unique within the cluster).")
    cluster_info = Attribute("The node's L{graft_tx.ClusterInfo}.")
    protocol = Attribute('The protocol mode: "graft-tx" or "graft".')

    def handle_vote_request(req: VoteRequest) -> None:
        """
        Deliver a candidate's vote request.

        @param req: the request.
        @type req: L{graft_tx.messages.VoteRequest}
        """

    def handle_vote_response(resp: VoteResponse) -> None:
        """
        Deliver a voter's answer to one of this node's vote requests.

        @param resp: the answer.
        @type resp: L{graft_tx.messages.VoteResponse}
        """

    def handle_heartbeat(hb: Heartbeat) -> None:
        """
        Deliver a leader's heartbeat.

        @param hb: the heartbeat.
        @type hb: L{graft_tx.messages.Heartbeat}
        """

    def handle_heartbeat_ack(ack: HeartbeatAck) -> None:
        """
        Deliver a follower's acknowledgement of one of this node's heartbeats.

        @type ack: L{graft_tx.messages.HeartbeatAck}
        """


class IRpc(Interface):
    """A transport that carries one node's messages to its cluster's peers.

    Sends are fire-and-forget: the election tolerates lost messages, so a
    transport drops what it cannot deliver rather than queueing it. No method
    may call back into the node synchronously; inbound messages arrive on a
    later reactor turn.
    """

    def init(node: IElectionNode) -> None:
        """
        Attach the transport to C{node} and start receiving for it.

        Called once, by L{graft_tx.new}, before the node's timers start. Raise
        to refuse the node (for instance an id the transport cannot carry);
        the node is then not started.

        @param node: the node to deliver inbound messages to.
        @type node: L{IElectionNode}
        """

    def close() -> Deferred[None] | None:
        """
        Stop receiving and sending for the node.

        @return: L{None}, or a L{twisted.internet.defer.Deferred} that fires
            once the transport has released everything it holds.
        """

    def request_vote(req: VoteRequest) -> None:
        """
        Send a vote request to every other node of the cluster.

        @type req: L{graft_tx.messages.VoteRequest}
        """

    def heartbeat(hb: Heartbeat) -> None:
        """
        Send a heartbeat to every other node of the cluster.

        @type hb: L{graft_tx.messages.Heartbeat}
        """

    def send_vote_response(candidate_id: str, resp: VoteResponse) -> None:
        """
        Send a vote response to one candidate.

        @param candidate_id: the id of the candidate that asked.
        @type candidate_id: L{str}
        @type resp: L{graft_tx.messages.VoteResponse}
        """


class IAckingRpc(IRpc):
    """A transport that also carries heartbeat acknowledgements, which the
    graft-tx protocol needs (leader leases, check quorum)."""

    def send_heartbeat_ack(leader_id: str, ack: HeartbeatAck) -> None:
        """
        Send an acknowledgement to the leader that sent the heartbeat.

        @type leader_id: L{str}
        @type ack: L{graft_tx.messages.HeartbeatAck}
        """


class IStateHandler(Interface):
    """Hears about a node's state changes and background errors.

    Calls come on the reactor thread, on a later turn than the event itself,
    in the order the events happened. A handler must not block; it may call
    back into the node (even C{close()}). An exception it raises is logged
    and otherwise ignored.
    """

    def state_changed(from_state: State, to_state: State) -> None:
        """
        The node moved from C{from_state} to C{to_state} (never equal).

        @type from_state: L{graft_tx.State}
        @type to_state: L{graft_tx.State}
        """

    def async_error(error: Exception) -> None:
        """
        Something failed in the background, such as writing the state file.

        @type error: L{Exception}
        """


class IDetailedStateHandler(IStateHandler):
    """A handler that wants the term and leader of each change as they were
    when it happened (by the time a handler runs, both may have moved on).

    The node calls C{state_changed_detail} instead of C{state_changed}.
    """

    def state_changed_detail(change: StateChangeDetail) -> None:
        """
        The node changed state.

        @type change: L{graft_tx.cluster.StateChangeDetail}
        """


class IStateMachineHandler(IStateHandler):
    """A handler that also takes part in vote decisions.

    A handler that provides only L{IStateHandler} gets the default policy:
    every vote that the election rules allow is granted.
    """

    def current_state() -> bytes:
        """
        This node's position, sent with its vote requests.

        @rtype: L{bytes}
        """

    def grant_vote(position: bytes) -> bool:
        """
        Whether to vote for a candidate whose position is C{position}.

        Asked only after the election rules allow the vote.

        @type position: L{bytes}
        @rtype: L{bool}
        """


class ITransportStats(Interface):
    """The counters a transport keeps about traffic it could not carry, for
    metrics and status pages.

    Each counter only grows, from 0 when the transport is made. A counter
    is L{None} where the transport has no such thing (a NATS transport
    refuses no connections; a TCP peer of the other protocol mode is
    refused at its handshake, so it sends no messages to count).
    """

    invalid_messages = Attribute(
        "Inbound messages, lines or connections dropped as invalid: undecodable, "
        "of another cluster, failing authentication, or never completing a handshake "
        "(L{int})."
    )
    other_protocol_messages = Attribute(
        "Inbound messages from a node of the other protocol mode (graft or graft-tx). "
        "They are still delivered: a cluster mid-upgrade keeps electing "
        "(L{int}, or L{None})."
    )
    failed_sends = Attribute(
        "Outgoing messages the transport tried to send and failed to "
        "(L{int}, or L{None} where a send cannot fail on its own)."
    )
    dropped_outgoing = Attribute(
        "Outgoing messages not sent because a peer or the server was not connected (L{int})."
    )
    refused_connections = Attribute(
        "Inbound connections refused, or dropped before their handshake ended to make "
        "room for newer ones (L{int}, or L{None} for a transport that accepts none)."
    )
