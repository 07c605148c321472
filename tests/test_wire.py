"""graft's protobuf wire format: Go graft's field numbers, graft_tx's additions, hostile input."""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.descriptor_pb2 import FileDescriptorProto
from hypothesis import given, settings
from hypothesis import strategies as st

from graft_tx import Heartbeat, HeartbeatAck, VoteRequest, VoteResponse
from graft_tx.errors import MessageError
from graft_tx.messages import MAX_ID_LENGTH
from graft_tx.transport import graft_pb2 as pb
from graft_tx.transport import wire
from graft_tx.transport.wire import (
    PROTOCOL,
    WireError,
    encode,
    read_heartbeat,
    read_heartbeat_ack,
    read_vote_request,
    read_vote_response,
)

MAX_TERM = 2**64 - 1
PROJECT_ROOT = Path(__file__).resolve().parent.parent
PROTO = "graft_tx/transport/graft.proto"

VARINT, FIXED64, LENGTH_DELIMITED, FIXED32 = 0, 1, 2, 5

# The fields of graft.proto: number -> (name, protobuf type, wire type).
SCHEMA: dict[str, dict[int, tuple[str, int, int]]] = {
    "VoteRequest": {
        1: ("term", FieldDescriptor.TYPE_UINT64, VARINT),
        2: ("candidate", FieldDescriptor.TYPE_STRING, LENGTH_DELIMITED),
        3: ("current_state", FieldDescriptor.TYPE_BYTES, LENGTH_DELIMITED),
        10: ("cluster_size", FieldDescriptor.TYPE_UINT32, VARINT),
        11: ("protocol", FieldDescriptor.TYPE_STRING, LENGTH_DELIMITED),
        12: ("pre_vote", FieldDescriptor.TYPE_BOOL, VARINT),
        13: ("transfer", FieldDescriptor.TYPE_BOOL, VARINT),
    },
    "VoteResponse": {
        1: ("term", FieldDescriptor.TYPE_UINT64, VARINT),
        2: ("granted", FieldDescriptor.TYPE_BOOL, VARINT),
        3: ("voter", FieldDescriptor.TYPE_STRING, LENGTH_DELIMITED),
        10: ("cluster_size", FieldDescriptor.TYPE_UINT32, VARINT),
        11: ("protocol", FieldDescriptor.TYPE_STRING, LENGTH_DELIMITED),
        12: ("pre_vote", FieldDescriptor.TYPE_BOOL, VARINT),
    },
    "Heartbeat": {
        1: ("term", FieldDescriptor.TYPE_UINT64, VARINT),
        2: ("leader", FieldDescriptor.TYPE_STRING, LENGTH_DELIMITED),
        10: ("cluster_size", FieldDescriptor.TYPE_UINT32, VARINT),
        11: ("protocol", FieldDescriptor.TYPE_STRING, LENGTH_DELIMITED),
        12: ("seq", FieldDescriptor.TYPE_UINT64, VARINT),
        13: ("transfer_to", FieldDescriptor.TYPE_STRING, LENGTH_DELIMITED),
    },
    "HeartbeatAck": {
        1: ("term", FieldDescriptor.TYPE_UINT64, VARINT),
        2: ("follower", FieldDescriptor.TYPE_STRING, LENGTH_DELIMITED),
        3: ("seq", FieldDescriptor.TYPE_UINT64, VARINT),
        4: ("priority", FieldDescriptor.TYPE_UINT32, VARINT),
        5: ("window_us", FieldDescriptor.TYPE_UINT64, VARINT),
        10: ("cluster_size", FieldDescriptor.TYPE_UINT32, VARINT),
        11: ("protocol", FieldDescriptor.TYPE_STRING, LENGTH_DELIMITED),
    },
}

Decoder = Callable[[bytes, int], tuple[object, str]]
DECODERS: list[Decoder] = [
    read_vote_request,
    read_vote_response,
    read_heartbeat,
    read_heartbeat_ack,
]


