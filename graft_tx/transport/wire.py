"""graft's protobuf wire format, shared by the transports that speak it.

Field numbers and meanings are documented in C{graft.proto} beside this
module. Decoding never trusts its input: anything that is not a well-formed
message of this cluster raises L{WireError}, for the transport to drop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from google.protobuf.message import DecodeError

from graft_tx.errors import GraftError, MessageError
from graft_tx.messages import Heartbeat, VoteRequest, VoteResponse
from graft_tx.transport import graft_pb2 as pb

PROTOCOL = "graft-tx/1"
# "" is what Go graft sends: it has no protocol field.
KNOWN_PROTOCOLS = frozenset({"", PROTOCOL})

Message = VoteRequest | VoteResponse | Heartbeat
M = TypeVar("M", VoteRequest, VoteResponse, Heartbeat)


class WireError(GraftError, ValueError):
    """A payload that is not a valid message for this node; drop it."""


def encode(message: Message, cluster_size: int) -> bytes:
    """The protobuf bytes of C{message}, with graft_tx's extra fields."""
    if isinstance(message, VoteRequest):
        return pb.VoteRequest(
            term=message.term,
            candidate=message.candidate,
            current_state=message.current_state,
            cluster_size=cluster_size,
            protocol=PROTOCOL,
        ).SerializeToString()
    if isinstance(message, VoteResponse):
        return pb.VoteResponse(
            term=message.term,
            granted=message.granted,
            voter=message.voter,
            cluster_size=cluster_size,
            protocol=PROTOCOL,
        ).SerializeToString()
    return pb.Heartbeat(
        term=message.term,
        leader=message.leader,
        cluster_size=cluster_size,
        protocol=PROTOCOL,
    ).SerializeToString()


def decode_vote_request(payload: bytes, cluster_size: int) -> VoteRequest:
    """Decode a VoteRequest for a cluster of C{cluster_size}; see L{_parse}."""
    wire = _parse(pb.VoteRequest(), payload, cluster_size)
    return _checked(VoteRequest, wire.term, wire.candidate, wire.current_state)


def decode_vote_response(payload: bytes, cluster_size: int) -> VoteResponse:
    """Decode a VoteResponse for a cluster of C{cluster_size}; see L{_parse}."""
    wire = _parse(pb.VoteResponse(), payload, cluster_size)
    return _checked(VoteResponse, wire.term, wire.granted, wire.voter)


def decode_heartbeat(payload: bytes, cluster_size: int) -> Heartbeat:
    """Decode a Heartbeat for a cluster of C{cluster_size}; see L{_parse}."""
    wire = _parse(pb.Heartbeat(), payload, cluster_size)
    return _checked(Heartbeat, wire.term, wire.leader)


W = TypeVar("W", pb.VoteRequest, pb.VoteResponse, pb.Heartbeat)


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
