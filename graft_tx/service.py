"""GraftService: a node as a Twisted service."""

from __future__ import annotations

import os
import random

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime

from graft_tx.cluster import ClusterInfo, Timing
from graft_tx.interfaces import IRpc, IStateHandler
from graft_tx.node import Node, new


class GraftService(Service):
    """Runs one election node while the service runs.

    Nothing happens until C{startService}, which creates and starts the
    node (kept as C{.node}, also after stopping, to read its last state).
    C{stopService} closes it and returns a Deferred that fires once the
    transport has closed. Composes into any C{MultiService}.
    """

    node: Node | None

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
    ) -> None:
        self.info = info
        self.handler = handler
        self.rpc = rpc
        self.log_path = log_path
        self.clock = clock
        self.timing = timing
        self.node_id = node_id
        self.rng = rng
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
        )
        # A restarted service comes back as the same node.
        self.node_id = self.node.id
        super().startService()  # type: ignore[no-untyped-call]

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        # MultiService stops every child, also one that never started.
        if self.node is None:
            return succeed(None)
        return self.node.close()
