"""The status, leader, health and metrics pages, with twisted.web's test helpers, on a Clock."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from fakes import RecordingHandler, RecordingRpc, result_of
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.web.resource import Resource, getChildForRequest
from twisted.web.server import Site
from twisted.web.test.requesthelper import DummyChannel, DummyRequest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from graft_tx import ClusterInfo, GraftService, Heartbeat, State, VoteResponse
from graft_tx.interfaces import ITransportStats
from graft_tx.node import Node
from graft_tx.testing import MemoryNetwork
from graft_tx.web import GraftResource, StatusChannel, StatusRequest, StatusSite

# Graft's algorithm as Go graft runs it; graft-tx features are tested on their own.
pytestmark = pytest.mark.protocol("graft")

STATES = ("Follower", "Candidate", "Leader", "Closed")


@dataclass
class Response:
    code: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        assert self.headers["content-type"] == "application/json"
        return json.loads(self.body)


def get(resource: Resource, path: str) -> Response:
    """GET C{path} from a Site over C{resource}, through a real HTTPChannel and Request."""
    site = Site(resource, reactor=Clock())
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    assert channel is not None
    transport = StringTransport()
    channel.makeConnection(transport)
    channel.dataReceived(
        f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode("ascii")
    )
    raw = transport.value()
    head, _, body = raw.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    assert int(headers["content-length"]) == len(body)
    return Response(int(status.split()[1]), headers, body)


def make_service(
    tmp_path: Path, clock: Clock, rpc: Any, node_id: str = "a", size: int = 3
) -> GraftService:
    return GraftService(
        ClusterInfo("web", size),
        RecordingHandler(),
        rpc,
        str(tmp_path / f"{node_id}.state"),
        clock=clock,
        node_id=node_id,
    )


def advance(clock: Clock, seconds: float, step: float = 0.01) -> None:
    for _ in range(round(seconds / step)):
        clock.advance(step)


def running_node(service: GraftService) -> Node:
    assert service.node is not None
    return service.node


@implementer(ITransportStats)
class CountingRpc(RecordingRpc):
    """A RecordingRpc that keeps transport counters, as NatsRpc and TcpRpc do."""

    def __init__(self) -> None:
        super().__init__()
        self.invalid_messages = 4
        self.other_protocol_messages: int | None = 3
        self.failed_sends: int | None = 5
        self.dropped_outgoing = 2
        self.refused_connections: int | None = 7


class UndeclaredRpc(RecordingRpc):
    """A RecordingRpc with counters of the right names that does not declare ITransportStats."""

    invalid_messages = 4
    dropped_outgoing = 2


TRANSPORT_METRICS = (
    ("graft_messages_invalid", "invalid_messages"),
    ("graft_messages_other_protocol", "other_protocol_messages"),
    ("graft_sends_failed", "failed_sends"),
    ("graft_messages_unsent", "dropped_outgoing"),
    ("graft_connections_refused", "refused_connections"),
)


def elected_cluster(tmp_path: Path) -> tuple[Clock, list[GraftService], GraftService]:
    """Three services on one MemoryNetwork, run until one of them leads."""
    clock = Clock()
    network = MemoryNetwork(clock, latency=0.005)
    services = [make_service(tmp_path, clock, network.rpc(), node_id) for node_id in "abc"]
    for service in services:
        service.startService()
    for _ in range(300):
        advance(clock, 0.01, 0.01)
        leaders = [s for s in services if running_node(s).state is State.LEADER]
        if leaders and all(running_node(s).leader for s in services):
            break
    assert len(leaders) == 1
    advance(clock, 0.3)
    return clock, services, leaders[0]


def stop_all(services: list[GraftService]) -> None:
    for service in services:
        if service.running:
            result_of(service.stopService())


def metrics_of(body: bytes) -> dict[str, Any]:
    """Families by name (counters without _total) from Prometheus text."""
    return {family.name: family for family in text_string_to_metric_families(body.decode())}


def sample(families: dict[str, Any], name: str, **labels: str) -> float:
    for family in families.values():
        for each in family.samples:
            if each.name == name and all(each.labels.get(k) == v for k, v in labels.items()):
                return float(each.value)
    raise AssertionError(f"no sample {name} {labels}")


# -- /status -----------------------------------------------------------------------


def test_status_before_start_is_starting(tmp_path: Path) -> None:
    """Before the service starts /status answers 503 with {"state": "Starting"}."""
    service = make_service(tmp_path, Clock(), RecordingRpc())
    response = get(GraftResource(service), "/status")
    assert response.code == 503
    assert response.json() == {"state": "Starting"}


def test_status_fields_match_the_nodes(tmp_path: Path) -> None:
    """Each node's /status carries its id, cluster, size, state, term, vote, leader and stats."""
    _, services, leader = elected_cluster(tmp_path)
    try:
        for service in services:
            node = running_node(service)
            stats = node.stats()
            response = get(GraftResource(service), "/status")
            assert response.code == 200
            assert response.headers["cache-control"] == "no-store"
            status = response.json()
            assert status["id"] == node.id
            assert status["cluster"] == "web"
            assert status["size"] == 3
            assert status["state"] == str(node.state)
            assert status["term"] == node.current_term >= 1
            assert status["vote"] == node.current_vote
            assert status["leader"] == node.leader == running_node(leader).id
            assert status["is_leader"] is (service is leader)
            assert status["last_state_change"] == stats.last_state_change
            assert status["elections_started"] == stats.elections_started
            assert status["elections_won"] == stats.elections_won
            assert status["votes_granted"] == stats.votes_granted
            assert status["heartbeats_sent"] == stats.heartbeats_sent
            assert status["heartbeats_received"] == stats.heartbeats_received
            assert status["leader_changes"] == stats.leader_changes
            assert status["last_heartbeat"] == stats.last_heartbeat
            if service is leader:
                assert status["state"] == "Leader"
                assert status["vote"] == node.id
                assert status["elections_won"] == 1
                assert status["heartbeats_sent"] > 1
                assert status["last_heartbeat"] is None
            else:
                assert status["state"] == "Follower"
                assert status["heartbeats_received"] > 1
                assert isinstance(status["last_heartbeat"], float)
    finally:
        stop_all(services)


