"""TcpRpc on real loopback sockets: elections, restarts, secrets, replay, TLS, bad input, close."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import trustme
from natsserver import free_port
from realtime import reactor, sleep, sole_leader, wait_until
from twisted.internet.defer import Deferred, DeferredList, DeferredQueue
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import LogEvent, LogLevel, formatEvent, globalLogPublisher
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

import graft_tx
from graft_tx import (
    ClusterInfo,
    Heartbeat,
    Node,
    QueueHandler,
    State,
    TcpConfigError,
    TcpRpc,
    Timing,
    VoteRequest,
)
from graft_tx.interfaces import IRpc
from graft_tx.statefile import PersistentState, StateFile
from graft_tx.transport.lines import VERSION, Keys, dump, encode_message, new_nonce

# Fast enough to keep the module short, slow enough for a loaded 2-core machine.
FAST = Timing(0.3, 0.6, 0.05)
# For a node that must not campaign during a test.
SLOW = Timing(30.0, 60.0, 1.0)
HUGE_TERM = 10**9


def now() -> float:
    return float(reactor().seconds())


def tcp_listen(port: int) -> str:
    return f"tcp:{port}:interface=127.0.0.1"


def tcp_peer(port: int) -> str:
    return f"tcp:host=127.0.0.1:port={port}"


def make_node(
    tmp_path: Path,
    cluster: str,
    size: int,
    rpc: TcpRpc,
    node_id: str,
    *,
    timing: Timing = FAST,
    term: int | None = None,
) -> Node:
    """A node of C{cluster}; with C{term}, its state file starts at that term."""
    path = str(tmp_path / f"{cluster}-{node_id}.state")
    if term is not None:
        StateFile(path).save(PersistentState(term, ""))
    return graft_tx.new(
        ClusterInfo(cluster, size), QueueHandler(), rpc, path, node_id=node_id, timing=timing
    )


class Cluster:
    """Nodes C{n0}.. of one cluster on loopback ports; C{close} stops every node it started."""

    def __init__(
        self,
        tmp_path: Path,
        size: int,
        *,
        name: str = "tcp",
        timing: Timing = FAST,
        listen: Callable[[int], str] = tcp_listen,
        peer: Callable[[int], str] = tcp_peer,
        **rpc_options: Any,
    ) -> None:
        self.tmp_path = tmp_path
        self.name = name
        self.size = size
        self.timing = timing
        self.listen = listen
        self.peer = peer
        self.rpc_options = rpc_options
        self.ports = [free_port() for _ in range(size)]
        self.ids = [f"n{i}" for i in range(size)]
        self.nodes: dict[str, Node] = {}
        self.rpcs: dict[str, TcpRpc] = {}
        self._started: list[Node] = []

    def start(self, index: int, **rpc_options: Any) -> Node:
        """Start node C{index} (again), on its port, with its id and its state file."""
        peers = [self.peer(port) for j, port in enumerate(self.ports) if j != index]
        rpc = TcpRpc(self.listen(self.ports[index]), peers, **{**self.rpc_options, **rpc_options})
        node = make_node(
            self.tmp_path, self.name, self.size, rpc, self.ids[index], timing=self.timing
        )
        self.nodes[node.id] = node
        self.rpcs[node.id] = rpc
        self._started.append(node)
        return node

    def start_all(self, **rpc_options: Any) -> list[Node]:
        return [self.start(i, **rpc_options) for i in range(self.size)]

    async def stop(self, node_id: str) -> None:
        node = self.nodes.pop(node_id)
        del self.rpcs[node_id]
        await node.close()

    def running(self) -> list[Node]:
        return list(self.nodes.values())

    def fully_connected(self) -> bool:
        """Every running node can send to every other running node."""
        ids = set(self.nodes)
        return all(rpc.connected_peers == ids - {i} for i, rpc in self.rpcs.items())

    async def close(self) -> None:
        await close_all(self._started)


async def close_all(nodes: Iterable[Node]) -> None:
    await DeferredList([node.close() for node in nodes])


async def elect(nodes: Iterable[Node], timeout: float = 10.0, what: str = "one leader") -> Node:
    """Wait until exactly one of C{nodes} leads and the others follow it."""
    nodes = list(nodes)
    await wait_until(lambda: sole_leader(nodes) is not None, timeout, what)
    leader = sole_leader(nodes)
    assert leader is not None
    return leader


async def holds(nodes: Iterable[Node], leader: Node, seconds: float) -> None:
    """Check every 20 ms for C{seconds} that C{leader} leads C{nodes} in its term."""
    nodes = list(nodes)
    term = leader.current_term
    deadline = now() + seconds
    while now() < deadline:
        assert sole_leader(nodes) is leader, [repr(n) for n in nodes]
        assert leader.current_term == term
        await sleep(0.02)


def snapshot(nodes: Iterable[Node]) -> dict[str, tuple[State, int, str, str]]:
    return {n.id: (n.state, n.current_term, n.leader, n.current_vote) for n in nodes}


# -- log capture ----------------------------------------------------------


class CapturedLog:
    """Twisted log events, captured while the fixture is active."""

    def __init__(self) -> None:
        self.events: list[LogEvent] = []

    def warnings(self, source: object = None, *words: str) -> list[str]:
        """Warnings logged by C{source} (any, if None) that contain every word."""
        found = []
        for event in self.events:
            if event.get("log_level") != LogLevel.warn:
                continue
            if source is not None and event.get("log_source") is not source:
                continue
            text = formatEvent(event)
            if all(word.lower() in text.lower() for word in words):
                found.append(text)
        return found


@pytest.fixture
def captured() -> Iterator[CapturedLog]:
    log = CapturedLog()
    globalLogPublisher.addObserver(log.events.append)
    try:
        yield log
    finally:
        globalLogPublisher.removeObserver(log.events.append)


# -- raw connections --------------------------------------------------------


class RawPeer(LineOnlyReceiver):
    """A hand-driven peer: records what it writes, queues the lines it gets."""

    delimiter = b"\n"
    MAX_LENGTH = 1 << 20

    def __init__(self) -> None:
        self.written = bytearray()
        self.received: list[bytes] = []
        self.lines: DeferredQueue[bytes] = DeferredQueue()
        self.lost: Deferred[None] = Deferred()

    def lineReceived(self, line: bytes) -> None:
        self.received.append(line)
        self.lines.put(line)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost.callback(None)

    @property
    def closed(self) -> bool:
        return self.lost.called

    def send(self, data: bytes) -> None:
        self.written += data
        assert self.transport is not None
        self.transport.write(data)

    def send_object(self, obj: dict[str, Any]) -> None:
        self.send(dump(obj) + b"\n")

    async def next_line(self, timeout: float = 5.0) -> bytes:
        waiting = self.lines.get()
        waiting.addTimeout(timeout, reactor())
        line: bytes = await waiting
        return line

    async def next_object(self, timeout: float = 5.0) -> dict[str, Any]:
        obj: dict[str, Any] = json.loads(await self.next_line(timeout))
        return obj

    async def refused(self, timeout: float = 5.0) -> str:
        """Wait for the error line and the close that follows; return the reason."""
        while True:
            obj = await self.next_object(timeout)
            if obj["type"] == "error":
                break
        await wait_until(lambda: self.closed, timeout, "the connection closed")
        return str(obj["reason"])

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.abortConnection()  # type: ignore[attr-defined]


async def connect_raw(port: int) -> RawPeer:
    endpoint = TCP4ClientEndpoint(reactor(), "127.0.0.1", port, timeout=5)
    peer: RawPeer = await connectProtocol(endpoint, RawPeer())
    return peer


def hello(
    cluster: str, size: int, node_id: str, nonce: str | None = None, protocol: str = "graft-tx"
) -> dict[str, Any]:
    return {
        "type": "hello",
        "version": VERSION,
        "cluster": cluster,
        "node": node_id,
        "size": size,
        "protocol": protocol,
        "nonce": nonce or new_nonce(),
    }


async def handshake(port: int, cluster: str, size: int, node_id: str) -> RawPeer:
    """A raw connection that completed the handshake of a cluster without a secret."""
    raw = await connect_raw(port)
    raw.send_object(hello(cluster, size, node_id))
    reply = await raw.next_object()
    assert reply["type"] == "hello", reply
    return raw


class AuthenticatedRaw:
    """The connecting side of the secret handshake, computed by hand."""

    def __init__(self, raw: RawPeer, keys: Keys, session: bytes) -> None:
        self.raw = raw
        self.keys = keys
        self.session = session
        self.sequence = 0

    def line(self, message: VoteRequest | Heartbeat) -> bytes:
        body = dump(encode_message(message))
        mac = Keys.line_mac(self.session, self.sequence, body)
        self.sequence += 1
        return mac.encode("ascii") + b" " + body + b"\n"

    def send(self, message: VoteRequest | Heartbeat) -> bytes:
        data = self.line(message)
        self.raw.send(data)
        return data


async def secret_handshake(
    port: int,
    cluster: str,
    size: int,
    node_id: str,
    server_id: str,
    secret: bytes,
    protocol: str = "graft-tx",
) -> AuthenticatedRaw:
    raw = await connect_raw(port)
    nonce = new_nonce()
    raw.send_object(hello(cluster, size, node_id, nonce, protocol))
    reply = await raw.next_object()
    assert reply["type"] == "hello", reply
    keys = Keys(secret)
    names = (cluster, server_id, node_id)
    assert reply["proof"] == keys.proof("server", nonce, reply["nonce"], *names)
    proof = keys.proof("client", nonce, reply["nonce"], cluster, node_id, server_id)
    raw.send_object({"type": "auth", "proof": proof})
    return AuthenticatedRaw(raw, keys, keys.session(nonce, reply["nonce"]))


async def listen_counting(port: int) -> tuple[list[int], IListeningPort]:
    made: list[int] = []

    class Counted(Protocol):
        def connectionMade(self) -> None:
            made.append(1)

    endpoint = TCP4ServerEndpoint(reactor(), port, interface="127.0.0.1")
    listening: IListeningPort = await endpoint.listen(Factory.forProtocol(Counted))
    return made, listening


async def refuses_connections(port: int) -> bool:
    try:
        raw = await connect_raw(port)
    except ConnectionRefusedError:
        return True
    raw.abort()
    return False


# -- elections ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_five_nodes_elect_reelect_and_take_back_a_restarted_leader(tmp_path: Path) -> None:
    """Five TcpRpc nodes elect one leader, another when it closes, and take it back as follower."""
    cluster = Cluster(tmp_path, 5, name="five")
    try:
        for node in cluster.start_all():
            assert verifyObject(IRpc, cluster.rpcs[node.id])
        took = await wait_until(lambda: sole_leader(cluster.running()) is not None, 10, "a leader")
        first = await elect(cluster.running())
        print(f"\nfive nodes elected {first.id} in term {first.current_term} in {took:.2f}s")
        await wait_until(cluster.fully_connected, 10, "all connected")
        await holds(cluster.running(), first, 0.5)

        await cluster.stop(first.id)
        took = await wait_until(
            lambda: sole_leader(cluster.running()) is not None, 10, "a new leader"
        )
        second = await elect(cluster.running())
        second_term = second.current_term
        print(f"closing it: {second.id} leads term {second_term} after {took:.2f}s")
        assert second.id != first.id
        assert second_term > first.current_term

        back = cluster.start(cluster.ids.index(first.id))
        took = await wait_until(
            lambda: (
                sole_leader(cluster.running()) is not None
                and cluster.fully_connected()
                and back.state is State.FOLLOWER
            ),
            10,
            "the restarted node follows",
        )
        third = await elect(cluster.running())
        changed = (third.id, third.current_term) != (second.id, second_term)
        print(
            f"restarted {back.id} follows {third.id} in term {third.current_term} after "
            f"{took:.2f}s (leader or term changed: {changed})"
        )
        assert third is not back
        assert back.leader == third.id
        assert back.current_term == third.current_term
        await holds(cluster.running(), third, 0.5)
    finally:
        await cluster.close()


@pytest_twisted.ensureDeferred
async def test_late_peer_and_peer_closed_for_a_while_join(tmp_path: Path) -> None:
    """A fifth node that starts late joins as a follower; one closed for a while rejoins."""
    cluster = Cluster(tmp_path, 5, name="late")
    try:
        for i in range(4):
            cluster.start(i)
        leader = await elect(cluster.running(), what="four of five elect")
        await wait_until(cluster.fully_connected, 10, "the four connected")
        for node_id, rpc in cluster.rpcs.items():
            assert rpc.connected_peers == {"n0", "n1", "n2", "n3"} - {node_id}

        late = cluster.start(4)
        took = await wait_until(
            lambda: cluster.fully_connected() and sole_leader(cluster.running()) is not None,
            10,
            "the late node connected and following",
        )
        print(f"\nthe late node n4 was connected and following after {took:.2f}s")
        leader = await elect(cluster.running())
        term = leader.current_term
        assert late.state is State.FOLLOWER
        assert cluster.rpcs["n4"].connected_peers == {"n0", "n1", "n2", "n3"}

        away = next(n for n in cluster.running() if n is not leader and n is not late)
        await cluster.stop(away.id)
        await wait_until(
            lambda: all(away.id not in rpc.connected_peers for rpc in cluster.rpcs.values()),
            5,
            "the others noticed",
        )
        await sleep(1.5)  # the others' retries back off meanwhile
        assert await refuses_connections(cluster.ports[cluster.ids.index(away.id)])
        assert sole_leader(cluster.running()) is leader

        back = cluster.start(cluster.ids.index(away.id))
        took = await wait_until(
            lambda: cluster.fully_connected() and sole_leader(cluster.running()) is not None,
            10,
            "the node closed for a while rejoined",
        )
        now_leading = await elect(cluster.running())
        print(
            f"{back.id}, closed 1.5s, rejoined after {took:.2f}s as {back.state}; leader "
            f"{now_leading.id} in term {now_leading.current_term} (was {leader.id} in {term})"
        )
        for node_id, rpc in cluster.rpcs.items():
            assert rpc.connected_peers == set(cluster.ids) - {node_id}
    finally:
        await cluster.close()


@pytest_twisted.ensureDeferred
async def test_node_back_after_a_long_absence_follows_without_deposing_the_leader(
    tmp_path: Path, captured: CapturedLog
) -> None:
    """A node back after its peers' retries backed off hears the leader before it campaigns."""
    cluster = Cluster(tmp_path, 3, name="absent")
    try:
        cluster.start_all()
        leader = await elect(cluster.running())
        await wait_until(cluster.fully_connected, 10, "all connected")
        term = leader.current_term
        away = next(n for n in cluster.running() if n is not leader)
        away_port = cluster.ports[cluster.ids.index(away.id)]
        await cluster.stop(away.id)
        await sleep(3.2)  # the others' retries now wait retry_max_delay (2s) between attempts

        # Come back just after the leader scheduled its next retry, so that the
        # outcome does not depend on luck. (Reads TcpRpc's ClientServices and
        # their log only to pick that moment; without them it restarts anyway.)
        services = list(getattr(cluster.rpcs[leader.id], "_clients", []))

        def next_retry() -> float:
            for event in reversed(captured.events):
                endpoint = event.get("endpoint")
                if (
                    event.get("log_source") in services
                    and getattr(endpoint, "_port", None) == away_port
                    and "delay" in event
                ):
                    return float(event["log_time"] + event["delay"])
            return 0.0

        deadline = now() + 5
        while now() < deadline and next_retry() - now() < 1.0:
            await sleep(0.01)
        print(f"\nrestarting {away.id}; the leader retries in {next_retry() - now():.2f}s")

        back = cluster.start(cluster.ids.index(away.id))
        started = now()
        await wait_until(lambda: back.leader != "", 5, "the restarted node hears a leader")
        heard = now() - started
        print(
            f"{back.id} follows {back.leader!r} in term {back.current_term} after {heard:.2f}s "
            f"(leader was {leader.id} in term {term})"
        )
        assert back.leader == leader.id and back.current_term == term, (
            f"the restarted node deposed the leader: it campaigned before it could hear "
            f"{leader.id} (now {snapshot(cluster.running())})"
        )
        await holds(cluster.running(), leader, 0.5)
        assert back.state is State.FOLLOWER
    finally:
        await cluster.close()


