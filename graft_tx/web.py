"""The status, leader, health and metrics pages of a node, with twisted.web.

Mount L{GraftResource} in any site: C{root.putChild(b"graft",
GraftResource(service))}; C{twistd graft --status ENDPOINT} serves it at the
root.

    GET /status    a JSON document: id, cluster, size, state, term, vote,
                   leader, and the times of the last state change and the
                   last heartbeat seen (seconds since the epoch, or null)
    GET /leader    200 on the leader, 503 elsewhere: for load balancers
    GET /healthz   200 while the node runs
    GET /metrics   Prometheus text format

L{StatusSite} is the site C{twistd graft --status} serves them with: read-only
and bounded, so that whoever can reach the port cannot use it against the node
(its disk, its file descriptors, its log).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from io import BytesIO
from typing import Any, cast

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.internet.interfaces import IAddress, IReactorTime, ITCPTransport
from twisted.internet.protocol import connectionDone
from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
)
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

from graft_tx.cluster import State
from graft_tx.metrics import node_registry
from graft_tx.node import Node
from graft_tx.service import GraftService


def status_of(node: Node) -> dict[str, Any]:
    """The JSON-ready status of C{node}."""
    stats = node.stats()
    leadership = node.leadership()
    remaining = None
    if leadership.lease_expiry is not None:
        remaining = max(0.0, leadership.lease_expiry - node.monotonic())
    return {
        "id": node.id,
        "cluster": node.cluster_info.name,
        "size": node.cluster_info.size,
        "state": str(node.state),
        "term": node.current_term,
        "vote": node.current_vote,
        "leader": node.leader,
        "is_leader": node.is_leader(),
        "lease_remaining": remaining,
        "protocol": node.protocol,
        "priority": node.priority,
        "last_state_change": stats.last_state_change,
        "last_heartbeat": stats.last_heartbeat,
        "elections_started": stats.elections_started,
        "elections_won": stats.elections_won,
        "votes_granted": stats.votes_granted,
        "heartbeats_sent": stats.heartbeats_sent,
        "heartbeats_received": stats.heartbeats_received,
        "leader_changes": stats.leader_changes,
    }


class _Page(Resource):
    isLeaf = True

    def __init__(self, service: GraftService) -> None:
        super().__init__()
        self._service = service

    def _text(self, request: Request, code: int, body: str) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return body.encode("utf-8")


class StatusPage(_Page):
    def render_GET(self, request: Request) -> bytes:
        node = self._service.node
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        if node is None:
            request.setResponseCode(503)
            return json.dumps({"state": "Starting"}).encode("utf-8")
        return json.dumps(status_of(node), sort_keys=True).encode("utf-8") + b"\n"


class LeaderPage(_Page):
    def render_GET(self, request: Request) -> bytes:
        node = self._service.node
        # With leases, only while no other node can have been elected.
        if node is not None and node.is_leader():
            return self._text(request, 200, "leader\n")
        return self._text(request, 503, "not the leader\n")


class HealthPage(_Page):
    def render_GET(self, request: Request) -> bytes:
        node = self._service.node
        if self._service.running and node is not None and node.state is not State.CLOSED:
            return self._text(request, 200, "ok\n")
        return self._text(request, 503, "not running\n")


class MetricsPage(_Page):
    def __init__(self, service: GraftService) -> None:
        super().__init__(service)
        self._registry = node_registry(lambda: service.node, service.rpc)

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        return generate_latest(self._registry)


class GraftResource(Resource):
    """C{/status}, C{/leader}, C{/healthz} and C{/metrics} of one GraftService."""

    def __init__(self, service: GraftService) -> None:
        super().__init__()
        self.putChild(b"status", StatusPage(service))
        self.putChild(b"leader", LeaderPage(service))
        self.putChild(b"healthz", HealthPage(service))
        self.putChild(b"metrics", MetricsPage(service))


# -- the site: read-only and bounded ------------------------------------------------

# A request that announces a body gets this and a closed connection.
_BODY_REFUSED = b"the status pages take no request body\n"
_REFUSAL = (
    b"HTTP/1.1 413 Content Too Large\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: %d\r\n"
    b"Connection: close\r\n"
    b"\r\n" % len(_BODY_REFUSED)
) + _BODY_REFUSED


class StatusRequest(Request):
    """A request to the status pages: it keeps no body and names no server version."""

    # twisted.web logs an info line for every HEAD request ("I think I'll eat it");
    # pages that are polled must not grow the log, but failures still reach it.
    _log = Logger(
        observer=FilteringLogObserver(
            globalLogPublisher, [LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)]
        )
    )

    def gotLength(self, length: int | None) -> None:
        # Twisted's Request spools a body of 100 kB or more, or a chunked one, to a
        # TemporaryFile. StatusChannel answers 413 before a body comes; whatever a
        # channel hands this request anyway is dropped, never stored.
        self.content = BytesIO()

    def handleContentChunk(self, data: bytes) -> None:
        """Drop body bytes: the pages answer GET and HEAD only."""

    def write(self, data: bytes) -> None:
        if not self.startedWriting:
            # process() set "Server: TwistedWeb/<version>"; the headers go out now.
            # finish() without a body, and the error pages, come through here too.
            self.responseHeaders.removeHeader(b"server")
        super().write(data)


class StatusChannel(http.HTTPChannel):
    """HTTP/1.1 for the status pages: no request bodies, and an idle deadline.

    The idle timer (the site's C{idle_timeout}) starts when the connection is
    made and again when a response has been written; bytes received do not
    restart it, so a request trickled in a byte at a time still ends there.
    """

    factory: StatusSite
    _refused = False

    def connectionMade(self) -> None:
        super().connectionMade()
        self.factory.opened(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.factory.closed(self)
        super().connectionLost(reason)

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            # Whatever comes after a refused request's headers is dropped unread.
            return
        self.factory.active(self)
        super().dataReceived(data)

    def resetTimeout(self) -> None:
        """Leave the idle timer alone: only a finished response restarts it."""

    def allHeadersReceived(self) -> None:
        # self.length is the Content-Length, or None for a chunked body. Refuse here,
        # before the request sees the length (Request.gotLength would open the temporary
        # file) and before HTTPChannel answers "Expect: 100-continue".
        if self.length != 0:
            self._refuse_body()
            return
        super().allHeadersReceived()

    def pauseProducing(self) -> None:
        """The send buffer is full: the client does not read its answers.

        HTTPChannel would go on answering the pipelined requests it has
        already read, into memory, for as long as they last (a few megabytes
        of requests made hundreds of megabytes of answers). A status client
        that does not read is dropped instead.
        """
        self._refused = True
        # LineReceiver's loop stops at the next request it would parse.
        self.paused = True
        self.abort()

    def timeoutConnection(self) -> None:
        # HTTPChannel logs each timeout and closes politely (waiting abortTimeout
        # for a peer that does not read). An idle connection has nothing worth
        # waiting for: drop it, quietly.
        self.abort()

    def abort(self) -> None:
        """Drop the connection now; its descriptor is closed on the next reactor turn."""
        cast(ITCPTransport, self.transport).abortConnection()

    def _refuse_body(self) -> None:
        self._refused = True
        self.clearLineBuffer()
        cast(ITCPTransport, self.transport).write(_REFUSAL)
        self.loseConnection()


class StatusSite(Site):
    """A read-only, bounded L{Site} for the status pages, as C{twistd graft --status} runs it.

      - A request that announces a body (Content-Length above 0, or chunked) is
        answered 413 and its connection closed before a byte of the body is
        stored (L{Site} spools big bodies to temporary files).
      - At most C{max_connections} connections stay open: a new one evicts
        the least recently active (see L{buildProtocol}), so a client polling
        /status gets through however many idle connections others hold.
      - A connection is dropped when C{idle_timeout} seconds pass without a
        complete request since it opened or since its last response.
      - No access log, and no C{Server} header naming Twisted's version.

    @param clock: The reactor for the idle timers (the global one by default).
    """

    protocol = StatusChannel  # type: ignore[assignment]
    requestFactory = StatusRequest
    noisy = False

    def __init__(
        self,
        resource: IResource,
        *,
        max_connections: int = 32,
        idle_timeout: float = 10.0,
        clock: IReactorTime | None = None,
    ) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, not {max_connections}")
        if not idle_timeout > 0:
            raise ValueError(f"idle_timeout must be positive, not {idle_timeout}")
        super().__init__(resource, timeout=idle_timeout, reactor=clock)
        self.max_connections = max_connections
        # Open connections, the least recently active first.
        self._open: OrderedDict[StatusChannel, None] = OrderedDict()
        # Evicted connections whose descriptors are not closed yet.
        self._evicted: set[StatusChannel] = set()

    def buildProtocol(self, addr: IAddress) -> StatusChannel | None:  # type: ignore[override]
        """A channel for a new connection, evicting another one when there are too many.

        The fd budget: abortConnection() closes a descriptor on the next reactor
        turn, and the listening port accepts up to 100 connections (more under
        load) in one turn. So eviction is bounded too: while C{max_connections}
        evicted descriptors are still open, new connections are closed at once
        (returning None makes the port close the socket). The status port thus
        holds at most 2 x C{max_connections} descriptors (64 by default), well
        below a limit of 128 even with the node's own files and sockets.
        """
        if len(self._open) >= self.max_connections:
            if len(self._evicted) >= self.max_connections:
                return None
            victim, _ = self._open.popitem(last=False)
            self._evicted.add(victim)
            victim.abort()
        channel: StatusChannel = super().buildProtocol(addr)
        return channel

    def log(self, request: http.Request) -> None:
        """No access log: requests from anyone must not grow the node's log."""

    def opened(self, channel: StatusChannel) -> None:
        self._open[channel] = None

    def active(self, channel: StatusChannel) -> None:
        if channel in self._open:
            self._open.move_to_end(channel)

    def closed(self, channel: StatusChannel) -> None:
        self._open.pop(channel, None)
        self._evicted.discard(channel)

    @property
    def connections(self) -> int:
        """Connections open, evicted ones not counted."""
        return len(self._open)
