"""NodeConfig: what a node is, validated in one place and passed down whole.

L{graft_tx.new} and L{graft_tx.GraftService} take the same keywords as
always and build one of these; code that makes many nodes alike can build
one and pass it around (C{new(..., config=...)} is not needed: the fields
are the keywords).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from graft_tx.cluster import ClusterInfo, Timing
from graft_tx.errors import (
    ClusterNameError,
    ClusterSizeError,
    LogRequiredError,
    MessageError,
    NodeIdError,
    ProtocolModeError,
    TimingError,
)
from graft_tx.messages import MAX_PRIORITY, check_id

GRAFT_TX, GRAFT = "graft-tx", "graft"
PROTOCOLS = (GRAFT_TX, GRAFT)


def check_cluster(info: object) -> None:
    """Raise unless C{info} is a ClusterInfo with a name and a size of at least 1.

    @raise ClusterNameError: not a ClusterInfo, or no name.
    @raise ClusterSizeError: a size below 1, or not a whole number.
    """
    if not isinstance(info, ClusterInfo):
        raise ClusterNameError(f"info must be a graft_tx.ClusterInfo, not {info!r}")
    if not isinstance(info.name, str) or not info.name:
        raise ClusterNameError(f"the cluster needs a non-empty name, not {info.name!r}")
    if isinstance(info.size, bool) or not isinstance(info.size, int) or info.size < 1:
        raise ClusterSizeError(
            f"cluster {info.name!r} needs a size of at least 1 node, not {info.size!r}"
        )


def check_priority(priority: object) -> int:
    """C{priority}, if it is a whole number from 0 to MAX_PRIORITY.

    @raise ProtocolModeError: it is not.
    """
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise ProtocolModeError(f"priority must be a whole number, not {priority!r}")
    if not 0 <= priority <= MAX_PRIORITY:
        raise ProtocolModeError(f"priority must be between 0 and {MAX_PRIORITY}, not {priority}")
    return priority


@dataclass(frozen=True)
class NodeConfig:
    """One node's configuration, checked when it is made (in field order).

    @ivar state_path: the node's state file (graft's C{log_path}).
    @ivar node_id: L{None}: the id the state file records, else a new one.
    """

    info: ClusterInfo
    state_path: str
    # None: graft's defaults.
    timing: Timing = field(default_factory=Timing)
    node_id: str | None = None
    protocol: str = GRAFT_TX
    priority: int = 1

    def __post_init__(self) -> None:
        check_cluster(self.info)
        path = self.state_path
        if isinstance(path, os.PathLike):
            path = os.fspath(path)
            object.__setattr__(self, "state_path", path)
        if not isinstance(path, str) or not path:
            raise LogRequiredError("a path for the node's state file (log_path) is required")
        if self.node_id is not None:
            try:
                check_id("node_id", self.node_id)
            except MessageError as e:
                raise NodeIdError(str(e)) from None
        if self.timing is None:
            object.__setattr__(self, "timing", Timing())
        if not isinstance(self.timing, Timing):
            raise TimingError(f"timing must be a graft_tx.Timing, not {self.timing!r}")
        if self.protocol not in PROTOCOLS:
            raise ProtocolModeError(
                f"protocol must be 'graft-tx' or 'graft', not {self.protocol!r}"
            )
        check_priority(self.priority)

    @property
    def leases(self) -> bool:
        """Whether the node runs graft-tx's rules (leases, pre-vote, transfer)."""
        return self.protocol == GRAFT_TX