# -- shared secret --------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_wrong_secret_cannot_disturb_even_with_a_huge_term(
    tmp_path: Path, captured: CapturedLog
) -> None:
    """A node with the wrong secret and a huge term changes nothing; both sides log why."""
    cluster = Cluster(tmp_path, 3, name="secret", secret=b"s3cret")
    intruder: Node | None = None
    try:
        cluster.start_all()
        leader = await elect(cluster.running())
        before = snapshot(cluster.running())

        intruder_rpc = TcpRpc(
            tcp_listen(free_port()),
            [tcp_peer(port) for port in cluster.ports[:2]],
            secret=b"wrong",
        )
        intruder = make_node(tmp_path, "secret", 3, intruder_rpc, "intruder", term=HUGE_TERM)
        # Several election timeouts: the intruder campaigns again and again.
        await holds(cluster.running(), leader, 2.0)
        assert snapshot(cluster.running()) == before
        assert intruder_rpc.connected_peers == frozenset()
        # It did try: a graft-tx node pre-votes before raising its term...
        assert intruder.current_term >= HUGE_TERM
        assert intruder_rpc.dropped_outgoing > 0  # ...and had no one to send to
        assert intruder.state is not State.LEADER
        assert all(n.current_term < HUGE_TERM for n in cluster.running())

        for node_id in ("n0", "n1"):
            said = captured.warnings(cluster.rpcs[node_id], "intruder", "secret")
            assert said, f"{node_id} did not log why it refused the intruder"
        said = captured.warnings(intruder_rpc, "secret")
        assert said, "the intruder was not told why"
        print("\n" + said[0])
    finally:
        await cluster.close()
        if intruder is not None:
            await intruder.close()