def test_status_times_follow_the_clock(tmp_path: Path) -> None:
    """last_state_change and last_heartbeat are the clock's times of those events."""
    clock = Clock()
    clock.advance(1_700_000_000.0)
    rpc = RecordingRpc()
    service = make_service(tmp_path, clock, rpc)
    service.startService()
    try:
        resource = GraftResource(service)
        fresh = get(resource, "/status").json()
        assert fresh["state"] == "Follower"
        assert fresh["term"] == 0
        assert fresh["vote"] == ""
        assert fresh["leader"] == ""
        assert fresh["last_state_change"] is None
        assert fresh["last_heartbeat"] is None
        # Before the election timeout (at least 0.5 s): still a follower.
        clock.advance(0.25)
        running_node(service).handle_heartbeat(Heartbeat(3, "b"))
        status = get(resource, "/status").json()
        assert status["term"] == 3
        assert status["leader"] == "b"
        assert status["last_heartbeat"] == 1_700_000_000.25
        assert status["last_state_change"] is None
        clock.advance(0.25)
        running_node(service).handle_heartbeat(Heartbeat(3, "b"))
        assert get(resource, "/status").json()["last_heartbeat"] == 1_700_000_000.5
        # No more heartbeats: the node campaigns, and the change is timed.
        advance(clock, 1.0)
        status = get(resource, "/status").json()
        assert status["state"] == "Candidate"
        assert 1_700_000_001.0 <= status["last_state_change"] <= 1_700_000_001.5
        assert status["last_heartbeat"] == 1_700_000_000.5
    finally:
        result_of(service.stopService())


def test_status_of_candidate_and_closed(tmp_path: Path) -> None:
    """/status reports a candidate's own vote, and Closed after the service stops."""
    clock = Clock()
    service = make_service(tmp_path, clock, RecordingRpc())
    service.startService()
    resource = GraftResource(service)
    advance(clock, 1.0)
    status = get(resource, "/status").json()
    assert status["state"] == "Candidate"
    assert status["vote"] == "a"
    assert status["term"] >= 1
    assert status["last_state_change"] is not None
    result_of(service.stopService())
    response = get(resource, "/status")
    assert response.code == 200
    assert response.json()["state"] == "Closed"


