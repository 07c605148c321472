"""The TCP transport's line codec and its HMAC helpers (graft_tx.transport.lines)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graft_tx import Heartbeat, VoteRequest, VoteResponse
from graft_tx.transport.lines import (
    VERSION,
    Keys,
    LineError,
    Message,
    decode_message,
    dump,
    encode_message,
    load,
    new_nonce,
    same,
)

MAX_TERM = 2**64 - 1
SECRET = b"cluster secret"
C1, C2 = "a" * 32, "b" * 32
S1, S2 = "c" * 32, "d" * 32
NAMES = ("cluster", "server-node", "client-node")


def parse(line: bytes) -> Message:
    """What a receiving peer makes of one line."""
    return decode_message(load(line))


def line_of(obj: Any) -> bytes:
    """A line carrying any JSON value (not only the ones dump() writes)."""
    return json.dumps(obj).encode("utf-8")


# -- round trips ----------------------------------------------------------


def test_vote_request_round_trips_with_binary_state() -> None:
    """A vote request with every byte value in its state survives encode, dump, load, decode."""
    request = VoteRequest(7, "node-1", bytes(range(256)) + b"\n\x00")
    line = dump(encode_message(request))
    assert b"\n" not in line
    assert parse(line) == request
    assert json.loads(line)["state"] == base64.b64encode(request.current_state).decode("ascii")


@pytest.mark.parametrize("granted", [True, False])
@pytest.mark.parametrize("voter", ["", "node-2"])
def test_vote_response_round_trips(granted: bool, voter: str) -> None:
    """A vote response keeps its term, granted flag and (possibly empty) voter."""
    response = VoteResponse(MAX_TERM, granted, voter)
    assert parse(dump(encode_message(response))) == response


def test_heartbeat_round_trips() -> None:
    """A heartbeat keeps its term and leader, including a non-ASCII leader id."""
    heartbeat = Heartbeat(0, "nœud-ü")
    line = dump(encode_message(heartbeat))
    assert b"\n" not in line
    assert parse(line) == heartbeat


ids = st.text(min_size=1, max_size=20).filter(str.isprintable)
terms = st.integers(0, MAX_TERM)
messages = st.one_of(
    st.builds(VoteRequest, terms, ids, st.binary(max_size=64)),
    st.builds(VoteResponse, terms, st.booleans(), st.one_of(st.just(""), ids)),
    st.builds(Heartbeat, terms, ids),
)


@settings(max_examples=200, deadline=None)
@given(messages)
def test_every_message_round_trips_on_one_line(message: Message) -> None:
    """Any valid message encodes to one line that decodes to an equal message."""
    line = dump(encode_message(message))
    assert b"\n" not in line
    assert parse(line) == message


def test_the_wire_names_match_the_readme() -> None:
    """The encoded objects carry exactly the fields the README documents."""
    assert encode_message(VoteRequest(1, "a", b"\x01")) == {
        "type": "vote_request",
        "term": 1,
        "candidate": "a",
        "state": "AQ==",
    }
    assert encode_message(VoteResponse(2, True, "b")) == {
        "type": "vote_response",
        "term": 2,
        "granted": True,
        "voter": "b",
    }
    assert encode_message(Heartbeat(3, "c")) == {"type": "heartbeat", "term": 3, "leader": "c"}
    assert VERSION == "graft-tx-tcp/1"


def test_optional_fields_default_when_missing() -> None:
    """A vote request without state has empty state; a vote response without voter, no voter."""
    assert parse(b'{"type":"vote_request","term":1,"candidate":"a"}') == VoteRequest(1, "a", b"")
    assert parse(b'{"type":"vote_response","term":1,"granted":false}') == VoteResponse(1, False)


def test_extra_fields_are_ignored() -> None:
    """Unknown fields in a known message are ignored (room for later versions)."""
    assert parse(b'{"type":"heartbeat","term":4,"leader":"a","x":[1]}') == Heartbeat(4, "a")


# -- refused lines ----------------------------------------------------------


@pytest.mark.parametrize("kind", ["vote", "hello", "auth", "error", "", "HEARTBEAT"])
def test_unknown_message_type_is_a_line_error(kind: str) -> None:
    """A type that is not one of the three messages is refused, naming the type."""
    with pytest.raises(LineError, match="unknown message type"):
        parse(line_of({"type": kind, "term": 1, "leader": "a"}))


@pytest.mark.parametrize(
    "obj",
    [
        {"type": "vote_request", "candidate": "a"},
        {"type": "vote_request", "term": 1},
        {"type": "vote_response", "granted": True},
        {"type": "vote_response", "term": 1},
        {"type": "heartbeat", "leader": "a"},
        {"type": "heartbeat", "term": 1},
    ],
    ids=lambda obj: repr(obj),
)
def test_missing_required_field_is_a_line_error(obj: dict[str, Any]) -> None:
    """A message without its term, candidate, granted flag or leader is refused."""
    with pytest.raises(LineError, match="invalid " + obj["type"]):
        parse(line_of(obj))


BAD_TERMS: list[Any] = [1.0, 1.5, True, False, -1, MAX_TERM + 1, 10**30, "1", None, [1], {}]


@pytest.mark.parametrize("term", BAD_TERMS, ids=repr)
@pytest.mark.parametrize("kind", ["vote_request", "vote_response", "heartbeat"])
def test_invalid_term_is_a_line_error(kind: str, term: Any) -> None:
    """Floats, bools, negative, too large and non-numeric terms are refused in every message."""
    obj = {"type": kind, "term": term, "candidate": "a", "granted": True, "leader": "a"}
    with pytest.raises(LineError):
        parse(line_of(obj))


@pytest.mark.parametrize(
    "raw",
    [
        b'{"type":"heartbeat","term":1e400,"leader":"a"}',
        b'{"type":"heartbeat","term":NaN,"leader":"a"}',
        b'{"type":"heartbeat","term":-Infinity,"leader":"a"}',
        b'{"type":"heartbeat","term":1' + b"0" * 5000 + b',"leader":"a"}',
    ],
    ids=["1e400", "NaN", "-Infinity", "5000 digits"],
)
def test_non_finite_and_huge_terms_are_line_errors(raw: bytes) -> None:
    """Terms written as infinities, NaN or numbers with thousands of digits are refused."""
    with pytest.raises(LineError):
        parse(raw)


def test_boundary_terms_are_accepted() -> None:
    """Terms 0 and 2**64-1 (graft's uint64 range) are accepted."""
    assert parse(line_of({"type": "heartbeat", "term": 0, "leader": "a"})).term == 0
    assert parse(line_of({"type": "heartbeat", "term": MAX_TERM, "leader": "a"})).term == MAX_TERM


@pytest.mark.parametrize(
    "obj",
    [
        {"type": "vote_request", "term": 1, "candidate": ""},
        {"type": "vote_request", "term": 1, "candidate": 5},
        {"type": "vote_request", "term": 1, "candidate": None},
        {"type": "vote_request", "term": 1, "candidate": "a\nb"},
        {"type": "vote_response", "term": 1, "granted": 1},
        {"type": "vote_response", "term": 1, "granted": "true"},
        {"type": "vote_response", "term": 1, "granted": None},
        {"type": "vote_response", "term": 1, "granted": True, "voter": 5},
        {"type": "vote_response", "term": 1, "granted": True, "voter": None},
        {"type": "vote_response", "term": 1, "granted": True, "voter": "\x00"},
        {"type": "heartbeat", "term": 1, "leader": ""},
        {"type": "heartbeat", "term": 1, "leader": ["a"]},
        {"type": "heartbeat", "term": 1, "leader": "\u2028"},
    ],
    ids=repr,
)
def test_invalid_ids_and_flags_are_line_errors(obj: dict[str, Any]) -> None:
    """Empty, non-string or unprintable ids and non-bool granted flags are refused."""
    with pytest.raises(LineError, match="invalid " + obj["type"]):
        parse(line_of(obj))


@pytest.mark.parametrize("state", ["!!!!", "abc", "AQ=", "A Q==", "AQ==\n", 5, None, [], {}])
def test_invalid_state_is_a_line_error(state: Any) -> None:
    """A vote request's state that is not strict base64 text is refused."""
    with pytest.raises(LineError):
        parse(line_of({"type": "vote_request", "term": 1, "candidate": "a", "state": state}))


@pytest.mark.parametrize("state", ["é", "AQ==é", "\u00ff\u00ff\u00ff\u00ff"])
def test_non_ascii_state_is_a_line_error(state: str) -> None:
    """A state with non-ASCII characters is a LineError, not another exception."""
    with pytest.raises(LineError):
        parse(line_of({"type": "vote_request", "term": 1, "candidate": "a", "state": state}))


@pytest.mark.parametrize(
    "raw",
    [b"[]", b"1", b'"hello"', b"null", b"true", b"[{}]", b'[{"type":"heartbeat"}]'],
)
def test_non_object_json_is_a_line_error(raw: bytes) -> None:
    """Valid JSON that is not an object is refused."""
    with pytest.raises(LineError, match="not a JSON object with a type"):
        load(raw)


@pytest.mark.parametrize(
    "raw", [b"{}", b'{"term":1}', b'{"type":1}', b'{"type":null}', b'{"type":["heartbeat"]}']
)
def test_object_without_a_string_type_is_a_line_error(raw: bytes) -> None:
    """An object without a type, or with a non-string type, is refused."""
    with pytest.raises(LineError, match="not a JSON object with a type"):
        load(raw)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b" ",
        b"{",
        b'{"type":"heartbeat"',
        b"{'type':'heartbeat'}",
        b'{"type":"heartbeat"} {}',
        b'{"type":"h\xffeartbeat"}',
        b'\xff\xfe{"type":"heartbeat"}',
        b'{"type":"\xc3"}',
        b"\x00",
    ],
)
def test_invalid_json_or_utf8_is_a_line_error(raw: bytes) -> None:
    """Lines that are not one well-formed UTF-8 JSON value are refused as 'not a JSON line'."""
    with pytest.raises(LineError, match="not a JSON line"):
        load(raw)