@pytest_twisted.ensureDeferred
async def test_node_without_secret_is_refused_by_cluster_with_one(
    tmp_path: Path, captured: CapturedLog
) -> None:
    """A node without the secret is refused by a cluster that has one; both sides say so."""
    cluster = Cluster(tmp_path, 3, name="secret", secret="s3cret")
    plain: Node | None = None
    try:
        cluster.start_all()
        leader = await elect(cluster.running())
        plain_rpc = TcpRpc(tcp_listen(free_port()), [tcp_peer(p) for p in cluster.ports[:2]])
        plain = make_node(tmp_path, "secret", 3, plain_rpc, "plain", term=HUGE_TERM)
        await wait_until(
            lambda: bool(captured.warnings(plain_rpc, "secret")), 5, "the plain node told why"
        )
        await holds(cluster.running(), leader, 1.0)
        assert plain_rpc.connected_peers == frozenset()
        assert all(n.current_term < HUGE_TERM for n in cluster.running())
        print("\n" + captured.warnings(plain_rpc, "secret")[0])
        assert captured.warnings(plain_rpc, "this node has none")
        for node_id in ("n0", "n1"):
            said = captured.warnings(cluster.rpcs[node_id], "plain", "secret")
            assert said, f"{node_id} did not log why it refused the node without a secret"
    finally:
        await cluster.close()
        if plain is not None:
            await plain.close()