# -- an independent protobuf reader and writer ---------------------------------
# Small enough to check by eye against the protobuf encoding guide, and
# sharing nothing with google.protobuf.


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """The varint at C{pos} and the position after it."""
    result = shift = 0
    while True:
        if pos >= len(data) or shift >= 70:
            raise ValueError("bad varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def read_fields(data: bytes) -> list[tuple[int, int, int | bytes]]:
    """Every (field number, wire type, value) of a message, in wire order."""
    fields: list[tuple[int, int, int | bytes]] = []
    pos = 0
    while pos < len(data):
        key, pos = read_varint(data, pos)
        number, wire_type = key >> 3, key & 7
        value: int | bytes
        if wire_type == VARINT:
            value, pos = read_varint(data, pos)
        elif wire_type in (FIXED64, FIXED32):
            size = 8 if wire_type == FIXED64 else 4
            value, pos = int.from_bytes(data[pos : pos + size], "little"), pos + size
        elif wire_type == LENGTH_DELIMITED:
            length, pos = read_varint(data, pos)
            value, pos = data[pos : pos + length], pos + length
        else:
            raise ValueError(f"wire type {wire_type}")
        if pos > len(data) or number == 0:
            raise ValueError("truncated or field 0")
        fields.append((number, wire_type, value))
    return fields


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def field(number: int, wire_type: int, value: int | bytes) -> bytes:
    """One field on the wire (used by the property tests; vectors are literal)."""
    key = varint(number << 3 | wire_type)
    if wire_type == VARINT:
        assert isinstance(value, int)
        return key + varint(value)
    if wire_type in (FIXED64, FIXED32):
        assert isinstance(value, int)
        return key + value.to_bytes(8 if wire_type == FIXED64 else 4, "little")
    assert isinstance(value, bytes)
    return key + varint(len(value)) + value


def expected_fields(kind: str, values: dict[str, object]) -> dict[int, tuple[int, int | bytes]]:
    """What proto3 puts on the wire for C{values}: defaults are left out."""
    out: dict[int, tuple[int, int | bytes]] = {}
    for number, (name, _, wire_type) in SCHEMA[kind].items():
        value = values[name]
        if isinstance(value, str):
            value = value.encode("utf-8")
        if isinstance(value, bool):
            value = int(value)
        if value:
            assert isinstance(value, int | bytes)
            out[number] = (wire_type, value)
    return out


def fields_by_number(data: bytes) -> dict[int, tuple[int, int | bytes]]:
    fields = read_fields(data)
    numbers = [number for number, _, _ in fields]
    assert len(numbers) == len(set(numbers)), f"a field was sent twice: {fields}"
    return {number: (wire_type, value) for number, wire_type, value in fields}


# -- the schema ----------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(SCHEMA))
def test_proto_descriptor_has_go_graft_field_numbers(kind: str) -> None:
    """graft_pb2 declares exactly the documented field numbers, names and types."""
    descriptor = getattr(pb, kind).DESCRIPTOR
    declared = {f.number: (f.name, f.type) for f in descriptor.fields}
    assert declared == {number: (name, kind_) for number, (name, kind_, _) in SCHEMA[kind].items()}
    # proto3 without "optional": defaults are left off the wire, as Go graft does.
    assert FileDescriptorProto.FromString(pb.DESCRIPTOR.serialized_pb).syntax == "proto3"
    assert not [f.name for f in descriptor.fields if f.has_presence]


def test_protocol_constant() -> None:
    """graft_tx's protocol string is graft-tx/1 and Go graft's empty one is known."""
    assert PROTOCOL == "graft-tx/1"
    assert set(wire.KNOWN_PROTOCOLS) == {"", "graft-tx/1"}


def _serialized_descriptor(generated: Path) -> bytes:
    """The bytes given to AddSerializedFile in a generated _pb2.py, without importing it."""
    for node in ast.walk(ast.parse(generated.read_text(encoding="utf-8"))):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "AddSerializedFile"
        ):
            value = ast.literal_eval(node.args[0])
            assert isinstance(value, bytes)
            return value
    raise AssertionError(f"no AddSerializedFile call in {generated}")


def test_committed_pb2_matches_proto(tmp_path: Path) -> None:
    """graft_pb2.py and graft_pb2.pyi are what protoc makes of graft.proto today."""
    if importlib.util.find_spec("grpc_tools") is None:
        pytest.skip("grpc_tools is not installed (pip install '.[lint]' brings grpcio-tools)")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROJECT_ROOT}",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            PROTO,
        ],
        check=True,
        capture_output=True,
    )
    generated = tmp_path / "graft_tx" / "transport"
    assert _serialized_descriptor(generated / "graft_pb2.py") == pb.DESCRIPTOR.serialized_pb
    committed = PROJECT_ROOT / "graft_tx" / "transport"
    assert (generated / "graft_pb2.pyi").read_bytes() == (committed / "graft_pb2.pyi").read_bytes()


