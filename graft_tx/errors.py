"""The errors graft_tx raises; all derive from L{GraftError}."""

from __future__ import annotations


class GraftError(Exception):
    """Base class of every error this package raises on purpose."""


class ClusterNameError(GraftError, ValueError):
    """The cluster name is empty or not a string."""


class ClusterSizeError(GraftError, ValueError):
    """The cluster size is not a whole number of at least 1."""


class HandlerRequiredError(GraftError, TypeError):
    """No handler was given, or it does not provide IStateHandler."""


class RpcRequiredError(GraftError, TypeError):
    """No rpc was given, or it does not provide IRpc."""


class LogRequiredError(GraftError, ValueError):
    """No path was given for the state file."""


class NodeIdError(GraftError, ValueError):
    """The node id is empty or not a string, or not the id its state file records."""


class TimingError(GraftError, ValueError):
    """The election and heartbeat timings are inconsistent."""


class MessageError(GraftError, ValueError):
    """A message was built with fields of the wrong type or range."""


class ProtocolModeError(GraftError, ValueError):
    """An unknown protocol mode or an invalid priority."""


class NodeClosedError(GraftError):
    """The node closed before what was waited for happened."""


class TransferError(GraftError):
    """A leadership transfer could not be made or did not complete in time."""


class HandlerError(GraftError):
    """The state machine handler failed or answered something unusable."""


class LogCorruptError(GraftError):
    """The state file exists but its content cannot be trusted."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(
            f"state file {path!r} is corrupt ({reason}); it was left untouched: "
            "inspect it, or move it away to start this node with term 0 and no vote"
        )
        self.path = path
        self.reason = reason


class LogAccessError(GraftError):
    """The state file could not be read, created or written."""

    def __init__(self, path: str, action: str, cause: BaseException) -> None:
        super().__init__(f"cannot {action} state file {path!r}: {cause}")
        self.path = path
        self.action = action