@pytest_twisted.ensureDeferred
async def test_node_with_secret_is_refused_by_cluster_without_one(
    tmp_path: Path, captured: CapturedLog
) -> None:
    """A node with a secret does not join a cluster without one; both sides say it is the secret."""
    cluster = Cluster(tmp_path, 3, name="open")
    keeper: Node | None = None
    try:
        cluster.start_all()
        leader = await elect(cluster.running())
        keeper_rpc = TcpRpc(
            tcp_listen(free_port()), [tcp_peer(p) for p in cluster.ports[:2]], secret=b"s3cret"
        )
        keeper = make_node(tmp_path, "open", 3, keeper_rpc, "keeper", term=HUGE_TERM)
        await wait_until(
            lambda: bool(captured.warnings(keeper_rpc, "secret")), 5, "the keeper told why"
        )
        await holds(cluster.running(), leader, 1.0)
        assert keeper_rpc.connected_peers == frozenset()
        assert all(n.current_term < HUGE_TERM for n in cluster.running())
        print("\n" + captured.warnings(keeper_rpc, "secret")[0])
        for node_id in ("n0", "n1"):
            said = captured.warnings(cluster.rpcs[node_id], "keeper")
            assert said, f"{node_id} logged nothing about the keeper"
            assert any("secret" in line for line in said), (
                f"{node_id} did not say the secret is the problem: {said}"
            )
    finally:
        await cluster.close()
        if keeper is not None:
            await keeper.close()