# -- /leader and /healthz ----------------------------------------------------------


def test_leader_page_only_on_the_leader(tmp_path: Path) -> None:
    """/leader answers 200 on the leader and 503 on its followers."""
    _, services, leader = elected_cluster(tmp_path)
    try:
        for service in services:
            response = get(GraftResource(service), "/leader")
            assert response.code == (200 if service is leader else 503)
            assert response.headers["content-type"] == "text/plain; charset=utf-8"
            assert response.headers["cache-control"] == "no-store"
    finally:
        stop_all(services)


def test_leader_page_503_before_start_candidate_and_closed(tmp_path: Path) -> None:
    """/leader is 503 before start, while a candidate, and after a leader stops."""
    clock = Clock()
    rpc = RecordingRpc()
    service = make_service(tmp_path, clock, rpc)
    resource = GraftResource(service)
    assert get(resource, "/leader").code == 503
    service.startService()
    assert get(resource, "/leader").code == 503
    advance(clock, 1.0)
    node = running_node(service)
    assert node.state is State.CANDIDATE
    assert get(resource, "/leader").code == 503
    node.handle_vote_response(VoteResponse(node.current_term, True, "b"))
    assert node.state is State.LEADER
    assert get(resource, "/leader").code == 200
    result_of(service.stopService())
    assert get(resource, "/leader").code == 503


def test_healthz_while_running(tmp_path: Path) -> None:
    """/healthz is 503 before start, 200 while running (in any state), 503 after stop."""
    clock = Clock()
    service = make_service(tmp_path, clock, RecordingRpc())
    resource = GraftResource(service)
    assert get(resource, "/healthz").code == 503
    service.startService()
    try:
        response = get(resource, "/healthz")
        assert response.code == 200
        assert response.headers["content-type"] == "text/plain; charset=utf-8"
        advance(clock, 1.0)
        assert running_node(service).state is State.CANDIDATE
        assert get(resource, "/healthz").code == 200
    finally:
        result_of(service.stopService())
    assert get(resource, "/healthz").code == 503


# -- /metrics ----------------------------------------------------------------------


def test_metrics_match_node_stats(tmp_path: Path) -> None:
    """/metrics parses as Prometheus text and every value matches the node and its stats."""
    _, services, leader = elected_cluster(tmp_path)
    try:
        for service in services:
            node = running_node(service)
            response = get(GraftResource(service), "/metrics")
            assert response.code == 200
            assert response.headers["content-type"] == CONTENT_TYPE_LATEST
            families = metrics_of(response.body)
            ids = {"cluster": "web", "node": node.id}
            for state in STATES:
                expected = 1.0 if str(node.state) == state else 0.0
                assert sample(families, "graft_state", state=state, **ids) == expected
            assert families["graft_state"].type == "gauge"
            is_leader = 1.0 if service is leader else 0.0
            assert sample(families, "graft_is_leader", **ids) == is_leader
            assert sample(families, "graft_term", **ids) == node.current_term
            stats = node.stats()
            for name in (
                "elections_started",
                "elections_won",
                "votes_granted",
                "heartbeats_sent",
                "heartbeats_received",
                "leader_changes",
            ):
                assert families[f"graft_{name}"].type == "counter"
                assert sample(families, f"graft_{name}_total", **ids) == getattr(stats, name)
            # MemoryRpc keeps no transport counters, so those metrics are absent.
            for metric, _ in TRANSPORT_METRICS:
                assert metric not in families
    finally:
        stop_all(services)


def test_metrics_state_is_one_hot(tmp_path: Path) -> None:
    """graft_state is 1 for exactly the current state, through Follower, Candidate, Leader."""
    clock = Clock()
    service = make_service(tmp_path, clock, RecordingRpc())
    service.startService()
    resource = GraftResource(service)
    seen = []
    try:
        node = running_node(service)
        for step in ("start", "campaign", "win"):
            if step == "campaign":
                advance(clock, 1.0)
            elif step == "win":
                node.handle_vote_response(VoteResponse(node.current_term, True, "b"))
            families = metrics_of(get(resource, "/metrics").body)
            hot = [
                each.labels["state"]
                for each in families["graft_state"].samples
                if each.value == 1.0
            ]
            assert sorted(each.labels["state"] for each in families["graft_state"].samples) == (
                sorted(STATES)
            )
            assert len(hot) == 1
            seen.append(hot[0])
        assert seen == ["Follower", "Candidate", "Leader"]
    finally:
        result_of(service.stopService())
    families = metrics_of(get(resource, "/metrics").body)
    assert sample(families, "graft_state", state="Closed") == 1.0
    assert sample(families, "graft_is_leader") == 0.0


