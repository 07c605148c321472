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
MAX_PRIORITY = 2**32 - 1
# Ids go into subjects, log lines and files: a megabyte from a stranger must
# not. Far above any id a deployment uses (Go graft's are 22 characters).
MAX_ID_LENGTH = 255


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
    if len(value) > MAX_ID_LENGTH:
        raise MessageError(
            f"{name} must be at most {MAX_ID_LENGTH} characters, not {len(value)} "
            f"({value[:20]!r}...)"
        )
    if not value.isprintable() or not _encodable(value):
        raise MessageError(f"{name} must be printable UTF-8 text, not {value!r}")


def _encodable(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_flag(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise MessageError(f"{name} must be a bool, not {value!r}")


@dataclass(frozen=True)
class VoteRequest:
    """A candidate asks for a vote in C{term}.

    graft_tx only: a C{pre_vote} asks whether the candidate could win
    C{term} without anyone changing term or vote; a C{transfer} request
    comes from the target of a leadership transfer and is granted even by
    followers that still hear from the (old) leader.
    """

    term: int
    candidate: str
    current_state: bytes = b""
    pre_vote: bool = False
    transfer: bool = False

    def __post_init__(self) -> None:
        _check_term(self.term)
        check_id("candidate", self.candidate, allow_empty=False)
        if not isinstance(self.current_state, bytes):
            raise MessageError(f"current_state must be bytes, not {self.current_state!r}")
        _check_flag("pre_vote", self.pre_vote)
        _check_flag("transfer", self.transfer)


@dataclass(frozen=True)
class VoteResponse:
    """A voter's answer. C{voter} is empty when the peer does not send it
    (Go graft's nodes do not)."""

    term: int
    granted: bool
    voter: str = ""
    pre_vote: bool = False

    def __post_init__(self) -> None:
        _check_term(self.term)
        _check_flag("granted", self.granted)
        check_id("voter", self.voter, allow_empty=True)
        _check_flag("pre_vote", self.pre_vote)


@dataclass(frozen=True)
class Heartbeat:
    """The leader of C{term} asserts its leadership.

    graft_tx only: C{seq} numbers the leader's heartbeats in its term, for
    followers to acknowledge; C{transfer_to} names the node the leader hands
    its leadership to (that node campaigns at once).
    """

    term: int
    leader: str
    seq: int = 0
    transfer_to: str = ""

    def __post_init__(self) -> None:
        _check_term(self.term)
        check_id("leader", self.leader, allow_empty=False)
        _check_term(self.seq)
        check_id("transfer_to", self.transfer_to, allow_empty=True)


@dataclass(frozen=True)
class HeartbeatAck:
    """graft_tx only: a follower acknowledges heartbeat C{seq} of C{term}.

    A leader whose heartbeats a quorum acknowledges holds a lease; one that
    hears no quorum steps down. C{priority} is the follower's. C{window_us}
    is the follower's promise: for that many microseconds after it got the
    heartbeat it votes for nobody else (its minimum election timeout); 0
    when not sent, and the leader then assumes its own.
    """

    term: int
    follower: str
    seq: int
    priority: int = 1
    window_us: int = 0

    def __post_init__(self) -> None:
        _check_term(self.term)
        check_id("follower", self.follower, allow_empty=False)
        _check_term(self.seq)
        if isinstance(self.priority, bool) or not isinstance(self.priority, int):
            raise MessageError(f"priority must be an int, not {self.priority!r}")
        if not 0 <= self.priority <= MAX_PRIORITY:
            raise MessageError(f"priority must be between 0 and {MAX_PRIORITY}")
        _check_term(self.window_us)
