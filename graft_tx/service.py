"""GraftService: a node as a Twisted service."""

from __future__ import annotations

import os
import random
from collections.abc import Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from graft_tx.cluster import ClusterInfo, Timing
from graft_tx.interfaces import IRpc, IStateHandler
from graft_tx.node import GRAFT_TX, Node, new


class GraftService(Service):
    """Runs one election node while the service runs.

    Nothing happens until C{startService}, which creates and starts the
    node (kept as C{.node}, also after stopping, to read its last state).
    C{stopService} closes it and returns a Deferred that fires once the
    transport has closed. Composes into any C{MultiService}.

    C{node_id} is passed to L{new}: without it the node takes the id its
    state file records (a new random one the first time), and an id other
    than the recorded one makes C{startService} raise L{NodeIdError}, as a
    corrupt file raises L{LogCorruptError}; the service is then not running.
    """

    node: Node | None
    log = Logger()

    def __init__(
        self,
        info: ClusterInfo,
        handler: IStateHandler,
        rpc: IRpc,
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
        self.info = info
        self.handler = handler
        self.rpc = rpc
        self.log_path = log_path
        self.clock = clock
        self.timing = timing
        self.node_id = node_id
        self.rng = rng
        self.protocol = protocol
        self.monotonic = monotonic
        self.priority = priority
        self.node = None

    def startService(self) -> None:
        # Create the node first: if it cannot start, the service is not running.
        self.node = new(
            self.info,
            self.handler,
            self.rpc,
            self.log_path,
            clock=self.clock,
            timing=self.timing,
            node_id=self.node_id,
            rng=self.rng,
            protocol=self.protocol,
            monotonic=self.monotonic,
            priority=self.priority,
        )
        # A restarted service comes back as the same node.
        self.node_id = self.node.id
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
            return node.close()
        # A planned stop hands leadership over first: about one round trip,
        # rather than an election timeout for the others to notice.
        handed = node.transfer_leadership()
        handed.addErrback(self._transfer_failed)
        return handed.addCallback(lambda _: node.close())

    def _transfer_failed(self, failure: Failure) -> str:
        self.log.warn(
            "could not hand leadership over before stopping: {error}",
            error=failure.getErrorMessage(),
        )
        return ""
