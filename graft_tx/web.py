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
"""

from __future__ import annotations

import json
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.web.resource import Resource
from twisted.web.server import Request

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