# -- what this project encodes --------------------------------------------------


def test_encoded_vote_request_has_documented_fields() -> None:
    """An encoded VoteRequest carries fields 1, 2, 3, 10 and 11 with the right wire types."""
    data = encode(VoteRequest(7, "node-a", b"\x00pos"), 5)
    assert fields_by_number(data) == {
        1: (VARINT, 7),
        2: (LENGTH_DELIMITED, b"node-a"),
        3: (LENGTH_DELIMITED, b"\x00pos"),
        10: (VARINT, 5),
        11: (LENGTH_DELIMITED, b"graft-tx/1"),
    }
    parsed = pb.VoteRequest.FromString(data)
    assert (parsed.term, parsed.candidate, parsed.current_state) == (7, "node-a", b"\x00pos")
    assert (parsed.cluster_size, parsed.protocol) == (5, "graft-tx/1")


def test_encoded_vote_response_has_documented_fields() -> None:
    """An encoded VoteResponse carries term, granted, voter (field 3), size and protocol."""
    data = encode(VoteResponse(MAX_TERM, True, "voter-1"), 3)
    assert fields_by_number(data) == {
        1: (VARINT, MAX_TERM),
        2: (VARINT, 1),
        3: (LENGTH_DELIMITED, b"voter-1"),
        10: (VARINT, 3),
        11: (LENGTH_DELIMITED, b"graft-tx/1"),
    }
    parsed = pb.VoteResponse.FromString(data)
    assert (parsed.term, parsed.granted, parsed.voter) == (MAX_TERM, True, "voter-1")
    assert (parsed.cluster_size, parsed.protocol) == (3, "graft-tx/1")


def test_encoded_heartbeat_has_documented_fields() -> None:
    """An encoded Heartbeat carries term, leader, size and protocol, and nothing else."""
    data = encode(Heartbeat(42, "lead"), 1)
    assert fields_by_number(data) == {
        1: (VARINT, 42),
        2: (LENGTH_DELIMITED, b"lead"),
        10: (VARINT, 1),
        11: (LENGTH_DELIMITED, b"graft-tx/1"),
    }
    parsed = pb.Heartbeat.FromString(data)
    assert (parsed.term, parsed.leader, parsed.cluster_size, parsed.protocol) == (
        42,
        "lead",
        1,
        "graft-tx/1",
    )


def test_encoded_defaults_are_left_out() -> None:
    """proto3: term 0, granted false, empty voter and state are not on the wire at all."""
    assert fields_by_number(encode(VoteResponse(0, False), 2)) == {
        10: (VARINT, 2),
        11: (LENGTH_DELIMITED, b"graft-tx/1"),
    }
    assert fields_by_number(encode(VoteRequest(0, "c"), 2)) == {
        2: (LENGTH_DELIMITED, b"c"),
        10: (VARINT, 2),
        11: (LENGTH_DELIMITED, b"graft-tx/1"),
    }


def test_encoded_go_graft_prefix_is_byte_exact() -> None:
    """The Go graft fields come first and byte for byte as Go's encoder writes them."""
    assert encode(VoteRequest(5, "abc", b"x"), 3) == (
        b"\x08\x05\x12\x03abc\x1a\x01x" + b"\x50\x03" + b"\x5a\x0agraft-tx/1"
    )
    assert encode(Heartbeat(42, "lead"), 5) == b"\x08\x2a\x12\x04lead\x50\x05\x5a\x0agraft-tx/1"
    assert encode(VoteResponse(7, True), 5) == b"\x08\x07\x10\x01\x50\x05\x5a\x0agraft-tx/1"


# -- hand-made vectors with Go graft's field numbers -----------------------------


def test_go_vote_request_decodes() -> None:
    """Go graft's VoteRequest (term 5, candidate abc, state x) decodes, of protocol ""."""
    data = b"\x08\x05\x12\x03abc\x1a\x01x"
    assert read_vote_request(data, 3) == (VoteRequest(5, "abc", b"x"), "")