@pytest.mark.parametrize("depth", [1000, 5000])
def test_deeply_nested_json_is_a_line_error(depth: int) -> None:
    """A short line of deeply nested arrays is a LineError, not a RecursionError."""
    raw = b"[" * depth + b"]" * depth
    assert len(raw) <= 16 * 1024  # fits the default maximum line length
    with pytest.raises(LineError):
        load(raw)


def test_load_returns_the_object() -> None:
    """A well-formed object line is returned as a dict, all fields kept."""
    assert load(b'{"type":"hello","size":3,"x":null}') == {"type": "hello", "size": 3, "x": None}


def test_dump_is_compact_sorted_and_one_line() -> None:
    """dump writes compact JSON with sorted keys and escapes newlines in strings."""
    assert dump({"z": 1, "a": "x\ny", "type": "t"}) == b'{"a":"x\\ny","type":"t","z":1}'


# -- Keys -----------------------------------------------------------------


def test_proof_is_the_documented_hmac() -> None:
    """A proof is HMAC-SHA256(secret, parts joined by newlines), hex, as the README says."""
    keys = Keys(SECRET)
    expected = hmac.new(
        SECRET, "\n".join(("server", C1, S1, *NAMES)).encode(), hashlib.sha256
    ).hexdigest()
    assert keys.proof("server", C1, S1, *NAMES) == expected
    assert keys.proof("server", C1, S1, *NAMES) == Keys(SECRET).proof("server", C1, S1, *NAMES)