def test_counting_rpc_provides_itransportstats() -> None:
    """The test fake CountingRpc passes verifyObject for ITransportStats."""
    assert verifyObject(ITransportStats, CountingRpc())


def test_metrics_transport_counters(tmp_path: Path) -> None:
    """Each ITransportStats counter becomes its own Prometheus counter, read at each scrape."""
    clock = Clock()
    rpc = CountingRpc()
    service = make_service(tmp_path, clock, rpc)
    service.startService()
    try:
        resource = GraftResource(service)
        families = metrics_of(get(resource, "/metrics").body)
        for metric, attribute in TRANSPORT_METRICS:
            assert families[metric].type == "counter"
            expected = float(getattr(rpc, attribute))
            assert sample(families, f"{metric}_total", node="a") == expected, metric
        for number, (_, attribute) in enumerate(TRANSPORT_METRICS, start=10):
            setattr(rpc, attribute, number)
        families = metrics_of(get(resource, "/metrics").body)
        for number, (metric, _) in enumerate(TRANSPORT_METRICS, start=10):
            assert sample(families, f"{metric}_total") == float(number), metric
    finally:
        result_of(service.stopService())


def test_metrics_leave_out_counters_a_transport_does_not_have(tmp_path: Path) -> None:
    """A counter that is None (the transport has no such thing) has no metric; the rest do."""
    clock = Clock()
    rpc = CountingRpc()
    rpc.other_protocol_messages = rpc.failed_sends = rpc.refused_connections = None
    service = make_service(tmp_path, clock, rpc)
    service.startService()
    try:
        families = metrics_of(get(GraftResource(service), "/metrics").body)
        assert sample(families, "graft_messages_invalid_total") == 4.0
        assert sample(families, "graft_messages_unsent_total") == 2.0
        for metric in (
            "graft_messages_other_protocol",
            "graft_sends_failed",
            "graft_connections_refused",
        ):
            assert metric not in families
    finally:
        result_of(service.stopService())


def test_metrics_read_only_a_declared_itransportstats(tmp_path: Path) -> None:
    """Counters on a transport that does not declare ITransportStats are not exported."""
    clock = Clock()
    service = make_service(tmp_path, clock, UndeclaredRpc())
    service.startService()
    try:
        families = metrics_of(get(GraftResource(service), "/metrics").body)
        assert "graft_term" in families
        for metric, _ in TRANSPORT_METRICS:
            assert metric not in families
    finally:
        result_of(service.stopService())


def test_metrics_counters_move(tmp_path: Path) -> None:
    """After a heartbeat from a new leader the received and leader-change counters grow."""
    clock = Clock()
    service = make_service(tmp_path, clock, RecordingRpc())
    service.startService()
    resource = GraftResource(service)
    try:
        before = metrics_of(get(resource, "/metrics").body)
        assert sample(before, "graft_heartbeats_received_total") == 0.0
        assert sample(before, "graft_leader_changes_total") == 0.0
        assert sample(before, "graft_term") == 0.0
        running_node(service).handle_heartbeat(Heartbeat(2, "b"))
        running_node(service).handle_heartbeat(Heartbeat(2, "b"))
        after = metrics_of(get(resource, "/metrics").body)
        assert sample(after, "graft_heartbeats_received_total") == 2.0
        assert sample(after, "graft_leader_changes_total") == 1.0
        assert sample(after, "graft_term") == 2.0
    finally:
        result_of(service.stopService())


def test_metrics_before_start_are_empty(tmp_path: Path) -> None:
    """Before the node exists /metrics answers 200 with no graft metrics."""
    service = make_service(tmp_path, Clock(), RecordingRpc())
    response = get(GraftResource(service), "/metrics")
    assert response.code == 200
    assert response.headers["content-type"] == CONTENT_TYPE_LATEST
    assert metrics_of(response.body) == {}