def test_go_vote_response_without_voter_decodes() -> None:
    """Go graft's VoteResponse (no voter field) decodes with an empty voter."""
    assert read_vote_response(b"\x08\x07\x10\x01", 3)[0] == VoteResponse(7, True, "")
    assert read_vote_response(b"\x08\x07", 3)[0] == VoteResponse(7, False, "")


def test_go_heartbeat_decodes() -> None:
    """Go graft's Heartbeat (term 42, leader lead) decodes."""
    assert read_heartbeat(b"\x08\x2a\x12\x04lead", 3) == (Heartbeat(42, "lead"), "")


def test_vote_response_voter_is_field_3() -> None:
    """graft_tx's voter id rides in field 3 of VoteResponse."""
    assert read_vote_response(b"\x08\x07\x10\x01\x1a\x02v1", 3)[0] == VoteResponse(7, True, "v1")


def test_largest_term_decodes_from_a_ten_byte_varint() -> None:
    """Term 2**64-1, a 10-byte varint, decodes exactly in every message."""
    term = b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"
    assert read_vote_request(term + b"\x12\x01c", 1)[0] == VoteRequest(MAX_TERM, "c")
    assert read_vote_response(term + b"\x10\x01", 1)[0] == VoteResponse(MAX_TERM, True)
    assert read_heartbeat(term + b"\x12\x01l", 1)[0] == Heartbeat(MAX_TERM, "l")


# Unknown fields of every wire type: varint (field 4 = 150), fixed64 (field 5),
# length-delimited (field 6, "xyz"), fixed32 (field 7), and a high field
# number (1000, varint 1).
UNKNOWN = (
    b"\x20\x96\x01\x29\x01\x02\x03\x04\x05\x06\x07\x08\x32\x03xyz\x3d\xde\xad\xbe\xef\xc0\x3e\x01"
)


@pytest.mark.parametrize(
    ("decode", "known", "expected"),
    [
        (
            read_vote_request,
            [b"\x08\x05", b"\x12\x03abc", b"\x1a\x01x"],
            VoteRequest(5, "abc", b"x"),
        ),
        (
            read_vote_response,
            [b"\x08\x07", b"\x10\x01", b"\x1a\x01v"],
            VoteResponse(7, True, "v"),
        ),
        (read_heartbeat, [b"\x08\x2a", b"\x12\x04lead"], Heartbeat(42, "lead")),
    ],
    ids=["VoteRequest", "VoteResponse", "Heartbeat"],
)
def test_unknown_fields_are_skipped_anywhere(
    decode: Decoder, known: list[bytes], expected: object
) -> None:
    """Unknown fields of each wire type, before, between and after known ones, are ignored."""
    assert decode(UNKNOWN + b"".join(known), 3)[0] == expected
    assert decode(b"".join(known) + UNKNOWN, 3)[0] == expected
    assert decode(UNKNOWN.join(known), 3)[0] == expected
    assert decode(UNKNOWN + UNKNOWN.join(known) + UNKNOWN, 3)[0] == expected


@pytest.mark.parametrize(
    ("decode", "known", "expected"),
    [
        (
            read_vote_request,
            [b"\x08\x05", b"\x12\x03abc", b"\x1a\x01x"],
            VoteRequest(5, "abc", b"x"),
        ),
        (
            read_vote_response,
            [b"\x08\x07", b"\x10\x01", b"\x1a\x01v"],
            VoteResponse(7, True, "v"),
        ),
        (read_heartbeat, [b"\x08\x2a", b"\x12\x04lead"], Heartbeat(42, "lead")),
    ],
    ids=["VoteRequest", "VoteResponse", "Heartbeat"],
)
def test_fields_in_any_order(decode: Decoder, known: list[bytes], expected: object) -> None:
    """The known fields decode the same in reverse order and with size and protocol first."""
    extra = [b"\x50\x03", b"\x5a\x0agraft-tx/1"]
    assert decode(b"".join(reversed(known)), 3)[0] == expected
    assert decode(b"".join(extra + known), 3)[0] == expected
    assert decode(b"".join(reversed(known + extra)), 3)[0] == expected


