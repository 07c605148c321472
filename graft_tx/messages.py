"""The messages nodes exchange, independent of any wire format.

Transports decode their bytes into these values and hand them to the node;
fields are checked here so that a transport cannot pass the node a message
of the wrong shape.
"""

from __future__ import annotations

from dataclasses import dataclass

from graft_tx.errors import MessageError

# graft's terms are uint64 on the wire.
MAX_TERM = 2**64 - 1


def _check_term(term: object) -> None:
    if isinstance(term, bool) or not isinstance(term, int):
        raise MessageError(f"term must be an int, not {term!r}")
    if not 0 <= term <= MAX_TERM:
        raise MessageError(f"term must be between 0 and 2**64-1, not {term}")


def check_id(name: str, value: object, *, allow_empty: bool = False) -> None:
    """Raise L{MessageError} unless C{value} is a node id that every part can carry."""
    if not isinstance(value, str):
        raise MessageError(f"{name} must be a str, not {value!r}")
    if not value and not allow_empty:
        raise MessageError(f"{name} must not be empty")
    if not value.isprintable() or not _encodable(value):
        raise MessageError(f"{name} must be printable UTF-8 text, not {value!r}")


def _encodable(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True)
class VoteRequest:
    """A candidate asks for a vote in C{term}."""

    term: int
    candidate: str
    current_state: bytes = b""

    def __post_init__(self) -> None:
        _check_term(self.term)
        check_id("candidate", self.candidate, allow_empty=False)
        if not isinstance(self.current_state, bytes):
            raise MessageError(f"current_state must be bytes, not {self.current_state!r}")


@dataclass(frozen=True)
class VoteResponse:
    """A voter's answer. C{voter} is empty when the peer does not send it
    (Go graft's nodes do not)."""

    term: int
    granted: bool
    voter: str = ""

    def __post_init__(self) -> None:
        _check_term(self.term)
        if not isinstance(self.granted, bool):
            raise MessageError(f"granted must be a bool, not {self.granted!r}")
        check_id("voter", self.voter, allow_empty=True)


@dataclass(frozen=True)
class Heartbeat:
    """The leader of C{term} asserts its leadership."""

    term: int
    leader: str

    def __post_init__(self) -> None:
        _check_term(self.term)
        check_id("leader", self.leader, allow_empty=False)