@pytest_twisted.ensureDeferred
async def test_recorded_session_cannot_be_replayed(tmp_path: Path, captured: CapturedLog) -> None:
    """A recorded authenticated session, replayed byte for byte, is refused and changes nothing."""
    secret = b"s3cret"
    port = free_port()
    path = tmp_path / "replay.state"

    def start(state: Path) -> tuple[Node, TcpRpc]:
        # A cluster of two whose other member (n1) never runs: only our raw peer talks.
        rpc = TcpRpc(tcp_listen(port), [tcp_peer(free_port())], secret=secret)
        # Protocol "graft": it grants a vote at once (graft-tx would refuse any vote in
        # its first election timeout), so a replayed vote would show.
        node = graft_tx.new(
            ClusterInfo("replay", 2),
            QueueHandler(),
            rpc,
            str(state),
            node_id="n0",
            timing=SLOW,
            protocol="graft",
        )
        return node, rpc

    node, rpc = start(path)
    fresh: Node | None = None
    try:
        # A legitimate session, as n1: a vote request and a heartbeat of term 7.
        session = await secret_handshake(port, "replay", 2, "n1", "n0", secret, "graft")
        session.send(VoteRequest(7, "n1"))
        session.send(Heartbeat(7, "n1"))
        await wait_until(lambda: node.leader == "n1", 5, "the session delivered")
        assert (node.current_term, node.current_vote) == (7, "n1")
        await sleep(0.1)
        assert not session.raw.closed
        recorded = bytes(session.raw.written)
        session.raw.transport.loseConnection()  # type: ignore[union-attr]

        # The same line twice within a session fails its sequence number.
        again = await secret_handshake(port, "replay", 2, "n1", "n0", secret, "graft")
        line = again.send(Heartbeat(8, "n1"))
        await wait_until(lambda: node.current_term == 8, 5, "term 8 delivered")
        again.raw.send(line)
        again.send(Heartbeat(9, "n1"))
        assert "authentication" in await again.raw.refused()
        assert node.current_term == 8
        before = snapshot([node])

        # The whole session replayed: the node's nonce is new, so the proof fails.
        replay = await connect_raw(port)
        replay.send(recorded)
        reason = await replay.refused()
        assert "secret" in reason
        await sleep(0.2)
        assert snapshot([node]) == before
        assert len(replay.received) == 2  # the node's hello, then the error

        # A peer with the wrong secret sends a huge vote request and heartbeat anyway.
        wrong = await connect_raw(port)
        nonce = new_nonce()
        wrong.send_object(hello("replay", 2, "n1", nonce, "graft"))
        reply = await wrong.next_object()
        guess = Keys(b"guess")
        wrong.send_object(
            {"type": "auth", "proof": guess.proof("client", nonce, reply["nonce"], "replay")}
        )
        forged = AuthenticatedRaw(wrong, guess, guess.session(nonce, reply["nonce"]))
        forged.send(VoteRequest(HUGE_TERM, "n1"))
        forged.send(Heartbeat(HUGE_TERM, "n1"))
        assert "secret" in await wrong.refused()
        await sleep(0.2)
        assert snapshot([node]) == before
        assert rpc.invalid_messages >= 3
        assert len(captured.warnings(rpc, "secret")) >= 2

        # Replayed to the same node restarted with a fresh state: still nothing.
        await node.close()
        fresh, rpc = start(tmp_path / "fresh.state")
        replay = await connect_raw(port)
        replay.send(recorded)
        assert "secret" in await replay.refused()
        await sleep(0.2)
        assert (fresh.current_term, fresh.current_vote, fresh.leader) == (0, "", "")
    finally:
        await node.close()
        if fresh is not None:
            await fresh.close()


# -- TLS --------------------------------------------------------------------------


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, str]:
    """A CA, a server certificate for 127.0.0.1, a client certificate, and another CA's."""
    ca, other = trustme.CA(), trustme.CA()
    files: dict[str, str] = {}
    (tmp_path / "ca").mkdir()
    ca.cert_pem.write_to_path(str(tmp_path / "ca" / "ca.pem"))
    files["ca_dir"] = str(tmp_path / "ca")
    files["ca"] = str(tmp_path / "ca" / "ca.pem")
    for name, issued in (
        ("server", ca.issue_cert("127.0.0.1")),
        ("client", ca.issue_cert("graft-node")),
        ("stranger", other.issue_cert("graft-node")),
    ):
        issued.private_key_pem.write_to_path(str(tmp_path / f"{name}.key"))
        issued.cert_chain_pems[0].write_to_path(str(tmp_path / f"{name}.pem"))
        files[name] = str(tmp_path / f"{name}.pem")
        files[f"{name}_key"] = str(tmp_path / f"{name}.key")
    return files


@pytest_twisted.ensureDeferred
async def test_tls_cluster_elects(tmp_path: Path, pki: dict[str, str]) -> None:
    """Three nodes over TLS (ssl: listeners, tls: peers trusting our CA) elect a leader."""

    def listen(port: int) -> str:
        return (
            f"ssl:{port}:interface=127.0.0.1:privateKey={pki['server_key']}:certKey={pki['server']}"
        )

    def peer(port: int) -> str:
        return f"tls:host=127.0.0.1:port={port}:trustRoots={pki['ca_dir']}"

    cluster = Cluster(tmp_path, 3, name="tls", listen=listen, peer=peer)
    try:
        cluster.start_all()
        took = await wait_until(
            lambda: sole_leader(cluster.running()) is not None and cluster.fully_connected(),
            10,
            "a TLS leader",
        )
        leader = await elect(cluster.running())
        print(f"\nTLS: {leader.id} leads after {took:.2f}s")
        await holds(cluster.running(), leader, 0.5)
        # The socket under TLS gives up on unacknowledged data too.
        assert user_timeouts(cluster.rpcs[leader.id]) == [1000] * 4
        # A plain TCP peer gets nowhere with a TLS listener.
        raw = await connect_raw(cluster.ports[0])
        raw.send_object(hello("tls", 3, "plain"))
        await wait_until(lambda: raw.closed, 5, "the TLS listener dropped plain TCP")
        assert not any(b'"hello"' in line for line in raw.received)
    finally:
        await cluster.close()


@pytest_twisted.ensureDeferred
async def test_mutual_tls_cluster_elects_and_refuses_peers_without_valid_certificate(
    tmp_path: Path, pki: dict[str, str]
) -> None:
    """Three mTLS nodes elect; peers without a client certificate, or with another CA's, are out."""

    def listen(port: int) -> str:
        return (
            f"mtls:{port}:privateKey={pki['server_key']}:certKey={pki['server']}"
            f":caCert={pki['ca']}:interface=127.0.0.1"
        )

    def peer(port: int, cert: str | None = "client") -> str:
        base = f"tls:host=127.0.0.1:port={port}:trustRoots={pki['ca_dir']}"
        if cert is None:
            return base
        return f"{base}:certificate={pki[cert]}:privateKey={pki[cert + '_key']}"

    cluster = Cluster(tmp_path, 3, name="mtls", listen=listen, peer=peer)
    rogues: list[Node] = []
    try:
        cluster.start_all()
        took = await wait_until(
            lambda: sole_leader(cluster.running()) is not None and cluster.fully_connected(),
            10,
            "an mTLS leader",
        )
        leader = await elect(cluster.running())
        print(f"\nmutual TLS: {leader.id} leads after {took:.2f}s")
        before = snapshot(cluster.running())

        rpcs = {}
        for node_id, cert in (("anonymous", None), ("stranger", "stranger")):
            rpcs[node_id] = TcpRpc(
                tcp_listen(free_port()),
                [peer(port, cert) for port in cluster.ports[:2]],
                retry_max_delay=0.3,
            )
            rogues.append(make_node(tmp_path, "mtls", 3, rpcs[node_id], node_id, term=HUGE_TERM))
        await holds(cluster.running(), leader, 2.0)
        assert snapshot(cluster.running()) == before
        for node_id, rpc in rpcs.items():
            assert rpc.connected_peers == frozenset(), node_id
            assert rpc.dropped_outgoing > 0, node_id
        assert cluster.fully_connected()
    finally:
        await cluster.close()
        await close_all(rogues)


