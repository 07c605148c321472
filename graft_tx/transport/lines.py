"""The TCP transport's line protocol: framing, messages and authentication.

Every line is one JSON object ending in C{\\n}. A connection starts with a
handshake (see L{graft_tx.transport.tcp} and README.md's protocol section);
after it, with a shared secret, every line is C{<mac> <json>} where the MAC
covers the line's sequence number on that connection, so a line cannot be
forged, altered, replayed or reordered without the connection failing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from typing import Any

from graft_tx.errors import GraftError, MessageError
from graft_tx.messages import Heartbeat, HeartbeatAck, VoteRequest, VoteResponse

VERSION = "graft-tx-tcp/1"
NONCE_BYTES = 16
Message = VoteRequest | VoteResponse | Heartbeat | HeartbeatAck


class LineError(GraftError, ValueError):
    """A line that breaks the protocol; the connection is dropped."""


def new_nonce() -> str:
    return os.urandom(NONCE_BYTES).hex()


def dump(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode("utf-8")


def load(line: bytes) -> dict[str, Any]:
    """Parse one line as a JSON object with a string C{type}."""
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):
        raise LineError("not a JSON line") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise LineError("not a JSON object with a type")
    return obj


def encode_message(message: Message) -> dict[str, Any]:
    """The JSON object of C{message}; graft-tx's optional fields only when set."""
    obj: dict[str, Any]
    if isinstance(message, VoteRequest):
        obj = {
            "type": "vote_request",
            "term": message.term,
            "candidate": message.candidate,
            "state": base64.b64encode(message.current_state).decode("ascii"),
        }
        if message.pre_vote:
            obj["pre_vote"] = True
        if message.transfer:
            obj["transfer"] = True
    elif isinstance(message, VoteResponse):
        obj = {
            "type": "vote_response",
            "term": message.term,
            "granted": message.granted,
            "voter": message.voter,
        }
        if message.pre_vote:
            obj["pre_vote"] = True
    elif isinstance(message, HeartbeatAck):
        obj = {
            "type": "heartbeat_ack",
            "term": message.term,
            "follower": message.follower,
            "seq": message.seq,
            "priority": message.priority,
        }
        if message.window_us:
            obj["window_us"] = message.window_us
    else:
        obj = {"type": "heartbeat", "term": message.term, "leader": message.leader}
        if message.seq:
            obj["seq"] = message.seq
        if message.transfer_to:
            obj["transfer_to"] = message.transfer_to
    return obj


def decode_message(obj: dict[str, Any]) -> Message:
    """The election message in C{obj}.

    @raise LineError: an unknown type, or missing or invalid fields.
    """
    kind = obj["type"]
    get = obj.get
    try:
        if kind == "vote_request":
            state = get("state", "")
            if not isinstance(state, str):
                raise LineError("state must be base64 text")
            return VoteRequest(
                get("term"),  # type: ignore[arg-type]
                get("candidate"),  # type: ignore[arg-type]
                base64.b64decode(state, validate=True),
                get("pre_vote", False),
                get("transfer", False),
            )
        if kind == "vote_response":
            return VoteResponse(
                get("term"),  # type: ignore[arg-type]
                get("granted"),  # type: ignore[arg-type]
                get("voter", ""),
                get("pre_vote", False),
            )
        if kind == "heartbeat":
            return Heartbeat(
                get("term"),  # type: ignore[arg-type]
                get("leader"),  # type: ignore[arg-type]
                get("seq", 0),
                get("transfer_to", ""),
            )
        if kind == "heartbeat_ack":
            return HeartbeatAck(
                get("term"),  # type: ignore[arg-type]
                get("follower"),  # type: ignore[arg-type]
                get("seq"),  # type: ignore[arg-type]
                get("priority", 1),
                get("window_us", 0),
            )
    except (MessageError, ValueError) as e:  # binascii.Error is a ValueError
        raise LineError(f"invalid {kind}: {e}") from None
    raise LineError(f"unknown message type {kind!r}")


class Keys:
    """The HMAC computations of one shared cluster secret."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def proof(self, role: str, client_nonce: str, server_nonce: str, *names: str) -> str:
        """What a side sends to prove it knows the secret, bound to both
        nonces (so no earlier session's proof fits) and to who talks to whom."""
        return self._mac(self._secret, role, client_nonce, server_nonce, *names)

    def ticket(self, client_nonce: str, cluster: str, client_id: str) -> str:
        """What a connecting node's hello carries to show, before the
        handshake, that it knows the secret (it proves nothing on its own:
        a recorded hello can be replayed, so listeners take each nonce once)."""
        return self._mac(self._secret, "ticket", client_nonce, cluster, client_id)

    def session(self, client_nonce: str, server_nonce: str) -> bytes:
        """The key that authenticates the lines of one connection."""
        return bytes.fromhex(self._mac(self._secret, "session", client_nonce, server_nonce))

    @staticmethod
    def line_mac(session: bytes, sequence: int, body: bytes) -> str:
        return hmac.new(session, b"%d\n" % sequence + body, hashlib.sha256).hexdigest()

    @staticmethod
    def _mac(key: bytes, *parts: str) -> str:
        message = "\n".join(parts).encode("utf-8")
        return hmac.new(key, message, hashlib.sha256).hexdigest()


def same(a: object, b: str) -> bool:
    """Constant-time comparison of a received MAC with the expected one."""
    if not isinstance(a, str):
        return False
    # surrogatepass: JSON can carry lone surrogates, which plain UTF-8 refuses.
    return hmac.compare_digest(a.encode("utf-8", "surrogatepass"), b.encode("utf-8"))


def is_nonce(value: object) -> bool:
    """Whether C{value} is a nonce as L{new_nonce} makes them."""
    if not isinstance(value, str) or len(value) != 2 * NONCE_BYTES:
        return False
    try:
        bytes.fromhex(value)
    except ValueError:
        return False
    return True
