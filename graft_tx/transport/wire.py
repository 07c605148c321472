"""graft's protobuf wire format, shared by the transports that speak it.

Field numbers and meanings are documented in C{graft.proto} beside this
module. Decoding never trusts its input: anything that is not a well-formed
message of this cluster raises L{WireError}, for the transport to drop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from google.protobuf.message import DecodeError

from graft_tx.dispatch import Message
from graft_tx.errors import GraftError, MessageError
from graft_tx.messages import Heartbeat, HeartbeatAck, VoteRequest, VoteResponse
from graft_tx.transport import graft_pb2 as pb

PROTOCOL = "graft-tx/1"
# "" is what Go graft sends: it has no protocol field.
KNOWN_PROTOCOLS = frozenset({"", PROTOCOL})

M = TypeVar("M", VoteRequest, VoteResponse, Heartbeat, HeartbeatAck)


class WireError(GraftError, ValueError):
    """A payload that is not a valid message for this node; drop it."""


def wire_protocol(mode: str) -> str:
    """The protocol field a node in protocol C{mode} sends ("" in graft mode, as Go)."""
    return PROTOCOL if mode == "graft-tx" else ""


def encode(message: Message, cluster_size: int, protocol: str = PROTOCOL) -> bytes:
    """The protobuf bytes of C{message}, with graft_tx's extra fields."""
    if isinstance(message, VoteRequest):
        return pb.VoteRequest(
            term=message.term,
            candidate=message.candidate,
            current_state=message.current_state,
            cluster_size=cluster_size,
            protocol=protocol,
            pre_vote=message.pre_vote,
            transfer=message.transfer,
        ).SerializeToString()
    if isinstance(message, VoteResponse):
        return pb.VoteResponse(
            term=message.term,
            granted=message.granted,
            voter=message.voter,
            cluster_size=cluster_size,
            protocol=protocol,
            pre_vote=message.pre_vote,
        ).SerializeToString()
    if isinstance(message, HeartbeatAck):
        return pb.HeartbeatAck(
            term=message.term,
            follower=message.follower,
            seq=message.seq,
            priority=message.priority,
            window_us=message.window_us,
            cluster_size=cluster_size,
            protocol=protocol,
        ).SerializeToString()
    return pb.Heartbeat(
        term=message.term,
        leader=message.leader,
        cluster_size=cluster_size,
        protocol=protocol,
        seq=message.seq,
        transfer_to=message.transfer_to,
    ).SerializeToString()


def read_vote_request(payload: bytes, cluster_size: int) -> tuple[VoteRequest, str]:
    """A VoteRequest and the protocol its sender runs; see L{_parse}."""
    w = _parse(pb.VoteRequest(), payload, cluster_size)
    fields = (w.term, w.candidate, w.current_state, w.pre_vote, w.transfer)
    return _checked(VoteRequest, *fields), w.protocol


def read_vote_response(payload: bytes, cluster_size: int) -> tuple[VoteResponse, str]:
    """A VoteResponse and the protocol its sender runs; see L{_parse}."""
    w = _parse(pb.VoteResponse(), payload, cluster_size)
    return _checked(VoteResponse, w.term, w.granted, w.voter, w.pre_vote), w.protocol


def read_heartbeat(payload: bytes, cluster_size: int) -> tuple[Heartbeat, str]:
    """A Heartbeat and the protocol its sender runs; see L{_parse}."""
    w = _parse(pb.Heartbeat(), payload, cluster_size)
    return _checked(Heartbeat, w.term, w.leader, w.seq, w.transfer_to), w.protocol


def read_heartbeat_ack(payload: bytes, cluster_size: int) -> tuple[HeartbeatAck, str]:
    """A HeartbeatAck and the protocol its sender runs; see L{_parse}."""
    w = _parse(pb.HeartbeatAck(), payload, cluster_size)
    fields = (w.term, w.follower, w.seq, w.priority, w.window_us)
    return _checked(HeartbeatAck, *fields), w.protocol


W = TypeVar("W", pb.VoteRequest, pb.VoteResponse, pb.Heartbeat, pb.HeartbeatAck)


def _parse(wire: W, payload: bytes, cluster_size: int) -> W:
    """Fill C{wire} from C{payload}.

    @raise WireError: the payload does not decode, or the message comes from
        a cluster of another size or a protocol this node does not know.
    """
    name = type(wire).__name__
    try:
        wire.ParseFromString(payload)
    except (DecodeError, ValueError) as e:
        raise WireError(f"not a {name}: {e}") from None
    if wire.protocol not in KNOWN_PROTOCOLS:
        raise WireError(f"{name} of unknown protocol {wire.protocol!r}")
    if wire.cluster_size and wire.cluster_size != cluster_size:
        raise WireError(
            f"{name} from a cluster of {wire.cluster_size} nodes; this one has "
            f"{cluster_size}: every node of a cluster must be given the same size"
        )
    return wire


def _checked(kind: Callable[..., M], *fields: object) -> M:
    try:
        return kind(*fields)
    except MessageError as e:
        raise WireError(f"invalid message: {e}") from None