# -- bad input ----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_bad_lines_are_refused_and_the_node_carries_on(
    tmp_path: Path, captured: CapturedLog
) -> None:
    """Malformed, unknown, over-long and spoofed lines drop their connection, nothing else."""
    cluster = Cluster(tmp_path, 3, name="bad", max_line_length=1024)
    try:
        cluster.start_all()
        leader = await elect(cluster.running())
        await wait_until(cluster.fully_connected, 10, "all connected")
        target = next(n for n in cluster.running() if n is not leader)
        rpc = cluster.rpcs[target.id]
        port = cluster.ports[cluster.ids.index(target.id)]
        before = snapshot(cluster.running())

        cases: list[tuple[bool, bytes, str]] = [
            # (handshake first?, what to send, a word of the reason)
            (False, b"this is not json\n", "JSON"),
            (False, b'{"no": "type"}\n', "type"),
            (False, b"[1, 2, 3]\n", "type"),
            (False, b"\xff\xfe\xfd\n", "JSON"),
            (False, b"x" * 2000, "longer than 1024"),
            (False, b'{"type": "heartbeat", "term": 1, "leader": "n0"}\n', "hello"),
            (True, b'{"type": "gossip"}\n', "unknown message type"),
            (True, b"{not json\n", "JSON"),
            (True, b'{"type": "heartbeat", "term": "x", "leader": "raw"}\n', "heartbeat"),
            (
                True,
                b'{"type": "vote_request", "term": 1, "candidate": "raw", "state": "!"}\n',
                "vote_request",
            ),
            (True, b'{"type": "heartbeat", "term": 99, "leader": "n1"}\n', "from 'raw'"),
            (
                True,
                b'{"type": "vote_response", "term": 99, "granted": true, "voter": "n2"}\n',
                "vote of",
            ),
            (True, b"y" * 1500 + b"\n", "longer than 1024"),
        ]
        for shake, data, word in cases:
            raw = await handshake(port, "bad", 3, "raw") if shake else await connect_raw(port)
            raw.send(data)
            reason = await raw.refused()
            assert word in reason, (data[:60], reason)
        # More garbage than the rate limit lets through.
        for _ in range(7):
            raw = await connect_raw(port)
            raw.send(b"junk\n")
            await raw.refused()

        total = len(cases) + 7
        assert rpc.invalid_messages == total
        logged = captured.warnings(rpc)
        print(f"\n{total} bad lines, {len(logged)} warnings logged; first: {logged[0]}")
        # Ten a minute of each kind: refused in the hello, in auth, after it.
        assert 1 <= len(logged) < total
        assert len(logged) <= 3 * 10
        assert snapshot(cluster.running()) == before
        assert sole_leader(cluster.running()) is leader
        assert cluster.fully_connected()

        # A fresh legitimate connection is still heard.
        raw = await handshake(port, "bad", 3, "raw")
        term = leader.current_term + 1
        raw.send_object(encode_message(Heartbeat(term, "raw")))
        await wait_until(lambda: target.leader == "raw", 5, "the fresh connection heard")
        assert target.current_term == term
        assert not raw.closed
    finally:
        await cluster.close()


@pytest_twisted.ensureDeferred
async def test_deeply_nested_json_line_is_refused(tmp_path: Path) -> None:
    """A deeply nested JSON line is refused like any malformed line, with no exception escaping."""
    port = free_port()
    rpc = TcpRpc(tcp_listen(port), [tcp_peer(free_port())])
    node = make_node(tmp_path, "nested", 2, rpc, "n0", timing=SLOW)
    try:
        raw = await connect_raw(port)
        raw.send(b"[" * 5000 + b"\n")
        await wait_until(lambda: raw.closed, 5, "the connection dropped")
        assert rpc.invalid_messages == 1
        raw = await handshake(port, "nested", 2, "raw")
        raw.send(b'{"type": "heartbeat", "term": ' + b"[" * 5000 + b"\n")
        await wait_until(lambda: raw.closed, 5, "the connection dropped")
        assert rpc.invalid_messages == 2
        assert (node.current_term, node.state) == (0, State.FOLLOWER)
    finally:
        await node.close()