def test_proofs_differ_by_role() -> None:
    """The server's proof cannot be reflected back as the client's."""
    keys = Keys(SECRET)
    assert keys.proof("server", C1, S1, *NAMES) != keys.proof("client", C1, S1, *NAMES)


def test_proofs_differ_by_either_nonce() -> None:
    """Changing the client nonce, the server nonce, or swapping them changes the proof."""
    keys = Keys(SECRET)
    proofs = {
        keys.proof("client", C1, S1, *NAMES),
        keys.proof("client", C2, S1, *NAMES),
        keys.proof("client", C1, S2, *NAMES),
        keys.proof("client", S1, C1, *NAMES),
    }
    assert len(proofs) == 4


def test_proofs_differ_by_names() -> None:
    """The cluster and who talks to whom (in order) are bound into the proof."""
    keys = Keys(SECRET)
    proofs = {
        keys.proof("client", C1, S1, "cluster", "x", "y"),
        keys.proof("client", C1, S1, "other", "x", "y"),
        keys.proof("client", C1, S1, "cluster", "y", "x"),
        keys.proof("client", C1, S1, "cluster", "x", "z"),
        keys.proof("client", C1, S1, "cluster", "x"),
    }
    assert len(proofs) == 5


def test_proofs_differ_by_secret() -> None:
    """A different secret gives a different proof for the same inputs."""
    assert Keys(b"one").proof("client", C1, S1, *NAMES) != Keys(b"two").proof(
        "client", C1, S1, *NAMES
    )


