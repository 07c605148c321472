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