# -- mounting ----------------------------------------------------------------------


# Twisted's own 404 page warns about its deprecated NoResource.
@pytest.mark.filterwarnings("ignore::DeprecationWarning:twisted.web.resource")
def test_mounts_in_a_users_site(tmp_path: Path) -> None:
    """GraftResource put under /graft in another Resource serves all four pages there."""
    clock = Clock()
    service = make_service(tmp_path, clock, RecordingRpc(), size=1)
    root = Resource()
    root.putChild(b"graft", GraftResource(service))
    service.startService()
    try:
        advance(clock, 1.0)
        assert running_node(service).state is State.LEADER
        assert get(root, "/graft/leader").code == 200
        assert get(root, "/graft/healthz").code == 200
        assert get(root, "/graft/status").json()["state"] == "Leader"
        families = metrics_of(get(root, "/graft/metrics").body)
        assert sample(families, "graft_is_leader") == 1.0
        assert get(root, "/graft/nope").code == 404
        assert get(root, "/leader").code == 404
    finally:
        result_of(service.stopService())


def test_pages_render_with_dummy_request(tmp_path: Path) -> None:
    """Traversed with getChildForRequest and rendered on a DummyRequest, the pages answer."""
    clock = Clock()
    service = make_service(tmp_path, clock, RecordingRpc())
    root = Resource()
    root.putChild(b"graft", GraftResource(service))
    service.startService()
    try:
        request = DummyRequest([b"graft", b"leader"])
        body = getChildForRequest(root, request).render(request)
        assert request.responseCode == 503
        assert body == b"not the leader\n"
        request = DummyRequest([b"graft", b"status"])
        body = getChildForRequest(root, request).render(request)
        assert request.responseCode in (None, 200)
        assert request.responseHeaders.getRawHeaders(b"content-type") == [b"application/json"]
        assert json.loads(body)["id"] == "a"
    finally:
        result_of(service.stopService())


# -- StatusSite: read-only and bounded ---------------------------------------------

ADDRESS = IPv4Address("TCP", "127.0.0.1", 40000)
# Twisted's own 404, 405 and 501 pages warn that they are deprecated.
twisted_error_pages = pytest.mark.filterwarnings("ignore::DeprecationWarning:twisted.web")