def test_session_keys_differ_per_nonce_pair() -> None:
    """Each connection's nonce pair gets its own 32-byte session key; the same pair the same."""
    keys = Keys(SECRET)
    sessions = [keys.session(C1, S1), keys.session(C2, S1), keys.session(C1, S2)]
    sessions.append(keys.session(S1, C1))
    assert len(set(sessions)) == 4
    assert all(len(key) == 32 for key in sessions)
    assert keys.session(C1, S1) == Keys(SECRET).session(C1, S1)
    assert Keys(b"other").session(C1, S1) != keys.session(C1, S1)


def test_session_key_is_none_of_the_proofs() -> None:
    """A session key is not a proof sent in clear on the same nonces."""
    keys = Keys(SECRET)
    session = keys.session(C1, S1)
    for role in ("server", "client", "session"):
        assert bytes.fromhex(keys.proof(role, C1, S1, *NAMES)) != session
    expected = hmac.new(SECRET, f"session\n{C1}\n{S1}".encode(), hashlib.sha256).digest()
    assert session == expected


def test_line_mac_is_the_documented_hmac() -> None:
    """A line's MAC is HMAC-SHA256(session, sequence number, newline, body), hex."""
    key = Keys(SECRET).session(C1, S1)
    expected = hmac.new(key, b"12\n{}", hashlib.sha256).hexdigest()
    assert Keys.line_mac(key, 12, b"{}") == expected


def test_line_mac_binds_sequence_body_and_key() -> None:
    """The same body at another position, another body, or another session, gets another MAC."""
    key = Keys(SECRET).session(C1, S1)
    body = dump(encode_message(Heartbeat(1, "a")))
    macs = {
        Keys.line_mac(key, 0, body),
        Keys.line_mac(key, 1, body),
        Keys.line_mac(key, 10, body),
        Keys.line_mac(key, 0, body + b" "),
        Keys.line_mac(key, 0, dump(encode_message(Heartbeat(2, "a")))),
        Keys.line_mac(Keys(SECRET).session(C2, S1), 0, body),
        # The sequence number cannot slide into the body: "1\n0..." vs "10\n...".
        Keys.line_mac(key, 1, b"0\n" + body),
    }
    assert len(macs) == 7


def test_same_accepts_only_the_identical_string() -> None:
    """same() is True for an equal string and False for any other string."""
    mac = Keys(SECRET).proof("client", C1, S1, *NAMES)
    assert same(mac, mac)
    assert not same(mac[:-1] + ("0" if mac[-1] != "0" else "1"), mac)
    assert not same(mac.upper(), mac)
    assert not same(mac[:-1], mac)
    assert not same(mac + "0", mac)
    assert not same("", mac)


@pytest.mark.parametrize("value", [None, 0, 1.5, True, [], {}, b"abc"], ids=repr)
def test_same_is_false_for_non_strings(value: object) -> None:
    """same() returns False, without raising, for a received value that is not a string."""
    assert same(value, "abc") is False
    assert same(value, "") is False


def test_same_accepts_bytes_text_only_as_str() -> None:
    """The bytes of the expected MAC are not accepted in place of the text."""
    mac = Keys(SECRET).proof("client", C1, S1, *NAMES)
    assert not same(mac.encode("ascii"), mac)


@pytest.mark.parametrize(
    "value", ["\ud800" * 64, "é" * 64, "\udcff"], ids=["surrogates", "non-ASCII", "one surrogate"]
)
def test_same_is_false_for_any_received_string(value: str) -> None:
    """same() returns False, without raising, for strings JSON can carry but UTF-8 cannot."""
    mac = Keys(SECRET).proof("client", C1, S1, *NAMES)
    assert same(value, mac) is False


def test_new_nonces_are_fresh_hex_of_sixteen_bytes() -> None:
    """A nonce is 32 hex characters (16 random bytes) and never repeats."""
    nonces = {new_nonce() for _ in range(100)}
    assert len(nonces) == 100
    assert all(len(nonce) == 32 and bytes.fromhex(nonce) for nonce in nonces)
