"""NatsRpc and the Twisted NATS client against real nats-server processes on loopback."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import textwrap
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import trustme
from conftest import LoggedErrors
from google.protobuf.message import DecodeError
from natsserver import NatsServer, cluster_args, free_port
from realtime import reactor, sleep, sole_leader, wait_until
from twisted.internet import threads
from twisted.internet.defer import CancelledError, DeferredList, gatherResults
from twisted.logger import LogEvent, LogLevel, formatEvent, globalLogPublisher
from zope.interface.verify import verifyObject

import graft_tx
from graft_tx import (
    ClusterInfo,
    ClusterNameError,
    NatsClosedError,
    NatsConfigError,
    NatsConnection,
    NatsRpc,
    Node,
    NodeIdError,
    QueueHandler,
    State,
    SubjectError,
    Timing,
)
from graft_tx.interfaces import IRpc, ITransportStats
from graft_tx.messages import Heartbeat, VoteRequest
from graft_tx.transport import graft_pb2 as pb
from graft_tx.transport import wire
from graft_tx.transport.natsclient import DEFAULT_RECONNECT_WAIT, NatsMessage

ServerFactory = Callable[..., NatsServer]

# Fast enough to keep the module short, slow enough for a loaded 2-core machine.
FAST = Timing(0.3, 0.6, 0.05)
PROTOCOL = "graft-tx/1"
ROOT = Path(__file__).resolve().parent.parent


# -- helpers ------------------------------------------------------------


def make_node(
    tmp_path: Path,
    cluster: str,
    size: int,
    rpc: NatsRpc,
    node_id: str,
    timing: Timing = FAST,
) -> Node:
    return graft_tx.new(
        ClusterInfo(cluster, size),
        QueueHandler(),
        rpc,
        str(tmp_path / f"{cluster}-{node_id}.state"),
        node_id=node_id,
        timing=timing,
    )


def rpc_of(node: Node) -> NatsRpc:
    rpc = node._rpc
    assert isinstance(rpc, NatsRpc)
    return rpc


async def elect(nodes: list[Node], timeout: float = 10.0, what: str = "one leader") -> Node:
    """Wait until exactly one of C{nodes} leads and the others follow it."""
    await wait_until(lambda: sole_leader(nodes) is not None, timeout, what)
    leader = sole_leader(nodes)
    assert leader is not None
    return leader


async def close_all(nodes: Iterable[Node]) -> None:
    await DeferredList([node.close() for node in nodes])


async def all_connected(rpcs: Iterable[NatsRpc], timeout: float = 10.0) -> float:
    """Wait until every rpc's when_connected() fired; return how long it took."""
    waiting = [rpc.when_connected() for rpc in rpcs]
    took = await wait_until(lambda: all(d.called for d in waiting), timeout, "all connected")
    await gatherResults(waiting)
    return took


def snapshot(nodes: Iterable[Node]) -> dict[str, tuple[State, int, str, str]]:
    return {n.id: (n.state, n.current_term, n.leader, n.current_vote) for n in nodes}


def pending_tasks() -> set[asyncio.Task[Any]]:
    return set(asyncio.all_tasks(reactor()._asyncioEventloop))


def is_nats_task(task: asyncio.Task[Any]) -> bool:
    code = getattr(task.get_coro(), "cr_code", None)
    return code is not None and "/nats/" in code.co_filename


async def monitoring(monitor_port: int, endpoint: str) -> dict[str, Any]:
    """A nats-server monitoring endpoint's JSON, fetched off the reactor thread."""

    def get() -> dict[str, Any]:
        url = f"http://127.0.0.1:{monitor_port}/{endpoint}"
        with urllib.request.urlopen(url, timeout=5) as response:
            result: dict[str, Any] = json.load(response)
            return result

    result: dict[str, Any] = await threads.deferToThread(get)
    return result


async def varz(monitor_port: int) -> dict[str, Any]:
    """nats-server's counters."""
    return await monitoring(monitor_port, "varz")


class CapturedLog:
    """Twisted log events captured while the context is open."""

    def __init__(self) -> None:
        self.events: list[LogEvent] = []

    def __enter__(self) -> CapturedLog:
        globalLogPublisher.addObserver(self.events.append)
        return self

    def __exit__(self, *exc: object) -> None:
        globalLogPublisher.removeObserver(self.events.append)

    def warnings(self, source: object | None = None) -> list[LogEvent]:
        return [
            e
            for e in self.events
            if e.get("log_level") == LogLevel.warn
            and (source is None or e.get("log_source") is source)
        ]

    def text(self, level: LogLevel = LogLevel.warn) -> str:
        return "\n".join(formatEvent(e) for e in self.events if e.get("log_level") == level)


# -- elections over one server -------------------------------------------


