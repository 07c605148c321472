"""GraftService: a node as a Twisted service."""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import replace

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from graft_tx.cluster import ClusterInfo, Timing
from graft_tx.config import GRAFT_TX, NodeConfig
from graft_tx.errors import (
    GraftError,
    LogAccessError,
    LogCorruptError,
    NodeIdError,
    RpcRequiredError,
)
from graft_tx.interfaces import IRpc, IStateHandler
from graft_tx.node import Node, check_collaborators, start_node

# Errors of the state file: a restart that meets one failed for the file's sake,
# not because its transport could not start again.
_STATE_FILE_ERRORS = (LogCorruptError, LogAccessError, NodeIdError)


class GraftService(Service):
    """Runs one election node while the service runs.

    Nothing happens until C{startService}, which creates and starts the
    node (kept as C{.node}, also after stopping, to read its last state).
    C{stopService} closes it and returns a Deferred that fires once the
    transport has closed. Composes into any C{MultiService}.

    C{rpc} is the transport: an L{IRpc} provider, or a factory, a callable
    taking no argument that returns a new one (C{lambda: TcpRpc(listen,
    peers, secret=secret)}), which C{startService} calls at every start.
    Give a factory to stop and start the service again: L{TcpRpc} and
    L{NatsRpc} carry one node once, so a service given one of them refuses a
    second start with a L{GraftError} saying so (a transport that can be
    attached again, such as L{graft_tx.testing.MemoryNetwork}'s, restarts).
    C{.rpc} is the transport of the current or last start; with a factory,
    it is L{None} before the first start unless L{prepare_rpc} made it.
    C{.rpc_factory} is the factory, or L{None} for a service given a transport.

    Start the service again only once the Deferred from C{stopService} has
    fired: the old transport must have let go of its port or connection.

    C{node_id} is passed to L{new}: without it the node takes the id its
    state file records (a new random one the first time), and an id other
    than the recorded one makes C{startService} raise L{NodeIdError}, as a
    corrupt file raises L{LogCorruptError}; the service is then not running.
    A restarted service comes back as the same node, with the id of its
    first start.

    @raise RpcRequiredError: C{rpc} neither provides L{IRpc} nor is callable.
    """

    node: Node | None
    rpc: IRpc | None
    log = Logger()

    def __init__(
        self,
        info: ClusterInfo,
        handler: IStateHandler,
        rpc: IRpc | Callable[[], IRpc],
        log_path: str | os.PathLike[str],
        *,
        clock: IReactorTime | None = None,
        timing: Timing | None = None,
        node_id: str | None = None,
        rng: random.Random | None = None,
        protocol: str = GRAFT_TX,
        monotonic: Callable[[], float] | None = None,
        priority: int = 1,
    ) -> None:
        # An object that provides IRpc is a transport, even if it is callable too.
        if IRpc.providedBy(rpc):
            self.rpc = rpc
            self.rpc_factory: Callable[[], IRpc] | None = None
        elif callable(rpc):
            self.rpc = None
            self.rpc_factory = rpc
        else:
            raise RpcRequiredError(
                f"rpc must provide IRpc (such as a TcpRpc or NatsRpc) or be a factory that "
                f"returns a new one at each start (such as lambda: TcpRpc(...)), not {rpc!r}"
            )
        self.handler = handler
        self.clock = clock
        self.rng = rng
        self.monotonic = monotonic
        # Checked now, where the mistake was made.
        self.config = NodeConfig(
            info,
            log_path,  # type: ignore[arg-type]  # NodeConfig takes a PathLike too
            timing,  # type: ignore[arg-type]  # None: the defaults
            node_id,
            protocol,
            priority,
        )
        self.node = None
        # The transport that the last start tried: it may not serve another.
        self._spent: IRpc | None = None
        self._stopping = False

    @property
    def info(self) -> ClusterInfo:
        return self.config.info

    @property
    def log_path(self) -> str:
        return self.config.state_path

    @property
    def timing(self) -> Timing:
        return self.config.timing

    @property
    def node_id(self) -> str | None:
        """The id given, or once started, the node's own."""
        return self.config.node_id

    @property
    def protocol(self) -> str:
        return self.config.protocol

    @property
    def priority(self) -> int:
        return self.config.priority

    def prepare_rpc(self) -> IRpc:
        """The transport the next start will use, made now with the factory.

        To check the factory's arguments before anything starts (C{twistd
        graft} turns a L{GraftError} into a usage error), or to show the
        transport to what reads C{.rpc} before the start (the metrics of
        L{graft_tx.web}). Without a factory, C{.rpc}.

        @raise RpcRequiredError: the factory returned no L{IRpc} provider.
        """
        if self.rpc_factory is not None and (self.rpc is None or self.rpc is self._spent):
            rpc = self.rpc_factory()
            if not IRpc.providedBy(rpc):
                raise RpcRequiredError(
                    f"the transport factory {self.rpc_factory!r} returned {rpc!r}, which does "
                    "not provide IRpc"
                )
            self.rpc = rpc
        assert self.rpc is not None
        return self.rpc

    def startService(self) -> None:
        if self._stopping:
            raise GraftError(
                "this GraftService was started again before its stop finished: start it "
                "once the Deferred that stopService returned has fired"
            )
        rpc = self.prepare_rpc()
        again = rpc is self._spent
        self._spent = rpc
        # Create the node first: if it cannot start, the service is not running.
        try:
            check_collaborators(self.handler, rpc)
            self.node = start_node(
                self.config,
                self.handler,
                rpc,
                clock=self.clock,
                rng=self.rng,
                monotonic=self.monotonic,
            )
        except Exception as e:
            if self.rpc_factory is not None:
                # A fresh transport that carries no node: release what it may hold.
                maybeDeferred(rpc.close).addErrback(self._close_failed)
            elif again and not isinstance(e, _STATE_FILE_ERRORS):
                raise GraftError(
                    f"this GraftService's transport cannot start again ({e}); to stop and "
                    "start the service, give GraftService a transport factory in place of "
                    "the transport: a callable returning a new one at each start, such as "
                    "lambda: TcpRpc(listen, peers, secret=secret)"
                ) from e
            raise
        # A restarted service comes back as the same node.
        self.config = replace(self.config, node_id=self.node.id)
        self.log.info(
            "node {node} of {cluster} started in term {term}",
            event="node_started",
            node=self.node.id,
            cluster=self.info.name,
            term=self.node.current_term,
        )
        super().startService()  # type: ignore[no-untyped-call]

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        node = self.node
        # MultiService stops every child, also one that never started.
        if node is None:
            return succeed(None)
        if not node.is_leader() or node.protocol != GRAFT_TX:
            stopped = node.close()
        else:
            # A planned stop hands leadership over first: about one round trip,
            # rather than an election timeout for the others to notice.
            handed = node.transfer_leadership()
            handed.addErrback(self._transfer_failed)
            stopped = handed.addCallback(lambda _: node.close())
        self._stopping = True
        return stopped.addBoth(self._stopped)

    def _stopped(self, result: object) -> object:
        self._stopping = False
        return result

    def _transfer_failed(self, failure: Failure) -> str:
        self.log.warn(
            "could not hand leadership over before stopping: {error}",
            error=failure.getErrorMessage(),
        )
        return ""

    def _close_failed(self, failure: Failure) -> None:
        self.log.failure("closing the transport of a failed start", failure)