def test_repeated_scalar_last_one_wins() -> None:
    """A scalar field sent several times takes its last value, as protobuf says."""
    assert read_vote_request(b"\x08\x01\x12\x01a\x08\x05\x12\x01b", 3)[0] == VoteRequest(5, "b")
    assert read_vote_response(b"\x10\x01\x08\x03\x10\x00", 3)[0] == VoteResponse(3, False)
    assert read_heartbeat(b"\x12\x01x\x08\x09\x12\x01y\x08\x02", 3)[0] == Heartbeat(2, "y")


def test_repeated_cluster_size_last_one_wins() -> None:
    """With cluster_size sent twice, the node judges the last one."""
    data = b"\x08\x01\x12\x01l\x50\x03\x50\x05"
    assert read_heartbeat(data, 5)[0] == Heartbeat(1, "l")
    with pytest.raises(WireError):
        read_heartbeat(data, 3)


# -- accepted and refused messages ---------------------------------------------


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 1000])
def test_go_messages_accepted_by_a_node_of_any_size(size: int) -> None:
    """A Go graft message (no cluster_size, no protocol) is accepted whatever the node's size."""
    assert read_vote_request(b"\x08\x05\x12\x03abc\x1a\x01x", size)[0] == VoteRequest(
        5, "abc", b"x"
    )
    assert read_vote_response(b"\x08\x07\x10\x01", size)[0] == VoteResponse(7, True)
    assert read_heartbeat(b"\x08\x2a\x12\x04lead", size)[0] == Heartbeat(42, "lead")


@pytest.mark.parametrize(
    ("decode", "message"),
    [
        (read_vote_request, VoteRequest(1, "c", b"s")),
        (read_vote_response, VoteResponse(1, True, "v")),
        (read_heartbeat, Heartbeat(1, "l")),
    ],
    ids=["VoteRequest", "VoteResponse", "Heartbeat"],
)
def test_other_cluster_size_refused(
    decode: Decoder, message: VoteRequest | VoteResponse | Heartbeat
) -> None:
    """A message from a cluster of another size raises WireError naming both sizes."""
    data = encode(message, 3)
    assert decode(data, 3)[0] == message
    with pytest.raises(WireError, match=r"3 nodes.*5"):
        decode(data, 5)


@pytest.mark.parametrize("decode", DECODERS, ids=lambda d: d.__name__)
@pytest.mark.parametrize("protocol", [b"graft-tx/2", b"graft/1", b"GRAFT-TX/1", b" "])
def test_unknown_protocol_refused(decode: Decoder, protocol: bytes) -> None:
    """A message of a protocol this node does not know raises WireError."""
    body = b"\x08\x01\x12\x01a\x1a\x01a"  # valid for all three kinds
    assert decode(body + b"\x5a\x0agraft-tx/1", 3)[0] is not None
    with pytest.raises(WireError, match="protocol"):
        decode(body + b"\x5a" + bytes([len(protocol)]) + protocol, 3)


def test_empty_candidate_refused() -> None:
    """A VoteRequest without a candidate, or with an empty one, raises WireError."""
    for data in (b"\x08\x05", b"\x08\x05\x12\x00", b"\x08\x05\x1a\x01x\x50\x03"):
        with pytest.raises(WireError):
            read_vote_request(data, 3)


def test_empty_leader_refused() -> None:
    """A Heartbeat without a leader, or with an empty one, raises WireError."""
    for data in (b"\x08\x05", b"\x08\x05\x12\x00", b"", b"\x50\x03\x5a\x0agraft-tx/1"):
        with pytest.raises(WireError):
            read_heartbeat(data, 3)


def test_non_printable_ids_refused() -> None:
    """Control characters in a candidate, voter or leader id raise WireError."""
    with pytest.raises(WireError):
        read_vote_request(b"\x08\x05\x12\x03a\nb", 3)
    with pytest.raises(WireError):
        read_vote_response(b"\x08\x05\x1a\x02a\x00", 3)
    with pytest.raises(WireError):
        read_heartbeat(b"\x08\x05\x12\x02\x1bx", 3)