@pytest_twisted.ensureDeferred
async def test_handshake_of_another_cluster_version_size_or_own_id_is_refused(
    tmp_path: Path, captured: CapturedLog
) -> None:
    """Hellos of another cluster, version or size, of the node's own id or no nonce are refused."""
    port = free_port()
    rpc = TcpRpc(tcp_listen(port), [tcp_peer(free_port()), tcp_peer(free_port())])
    node = make_node(tmp_path, "hello", 3, rpc, "n0", timing=SLOW)
    try:
        cases: list[tuple[dict[str, Any], str]] = [
            ({"cluster": "other"}, "cluster 'other'"),
            ({"version": "graft-tx-tcp/2"}, "version"),
            ({"size": 5}, "5 nodes"),
            ({"node": "n0"}, "own id"),
            ({"node": ""}, "node id"),
            ({"nonce": "short"}, "nonce"),
            ({"type": "auth"}, "expected a hello"),
        ]
        for change, word in cases:
            raw = await connect_raw(port)
            raw.send_object({**hello("hello", 3, "stranger"), **change})
            reason = await raw.refused()
            assert word in reason, (change, reason)
            assert captured.warnings(rpc, word), (change, "not logged")
        assert rpc.invalid_messages == len(cases)
        assert (node.current_term, node.state, node.leader) == (0, State.FOLLOWER, "")
    finally:
        await node.close()


@pytest_twisted.ensureDeferred
async def test_silent_peer_is_timed_out(tmp_path: Path, captured: CapturedLog) -> None:
    """A peer that never finishes its handshake is disconnected after handshake_timeout."""
    port = free_port()
    rpc = TcpRpc(tcp_listen(port), [tcp_peer(free_port())], handshake_timeout=0.5, secret="s")
    node = make_node(tmp_path, "silent", 2, rpc, "n0", timing=SLOW)
    try:
        silent = await connect_raw(port)
        started = now()
        await wait_until(lambda: silent.closed, 5, "the silent peer dropped")
        took = now() - started
        print(f"\na silent peer was dropped after {took:.2f}s (timeout 0.5s)")
        assert 0.4 <= took < 2.0
        assert captured.warnings(rpc, "no handshake within 0.5s")

        # Half a handshake (a hello, never the proof) is timed out too.
        half = await connect_raw(port)
        half.send_object(hello("silent", 2, "n1"))
        assert (await half.next_object())["type"] == "hello"
        started = now()
        await wait_until(lambda: half.closed, 5, "the half handshake dropped")
        assert 0.3 <= now() - started < 2.0
        assert rpc.invalid_messages == 2
        assert (node.current_term, node.state) == (0, State.FOLLOWER)
    finally:
        await node.close()


@pytest_twisted.ensureDeferred
async def test_handshake_flood_evicts_the_oldest(tmp_path: Path, captured: CapturedLog) -> None:
    """Of 50 silent connections at most 16 are held: each newcomer evicts the oldest."""
    cluster = Cluster(tmp_path, 3, name="flood", handshake_timeout=2.0)
    raws: list[RawPeer] = []
    try:
        cluster.start_all()
        leader = await elect(cluster.running())
        await wait_until(cluster.fully_connected, 10, "all connected")
        target = next(n for n in cluster.running() if n is not leader)
        rpc = cluster.rpcs[target.id]
        port = cluster.ports[cluster.ids.index(target.id)]
        assert rpc.max_pending_handshakes == 16
        before = snapshot(cluster.running())

        started = now()
        raws = [await connect_raw(port) for _ in range(50)]
        connected = now() - started
        await wait_until(lambda: sum(r.closed for r in raws) >= 34, 2, "34 evicted")
        evicted_in = now() - started
        await sleep(0.2)
        assert [r.closed for r in raws] == [True] * 34 + [False] * 16
        # Pushed out to make room: refused, not invalid (they said nothing wrong).
        assert (rpc.refused_connections, rpc.invalid_messages) == (34, 0)
        print(
            f"\n50 connections in {connected:.2f}s; the 34 oldest evicted within "
            f"{evicted_in:.2f}s; 16 held until the handshake timeout"
        )
        assert cluster.fully_connected()
        assert sole_leader(cluster.running()) is leader

        await wait_until(lambda: all(r.closed for r in raws), 5, "the held ones timed out")
        # The 16 held ones never finished a handshake: invalid.
        assert (rpc.refused_connections, rpc.invalid_messages) == (34, 16)
        assert len(captured.warnings(rpc, "to make room")) <= 10
        assert snapshot(cluster.running()) == before
        assert cluster.fully_connected()

        # A peer that finishes its handshake gets a slot, full or not.
        raws = [await connect_raw(port) for _ in range(16)]
        raw = await handshake(port, "flood", 3, "late")
        assert not raw.closed
        raws.append(raw)
    finally:
        for raw in raws:
            raw.abort()
        await cluster.close()


# -- configuration ----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_configuration_errors(tmp_path: Path) -> None:
    """Wrong sizes, endpoints, busy ports, string peers and empty secrets raise TcpConfigError."""
    port = free_port()

    def new(rpc: TcpRpc, size: int = 2) -> Node:
        return make_node(tmp_path, "config", size, rpc, "n0")

    assert verifyObject(IRpc, TcpRpc(tcp_listen(port), [tcp_peer(free_port())]))

    with pytest.raises(TcpConfigError, match=r"1 peer"):
        new(TcpRpc(tcp_listen(port), [tcp_peer(free_port())]), size=3)
    with pytest.raises(TcpConfigError, match=r"2 peer"):
        new(TcpRpc(tcp_listen(port), [tcp_peer(free_port()), tcp_peer(free_port())]), size=2)
    for listen, peer in (
        ("nonsense:1234", tcp_peer(free_port())),
        ("tcp:notaport", tcp_peer(free_port())),
        (tcp_listen(port), "tcp:host=127.0.0.1"),
        (tcp_listen(port), "bogus:thing"),
        (tcp_listen(port), "tcp:host=127.0.0.1:port=notaport"),
    ):
        with pytest.raises(TcpConfigError):
            new(TcpRpc(listen, [peer]))
    # None of those left a listener behind.
    assert await refuses_connections(port)

    busy = await TCP4ServerEndpoint(reactor(), port, interface="127.0.0.1").listen(
        Factory.forProtocol(Protocol)
    )
    try:
        with pytest.raises(TcpConfigError, match="cannot listen"):
            new(TcpRpc(tcp_listen(port), [tcp_peer(free_port())]))
    finally:
        await busy.stopListening()

    with pytest.raises(TcpConfigError, match="list"):
        TcpRpc(tcp_listen(port), tcp_peer(free_port()))  # type: ignore[arg-type]
    for empty in (b"", ""):
        with pytest.raises(TcpConfigError, match="secret"):
            TcpRpc(tcp_listen(port), [tcp_peer(free_port())], secret=empty)