@pytest_twisted.ensureDeferred
async def test_five_nodes_elect_one_leader(nats_server: NatsServer, tmp_path: Path) -> None:
    """Five nodes over one server elect one leader that holds, and another when it closes."""
    nodes: list[Node] = []
    try:
        for i in range(5):
            rpc = NatsRpc(nats_server.url)
            assert verifyObject(IRpc, rpc)
            nodes.append(make_node(tmp_path, "five", 5, rpc, f"n{i}", Timing()))
        leader = await elect(nodes)
        term = leader.current_term
        assert sum(n.state is State.FOLLOWER for n in nodes) == 4

        # The leader holds for a further second: same leader, same term, everywhere.
        start = reactor().seconds()
        while reactor().seconds() - start < 1.0:
            assert sole_leader(nodes) is leader
            assert {n.current_term for n in nodes} == {term}
            await sleep(0.02)

        await leader.close()
        assert leader.state is State.CLOSED
        # A connection the rpc opened closes with its node.
        own = rpc_of(leader).connection
        assert own is not None and own.is_closed
        rest = [n for n in nodes if n is not leader]
        successor = await elect(rest, what="a new leader among the other 4")
        assert successor is not leader
        assert successor.current_term > term
    finally:
        await close_all(nodes)


@pytest_twisted.ensureDeferred
async def test_thirty_clusters_share_one_connection(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """30 clusters of 3 on one shared connection each elect a leader; closing leaves it open."""
    conn = await graft_tx.connect_nats(nats_server.url)
    clusters: dict[str, list[Node]] = {}
    try:
        for k in range(30):
            name = f"c{k}"
            clusters[name] = [
                make_node(tmp_path, name, 3, NatsRpc.from_connection(conn), f"{name}n{i}", Timing())
                for i in range(3)
            ]
        every = [n for nodes in clusters.values() for n in nodes]
        assert all(rpc_of(n).connection is conn for n in every)
        await all_connected(rpc_of(n) for n in every)
        await wait_until(
            lambda: all(sole_leader(nodes) for nodes in clusters.values()),
            20,
            "one leader in each of 30 clusters",
        )
        for nodes in clusters.values():
            assert [n.state for n in nodes].count(State.LEADER) == 1

        await close_all(every)
        assert all(n.state is State.CLOSED for n in every)
        assert conn.is_connected
        assert not conn.is_closed
        # The closed nodes took their subscriptions with them (nats-py's own table).
        assert not conn.client._subs
    finally:
        await close_all(n for nodes in clusters.values() for n in nodes)
        await conn.close()
    assert conn.is_closed


# -- server failures -----------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_server_killed_and_restarted(nats_server: NatsServer, tmp_path: Path) -> None:
    """After a SIGKILL and restart of the server every node reconnects and one leader returns."""
    nodes: list[Node] = []
    try:
        nodes = [
            make_node(tmp_path, "phoenix", 3, NatsRpc(nats_server.url), f"p{i}") for i in range(3)
        ]
        rpcs = [rpc_of(n) for n in nodes]
        await all_connected(rpcs)
        await elect(nodes)

        nats_server.kill()
        await wait_until(
            lambda: not any(rpc.connection and rpc.connection.is_connected for rpc in rpcs),
            5,
            "every node saw the server die",
        )
        reconnected = [rpc.when_connected() for rpc in rpcs]
        dropped = [rpc.dropped_outgoing for rpc in rpcs]
        await sleep(0.5)
        assert not any(d.called for d in reconnected)
        # Sent while down: dropped, not queued.
        assert sum(rpc.dropped_outgoing for rpc in rpcs) > sum(dropped)

        nats_server.start()
        restarted = reactor().seconds()
        await wait_until(lambda: all(d.called for d in reconnected), 10, "every node reconnected")
        await gatherResults(reconnected)
        reconnect_time = reactor().seconds() - restarted
        assert all(rpc.connection and rpc.connection.is_connected for rpc in rpcs)
        await elect(nodes, timeout=15, what="one leader after the restart")
        recovery = reactor().seconds() - restarted
        print(f"\nreconnected {reconnect_time:.2f}s, one leader {recovery:.2f}s after restart")
        assert recovery < DEFAULT_RECONNECT_WAIT + 1.0 + 5 * FAST.election_timeout_max
    finally:
        await close_all(nodes)


@pytest_twisted.ensureDeferred
async def test_nats_cluster_failover(make_nats_server: ServerFactory, tmp_path: Path) -> None:
    """Nodes spread over a 3-server NATS cluster elect across it and survive losing a server."""
    ports = [free_port() for _ in range(3)]
    routes = [free_port() for _ in range(3)]
    servers = [
        make_nats_server(
            *cluster_args("gtx", routes[i], [r for r in routes if r != routes[i]]),
            port=ports[i],
        )
        for i in range(3)
    ]
    urls = [s.url for s in servers]
    nodes: list[Node] = []
    try:
        for i in range(3):
            preferred = [urls[i], *(u for u in urls if u != urls[i])]
            nodes.append(
                make_node(tmp_path, "spread", 3, NatsRpc(preferred, dont_randomize=True), f"s{i}")
            )
        rpcs = [rpc_of(n) for n in nodes]
        await all_connected(rpcs)
        assert [rpc.connection and rpc.connection.connected_url for rpc in rpcs] == urls

        # One node per server: a leader means the routes carry the election.
        leader = await elect(nodes, timeout=15, what="one leader across the routes")
        leader_rpc = rpc_of(leader)
        assert leader_rpc.connection is not None
        victim_url = leader_rpc.connection.connected_url
        victim = servers[urls.index(victim_url)]
        term = leader.current_term

        victim.kill()
        killed = reactor().seconds()
        await wait_until(
            lambda: (
                leader_rpc.connection is not None
                and leader_rpc.connection.is_connected
                and leader_rpc.connection.connected_url not in ("", victim_url)
            ),
            10,
            "the leader's node reconnected to another server",
        )
        await all_connected(rpcs)
        assert all(rpc.connection and rpc.connection.connected_url != victim_url for rpc in rpcs)
        again = await elect(nodes, timeout=15, what="one leader after losing a server")
        assert again.current_term >= term
        print(f"\nfailover: one leader {reactor().seconds() - killed:.2f}s after the kill")

        # The two other nodes sit on the two surviving servers: they elect across the route.
        await leader.close()
        rest = [n for n in nodes if n is not leader]
        assert len({conn.connected_url for n in rest if (conn := rpc_of(n).connection)}) == 2
        await elect(rest, timeout=15, what="one leader between the surviving servers")
    finally:
        await close_all(nodes)


# -- bad input -----------------------------------------------------------


def undecodable(kind: type[Any], payloads: Iterable[bytes]) -> Iterator[bytes]:
    """The payloads that protobuf cannot parse as C{kind}."""
    for payload in payloads:
        try:
            kind().ParseFromString(payload)
        except DecodeError:
            yield payload


def garbage(kind: type[Any], count: int, rng: random.Random) -> list[bytes]:
    """C{count} random payloads, none of which parses as C{kind}."""
    found: list[bytes] = []
    while len(found) < count:
        candidate = rng.randbytes(rng.randrange(1, 40))
        found.extend(undecodable(kind, [candidate]))
    return found


def truncations(message: Any) -> list[bytes]:
    """Every prefix of C{message}'s bytes that is cut inside a field."""
    data = message.SerializeToString()
    return list(undecodable(type(message), (data[:n] for n in range(1, len(data)))))


@pytest_twisted.ensureDeferred
async def test_garbage_changes_nothing(nats_server: NatsServer, tmp_path: Path) -> None:
    """Garbage, truncated and invalid messages are dropped, counted, logged sparingly: no change."""
    nodes: list[Node] = []
    raw: NatsConnection | None = None
    with CapturedLog() as log:
        try:
            nodes = [
                make_node(tmp_path, "victims", 3, NatsRpc(nats_server.url), f"v{i}", Timing())
                for i in range(3)
            ]
            rpcs = [rpc_of(n) for n in nodes]
            await all_connected(rpcs)
            raw = await graft_tx.connect_nats(nats_server.url)
            leader = await elect(nodes)
            term = leader.current_term
            big = term + 100
            rng = random.Random(3)

            heartbeats = [
                *garbage(pb.Heartbeat, 200, rng),
                *truncations(
                    pb.Heartbeat(term=big, leader="ghost", cluster_size=3, protocol=PROTOCOL)
                ),
                # Valid protobuf, invalid for this cluster; each would raise the term.
                pb.Heartbeat(term=big, leader="", cluster_size=3, protocol=PROTOCOL),
                pb.Heartbeat(term=big, leader="ghost", cluster_size=5, protocol=PROTOCOL),
                pb.Heartbeat(term=2**64 - 1, leader="ghost", cluster_size=7, protocol=PROTOCOL),
                pb.Heartbeat(term=big, leader="ghost", cluster_size=3, protocol="graft-tx/99"),
                pb.Heartbeat(term=big, leader="gh\x00st", cluster_size=3, protocol=PROTOCOL),
            ]
            requests = [
                *garbage(pb.VoteRequest, 50, rng),
                *truncations(
                    pb.VoteRequest(
                        term=big,
                        candidate="ghost",
                        current_state=b"position",
                        cluster_size=3,
                        protocol=PROTOCOL,
                    )
                ),
                pb.VoteRequest(term=big, candidate="", cluster_size=3, protocol=PROTOCOL),
                pb.VoteRequest(term=big, candidate="ghost", cluster_size=5, protocol=PROTOCOL),
                pb.VoteRequest(term=big, candidate="ghost", cluster_size=3, protocol="other/1"),
                # A candidate id that would break the reply subject.
                pb.VoteRequest(term=big, candidate="gh.ost", cluster_size=3, protocol=PROTOCOL),
            ]
            responses = [
                *garbage(pb.VoteResponse, 50, rng),
                *truncations(
                    pb.VoteResponse(
                        term=big, granted=True, voter="ghost", cluster_size=3, protocol=PROTOCOL
                    )
                ),
                pb.VoteResponse(
                    term=big, granted=True, voter="ghost", cluster_size=5, protocol=PROTOCOL
                ),
                pb.VoteResponse(
                    term=big, granted=True, voter="ghost", cluster_size=3, protocol="?"
                ),
            ]

            def payload(message: bytes | Any) -> bytes:
                return message if isinstance(message, bytes) else message.SerializeToString()

            before = snapshot(nodes)
            invalid = [rpc.invalid_messages for rpc in rpcs]
            assert invalid == [0, 0, 0]
            target = nodes.index(leader)
            for message in heartbeats:
                await raw.publish("graft.victims.heartbeat", payload(message))
            for message in requests:
                await raw.publish("graft.victims.vote_request", payload(message))
            for message in responses:
                await raw.publish(f"graft.{leader.id}.vote_response", payload(message))
            await raw.flush()

            expected = [
                len(heartbeats) + len(requests) + (len(responses) if i == target else 0)
                for i in range(3)
            ]
            await wait_until(
                lambda: [rpc.invalid_messages for rpc in rpcs] == expected,
                10,
                f"invalid_messages reaching {expected}",
            )
            # Longer than an election timeout: the followers still hear the leader.
            await sleep(Timing().election_timeout_max + 0.1)
            assert [rpc.invalid_messages for rpc in rpcs] == expected
            # Counted as invalid only: none of them is of the other mode or a failed send.
            assert [(rpc.other_protocol_messages, rpc.failed_sends) for rpc in rpcs] == [(0, 0)] * 3
            assert snapshot(nodes) == before
            assert all(rpc.connection and rpc.connection.is_connected for rpc in rpcs)

            for rpc in rpcs:
                logged = log.warnings(source=rpc)
                # Ten a minute of each kind: one kind per subject, one for protocols.
                assert 1 <= len(logged) <= 10 * 5, [formatEvent(e) for e in logged]
            assert "dropped an invalid message" in log.text()
        finally:
            await close_all(nodes)
            if raw is not None:
                await raw.close()


# -- when_connected and the connection's life cycle ------------------------


@pytest_twisted.ensureDeferred
async def test_publishes_of_one_turn_arrive_in_order(nats_server: NatsServer) -> None:
    """Hundreds of publishes made in one reactor turn go out in order, and a flush asked
    for after them covers them all."""
    conn = await graft_tx.connect_nats(nats_server.url)
    got: list[bytes] = []
    try:
        await conn.subscribe("order.test", lambda message: got.append(message.data))
        await conn.flush()
        sent = [str(i).encode() for i in range(300)]
        published = [conn.publish("order.test", data) for data in sent]
        await conn.flush()
        assert all(d.called for d in published)
        await wait_until(lambda: len(got) == len(sent), 5, "every message back")
        assert got == sent
    finally:
        await conn.close()


@pytest_twisted.ensureDeferred
async def test_flushes_asked_for_together_share_one_round_trip(nats_server: NatsServer) -> None:
    """A hundred flushes asked for in one turn (a hundred nodes subscribing on a shared
    connection) make one flush of nats-py's, and all of them fire."""
    conn = await graft_tx.connect_nats(nats_server.url)
    client = conn.client
    real_flush = client.flush
    calls: list[float] = []

    async def counting_flush(timeout: float = 2.0) -> None:
        calls.append(timeout)
        await real_flush(timeout=timeout)

    client.flush = counting_flush
    try:
        flushes = [conn.flush() for _ in range(100)]
        await DeferredList(flushes, fireOnOneErrback=True)
        assert len(calls) == 1
        await conn.flush()
        assert len(calls) == 2
    finally:
        client.flush = real_flush
        await conn.close()


@pytest_twisted.ensureDeferred
async def test_when_connected_means_subscribed(nats_server: NatsServer, tmp_path: Path) -> None:
    """when_connected fires once subscribed (a message sent right after arrives), then at once."""
    raw = await graft_tx.connect_nats(nats_server.url)
    nodes: list[Node] = []
    try:
        rpc = NatsRpc(nats_server.url)
        first = rpc.when_connected()
        assert not first.called
        # Alone in a cluster of 3, the node never wins on its own.
        nodes.append(make_node(tmp_path, "lonely", 3, rpc, "alone"))
        await first
        assert rpc.connection is not None and rpc.connection.is_connected
        hb = pb.Heartbeat(term=1000, leader="ghost", cluster_size=3, protocol=PROTOCOL)
        await raw.publish("graft.lonely.heartbeat", hb.SerializeToString())
        await wait_until(lambda: nodes[0].leader == "ghost", 5, "the heartbeat arrived")
        assert nodes[0].current_term == 1000
        assert nodes[0].state is State.FOLLOWER

        again = rpc.when_connected()
        assert again.called
        await again
    finally:
        await close_all(nodes)
        await raw.close()


@pytest_twisted.ensureDeferred
async def test_when_connected_fails_when_closed_first(tmp_path: Path) -> None:
    """when_connected fails with NatsClosedError if the rpc closes before it ever connects."""
    rpc = NatsRpc(f"nats://127.0.0.1:{free_port()}")
    node = make_node(tmp_path, "nowhere", 3, rpc, "n")
    try:
        waiting = rpc.when_connected()
        await sleep(0.2)
        assert not waiting.called
        await node.close()
        assert waiting.called
        with pytest.raises(NatsClosedError):
            await waiting
        with pytest.raises(NatsClosedError):
            await rpc.when_connected()
        assert rpc.connection is None
    finally:
        await node.close()


@pytest_twisted.ensureDeferred
async def test_close_while_connecting_cancels_attempts(
    make_nats_server: ServerFactory, tmp_path: Path
) -> None:
    """Closing an rpc still trying to connect leaves no nats-py task and never connects later."""
    monitor = free_port()
    server = make_nats_server("-m", str(monitor), start=False)
    before = pending_tasks()
    rpc = NatsRpc(server.url, name="doomed")
    node = make_node(tmp_path, "cancel", 3, rpc, "n")
    try:
        await sleep(0.3)  # The first attempt failed; nats-py waits to retry.
        trying = pending_tasks() - before
        assert any(is_nats_task(t) for t in trying), trying
        await node.close()
        await sleep(0.1)
        left = pending_tasks() - before
        assert not left, left

        server.start()
        # The only connection so far is NatsServer's own probe of the port.
        baseline = (await varz(monitor))["total_connections"]
        assert baseline <= 1
        await sleep(DEFAULT_RECONNECT_WAIT + 0.5)
        assert (await varz(monitor))["total_connections"] == baseline
        seen = await monitoring(monitor, "connz?state=all")
        assert "doomed" not in [c.get("name") for c in seen.get("connections") or []]
        assert rpc.connection is None
    finally:
        await node.close()


@pytest_twisted.ensureDeferred
async def test_close_while_reconnecting_stops_everything(
    make_nats_server: ServerFactory, tmp_path: Path
) -> None:
    """Closing a node whose server died stops nats-py's tasks; a restarted server sees no client."""
    monitor = free_port()
    server = make_nats_server("-m", str(monitor))
    before = pending_tasks()
    rpc = NatsRpc(server.url, name="orphan")
    node = make_node(tmp_path, "orphan", 3, rpc, "n")
    try:
        await rpc.when_connected()
        assert any(is_nats_task(t) for t in pending_tasks() - before)
        server.kill()
        connection = rpc.connection
        assert connection is not None
        await wait_until(lambda: not connection.is_connected, 5, "the loss was seen")
        await sleep(0.3)  # nats-py is now retrying.
        await node.close()
        assert connection.is_closed
        await sleep(0.1)
        left = pending_tasks() - before
        assert not left, left

        server.start()
        baseline = (await varz(monitor))["total_connections"]
        assert baseline <= 1
        await sleep(DEFAULT_RECONNECT_WAIT + 0.5)
        assert (await varz(monitor))["total_connections"] == baseline
    finally:
        await node.close()


@pytest_twisted.ensureDeferred
async def test_cancel_connect_nats() -> None:
    """Cancelling connect_nats's Deferred stops its attempts, leaving no task behind."""
    before = pending_tasks()
    connecting = graft_tx.connect_nats(f"nats://127.0.0.1:{free_port()}")
    await sleep(0.2)
    assert any(is_nats_task(t) for t in pending_tasks() - before)
    connecting.cancel()
    # Deferred.fromFuture passes on asyncio's CancelledError.
    with pytest.raises((CancelledError, asyncio.CancelledError)):
        await connecting
    await sleep(0.1)
    assert pending_tasks() - before == set()


@pytest_twisted.ensureDeferred
async def test_node_started_before_its_server(
    make_nats_server: ServerFactory, tmp_path: Path
) -> None:
    """Nodes started before their server drop their messages, then connect to it and elect."""
    server = make_nats_server(start=False)
    nodes: list[Node] = []
    try:
        nodes = [make_node(tmp_path, "early", 3, NatsRpc(server.url), f"e{i}") for i in range(3)]
        rpcs = [rpc_of(n) for n in nodes]
        await sleep(FAST.election_timeout_max + 0.2)
        assert all(rpc.connection is None for rpc in rpcs)
        assert all(rpc.dropped_outgoing > 0 for rpc in rpcs)
        assert all(n.state is not State.LEADER for n in nodes)

        server.start()
        started = reactor().seconds()
        await all_connected(rpcs)
        await elect(nodes)
        print(f"\none leader {reactor().seconds() - started:.2f}s after the server started")
    finally:
        await close_all(nodes)


# -- refusals ------------------------------------------------------------


@pytest.mark.parametrize(
    ("cluster", "node_id", "error"),
    [
        ("a.b", "n", SubjectError),
        ("a*", "n", SubjectError),
        ("a>", "n", SubjectError),
        ("a b", "n", SubjectError),
        ("a\tb", "n", SubjectError),
        ("c", "a.b", SubjectError),
        ("c", "a*", SubjectError),
        ("c", "a>", SubjectError),
        ("c", "a b", SubjectError),
        # graft_tx.new refuses these itself, before the transport sees them.
        ("", "n", ClusterNameError),
        ("c", "", NodeIdError),
        ("c", "a\tb", NodeIdError),
    ],
)
def test_subject_breaking_names_refused(
    tmp_path: Path, cluster: str, node_id: str, error: type[Exception]
) -> None:
    """Names and ids that would break a subject are refused at creation, leaving nothing running."""
    installed = reactor()
    calls = set(installed.getDelayedCalls())
    tasks = pending_tasks()
    rpc = NatsRpc("nats://127.0.0.1:4222")
    with pytest.raises(error):
        graft_tx.new(
            ClusterInfo(cluster, 3), QueueHandler(), rpc, str(tmp_path / "state"), node_id=node_id
        )
    assert set(installed.getDelayedCalls()) - calls == set()
    assert pending_tasks() - tasks == set()
    assert rpc.connection is None


def test_other_reactor_fails_at_once(tmp_path: Path) -> None:
    """Under the default (epoll) reactor NatsRpc and connect_nats raise NatsReactorError."""
    script = textwrap.dedent(
        """
        import json, sys
        from twisted.internet import reactor
        import graft_tx

        out = {"reactor": type(reactor).__module__ + "." + type(reactor).__name__}
        try:
            graft_tx.new(
                graft_tx.ClusterInfo("c", 3), graft_tx.QueueHandler(),
                graft_tx.NatsRpc("nats://127.0.0.1:4222"), sys.argv[1], node_id="n",
            )
            out["new"] = None
        except Exception as e:
            out["new"] = [type(e).__name__, isinstance(e, graft_tx.NatsReactorError), str(e)]
        try:
            graft_tx.connect_nats("nats://127.0.0.1:4222")
            out["connect"] = None
        except Exception as e:
            out["connect"] = [type(e).__name__, isinstance(e, graft_tx.NatsReactorError), str(e)]
        out["delayed"] = len(reactor.getDelayedCalls())
        print(json.dumps(out))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "state")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert "asyncio" not in out["reactor"].lower()
    for key in ("new", "connect"):
        assert out[key] is not None, f"{key} did not raise"
        _, is_reactor_error, message = out[key]
        assert is_reactor_error, out[key]
        assert "asyncio" in message
    assert out["delayed"] == 0


# -- connection options ---------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_user_and_password(
    make_nats_server: ServerFactory, tmp_path: Path, logged_errors: LoggedErrors
) -> None:
    """Right credentials elect; wrong ones never connect, warn, and give up only when told to."""
    server = make_nats_server("--user", "u", "--pass", "p")
    nodes: list[Node] = []
    with CapturedLog() as log:
        try:
            wrong = NatsRpc(server.url, user="u", password="wrong", reconnect_wait=0.2)
            give_up = NatsRpc(
                server.url, user="u", password="wrong", reconnect_wait=0.2, max_reconnect_attempts=1
            )
            nodes.append(make_node(tmp_path, "outsiders", 3, wrong, "w"))
            nodes.append(make_node(tmp_path, "outsiders", 3, give_up, "g"))
            wrong_waiting = wrong.when_connected()
            give_up_waiting = give_up.when_connected()
            started = reactor().seconds()
            members = [
                make_node(
                    tmp_path, "members", 3, NatsRpc(server.url, user="u", password="p"), f"m{i}"
                )
                for i in range(3)
            ]
            nodes += members
            await elect(members)

            await wait_until(lambda: give_up_waiting.called, 10, "giving up")
            with pytest.raises(Exception) as info:  # nats-py's own error
                await give_up_waiting
            assert not isinstance(info.value, NatsClosedError)
            assert give_up.connection is None
            assert len(logged_errors) == 1
            assert "gave up connecting" in logged_errors.messages()[0]

            await sleep(max(0.0, started + 1.5 - reactor().seconds()))
            assert not wrong_waiting.called
            assert wrong.connection is None
            assert wrong.dropped_outgoing > 0
            assert "Authorization Violation" in log.text()

            await close_all(nodes)
            with pytest.raises(NatsClosedError):
                await wrong_waiting
        finally:
            await close_all(nodes)


@pytest_twisted.ensureDeferred
async def test_token(make_nats_server: ServerFactory, tmp_path: Path) -> None:
    """The right token elects; a wrong one never connects."""
    server = make_nats_server("--auth", "s3cret")
    nodes: list[Node] = []
    try:
        wrong = NatsRpc(server.url, token="guess", reconnect_wait=0.2)
        nodes.append(make_node(tmp_path, "outsiders", 3, wrong, "w"))
        started = reactor().seconds()
        members = [
            make_node(tmp_path, "members", 3, NatsRpc(server.url, token="s3cret"), f"m{i}")
            for i in range(3)
        ]
        nodes += members
        await elect(members)
        await sleep(max(0.0, started + 1.0 - reactor().seconds()))
        assert wrong.connection is None
    finally:
        await close_all(nodes)


@pytest.fixture
def certs(tmp_path: Path) -> dict[str, str]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as files."""
    ca = trustme.CA()
    paths = {
        name: tmp_path / f"{name}.pem"
        for name in ("ca", "server", "server_key", "client", "client_key")
    }
    ca.cert_pem.write_to_path(str(paths["ca"]))
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("graft-client@example.org")
    for cert, chain, key in ((server, "server", "server_key"), (client, "client", "client_key")):
        for blob in cert.cert_chain_pems:
            blob.write_to_path(str(paths[chain]), append=True)
        cert.private_key_pem.write_to_path(str(paths[key]))
    return {name: str(path) for name, path in paths.items()}


@pytest_twisted.ensureDeferred
async def test_tls(make_nats_server: ServerFactory, tmp_path: Path, certs: dict[str, str]) -> None:
    """Nodes trusting the server's CA elect over TLS; a client that does not trust it fails."""
    server = make_nats_server(
        "--tls", "--tlscert", certs["server"], "--tlskey", certs["server_key"]
    )
    url = f"tls://127.0.0.1:{server.port}"
    nodes: list[Node] = []
    try:
        # Without tls_ca the system's CAs are used, and they do not know ours.
        untrusting = NatsRpc(url, reconnect_wait=0.2)
        nodes.append(make_node(tmp_path, "outsiders", 3, untrusting, "u"))
        started = reactor().seconds()
        members = [
            make_node(tmp_path, "tls", 3, NatsRpc(url, tls_ca=certs["ca"]), f"t{i}")
            for i in range(3)
        ]
        nodes += members
        await all_connected(rpc_of(n) for n in members)
        assert all(rpc_of(n).connection.connected_url == url for n in members)  # type: ignore[union-attr]
        await elect(members)
        await sleep(max(0.0, started + 1.0 - reactor().seconds()))
        assert untrusting.connection is None
    finally:
        await close_all(nodes)


@pytest_twisted.ensureDeferred
async def test_mutual_tls(
    make_nats_server: ServerFactory, tmp_path: Path, certs: dict[str, str]
) -> None:
    """Under --tlsverify clients with a certificate elect; a client without one never connects."""
    server = make_nats_server(
        "--tlsverify",
        "--tlscert",
        certs["server"],
        "--tlskey",
        certs["server_key"],
        "--tlscacert",
        certs["ca"],
    )
    url = f"tls://127.0.0.1:{server.port}"
    nodes: list[Node] = []
    try:
        anonymous = NatsRpc(url, tls_ca=certs["ca"], reconnect_wait=0.2)
        nodes.append(make_node(tmp_path, "outsiders", 3, anonymous, "anon"))
        started = reactor().seconds()
        members = [
            make_node(
                tmp_path,
                "mtls",
                3,
                NatsRpc(
                    url, tls_ca=certs["ca"], tls_cert=certs["client"], tls_key=certs["client_key"]
                ),
                f"m{i}",
            )
            for i in range(3)
        ]
        nodes += members
        await elect(members)
        await sleep(max(0.0, started + 1.0 - reactor().seconds()))
        assert anonymous.connection is None
    finally:
        await close_all(nodes)


@pytest.mark.parametrize(
    "options",
    [
        {"bogus_option": 1},
        {"reconnect_wait": -1},
        {"max_reconnect_attempts": "forever"},
        {"user": ""},
        {"tls_key": "key.pem"},
        {"tls_ca": "/nonexistent/ca.pem"},
    ],
)
def test_bad_options_refused(options: dict[str, Any]) -> None:
    """Unknown or wrong connection options raise NatsConfigError when NatsRpc is built."""
    with pytest.raises(NatsConfigError):
        NatsRpc("nats://127.0.0.1:4222", **options)


def test_bad_servers_refused() -> None:
    """An empty server list or an empty URL raises NatsConfigError when NatsRpc is built."""
    with pytest.raises(NatsConfigError):
        NatsRpc([])
    with pytest.raises(NatsConfigError):
        NatsRpc(["nats://127.0.0.1:4222", ""])


def test_connect_nats_refuses_bad_options() -> None:
    """connect_nats refuses an unknown option at once, before any connection is tried."""
    tasks = pending_tasks()
    with pytest.raises(NatsConfigError):
        graft_tx.connect_nats("nats://127.0.0.1:4222", bogus_option=True)
    assert pending_tasks() - tasks == set()


@pytest_twisted.ensureDeferred
async def test_client_reply_subscribe_unsubscribe(
    nats_server: NatsServer, logged_errors: LoggedErrors
) -> None:
    """The Twisted NATS client carries reply subjects, stops on unsubscribe and survives a
    raising subscriber."""
    conn = await graft_tx.connect_nats(nats_server.url, name="client-api")
    try:
        seen: list[bytes] = []
        replies: list[NatsMessage] = []

        def answer(message: NatsMessage) -> None:
            seen.append(message.data)
            if message.data == b"boom":
                raise RuntimeError("subscriber failed")
            conn.publish(message.reply, message.data.upper())

        sub = await conn.subscribe("svc.echo", answer)
        await conn.subscribe("svc.inbox", replies.append)
        await conn.flush()
        await conn.publish("svc.echo", b"hello", "svc.inbox")
        await wait_until(lambda: len(replies) == 1, 5, "the reply")
        assert (replies[0].subject, replies[0].data) == ("svc.inbox", b"HELLO")
        await conn.publish("svc.echo", b"boom")
        await conn.flush()
        await wait_until(lambda: b"boom" in seen, 5, "the raising subscriber to be called")
        assert [e for e in logged_errors.messages() if "svc.echo" in e]
        # The subscription still works after its callback raised.
        await conn.publish("svc.echo", b"again", "svc.inbox")
        await wait_until(lambda: len(replies) == 2, 5, "the second reply")
        assert replies[1].data == b"AGAIN"
        await sub.unsubscribe()
        await conn.flush()
        await conn.publish("svc.echo", b"late")
        await conn.flush()
        await sleep(0.1)
        assert b"late" not in seen
    finally:
        await conn.close()
    assert conn.is_closed


# -- transport counters --------------------------------------------------------


def test_natsrpc_provides_itransportstats() -> None:
    """NatsRpc provides ITransportStats: counters from 0, and no refused connections to count."""
    rpc = NatsRpc("nats://127.0.0.1:4222")
    assert verifyObject(ITransportStats, rpc)
    assert (rpc.invalid_messages, rpc.other_protocol_messages, rpc.failed_sends) == (0, 0, 0)
    assert rpc.dropped_outgoing == 0
    assert rpc.refused_connections is None


@pytest_twisted.ensureDeferred
async def test_messages_of_the_other_mode_are_counted_apart_and_delivered(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """A heartbeat of the other protocol mode counts in other_protocol_messages, not as
    invalid, and still reaches the node; an invalid one counts only as invalid."""
    node = make_node(tmp_path, "modes", 3, NatsRpc(nats_server.url), "n0", Timing(5.0, 6.0, 1.0))
    raw: NatsConnection | None = None
    with CapturedLog() as log:
        try:
            rpc = rpc_of(node)
            await all_connected([rpc])
            raw = await graft_tx.connect_nats(nats_server.url)
            other = "" if node.protocol == "graft-tx" else wire.PROTOCOL
            heartbeat = Heartbeat(node.current_term + 1, "elsewhere")
            await raw.publish("graft.modes.heartbeat", wire.encode(heartbeat, 3, other))
            await raw.flush()
            await wait_until(lambda: rpc.other_protocol_messages == 1, 5, "the count")
            assert node.leader == "elsewhere"
            assert rpc.invalid_messages == 0
            assert "comes from a node of protocol" in log.text()
            await raw.publish("graft.modes.heartbeat", b"\xff not protobuf")
            await raw.flush()
            await wait_until(lambda: rpc.invalid_messages == 1, 5, "the invalid one counted")
            assert rpc.other_protocol_messages == 1
            assert rpc.failed_sends == 0
        finally:
            if raw is not None:
                await raw.close()
            await close_all([node])


@pytest_twisted.ensureDeferred
async def test_a_failed_publish_counts_as_a_failed_send(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """A message the server's payload limit refuses counts in failed_sends, not as unsent or
    invalid, and is logged once."""
    node = make_node(tmp_path, "big", 3, NatsRpc(nats_server.url), "n0", Timing(5.0, 6.0, 1.0))
    with CapturedLog() as log:
        try:
            rpc = rpc_of(node)
            await all_connected([rpc])
            unsent = rpc.dropped_outgoing
            # Beyond nats-server's default max_payload of 1 MB.
            rpc.request_vote(VoteRequest(1, "n0", b"x" * 2_000_000))
            await wait_until(lambda: rpc.failed_sends == 1, 5, "the failed send")
            assert "could not publish on graft.big.vote_request" in log.text()
            assert (rpc.dropped_outgoing, rpc.invalid_messages) == (unsent, 0)
            assert rpc.other_protocol_messages == 0
        finally:
            await close_all([node])