@pytest.mark.parametrize(
    ("decode", "data"),
    [
        (read_vote_request, b"\x08\x05\x12\x02\xff\xfe"),
        (read_vote_request, b"\x08\x05\x12\x01c\x5a\x02\xc3\x28"),
        (read_vote_response, b"\x08\x05\x1a\x01\x80"),
        (read_vote_response, b"\x08\x05\x5a\x03\xed\xa0\x80"),  # a UTF-8 encoded surrogate
        (read_heartbeat, b"\x08\x05\x12\x04lea\xff"),
        (read_heartbeat, b"\x08\x05\x12\x01l\x5a\x01\xfe"),
    ],
)
def test_invalid_utf8_refused(decode: Decoder, data: bytes) -> None:
    """Invalid UTF-8 in a string field (id or protocol) raises WireError."""
    with pytest.raises(WireError):
        decode(data, 3)


def test_current_state_is_opaque_bytes() -> None:
    """current_state is bytes: any content, including invalid UTF-8, decodes as given."""
    state = bytes(range(256))
    data = b"\x08\x05\x12\x01c\x1a\x80\x02" + state
    assert read_vote_request(data, 3)[0] == VoteRequest(5, "c", state)


@pytest.mark.parametrize(
    "message",
    [
        VoteRequest(MAX_TERM, "candidate-1", b"\xffposition"),
        VoteResponse(300, True, "voter-9"),
        VoteResponse(1, False),
        Heartbeat(2**40, "the-leader"),
    ],
    ids=repr,
)
def test_truncated_messages_raise_wire_error_or_decode(
    message: VoteRequest | VoteResponse | Heartbeat,
) -> None:
    """Every prefix of a valid encoding raises WireError or decodes to a valid message."""
    data = encode(message, 3)
    decode = {
        VoteRequest: read_vote_request,
        VoteResponse: read_vote_response,
        Heartbeat: read_heartbeat,
    }[type(message)]
    refused = 0
    for end in range(len(data)):
        try:
            decoded = decode(data[:end], 3)[0]
        except WireError:
            refused += 1
        else:
            assert isinstance(decoded, type(message))
    assert decode(data, 3)[0] == message
    # Cuts inside a field are refused, not misread: most prefixes are.
    assert refused > len(data) // 2


# -- properties ----------------------------------------------------------------

sizes = st.integers(min_value=1, max_value=2**32 - 1)
terms = st.integers(min_value=0, max_value=MAX_TERM)
# Printable text without '.', as node ids are; surrogates cannot be encoded.
id_chars = st.characters(
    exclude_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"),
    exclude_characters=".",
    include_characters=" ",
)
ids = st.text(id_chars, min_size=1, max_size=20)
messages = st.one_of(
    st.builds(VoteRequest, terms, ids, st.binary(max_size=40)),
    st.builds(VoteResponse, terms, st.booleans(), st.one_of(st.just(""), ids)),
    st.builds(Heartbeat, terms, ids),
)


@settings(max_examples=300, deadline=None)
@given(message=messages, size=sizes)
def test_round_trip(message: VoteRequest | VoteResponse | Heartbeat, size: int) -> None:
    """encode then decode gives back any valid message, and the wire matches graft.proto."""
    data = encode(message, size)
    decode = {
        VoteRequest: read_vote_request,
        VoteResponse: read_vote_response,
        Heartbeat: read_heartbeat,
    }[type(message)]
    assert decode(data, size) == (message, PROTOCOL)
    values = {**vars(message), "cluster_size": size, "protocol": PROTOCOL}
    assert fields_by_number(data) == expected_fields(type(message).__name__, values)


@settings(max_examples=500, deadline=None)
@given(payload=st.binary(max_size=80), size=sizes)
def test_random_bytes_raise_only_wire_error(payload: bytes, size: int) -> None:
    """Random bytes given to any decoder either decode or raise WireError, nothing else."""
    for decode in DECODERS:
        with contextlib.suppress(WireError):
            decode(payload, size)


KINDS = {
    "VoteRequest": VoteRequest,
    "VoteResponse": VoteResponse,
    "Heartbeat": Heartbeat,
    "HeartbeatAck": HeartbeatAck,
}
# Known field numbers of any message, and unknown ones.
field_numbers = st.sampled_from([1, 2, 3, 4, 9, 10, 11, 12, 13, 99, 2**29 - 1])