def user_timeouts(rpc: TcpRpc) -> list[int]:
    """TCP_USER_TIMEOUT (ms) of each of the node's connections, through any TLS wrapper."""
    found = []
    for protocol in [*rpc._outbound.values(), *rpc._inbound]:
        transport: Any = protocol.transport
        while not isinstance(transport.getHandle(), socket.socket):
            transport = transport.transport
        sock = transport.getHandle()
        found.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT))
    return found


@pytest_twisted.ensureDeferred
async def test_connections_give_up_on_unacknowledged_data(tmp_path: Path) -> None:
    """Both sides of every connection carry TCP_USER_TIMEOUT = stall_timeout, so a link that
    lost packets is dropped and redialled rather than left in retransmission backoff."""
    cluster = Cluster(tmp_path, 2, stall_timeout=2.5)
    try:
        cluster.start_all()
        await wait_until(cluster.fully_connected, 10, "both nodes connected")
        for rpc in cluster.rpcs.values():
            assert user_timeouts(rpc) == [2500, 2500]
    finally:
        await cluster.close()


def test_peer_strings_get_a_connect_timeout() -> None:
    """tcp: and tls: peer strings connect within stall_timeout (whole seconds, rounded up),
    unless they name their own timeout."""
    rpc = TcpRpc(tcp_listen(free_port()), [tcp_peer(1)], stall_timeout=2.5)
    assert rpc._client_endpoint("tcp:host=127.0.0.1:port=1")._timeout == 3  # type: ignore[attr-defined]
    assert rpc._client_endpoint("tcp:host=127.0.0.1:port=1:timeout=7")._timeout == 7  # type: ignore[attr-defined]
    default = TcpRpc(tcp_listen(free_port()), [tcp_peer(1)])
    assert default.stall_timeout == 1.0
    assert default._client_endpoint("tcp:host=127.0.0.1:port=1")._timeout == 1  # type: ignore[attr-defined]
    for bad in (0, -1, float("inf"), float("nan"), True):
        with pytest.raises(TcpConfigError, match="stall_timeout"):
            TcpRpc(tcp_listen(free_port()), [tcp_peer(1)], stall_timeout=bad)


# -- close ----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_close_stops_listening_and_reconnecting(tmp_path: Path) -> None:
    """After close() fires, the port refuses connections and no node tries to reconnect."""
    cluster = Cluster(tmp_path, 3, name="close")
    try:
        cluster.start_all()
        await elect(cluster.running())
        await wait_until(cluster.fully_connected, 10, "all connected")
        closing = [node.close() for node in cluster.running()]
        assert all(isinstance(d, Deferred) for d in closing)
        started = now()
        await wait_until(lambda: all(d.called for d in closing), 5, "closed")
        print(f"\nclose() fired after {now() - started:.3f}s")
        for port in cluster.ports:
            assert await refuses_connections(port)
        assert all(rpc.connected_peers == frozenset() for rpc in cluster.rpcs.values())

        listeners = [await listen_counting(port) for port in cluster.ports]
        try:
            await sleep(1.0)
            assert [len(made) for made, _ in listeners] == [0, 0, 0]
        finally:
            for _, listening in listeners:
                await listening.stopListening()
        assert (await cluster.running()[0].close()) is None  # idempotent
    finally:
        await cluster.close()


class Silent(LineOnlyReceiver):
    """A listener's side that says nothing until told to."""

    delimiter = b"\n"

    def __init__(self, accepted: list[Silent]) -> None:
        self.accepted = accepted
        self.lines: list[bytes] = []
        self.lost = False

    def connectionMade(self) -> None:
        self.accepted.append(self)

    def lineReceived(self, line: bytes) -> None:
        self.lines.append(line)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = True


@pytest_twisted.ensureDeferred
async def test_close_during_an_outgoing_handshake_closes_it(tmp_path: Path) -> None:
    """close() also ends an outgoing connection still in its handshake, and nothing revives it."""
    port, peer_port = free_port(), free_port()
    accepted: list[Silent] = []
    listening = await TCP4ServerEndpoint(reactor(), peer_port, interface="127.0.0.1").listen(
        Factory.forProtocol(lambda: Silent(accepted))
    )
    rpc = TcpRpc(tcp_listen(port), [tcp_peer(peer_port)])
    node = make_node(tmp_path, "closing", 2, rpc, "n0", timing=SLOW)
    try:
        await wait_until(lambda: bool(accepted and accepted[0].lines), 5, "the node's hello")
        silent = accepted[0]
        their_hello = json.loads(silent.lines[0])
        await node.close()
        # The slow peer answers at last, after the close.
        assert silent.transport is not None
        reply = hello("closing", 2, "n1")
        silent.transport.write(dump(reply) + b"\n")
        await sleep(0.3)
        assert their_hello["node"] == "n0"
        assert rpc.connected_peers == frozenset()
        assert silent.lost, "the connection outlived close()"
    finally:
        await node.close()
        await listening.stopListening()
        for protocol in accepted:
            if protocol.transport is not None:
                protocol.transport.abortConnection()  # type: ignore[attr-defined]
