"""graft_tx: graft's RAFT leader election for Twisted.

The public API is re-exported here; L{graft_tx.testing} (the in-memory
network) is imported on its own.
"""

from graft_tx.cluster import ClusterInfo, State, StateChange, Timing, quorum
from graft_tx.config import NodeConfig
from graft_tx.errors import (
    ClusterNameError,
    ClusterSizeError,
    GraftError,
    HandlerError,
    HandlerRequiredError,
    LogAccessError,
    LogCorruptError,
    LogRequiredError,
    MessageError,
    NodeClosedError,
    NodeIdError,
    ProtocolModeError,
    RpcRequiredError,
    TimingError,
    TransferError,
)
from graft_tx.handlers import QueueHandler
from graft_tx.messages import Heartbeat, HeartbeatAck, VoteRequest, VoteResponse
from graft_tx.node import Leadership, Node, NodeStats, new
from graft_tx.service import GraftService
from graft_tx.transport.nats import NatsRpc, SubjectError
from graft_tx.transport.natsclient import (
    NatsClosedError,
    NatsConfigError,
    NatsConnection,
    NatsReactorError,
    connect_nats,
)
from graft_tx.transport.tcp import TcpConfigError, TcpRpc

__all__ = [
    "ClusterInfo",
    "ClusterNameError",
    "ClusterSizeError",
    "GraftError",
    "GraftService",
    "HandlerError",
    "HandlerRequiredError",
    "Heartbeat",
    "HeartbeatAck",
    "Leadership",
    "LogAccessError",
    "LogCorruptError",
    "LogRequiredError",
    "MessageError",
    "NatsClosedError",
    "NatsConfigError",
    "NatsConnection",
    "NatsReactorError",
    "NatsRpc",
    "Node",
    "NodeClosedError",
    "NodeConfig",
    "NodeIdError",
    "NodeStats",
    "ProtocolModeError",
    "QueueHandler",
    "RpcRequiredError",
    "State",
    "StateChange",
    "SubjectError",
    "TcpConfigError",
    "TcpRpc",
    "Timing",
    "TimingError",
    "TransferError",
    "VoteRequest",
    "VoteResponse",
    "connect_nats",
    "new",
    "quorum",
]