class Recording(Resource):
    """A page that records what it rendered."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.rendered: list[bytes] = []

    def render_GET(self, request: Any) -> bytes:
        self.rendered.append(request.method)
        return b"ok\n"


def connect(site: StatusSite) -> tuple[StatusChannel, StringTransport]:
    """A new connection to C{site}, as the listening port makes it.

    Its transport's C{disconnected} is set by an abort; C{disconnecting} by any close.
    """
    channel = site.buildProtocol(ADDRESS)
    assert channel is not None
    transport = StringTransport()
    channel.makeConnection(transport)
    return channel, transport


def lost(channel: StatusChannel) -> None:
    """What the reactor does on the turn after an abort: the connection is lost."""
    channel.connectionLost(Failure(ConnectionDone()))


def head_of(raw: bytes) -> tuple[int, dict[str, str]]:
    """Status code and headers (names in lower case) of the first response in C{raw}."""
    head = raw.partition(b"\r\n\r\n")[0].decode("latin-1")
    status, *lines = head.split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status.split()[1]), headers


@pytest.fixture
def temp_files(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """Every tempfile.TemporaryFile() call (each gets a BytesIO, so requests run on)."""
    calls: list[tuple[Any, ...]] = []

    def record(*args: Any, **kwargs: Any) -> BytesIO:
        calls.append(args)
        return BytesIO()

    monkeypatch.setattr(tempfile, "TemporaryFile", record)
    return calls


@contextmanager
def log_events() -> Iterator[list[LogEvent]]:
    """Every event logged (any level) inside the block."""
    events: list[LogEvent] = []
    observer = events.append
    globalLogPublisher.addObserver(observer)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(observer)


def test_a_body_is_refused_with_413_before_any_of_it_is_stored(
    temp_files: list[tuple[Any, ...]],
) -> None:
    """A request announcing a 20 MB body gets 413 and a close; no body byte is kept."""
    page = Recording()
    channel, transport = connect(StatusSite(page, clock=Clock()))
    channel.dataReceived(
        b"POST /status HTTP/1.1\r\nHost: localhost\r\nContent-Length: 20000000\r\n"
        b"Expect: 100-continue\r\n\r\n" + b"x" * 70_000
    )
    for _ in range(3):
        channel.dataReceived(b"x" * 100_000)
    code, headers = head_of(transport.value())
    assert code == 413
    assert headers["connection"] == "close"
    assert b"100 Continue" not in transport.value()
    assert transport.disconnecting
    assert page.rendered == []
    assert temp_files == []
    # Nothing of the body is held: not by the request, not in the line buffer.
    assert all(request.content is None for request in channel.requests)
    assert channel.clearLineBuffer() == b""


def test_a_chunked_body_is_refused_too(temp_files: list[tuple[Any, ...]]) -> None:
    """A chunked request (no length, so Twisted would spool it to a file) gets 413 and a close."""
    page = Recording()
    channel, transport = connect(StatusSite(page, clock=Clock()))
    channel.dataReceived(
        b"GET /status HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"10000\r\n" + b"x" * 0x10000 + b"\r\n"
    )
    assert head_of(transport.value())[0] == 413
    assert transport.disconnecting
    # The rest of the body, and a request after it, are dropped unread.
    channel.dataReceived(b"0\r\n\r\nGET /status HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert transport.value().count(b"HTTP/1.1 ") == 1
    assert page.rendered == []
    assert temp_files == []
    assert channel.clearLineBuffer() == b""


def test_a_status_request_keeps_no_body_whatever_its_channel_hands_it(
    temp_files: list[tuple[Any, ...]],
) -> None:
    """StatusRequest itself never opens a temporary file and drops body bytes it is given."""
    for length in (None, 100_000, 20_000_000):
        request = StatusRequest(DummyChannel())
        request.gotLength(length)
        request.handleContentChunk(b"x" * 200_000)
        assert request.content.getvalue() == b""
    assert temp_files == []


@twisted_error_pages
def test_a_request_without_a_body_is_served(temp_files: list[tuple[Any, ...]]) -> None:
    """GET, and POST with Content-Length: 0, reach the pages as before."""
    page = Recording()
    channel, transport = connect(StatusSite(page, clock=Clock()))
    channel.dataReceived(b"GET /status HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert head_of(transport.value())[0] == 200
    assert transport.value().endswith(b"ok\n")
    transport.clear()
    channel.dataReceived(b"POST /status HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n")
    assert head_of(transport.value())[0] == 405
    assert not transport.disconnecting
    assert page.rendered == [b"GET"]


@twisted_error_pages
def test_no_server_header_names_a_version(tmp_path: Path) -> None:
    """No response (200, 404, 405, 501, HEAD, OPTIONS *) carries a Server header."""
    clock = Clock()
    service = make_service(tmp_path, clock, RecordingRpc(), size=1)
    service.startService()
    try:
        advance(clock, 1.0)
        site = StatusSite(GraftResource(service), clock=clock)
        for request, code in [
            (b"GET /status", 200),
            (b"HEAD /status", 200),
            (b"GET /leader", 200),
            (b"GET /nope", 404),
            (b"POST /status", 405),
            (b"DELETE /status", 501),
            (b"OPTIONS *", 200),
        ]:
            channel, transport = connect(site)
            channel.dataReceived(request + b" HTTP/1.1\r\nHost: localhost\r\n\r\n")
            got, headers = head_of(transport.value())
            assert got == code, request
            assert "server" not in headers, request
            assert b"TwistedWeb" not in transport.value()
    finally:
        result_of(service.stopService())


@twisted_error_pages
def test_nothing_is_logged_per_request_or_connection() -> None:
    """Requests (GET, HEAD, 404, 405, 413) and idle timeouts log nothing: no access log."""
    clock = Clock()
    root = Resource()
    root.putChild(b"status", Recording())
    site = StatusSite(root, clock=clock, idle_timeout=5)
    with log_events() as events:
        # Started as a listening port starts it: twisted.web would log to twistd's log.
        site.doStart()
        try:
            for request in [
                b"GET /status",
                b"HEAD /status",
                b"GET /nope",
                b"HEAD /nope",
                b"POST /status",
            ]:
                channel, transport = connect(site)
                channel.dataReceived(request + b" HTTP/1.1\r\nHost: localhost\r\n\r\n")
                assert transport.value().startswith(b"HTTP/1.1 ")
            channel, transport = connect(site)
            channel.dataReceived(b"PUT /status HTTP/1.1\r\nContent-Length: 9\r\n\r\n")
            assert head_of(transport.value())[0] == 413
            _, transport = connect(site)
            clock.advance(6)
            assert transport.disconnected
        finally:
            site.doStop()
    assert [formatEvent(event) for event in events] == []


def test_the_cap_evicts_the_least_recently_active_connection() -> None:
    """Past max_connections a new connection is accepted and the least recently active aborted."""
    page = Recording()
    site = StatusSite(page, clock=Clock(), max_connections=3)
    (a, a_transport), (b, b_transport), (c, c_transport) = (connect(site) for _ in range(3))
    # a sends the start of a request: now b is the least recently active.
    a.dataReceived(b"GET /status HTTP/1.1\r\n")
    d, d_transport = connect(site)
    assert b_transport.disconnected
    assert not (a_transport.disconnected or c_transport.disconnected or d_transport.disconnected)
    assert site.connections == 3
    lost(b)
    assert site.connections == 3
    # The newcomer is served.
    d.dataReceived(b"GET /status HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert head_of(d_transport.value())[0] == 200
    _, e_transport = connect(site)
    assert c_transport.disconnected
    assert not a_transport.disconnected
    # A connection that closes by itself frees its place.
    lost(c)
    lost(a)
    _, f_transport = connect(site)
    assert not (d_transport.disconnected or e_transport.disconnected or f_transport.disconnected)
    assert site.connections == 3


def test_evicted_connections_awaiting_close_are_bounded() -> None:
    """While max_connections evicted sockets still await their close, new ones are refused."""
    site = StatusSite(Recording(), clock=Clock(), max_connections=2)
    (a, _), (b, _) = connect(site), connect(site)
    (c, _), _ = connect(site), connect(site)  # evict a, then b: not closed yet
    # The listening port closes the new socket at once when buildProtocol gives None.
    assert site.buildProtocol(ADDRESS) is None
    lost(a)
    _, e_transport = connect(site)  # evicts c
    assert not e_transport.disconnected
    assert site.buildProtocol(ADDRESS) is None
    lost(b)
    lost(c)
    assert site.buildProtocol(ADDRESS) is not None


def test_an_idle_connection_is_dropped_at_the_deadline() -> None:
    """A connection that sends nothing is aborted idle_timeout seconds after it opened."""
    clock = Clock()
    site = StatusSite(Recording(), clock=clock, idle_timeout=5)
    _, transport = connect(site)
    clock.advance(4.9)
    assert not transport.disconnected
    clock.advance(0.2)
    assert transport.disconnected


def test_trickled_bytes_do_not_extend_the_deadline() -> None:
    """A request sent a byte a second is cut at idle_timeout: bytes do not restart the timer."""
    clock = Clock()
    site = StatusSite(Recording(), clock=clock, idle_timeout=5)
    channel, transport = connect(site)
    for byte in b"GET /status HTTP/1.1\r\nHost:":
        if transport.disconnected:
            break
        channel.dataReceived(bytes([byte]))
        clock.advance(1)
    assert transport.disconnected
    assert clock.seconds() == 5


def test_a_response_restarts_the_deadline() -> None:
    """On a kept-alive connection the idle deadline counts from the last response."""
    clock = Clock()
    site = StatusSite(Recording(), clock=clock, idle_timeout=5)
    channel, transport = connect(site)
    clock.advance(4)
    channel.dataReceived(b"GET /status HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert head_of(transport.value())[0] == 200
    clock.advance(4.9)
    assert not transport.disconnected
    clock.advance(0.2)
    assert transport.disconnected


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"max_connections": 0}, "max_connections must be at least 1"),
        ({"idle_timeout": 0}, "idle_timeout must be positive"),
    ],
)
def test_status_site_refuses_bad_limits(arguments: dict[str, Any], message: str) -> None:
    """StatusSite refuses a cap below one connection and a non-positive idle timeout."""
    with pytest.raises(ValueError, match=message):
        StatusSite(Recording(), clock=Clock(), **arguments)