@st.composite
def random_field(draw: st.DrawFn, kind: str) -> tuple[int, int, int | bytes]:
    """A well-formed field: known numbers with their own wire type, unknown ones with any."""
    number = draw(field_numbers)
    known = SCHEMA[kind].get(number)
    wire_type = (
        known[2] if known else draw(st.sampled_from([VARINT, FIXED64, LENGTH_DELIMITED, FIXED32]))
    )
    if wire_type == LENGTH_DELIMITED:
        if known and known[1] == FieldDescriptor.TYPE_STRING:
            texts = st.one_of(st.sampled_from(["", PROTOCOL, "a", "graft-tx/2"]), st.text())
            # Sometimes bytes that are not UTF-8, which protobuf refuses in a string.
            raw = st.one_of(texts.map(str.encode), st.binary(max_size=8))
            return number, wire_type, draw(raw)
        return number, wire_type, draw(st.binary(max_size=20))
    if known and known[1] == FieldDescriptor.TYPE_UINT32:
        return number, wire_type, draw(st.sampled_from([0, 1, 3, 5, 2**32 - 1]))
    bits = {VARINT: 64, FIXED64: 64, FIXED32: 32}[wire_type]
    return number, wire_type, draw(st.integers(min_value=0, max_value=2**bits - 1))


@st.composite
def random_message(draw: st.DrawFn) -> tuple[str, list[tuple[int, int, int | bytes]]]:
    kind = draw(st.sampled_from(sorted(SCHEMA)))
    return kind, draw(st.lists(random_field(kind), max_size=8))


def model_decode(
    kind: str, fields: list[tuple[int, int, int | bytes]], size: int
) -> object | type[WireError]:
    """What decoding must give, by protobuf's rules and graft_tx's checks."""
    values: dict[str, object] = {"term": 0, "granted": False, "current_state": b""}
    values |= {"candidate": "", "voter": "", "leader": "", "cluster_size": 0, "protocol": ""}
    values |= {"pre_vote": False, "transfer": False, "seq": 0, "transfer_to": ""}
    values |= {"follower": "", "priority": 0, "window_us": 0}
    for number, _, value in fields:
        if number not in SCHEMA[kind]:
            continue
        name, type_, _ = SCHEMA[kind][number]
        if type_ == FieldDescriptor.TYPE_STRING:
            assert isinstance(value, bytes)
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                return WireError
        elif type_ == FieldDescriptor.TYPE_BOOL:
            value = bool(value)
        values[name] = value  # the last one wins
    if values["protocol"] not in ("", PROTOCOL):
        return WireError
    if values["cluster_size"] not in (0, size):
        return WireError
    names = [name for name, _, _ in SCHEMA[kind].values()]
    args = [values[name] for name in names if name not in ("cluster_size", "protocol")]
    try:
        return KINDS[kind](*args)
    except ValueError:
        return WireError


@settings(max_examples=500, deadline=None)
@given(message=random_message(), size=st.sampled_from([1, 3, 5]))
def test_decoding_agrees_with_an_independent_model(
    message: tuple[str, list[tuple[int, int, int | bytes]]], size: int
) -> None:
    """Well-formed field sequences decode as protobuf's rules and graft_tx's checks say."""
    kind, fields = message
    data = b"".join(field(*f) for f in fields)
    assert read_fields(data) == fields
    decode = {
        "VoteRequest": read_vote_request,
        "VoteResponse": read_vote_response,
        "Heartbeat": read_heartbeat,
        "HeartbeatAck": read_heartbeat_ack,
    }[kind]
    expected = model_decode(kind, fields, size)
    if expected is WireError:
        with pytest.raises(WireError):
            decode(data, size)
    else:
        assert decode(data, size)[0] == expected


def test_ids_longer_than_the_limit_are_refused() -> None:
    """An id of more than MAX_ID_LENGTH characters (a megabyte from a stranger) is refused,
    and the error quotes only its start; one of exactly the limit passes."""
    longest = "n" * MAX_ID_LENGTH
    assert read_heartbeat(wire.encode(Heartbeat(1, longest), 3), 3)[0].leader == longest
    huge = pb.Heartbeat(term=1, leader="x" * 1_000_000, cluster_size=3).SerializeToString()
    with pytest.raises(WireError) as raised:
        read_heartbeat(huge, 3)
    assert len(str(raised.value)) < 200
    with pytest.raises(MessageError):
        HeartbeatAck(1, "y" * (MAX_ID_LENGTH + 1), 1)
