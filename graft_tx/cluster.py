"""Cluster-wide values: the cluster's identity, node states and timings."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from graft_tx.errors import TimingError


@dataclass(frozen=True)
class ClusterInfo:
    """A cluster's name and its number of voting nodes.

    Checked by L{graft_tx.new}, not here, so that the errors come in the
    documented order.
    """

    name: str
    size: int


def quorum(size: int) -> int:
    """The number of votes that wins an election in a cluster of C{size}."""
    if size <= 0:
        return 0
    return size // 2 + 1


class State(enum.Enum):
    """The role of a node. C{str()} gives graft's names."""

    FOLLOWER = "Follower"
    LEADER = "Leader"
    CANDIDATE = "Candidate"
    CLOSED = "Closed"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class StateChange:
    """One transition of a node's state, as reported to handlers."""

    from_state: State
    to_state: State


@dataclass(frozen=True)
class StateChangeDetail:
    """A state change with the term and leader as they were at that moment."""

    from_state: State
    to_state: State
    term: int
    leader: str


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TimingError(f"{name} must be a number of seconds, not {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise TimingError(f"{name} must be a positive, finite number of seconds, not {value!r}")
    return float(value)


def _seconds(name: str, text: str | float) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise TimingError(f"{name} takes seconds, not {text!r}") from None
    return _number(name, value)


def parse_election_timeout(text: str) -> tuple[float, float]:
    """C{"MIN-MAX"} seconds as two positive numbers (not checked against each other).

    @raise TimingError: not two numbers of seconds joined by C{-}.
    """
    parts = text.split("-") if isinstance(text, str) else []
    if len(parts) != 2:
        raise TimingError(f"the election timeout takes MIN-MAX seconds, not {text!r}")
    return _seconds("the minimum election timeout", parts[0]), _seconds(
        "the maximum election timeout", parts[1]
    )


@dataclass(frozen=True)
class Timing:
    """Election and heartbeat timings, in seconds; graft's constants by default.

    Each follower waits a random time in [min, max) without hearing from a
    leader before it campaigns; a leader sends a heartbeat every
    C{heartbeat_interval}. The heartbeat must stay below half the minimum
    election timeout, or one lost heartbeat would start an election, and the
    range must be at least a heartbeat interval wide, or nodes that start
    together split their votes again and again.
    """

    election_timeout_min: float = 0.5
    election_timeout_max: float = 1.0
    heartbeat_interval: float = 0.1

    @classmethod
    def parse(cls, election_timeout: str, heartbeat: str | float | None = None) -> Timing:
        """A Timing from C{"MIN-MAX"} seconds (as C{--election-timeout} takes
        them) and a heartbeat interval (default 0.1 s).

        @raise TimingError: the text is not two numbers of seconds, or the
            timing they make is refused (see the class).
        """
        low, high = parse_election_timeout(election_timeout)
        beat = cls.heartbeat_interval if heartbeat is None else _seconds("heartbeat", heartbeat)
        return cls(low, high, beat)

    def __post_init__(self) -> None:
        low = _number("election_timeout_min", self.election_timeout_min)
        high = _number("election_timeout_max", self.election_timeout_max)
        beat = _number("heartbeat_interval", self.heartbeat_interval)
        if low > high:
            raise TimingError(
                f"election_timeout_min ({low}s) must not exceed election_timeout_max ({high}s)"
            )
        if high < low + beat:
            # Equal timeouts make nodes that start together split their votes
            # round after round: the spread is what breaks the tie.
            raise TimingError(
                f"election_timeout_max ({high}s) must exceed election_timeout_min ({low}s) "
                f"by at least heartbeat_interval ({beat}s), so that nodes draw different "
                "timeouts"
            )
        if beat >= low / 2:
            raise TimingError(
                f"heartbeat_interval ({beat}s) must be below half of "
                f"election_timeout_min ({low}s), that is below {low / 2}s"
            )
