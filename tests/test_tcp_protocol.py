"""TcpRpc's PeerProtocol without sockets or real time: handshakes, refusals, authentication, limits.

Every connection here is a PeerProtocol on an in-memory transport, built
from a TcpRpc that was initialised on a MemoryReactorClock (so it "listens"
and "dials" without sockets) and carries a RecordingNode. Two protocols are
joined back to back by copying one transport's output into the other's
dataReceived.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransportWithDisconnection
from twisted.logger import LogEvent, Logger, LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import implementer
from zope.interface.verify import verifyObject

from graft_tx import (
    ClusterInfo,
    GraftError,
    Heartbeat,
    HeartbeatAck,
    TcpConfigError,
    TcpRpc,
    VoteRequest,
    VoteResponse,
)
from graft_tx.interfaces import IElectionNode, IRpc, ITransportStats
from graft_tx.transport.lines import (
    VERSION,
    Keys,
    LineError,
    Message,
    decode_message,
    dump,
    encode_message,
    load,
    new_nonce,
)
from graft_tx.transport.tcp import (
    CLIENT,
    HARD_LIMIT_FACTOR,
    PROVE_WITHIN,
    SERVER,
    PeerProtocol,
    _Outbound,
)

SECRET = b"the cluster secret"
MAX_TERM = 2**64 - 1
MISSING = object()


# -- test doubles -----------------------------------------------------------


@implementer(IElectionNode)
class RecordingNode:
    """An IElectionNode that records every message the transport delivers."""

    def __init__(self, node_id: str, cluster: str = "c", size: int = 3) -> None:
        self.id = node_id
        self.cluster_info = ClusterInfo(cluster, size)
        self.protocol = "graft-tx"
        self.received: list[Message] = []

    def handle_vote_request(self, req: VoteRequest) -> None:
        self.received.append(req)

    def handle_vote_response(self, resp: VoteResponse) -> None:
        self.received.append(resp)

    def handle_heartbeat(self, hb: Heartbeat) -> None:
        self.received.append(hb)

    def handle_heartbeat_ack(self, ack: HeartbeatAck) -> None:
        self.received.append(ack)


class FakeTransport(StringTransportWithDisconnection):
    """In-memory: closes its protocol at once, keeps all it wrote, records aborts."""

    aborted = False

    def __init__(self, host: str = "127.0.0.1") -> None:
        super().__init__(peerAddress=IPv4Address("TCP", host, 40000))  # type: ignore[no-untyped-call]
        self.history = b""

    def write(self, data: bytes) -> None:
        self.history += data
        super().write(data)  # type: ignore[no-untyped-call]

    def writeSequence(self, seq: Sequence[bytes]) -> None:
        self.write(b"".join(seq))

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()  # type: ignore[no-untyped-call]

    def take(self) -> bytes:
        data: bytes = self.value()
        self.clear()
        return data


class Connection:
    """One PeerProtocol on a FakeTransport, and how its handshake ended."""

    def __init__(self, rpc: TcpRpc, side: str, host: str = "127.0.0.1") -> None:
        self.protocol = PeerProtocol(rpc, side)
        self.transport = FakeTransport(host)
        self.transport.protocol = self.protocol
        self.outcomes: list[object] = []
        self.protocol.handshake.addBoth(self.outcomes.append)
        self.protocol.makeConnection(self.transport)

    @property
    def open(self) -> bool:
        return bool(self.transport.connected)

    @property
    def ready(self) -> bool:
        return self.protocol.state == "ready"

    def receive(self, data: bytes) -> None:
        """Bytes arrive from the peer (only while the connection is open, as on TCP)."""
        if self.open:
            self.protocol.dataReceived(data)

    def receive_line(self, line: bytes | dict[str, Any]) -> None:
        self.receive((dump(line) if isinstance(line, dict) else line) + b"\n")

    def sent_lines(self) -> list[bytes]:
        """Every line this side wrote, including those already carried to the peer."""
        return self.transport.history.split(b"\n")[:-1]

    def sent(self) -> list[dict[str, Any]]:
        """The JSON objects this side sent (handshake and error lines)."""
        return [json.loads(line) for line in self.sent_lines() if line.startswith(b"{")]

    def errors_sent(self) -> list[str]:
        return [obj["reason"] for obj in self.sent() if obj.get("type") == "error"]

    def handshake_failed(self) -> bool:
        return len(self.outcomes) == 1 and isinstance(self.outcomes[0], Failure)


class Peer:
    """A TcpRpc carrying a RecordingNode, initialised on a MemoryReactorClock, log captured."""

    def __init__(
        self,
        node_id: str = "a",
        *,
        cluster: str = "c",
        size: int = 3,
        secret: bytes | str | None = None,
        **options: Any,
    ) -> None:
        self.reactor = MemoryReactorClock()
        self.node = RecordingNode(node_id, cluster, size)
        self.events: list[LogEvent] = []
        peers = [f"tcp:host=127.0.0.1:port={7002 + i}" for i in range(size - 1)]
        self.rpc = TcpRpc(
            "tcp:7001:interface=127.0.0.1",
            peers,
            reactor=self.reactor,
            secret=secret,
            **options,
        )
        # An instance attribute shadows the class's Logger; events still reach
        # the global publisher, so the suite's error check sees them.
        self.rpc.log = Logger(namespace="graft_tx.transport.tcp", observer=self._observe)
        self.rpc.init(self.node)

    def _observe(self, event: LogEvent) -> None:
        self.events.append(event)
        globalLogPublisher(event)

    def accept(self, host: str = "127.0.0.1") -> Connection:
        """A connection from a peer (at C{host}) to this node (its listening side)."""
        return Connection(self.rpc, SERVER, host)

    def dial(self) -> Connection:
        """A connection from this node to a peer (its connecting side)."""
        return Connection(self.rpc, CLIENT)

    def warnings(self) -> list[str]:
        return [formatEvent(e) for e in self.events if e["log_level"] == LogLevel.warn]

    def logged_reasons(self) -> list[str]:
        return [str(e["reason"]) for e in self.events if "reason" in e]


def pump(a: Connection, b: Connection) -> None:
    """Carry bytes both ways until both are quiet; a closed end then closes the other."""
    moved = True
    while moved:
        moved = False
        for source, target in ((a, b), (b, a)):
            data = source.transport.take()
            if data:
                moved = True
                target.receive(data)
    for one, other in ((a, b), (b, a)):
        if not one.open and other.open:
            other.transport.loseConnection()


def join(client_peer: Peer, server_peer: Peer) -> tuple[Connection, Connection]:
    """client_peer dials server_peer; the handshake runs to its end."""
    client, server = client_peer.dial(), server_peer.accept()
    pump(client, server)
    return client, server


def hello(sender: str = "a", /, **changes: Any) -> dict[str, Any]:
    """A valid hello from sender to a node of cluster "c" of size 3, changed (MISSING drops)."""
    obj: dict[str, Any] = {
        "type": "hello",
        "version": VERSION,
        "cluster": "c",
        "node": sender,
        "size": 3,
        "protocol": "graft-tx",
        "nonce": new_nonce(),
    }
    for key, value in changes.items():
        if value is MISSING:
            del obj[key]
        else:
            obj[key] = value
    return obj


def assert_refused(peer: Peer, conn: Connection, fragment: str) -> str:
    """conn was refused: an error line naming fragment was sent and logged, and it closed."""
    reasons = conn.errors_sent()
    assert len(reasons) == 1, conn.sent_lines()
    [reason] = reasons
    assert fragment in reason
    assert reason in peer.logged_reasons()
    assert not conn.open
    assert conn.protocol.state == "closed"
    assert peer.rpc.invalid_messages >= 1
    assert peer.node.received == []
    return reason


def secure_pair() -> tuple[Peer, Peer, Connection, Connection]:
    """Nodes a and b sharing SECRET; a has dialled b and the handshake is done."""
    a, b = Peer("a", secret=SECRET), Peer("b", secret=SECRET)
    client, server = join(a, b)
    assert client.ready and server.ready
    return a, b, client, server


def line_of(client: Connection, message: Message) -> bytes:
    """The exact line (without newline) client sends for message."""
    client.protocol.send_message(message)
    [line] = client.transport.take().split(b"\n")[:-1]
    return bytes(line)


# -- interfaces -------------------------------------------------------------


def test_recording_node_provides_ielectionnode() -> None:
    """The fake node these tests deliver to really provides IElectionNode."""
    assert verifyObject(IElectionNode, RecordingNode("a"))


def test_tcprpc_provides_irpc() -> None:
    """TcpRpc provides IRpc, before and after init."""
    rpc = TcpRpc("tcp:7001", ["tcp:host=127.0.0.1:port=7002"], reactor=MemoryReactorClock())
    assert verifyObject(IRpc, rpc)
    assert verifyObject(IRpc, Peer().rpc)


def test_tcprpc_provides_itransportstats() -> None:
    """TcpRpc provides ITransportStats: counters from 0, and none for what TCP cannot have."""
    rpc = TcpRpc("tcp:7001", ["tcp:host=127.0.0.1:port=7002"], reactor=MemoryReactorClock())
    assert verifyObject(ITransportStats, rpc)
    assert (rpc.invalid_messages, rpc.dropped_outgoing, rpc.refused_connections) == (0, 0, 0)
    # A peer of the other mode is refused at its hello; a write fails only with its connection.
    assert rpc.other_protocol_messages is None
    assert rpc.failed_sends is None
    assert verifyObject(ITransportStats, Peer().rpc)


# -- handshake happy paths ----------------------------------------------------


@pytest.mark.parametrize("secret", [None, SECRET, "sécret"], ids=["no secret", "bytes", "str"])
def test_handshake_lets_the_client_send_to_the_server(secret: bytes | str | None) -> None:
    """After the handshake the connecting side's messages reach the listening node, exactly."""
    a, b = Peer("a", secret=secret), Peer("b", secret=secret)
    client, server = join(a, b)
    assert client.ready and server.ready
    assert client.outcomes == [None] and server.outcomes == [None]
    assert (client.protocol.peer_id, server.protocol.peer_id) == ("b", "a")
    assert ("proof" in server.sent()[0]) == (secret is not None)
    assert [obj["type"] for obj in client.sent()] == ["hello"] + ["auth"] * (secret is not None)
    assert a.rpc.connected_peers == frozenset({"b"})
    assert b.rpc.connected_peers == frozenset()
    messages: list[Message] = [
        VoteRequest(4, "a", b"\x00\xffstate"),
        Heartbeat(MAX_TERM, "a"),
        VoteResponse(4, True, "a"),
        VoteResponse(5, False, "a"),
    ]
    for message in messages:
        client.protocol.send_message(message)
    pump(client, server)
    assert b.node.received == messages
    assert a.node.received == []
    assert client.open and server.open
    assert a.rpc.invalid_messages == b.rpc.invalid_messages == 0
    assert a.warnings() == b.warnings() == []


def test_client_hello_is_the_documented_line() -> None:
    """The connecting side opens with a hello naming version, cluster, node, size, protocol
    and a nonce."""
    client = Peer("a", cluster="cl", size=3).dial()
    [first] = client.sent()
    assert {k: v for k, v in first.items() if k != "nonce"} == {
        "type": "hello",
        "version": VERSION,
        "cluster": "cl",
        "node": "a",
        "size": 3,
        "protocol": "graft-tx",
    }
    assert len(first["nonce"]) == 32 and bytes.fromhex(first["nonce"])
    assert Peer("a").dial().sent()[0]["nonce"] != first["nonce"]


@pytest.mark.parametrize("secret", [None, SECRET], ids=["no secret", "secret"])
def test_message_lines_carry_a_mac_only_with_a_secret(secret: bytes | None) -> None:
    """With a secret each message line is '<mac> <json>'; without, the bare JSON."""
    a, b = Peer("a", secret=secret), Peer("b", secret=secret)
    client, _ = join(a, b)
    line = line_of(client, Heartbeat(1, "a"))
    body = dump(encode_message(Heartbeat(1, "a")))
    if secret is None:
        assert line == body
    else:
        mac, _, rest = line.partition(b" ")
        assert rest == body
        assert len(mac) == 64 and bytes.fromhex(mac.decode("ascii"))


def test_scripted_client_following_the_readme_is_accepted() -> None:
    """A client that computes proofs and MACs as the README documents is accepted and heard."""
    b = Peer("b", secret=SECRET)
    conn = b.accept()
    keys = Keys(SECRET)
    client_nonce = new_nonce()
    conn.receive_line(hello("a", nonce=client_nonce))
    [reply] = conn.sent()
    assert reply["type"] == "hello" and reply["node"] == "b"
    server_nonce = reply["nonce"]
    assert reply["proof"] == keys.proof("server", client_nonce, server_nonce, "c", "b", "a")
    assert not conn.ready
    proof = keys.proof("client", client_nonce, server_nonce, "c", "a", "b")
    conn.receive_line({"type": "auth", "proof": proof})
    assert conn.ready and conn.outcomes == [None]
    session = keys.session(client_nonce, server_nonce)
    for sequence, message in enumerate([Heartbeat(3, "a"), VoteRequest(4, "a", b"s")]):
        body = dump(encode_message(message))
        conn.receive(Keys.line_mac(session, sequence, body).encode() + b" " + body + b"\n")
    assert b.node.received == [Heartbeat(3, "a"), VoteRequest(4, "a", b"s")]


def test_str_and_bytes_secrets_interoperate() -> None:
    """A secret given as str on one node and as its UTF-8 bytes on another is the same secret."""
    a, b = Peer("a", secret="sécret"), Peer("b", secret="sécret".encode())
    client, server = join(a, b)
    assert client.ready and server.ready


def test_messages_sent_through_the_rpc_reach_the_peer() -> None:
    """request_vote, heartbeat and send_vote_response use the connection to a connected peer."""
    a, b = Peer("a", secret=SECRET), Peer("b", secret=SECRET)
    client, server = join(a, b)
    a.rpc.request_vote(VoteRequest(2, "a", b"pos"))
    a.rpc.heartbeat(Heartbeat(2, "a"))
    a.rpc.send_vote_response("b", VoteResponse(3, True))
    a.rpc.send_vote_response("c", VoteResponse(3, True))
    pump(client, server)
    assert b.node.received == [
        VoteRequest(2, "a", b"pos"),
        Heartbeat(2, "a"),
        VoteResponse(3, True, "a"),
    ]
    # Of three peers' worth of sends to a cluster of 3, the unconnected peer "c" missed three.
    assert a.rpc.dropped_outgoing == 3


def test_completed_handshake_cancels_the_timeout() -> None:
    """Once both sides are ready no timer is left, and waiting past the timeout closes nothing."""
    a, b = Peer("a", secret=SECRET), Peer("b", secret=SECRET)
    client, server = join(a, b)
    assert a.reactor.getDelayedCalls() == [] and b.reactor.getDelayedCalls() == []
    a.reactor.advance(1000)
    b.reactor.advance(1000)
    assert client.open and server.open and client.ready and server.ready


# -- handshake refusals -------------------------------------------------------


BAD_HELLOS = [
    ({"version": "graft-tx-tcp/2"}, "protocol version 'graft-tx-tcp/2'"),
    ({"version": MISSING}, "protocol version None"),
    ({"version": 1}, "protocol version 1"),
    ({"cluster": "other"}, "cluster 'other'"),
    ({"cluster": MISSING}, "cluster None"),
    ({"size": 5}, "5 nodes"),
    ({"size": "3"}, "'3' nodes"),
    ({"size": MISSING}, "None nodes"),
    ({"node": ""}, "node id"),
    ({"node": 7}, "node id"),
    ({"node": MISSING}, "node id"),
    ({"node": "x\ny"}, "node id"),
    ({"nonce": MISSING}, "nonce"),
    ({"nonce": "ab"}, "nonce"),
    ({"nonce": "0" * 31}, "nonce"),
    ({"nonce": "0" * 33}, "nonce"),
    ({"nonce": 12345678901234567890123456789012}, "nonce"),
    ({"nonce": None}, "nonce"),
]


@pytest.mark.parametrize(("changes", "fragment"), BAD_HELLOS, ids=lambda x: repr(x))
def test_listening_side_refuses_a_bad_hello(changes: dict[str, Any], fragment: str) -> None:
    """A hello of another version, cluster or size, an invalid id or nonce is refused and logged."""
    b = Peer("b")
    conn = b.accept()
    conn.receive_line(hello("a", **changes))
    assert_refused(b, conn, fragment)
    assert b.rpc.invalid_messages == 1
    assert any("dropped the connection from" in text for text in b.warnings())


@pytest.mark.parametrize(("changes", "fragment"), BAD_HELLOS, ids=lambda x: repr(x))
def test_connecting_side_refuses_a_bad_hello(changes: dict[str, Any], fragment: str) -> None:
    """The connecting side checks the listening node's hello alike, and its handshake fails."""
    a = Peer("a")
    conn = a.dial()
    conn.transport.clear()
    conn.receive_line(hello("b", **changes))
    assert_refused(a, conn, fragment)
    assert conn.handshake_failed()
    assert a.rpc.connected_peers == frozenset()
    assert any("dropped the connection to" in text for text in a.warnings())


@pytest.mark.parametrize("side", [SERVER, CLIENT])
def test_a_peer_with_this_nodes_own_id_is_refused(side: str) -> None:
    """Either side refuses a peer that claims its own node id."""
    peer = Peer("a")
    conn = peer.accept() if side == SERVER else peer.dial()
    conn.transport.clear()
    conn.receive_line(hello("a"))
    assert_refused(peer, conn, "own id 'a'")


@pytest.mark.parametrize(
    ("server_options", "fragment"),
    [
        ({"node_id": "b", "cluster": "other"}, "cluster 'c'"),
        ({"node_id": "b", "size": 5}, "3 nodes"),
        ({"node_id": "a"}, "own id"),
    ],
    ids=["cluster", "size", "own id"],
)
def test_both_sides_log_why_a_peer_is_refused(
    server_options: dict[str, Any], fragment: str
) -> None:
    """The refusing node logs the reason, the refused one logs it too, and both close."""
    options = dict(server_options)
    a, b = Peer("a"), Peer(options.pop("node_id"), **options)
    client, server = join(a, b)
    reason = assert_refused(b, server, fragment)
    assert reason in a.logged_reasons()
    assert any("refused the connection" in text and reason in text for text in a.warnings())
    assert not client.open and client.handshake_failed()
    assert a.node.received == [] and a.rpc.connected_peers == frozenset()


def test_client_refuses_a_server_with_the_wrong_secret() -> None:
    """A listening node that cannot prove the secret is refused by the connecting side."""
    a, b = Peer("a", secret=b"one"), Peer("b", secret=b"two")
    client, server = join(a, b)
    reason = assert_refused(a, client, "does not prove the cluster secret")
    assert client.handshake_failed()
    assert reason in b.logged_reasons()
    assert not server.open and not server.ready
    assert a.rpc.connected_peers == frozenset()


@pytest.mark.parametrize(
    "make_proof",
    [
        lambda cn, sn: Keys(b"wrong").proof("client", cn, sn, "c", "a", "b"),
        lambda cn, sn: Keys(SECRET).proof("server", cn, sn, "c", "b", "a"),
        lambda cn, sn: Keys(SECRET).proof("client", cn, new_nonce(), "c", "a", "b"),
        lambda cn, sn: Keys(SECRET).proof("client", new_nonce(), sn, "c", "a", "b"),
        lambda cn, sn: Keys(SECRET).proof("client", cn, sn, "c", "b", "a"),
        lambda cn, sn: Keys(SECRET).proof("client", cn, sn, "other", "a", "b"),
        lambda cn, sn: Keys(SECRET).proof("client", cn, sn, "c", "a", "b").upper(),
        lambda cn, sn: Keys(SECRET).proof("client", cn, sn, "c", "a", "b")[:-1],
        lambda cn, sn: "",
        lambda cn, sn: None,
        lambda cn, sn: 5,
        lambda cn, sn: [Keys(SECRET).proof("client", cn, sn, "c", "a", "b")],
        lambda cn, sn: MISSING,
    ],
    ids=[
        "wrong secret",
        "server proof reflected",
        "old server nonce",
        "other client nonce",
        "names swapped",
        "other cluster",
        "upper case",
        "truncated",
        "empty",
        "null",
        "number",
        "list",
        "missing",
    ],
)
def test_server_refuses_a_client_that_does_not_prove_the_secret(make_proof: Any) -> None:
    """The listening side checks the auth proof: anything but the exact proof is refused."""
    b = Peer("b", secret=SECRET)
    conn = b.accept()
    client_nonce = new_nonce()
    conn.receive_line(hello("a", nonce=client_nonce))
    server_nonce = conn.sent()[0]["nonce"]
    conn.transport.clear()
    auth: dict[str, Any] = {"type": "auth"}
    proof = make_proof(client_nonce, server_nonce)
    if proof is not MISSING:
        auth["proof"] = proof
    conn.receive_line(auth)
    assert_refused(b, conn, "does not prove the cluster secret")
    assert not conn.ready


def test_a_recorded_handshake_cannot_be_replayed() -> None:
    """Replaying every byte a client sent in an earlier session is refused at its auth line."""
    a, b = Peer("a", secret=SECRET), Peer("b", secret=SECRET)
    client, server = a.dial(), b.accept()
    recorded = b""
    while True:
        to_server, to_client = client.transport.take(), server.transport.take()
        if not to_server and not to_client:
            break
        recorded += to_server
        server.receive(to_server)
        client.receive(to_client)
    assert server.ready
    replay = b.accept()
    replay.receive(recorded + line_of(client, Heartbeat(MAX_TERM, "a")) + b"\n")
    assert_refused(b, replay, "does not prove the cluster secret")


def test_secret_only_on_the_listening_side_is_refused() -> None:
    """A connecting node without a secret refuses a listening node that uses one; both log why."""
    a, b = Peer("a"), Peer("b", secret=SECRET)
    client, server = join(a, b)
    reason = assert_refused(a, client, "uses a cluster secret and this node has none")
    assert client.handshake_failed()
    assert reason in b.logged_reasons()
    assert not server.open and not server.ready


def test_secret_only_on_the_connecting_side_is_refused() -> None:
    """A connecting node with a secret refuses a listening node without one; nothing arrives."""
    a, b = Peer("a", secret=SECRET), Peer("b")
    client, server = join(a, b)
    assert_refused(a, client, "does not prove the cluster secret")
    assert client.handshake_failed()
    assert not server.open
    assert b.node.received == []
    assert a.rpc.connected_peers == frozenset()


def test_listening_side_without_secret_logs_why_the_client_refused() -> None:
    """A listening node without a secret logs the reason the secret-holding client gave."""
    a, b = Peer("a", secret=SECRET), Peer("b")
    client, _ = join(a, b)
    [reason] = client.errors_sent()
    assert reason in b.logged_reasons()


def test_connecting_side_logs_why_the_server_refused_a_message() -> None:
    """When the listening node refuses a message, the connecting node logs the reason given."""
    a, b = Peer("a"), Peer("b")
    client, server = join(a, b)
    client.protocol.send_message(Heartbeat(1, "someone-else"))
    pump(client, server)
    [reason] = server.errors_sent()
    assert reason in a.logged_reasons()


@pytest.mark.parametrize("secret", [None, SECRET], ids=["no secret", "secret"])
@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        (dump(encode_message(Heartbeat(1, "a"))), "expected a hello, got 'heartbeat'"),
        (dump(encode_message(VoteRequest(1, "a"))), "expected a hello, got 'vote_request'"),
        (dump(encode_message(VoteResponse(1, True))), "expected a hello, got 'vote_response'"),
        (dump({"type": "auth", "proof": "0" * 64}), "expected a hello, got 'auth'"),
        (b"0" * 64 + b" " + dump(encode_message(Heartbeat(1, "a"))), "not a JSON line"),
        (b"hello", "not a JSON line"),
        (b"", "not a JSON line"),
        (b"[]", "not a JSON object with a type"),
        (b'{"version":"graft-tx-tcp/1"}', "not a JSON object with a type"),
    ],
    ids=repr,
)
def test_listening_side_refuses_anything_but_a_hello_first(
    secret: bytes | None, line: bytes, fragment: str
) -> None:
    """Before its hello a peer can send nothing else: messages, auth or garbage are refused."""
    b = Peer("b", secret=secret)
    conn = b.accept()
    conn.receive_line(line)
    assert_refused(b, conn, fragment)


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        (dump(hello("a")), "expected auth, got 'hello'"),
        (dump(encode_message(Heartbeat(1, "a"))), "expected auth, got 'heartbeat'"),
        (b"{}", "not a JSON object with a type"),
    ],
    ids=["hello", "heartbeat", "no type"],
)
def test_listening_side_with_secret_refuses_anything_but_auth_after_hello(
    line: bytes, fragment: str
) -> None:
    """With a secret, the line after the hello must be the auth line."""
    b = Peer("b", secret=SECRET)
    conn = b.accept()
    conn.receive_line(hello("a"))
    conn.transport.clear()
    conn.receive_line(line)
    assert_refused(b, conn, fragment)


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        (dump({"type": "auth", "proof": "0" * 64}), "expected a hello, got 'auth'"),
        (dump(encode_message(Heartbeat(1, "b"))), "expected a hello, got 'heartbeat'"),
        (b"nonsense", "not a JSON line"),
    ],
    ids=["auth", "heartbeat", "garbage"],
)
def test_connecting_side_refuses_anything_but_a_hello_first(line: bytes, fragment: str) -> None:
    """The connecting side expects the listening node's hello first."""
    a = Peer("a", secret=SECRET)
    conn = a.dial()
    conn.transport.clear()
    conn.receive_line(line)
    assert_refused(a, conn, fragment)
    assert conn.handshake_failed()


@pytest.mark.parametrize("side", [SERVER, CLIENT])
def test_an_error_line_from_the_peer_is_logged_and_closes(side: str) -> None:
    """An error line during the handshake is logged with its reason and closes, without a reply."""
    peer = Peer("b")
    conn = peer.accept() if side == SERVER else peer.dial()
    conn.transport.clear()
    conn.receive_line({"type": "error", "reason": "go away"})
    assert not conn.open and conn.protocol.state == "closed"
    assert conn.transport.value() == b""
    assert "go away" in peer.logged_reasons()
    assert any("refused the connection: go away" in text for text in peer.warnings())
    # The peer counted what it refused; on this side it is a refusal heard, not bad input.
    assert (peer.rpc.invalid_messages, peer.rpc.refused_connections) == (0, 0)
    if side == CLIENT:
        assert conn.handshake_failed()


def test_an_error_line_in_place_of_auth_is_logged_and_closes() -> None:
    """With a secret, an error line instead of the auth line is logged and closes."""
    b = Peer("b", secret=SECRET)
    conn = b.accept()
    conn.receive_line(hello("a"))
    conn.transport.clear()
    conn.receive_line({"type": "error", "reason": "bad proof"})
    assert not conn.open and conn.transport.value() == b""
    assert "bad proof" in b.logged_reasons()


@pytest.mark.parametrize(
    ("reason", "logged"),
    [
        ("x" * 10_000, "x" * 200 + "..."),
        ({"a": 1}, "{'a': 1}"),
        (None, "None"),
        ("\x1b[2J\rforged line\n", "\\x1b[2J\\rforged line\\n"),
    ],
    ids=["long", "object", "null", "escapes"],
)
def test_an_error_lines_reason_is_logged_as_short_text(reason: Any, logged: str) -> None:
    """A peer's reason is logged as escaped text of at most 200 characters, whatever its
    JSON type: it cannot forge log lines or drive a terminal."""
    b = Peer("b")
    conn = b.accept()
    conn.receive_line({"type": "error", "reason": reason})
    assert b.logged_reasons() == [logged]
    assert not conn.open


# -- after the handshake: authentication and attribution ------------------------


def _flip_mac(line: bytes) -> bytes:
    return (b"0" if line[:1] != b"0" else b"1") + line[1:]


def _alter_body(line: bytes) -> bytes:
    return line.replace(b'"term":1,', b'"term":2,')


@pytest.mark.parametrize(
    "tamper",
    [
        _flip_mac,
        lambda line: line.partition(b" ")[2],
        _alter_body,
        lambda line: b" " + line.partition(b" ")[2],
        lambda line: line.replace(b" ", b"  ", 1),
        lambda line: line + b"\r",
        lambda line: line.partition(b" ")[0],
        lambda line: line.upper(),
        lambda line: b"",
    ],
    ids=[
        "wrong mac",
        "no mac",
        "altered body",
        "empty mac",
        "two spaces",
        "trailing CR",
        "mac only",
        "upper case",
        "empty line",
    ],
)
def test_a_tampered_line_is_refused(tamper: Any) -> None:
    """With a secret, a line whose MAC does not match its body exactly is refused and closes."""
    _, b, client, server = secure_pair()
    line = line_of(client, Heartbeat(1, "a"))
    assert tamper(line) != line
    server.receive(tamper(line) + b"\n")
    assert_refused(b, server, "")
    # The connection is gone: not even the genuine line is delivered now.
    server.protocol.dataReceived(line + b"\n")
    assert b.node.received == []


def test_a_replayed_line_is_refused() -> None:
    """The same authenticated line twice is delivered once, then the connection is refused."""
    _, b, client, server = secure_pair()
    line = line_of(client, Heartbeat(1, "a"))
    server.receive(line + b"\n" + line + b"\n")
    assert b.node.received == [Heartbeat(1, "a")]
    assert not server.open
    assert "a line failed authentication" in b.logged_reasons()
    assert server.errors_sent() == ["a line failed authentication"]


def test_reordered_lines_are_refused() -> None:
    """Two authenticated lines in the wrong order deliver nothing."""
    _, b, client, server = secure_pair()
    first = line_of(client, Heartbeat(1, "a"))
    second = line_of(client, Heartbeat(2, "a"))
    server.receive(second + b"\n" + first + b"\n")
    assert_refused(b, server, "a line failed authentication")


def test_a_line_after_a_lost_one_is_refused() -> None:
    """A gap in the sequence (a line removed from the stream) is refused."""
    _, b, client, server = secure_pair()
    line_of(client, Heartbeat(1, "a"))
    second = line_of(client, Heartbeat(2, "a"))
    server.receive(second + b"\n")
    assert_refused(b, server, "a line failed authentication")


def test_a_line_from_another_session_is_refused() -> None:
    """A line authenticated for another connection between the same nodes is refused."""
    a, b, _, server = secure_pair()
    other_client, other_server = join(a, b)
    assert other_server.ready
    server.receive(line_of(other_client, Heartbeat(1, "a")) + b"\n")
    assert not server.open
    assert b.node.received == []
    assert other_server.open


@pytest.mark.parametrize("secret", [None, SECRET], ids=["no secret", "secret"])
@pytest.mark.parametrize(
    ("message", "fragment"),
    [
        (VoteRequest(9, "c"), "a vote request for 'c' from 'a'"),
        (VoteRequest(9, "b"), "a vote request for 'b' from 'a'"),
        (Heartbeat(9, "c"), "a heartbeat for 'c' from 'a'"),
        (Heartbeat(9, "b"), "a heartbeat for 'b' from 'a'"),
        (VoteResponse(9, True, "c"), "a vote of 'c' from 'a'"),
        (VoteResponse(9, True, "b"), "a vote of 'b' from 'a'"),
    ],
    ids=repr,
)
def test_messages_attributed_to_another_node_are_refused(
    secret: bytes | None, message: Message, fragment: str
) -> None:
    """A peer speaks only for itself: naming another candidate, leader or voter is refused."""
    a, b = Peer("a", secret=secret), Peer("b", secret=secret)
    client, server = join(a, b)
    client.protocol.send_message(message)
    server.receive(client.transport.take())
    assert_refused(b, server, fragment)


@pytest.mark.parametrize("secret", [None, SECRET], ids=["no secret", "secret"])
def test_a_vote_response_without_voter_is_attributed_to_the_peer(secret: bytes | None) -> None:
    """A vote response with an empty voter (as Go graft sends) is delivered with voter = peer id."""
    a, b = Peer("a", secret=secret), Peer("b", secret=secret)
    client, server = join(a, b)
    client.protocol.send_message(VoteResponse(7, True, ""))
    client.protocol.send_message(VoteResponse(8, False, "a"))
    pump(client, server)
    assert b.node.received == [VoteResponse(7, True, "a"), VoteResponse(8, False, "a")]
    assert server.open


@pytest.mark.parametrize("secret", [None, SECRET], ids=["no secret", "secret"])
@pytest.mark.parametrize(
    "line",
    [
        dump(encode_message(Heartbeat(1, "b"))),
        b"0" * 64 + b" " + dump(encode_message(Heartbeat(1, "b"))),
        dump({"type": "hello"}),
    ],
    ids=["heartbeat", "maced heartbeat", "hello"],
)
def test_connecting_side_refuses_lines_after_the_handshake(
    secret: bytes | None, line: bytes
) -> None:
    """A connection carries messages one way: the connecting side refuses any line once ready."""
    a, b = Peer("a", secret=secret), Peer("b", secret=secret)
    client, _ = join(a, b)
    client.transport.clear()
    client.receive_line(line)
    assert_refused(a, client, "only receives")
    assert a.rpc.connected_peers == frozenset()


@pytest.mark.parametrize(
    "line",
    [
        dump(hello("a")),
        dump({"type": "auth", "proof": "0" * 64}),
        dump({"type": "heartbeat", "term": 1.5, "leader": "a"}),
        b"not json",
    ],
    ids=["hello", "auth", "bad term", "garbage"],
)
def test_listening_side_refuses_non_messages_after_the_handshake(line: bytes) -> None:
    """Once ready (without a secret), a line that is not a valid message is refused."""
    a, b = Peer("a"), Peer("b")
    _, server = join(a, b)
    server.receive_line(line)
    assert_refused(b, server, "")


# -- lines that used to escape as exceptions ------------------------------------------


@pytest.mark.parametrize("side", [SERVER, CLIENT])
def test_a_hello_with_an_unencodable_nonce_is_refused(side: str) -> None:
    """With a secret, a hello whose nonce JSON decodes to lone surrogates is refused, not raised."""
    peer = Peer("b", secret=SECRET)
    conn = peer.accept() if side == SERVER else peer.dial()
    conn.receive(
        b'{"type":"hello","version":"%s","cluster":"c","node":"a","size":3,"nonce":"%s"}\n'
        % (VERSION.encode(), b"\\ud800" * 32)
    )
    assert_refused(peer, conn, "")


@pytest.mark.parametrize("side", [SERVER, CLIENT])
def test_an_unencodable_proof_is_refused(side: str) -> None:
    """A proof that JSON decodes to lone surrogates is refused as a wrong proof, not raised."""
    peer = Peer("b", secret=SECRET)
    bad_proof = b'"' + b"\\udc80" * 64 + b'"'
    if side == SERVER:
        conn = peer.accept()
        conn.receive_line(hello("a"))
        conn.receive(b'{"type":"auth","proof":' + bad_proof + b"}\n")
    else:
        conn = peer.dial()
        reply = dump(hello("a"))
        conn.receive(reply[:-1] + b',"proof":' + bad_proof + b"}\n")
    assert_refused(peer, conn, "does not prove the cluster secret")


@pytest.mark.parametrize("ready", [False, True], ids=["in the handshake", "after it"])
def test_a_deeply_nested_line_is_refused(ready: bool) -> None:
    """A short line of deeply nested JSON arrays is refused, not raised as a RecursionError."""
    a, b = Peer("a"), Peer("b")
    server = join(a, b)[1] if ready else b.accept()
    server.receive(b"[" * 2000 + b"]" * 2000 + b"\n")
    assert_refused(b, server, "")


def test_a_vote_request_with_a_non_ascii_state_is_refused() -> None:
    """Without a secret, a vote request whose state has non-ASCII characters is refused."""
    a, b = Peer("a"), Peer("b")
    _, server = join(a, b)
    server.receive_line(b'{"type":"vote_request","term":1,"candidate":"a","state":"\xc3\xa9"}')
    assert_refused(b, server, "")


# -- handshake timeout ----------------------------------------------------------


def test_a_silent_peer_is_timed_out() -> None:
    """No hello within handshake_timeout: an error line, a log line, and the connection aborted."""
    b = Peer("b", handshake_timeout=0.5)
    conn = b.accept()
    b.reactor.advance(0.49)
    assert conn.open
    b.reactor.advance(0.02)
    assert_refused(b, conn, "no handshake within 0.5s")
    assert conn.transport.aborted
    assert b.reactor.getDelayedCalls() == []


def test_a_dribbling_peer_is_timed_out() -> None:
    """A peer sending its hello a byte a second does not extend the handshake's deadline."""
    b = Peer("b")
    conn = b.accept()
    line = dump(hello("a")) + b"\n"
    for i in range(5):
        conn.receive(line[i : i + 1])
        b.reactor.advance(1)
    assert_refused(b, conn, "no handshake within 5.0s")
    assert conn.transport.aborted


def test_a_peer_that_never_sends_auth_is_timed_out() -> None:
    """With a secret, a hello without the auth line that must follow times out."""
    b = Peer("b", secret=SECRET)
    conn = b.accept()
    conn.receive_line(hello("a"))
    conn.transport.clear()
    b.reactor.advance(5)
    assert_refused(b, conn, "no handshake within")
    assert conn.transport.aborted


def test_connecting_side_times_out_a_silent_server() -> None:
    """A listening node that never answers the hello is timed out and the handshake fails."""
    a = Peer("a", handshake_timeout=2)
    conn = a.dial()
    conn.transport.clear()
    a.reactor.advance(2)
    assert_refused(a, conn, "no handshake within 2.0s")
    assert conn.transport.aborted and conn.handshake_failed()


def test_a_refused_connection_leaves_no_timer() -> None:
    """A connection refused during its handshake cancels its timeout."""
    b = Peer("b")
    conn = b.accept()
    assert len(b.reactor.getDelayedCalls()) == 1
    conn.receive_line(b"junk")
    assert not conn.open
    assert b.reactor.getDelayedCalls() == []


def test_a_peer_that_hangs_up_leaves_no_timer() -> None:
    """A connection lost during its handshake cancels its timeout."""
    b = Peer("b")
    conn = b.accept()
    conn.transport.loseConnection()
    assert b.reactor.getDelayedCalls() == []
    assert b.rpc.invalid_messages == 0


# -- pending handshakes -----------------------------------------------------------


def test_handshakes_beyond_the_limit_are_trimmed_once_they_could_have_said_hello() -> None:
    """Beyond N pending handshakes newcomers are taken; PROVE_WITHIN later the oldest
    silent ones are dropped, and it is logged."""
    b = Peer("b", max_pending_handshakes=3)
    conns = [b.accept() for _ in range(5)]
    assert all(conn.open for conn in conns)
    b.reactor.advance(PROVE_WITHIN - 0.01)
    assert all(conn.open for conn in conns)
    b.reactor.advance(0.01)
    assert [conn.open for conn in conns] == [False, False, True, True, True]
    assert all(conn.transport.aborted and conn.transport.value() == b"" for conn in conns[:2])
    assert any("to make room" in text for text in b.warnings())
    assert (b.rpc.refused_connections, b.rpc.invalid_messages) == (2, 0)


def test_a_newcomer_is_not_trimmed_before_it_could_say_hello() -> None:
    """A connection younger than PROVE_WITHIN keeps its slot however many came before it;
    once it said a valid hello it is no longer pending."""
    b = Peer("b", max_pending_handshakes=2)
    old = [b.accept() for _ in range(2)]
    b.reactor.advance(1)
    early = b.accept()
    b.reactor.advance(PROVE_WITHIN - 0.05)
    peer = b.accept()
    flood = [b.accept() for _ in range(2)]
    b.reactor.advance(0.05)
    assert not any(conn.open for conn in [*old, early])
    assert peer.open and all(conn.open for conn in flood)
    peer.receive_line(hello("a"))
    assert peer.ready
    b.reactor.advance(PROVE_WITHIN)
    assert peer.open and all(conn.open for conn in flood)


def test_beyond_the_hard_limit_a_newcomer_pushes_out_the_oldest() -> None:
    """With HARD_LIMIT_FACTOR x N handshakes pending, a newcomer is still taken and the
    oldest one goes, at once; each address then keeps its own N past the trim."""
    b = Peer("b", max_pending_handshakes=3)
    hard = 3 * HARD_LIMIT_FACTOR
    pending = [b.accept() for _ in range(hard)]
    elsewhere = b.accept("127.0.0.2")
    assert elsewhere.open
    assert [conn.open for conn in pending] == [False] + [True] * (hard - 1)
    assert pending[0].transport.aborted and pending[0].transport.value() == b""
    assert any("to make room" in text for text in b.warnings())
    assert (b.rpc.refused_connections, b.rpc.invalid_messages) == (1, 0)
    b.reactor.advance(PROVE_WITHIN)
    assert sum(conn.open for conn in pending) == 3 and elsewhere.open


def test_a_crowded_node_pushes_out_the_address_that_holds_the_most() -> None:
    """At the hard limit, a newcomer takes the oldest slot of the address that holds the
    most, not the oldest slot of all."""
    b = Peer("b", max_pending_handshakes=1)
    few = [b.accept("127.0.0.1") for _ in range(2)]
    many = [b.accept("127.0.0.2") for _ in range(HARD_LIMIT_FACTOR - 2)]
    newcomer = b.accept("127.0.0.3")
    assert newcomer.open and all(conn.open for conn in few)
    assert [conn.open for conn in many] == [False] + [True] * (len(many) - 1)


def test_when_every_pending_handshake_is_proven_a_newcomer_is_refused() -> None:
    """Handshakes whose hellos carried fresh tickets are never pushed out: at the hard
    limit with only those pending, the newcomer is refused at once."""
    b = Peer("b", secret=SECRET, max_pending_handshakes=1)
    proven = []
    for _ in range(HARD_LIMIT_FACTOR):
        nonce = new_nonce()
        conn = b.accept()
        conn.receive_line(
            {**hello("a", nonce=nonce), "ticket": Keys(SECRET).ticket(nonce, "c", "a")}
        )
        proven.append(conn)
    newcomer = b.accept()
    assert not newcomer.open and newcomer.transport.aborted
    assert all(conn.open for conn in proven)
    assert any("handshakes already pending" in text for text in b.warnings())
    assert (b.rpc.refused_connections, b.rpc.invalid_messages) == (1, 0)


def test_a_hello_with_a_fresh_ticket_is_never_trimmed() -> None:
    """A pending handshake whose hello carried a valid ticket keeps its slot past the
    trim; a replay of that hello (same nonce), or a wrong ticket, does not."""
    b = Peer("b", secret=SECRET, max_pending_handshakes=1)
    nonce = new_nonce()
    ticketed = {**hello("a", nonce=nonce), "ticket": Keys(SECRET).ticket(nonce, "c", "a")}
    other = new_nonce()
    cases = [ticketed, ticketed, {**hello("a", nonce=other), "ticket": "0" * 64}]
    conns = []
    for line in cases:
        conn = b.accept()
        conn.receive_line(line)
        conns.append(conn)
    flood = [b.accept() for _ in range(2)]
    b.reactor.advance(PROVE_WITHIN)
    assert [conn.open for conn in conns] == [True, False, False]
    assert not any(conn.open for conn in flood[:1])


def test_a_pending_handshake_that_ends_leaves_the_others_their_slots() -> None:
    """A handshake that completes, drops, is refused or times out is no longer pending:
    the trim then spares the others."""
    b = Peer("b", max_pending_handshakes=2)
    first = b.accept()
    b.reactor.advance(3)
    second, third = b.accept(), b.accept()
    first.receive_line(hello("a"))
    second.transport.loseConnection()
    b.reactor.advance(PROVE_WITHIN)
    assert first.ready and third.open
    b.reactor.advance(2.5)
    assert third.open
    fourth = b.accept()
    b.reactor.advance(PROVE_WITHIN)
    assert third.open and fourth.open


def test_established_connections_do_not_count_as_pending() -> None:
    """Completed handshakes free their place: established connections are not limited."""
    b = Peer("b", max_pending_handshakes=1)
    established = []
    for _ in range(5):
        conn = b.accept()
        conn.receive_line(hello("a"))
        established.append(conn)
    assert all(conn.ready and conn.open for conn in established)
    assert b.accept().open


def test_outgoing_connections_do_not_count_as_pending() -> None:
    """Only incoming handshakes are limited: dialling out never takes an inbound slot."""
    a = Peer("a", max_pending_handshakes=1)
    incoming = a.accept()
    outgoing = [a.dial() for _ in range(3)]
    a.reactor.advance(PROVE_WITHIN)
    assert incoming.open and all(conn.open for conn in outgoing)
    flood = [a.accept() for _ in range(HARD_LIMIT_FACTOR)]
    assert not incoming.open and all(conn.open for conn in flood)
    assert all(conn.open for conn in outgoing)


# -- line length ------------------------------------------------------------------


def test_an_over_long_line_is_refused() -> None:
    """A line longer than max_line_length is refused and the connection dropped."""
    b = Peer("b", max_line_length=1024)
    conn = b.accept()
    conn.receive(b"x" * 1025 + b"\n")
    assert_refused(b, conn, "a line longer than 1024 bytes")


def test_an_over_long_line_is_refused_before_it_ends() -> None:
    """More than max_line_length bytes without a newline is refused without waiting for the end."""
    b = Peer("b", max_line_length=1024)
    conn = b.accept()
    conn.receive(b"{" + b" " * 1024)
    assert_refused(b, conn, "a line longer than 1024 bytes")


def test_a_line_of_exactly_the_maximum_length_is_accepted() -> None:
    """A hello padded to exactly max_line_length bytes is still a valid hello."""
    b = Peer("b", max_line_length=1024)
    conn = b.accept()
    line = dump(hello("a"))
    padded = line[:-1] + b" " * (1024 - len(line)) + b"}"
    assert len(padded) == 1024
    conn.receive(padded + b"\n")
    assert conn.ready and conn.open


def test_an_over_long_message_after_the_handshake_is_refused() -> None:
    """After an authenticated handshake an over-long message line is refused, not delivered."""
    a, b = Peer("a", secret=SECRET), Peer("b", secret=SECRET, max_line_length=1024)
    client, server = join(a, b)
    client.protocol.send_message(VoteRequest(1, "a", b"x" * 1000))
    server.receive(client.transport.take())
    assert_refused(b, server, "a line longer than 1024 bytes")


# -- rate-limited logging -----------------------------------------------------------


def test_a_flood_of_bad_connections_is_logged_with_a_rate_limit() -> None:
    """500 bad connections make at most 10 warnings, all are counted, and the node carries on."""
    b = Peer("b")
    for _ in range(500):
        conn = b.accept()
        conn.receive(b"junk\n")
        assert not conn.open
    assert b.rpc.invalid_messages == 500
    assert 1 <= len(b.warnings()) <= 10
    b.reactor.advance(60)
    b.accept().receive(b"junk\n")
    assert any("490 similar warnings were not logged" in text for text in b.warnings())
    client, server = join(Peer("a"), b)
    client.protocol.send_message(Heartbeat(1, "a"))
    pump(client, server)
    assert b.node.received == [Heartbeat(1, "a")]


def test_a_flood_of_silent_connections_is_held_to_the_pending_limit() -> None:
    """Of 500 connections that never say hello from one address, 64 are taken and the rest
    refused; 16 wait past the trim; all time out."""
    b = Peer("b")
    flood = [b.accept() for _ in range(500)]
    assert sum(conn.open for conn in flood) == 16 * HARD_LIMIT_FACTOR
    assert b.rpc.refused_connections == 500 - 16 * HARD_LIMIT_FACTOR
    b.reactor.advance(PROVE_WITHIN)
    assert sum(conn.open for conn in flood) == 16
    assert len(b.warnings()) <= 20
    assert (b.rpc.refused_connections, b.rpc.invalid_messages) == (500 - 16, 0)
    b.reactor.advance(5)
    assert not any(conn.open for conn in flood)
    # The 16 that kept their slots never said hello: timed out, invalid.
    assert (b.rpc.refused_connections, b.rpc.invalid_messages) == (500 - 16, 16)
    assert b.reactor.getDelayedCalls() == []
    newcomer = b.accept()
    newcomer.receive_line(hello("a"))
    assert newcomer.ready


# -- hostile input, property-based ------------------------------------------------------


SPECIAL_VALUES: list[Any] = [
    "",
    "a",
    "b",
    "c",
    "x\ny",
    VERSION,
    "0" * 32,
    "\ud800" * 32,
    "é" * 32,
    "é",
    "AQ==é",
    "AQ==",
    0,
    -1,
    3,
    2**64,
    MAX_TERM,
    1.0,
    True,
    None,
    [],
    {},
]

json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(),
        st.text(max_size=40),
        st.sampled_from(SPECIAL_VALUES),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


def _json_line(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode("ascii")


def mutations(line: bytes) -> st.SearchStrategy[bytes]:
    """Lines near a valid one: flipped bytes, cuts, duplicated slices, changed fields, types."""
    if line.startswith(b"{"):
        prefix, body = b"", line
    else:
        mac, _, body = line.partition(b" ")
        prefix = mac + b" "
    obj: dict[str, Any] = json.loads(body)
    n = len(line)

    def flip(at_by: tuple[int, int]) -> bytes:
        at, by = at_by
        return line[:at] + bytes([line[at] ^ by]) + line[at + 1 :]

    def duplicate(ends: tuple[int, int]) -> bytes:
        return line[: max(ends)] + line[min(ends) :]

    def insert(at_what: tuple[int, bytes]) -> bytes:
        at, what = at_what
        return line[:at] + what + line[at:]

    def set_field(key_value: tuple[str, Any]) -> bytes:
        key, value = key_value
        return prefix + _json_line({**obj, key: value})

    def drop_field(key: str) -> bytes:
        return prefix + _json_line({k: v for k, v in obj.items() if k != key})

    def confuse(shape: str) -> bytes:
        other: Any = {
            "values": list(obj.values()),
            "items": sorted(obj.items()),
            "string": json.dumps(obj),
            "wrapped": [obj],
            "number": len(obj),
        }[shape]
        return prefix + _json_line(other)

    return st.one_of(
        st.tuples(st.integers(0, n - 1), st.integers(1, 255)).map(flip),
        st.integers(0, n - 1).map(lambda k: line[:k]),
        st.tuples(st.integers(0, n), st.integers(0, n)).map(duplicate),
        st.tuples(st.integers(0, n), st.binary(min_size=1, max_size=8)).map(insert),
        st.tuples(
            st.sampled_from([*sorted(obj), "extra"]),
            st.one_of(st.sampled_from(SPECIAL_VALUES), json_values),
        ).map(set_field),
        st.sampled_from(sorted(obj)).map(drop_field),
        st.sampled_from(["values", "items", "string", "wrapped", "number"]).map(confuse),
        st.just(line + b"\n" + line),
        st.integers(1, 3000).map(lambda depth: prefix + b"[" * depth + b"]" * depth),
        st.binary(max_size=64),
    )


terms = st.integers(0, MAX_TERM)
messages_of_a = st.one_of(
    st.builds(VoteRequest, terms, st.just("a"), st.binary(max_size=24)),
    st.builds(VoteResponse, terms, st.booleans(), st.sampled_from(["", "a"])),
    st.builds(Heartbeat, terms, st.just("a")),
)


STREAM_OPS = ["keep", "keep", "mutate", "drop", "repeat", "swap", "junk"]


def draw_stream(data: st.DataObject, valid: Sequence[bytes]) -> list[bytes]:
    """The valid lines, each kept, mutated, dropped, repeated, swapped or preceded by junk."""
    fed: list[bytes] = []
    i = 0
    while i < len(valid):
        line = valid[i]
        op = data.draw(st.sampled_from(STREAM_OPS))
        if op == "mutate":
            fed.append(data.draw(mutations(line)))
        elif op == "drop":
            pass
        elif op == "repeat":
            fed += [line, line]
        elif op == "swap" and i + 1 < len(valid):
            fed += [valid[i + 1], line]
            i += 1
        elif op == "junk":
            fed += [data.draw(st.binary(max_size=40)), line]
        else:
            fed.append(line)
        i += 1
    return fed


def feed_in_chunks(data: st.DataObject, protocol: PeerProtocol, lines: Sequence[bytes]) -> bytes:
    """Send the lines as one stream cut at random places; return the stream."""
    stream = b"".join(line + b"\n" for line in lines)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=4)))
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        protocol.dataReceived(stream[start:end])
    return stream


# pytest-twisted breaks @given on parametrized tests (it rewraps the shared inner
# test), so the side and the secret are drawn instead.
@settings(max_examples=100, deadline=None)
@given(
    side=st.sampled_from([SERVER, CLIENT]),
    secret=st.sampled_from([None, SECRET]),
    chunks=st.lists(st.binary(max_size=300), max_size=6),
)
def test_random_bytes_neither_raise_nor_deliver(
    side: str, secret: bytes | None, chunks: list[bytes]
) -> None:
    """Random bytes on a new connection raise nothing out of dataReceived and deliver nothing."""
    peer = Peer("b", secret=secret)
    conn = peer.accept() if side == SERVER else peer.dial()
    for chunk in chunks:
        conn.protocol.dataReceived(chunk)
    assert peer.node.received == []
    assert not conn.ready


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_a_client_without_the_secret_never_reaches_the_node(data: st.DataObject) -> None:
    """Mutated hellos, auth lines and MACed messages from a peer without the secret do nothing."""
    b = Peer("b", secret=SECRET)
    conn = b.accept()
    guess = Keys(b"a guess")
    client_nonce = new_nonce()
    good_hello = dump(hello("a", nonce=client_nonce))
    hellos = data.draw(
        st.lists(st.one_of(st.just(good_hello), mutations(good_hello)), min_size=1, max_size=3)
    )
    feed_in_chunks(data, conn.protocol, hellos)
    # The attacker sees the server's nonce and answers with its best guesses.
    replies = [obj for obj in conn.sent() if obj.get("type") == "hello"]
    server_nonce = replies[0]["nonce"] if replies else new_nonce()
    auth = dump({"type": "auth", "proof": guess.proof("client", client_nonce, server_nonce)})
    session = guess.session(client_nonce, server_nonce)
    bodies = [dump(encode_message(m)) for m in (Heartbeat(MAX_TERM, "a"), VoteRequest(9, "a"))]
    maced = [
        Keys.line_mac(session, i, body).encode() + b" " + body for i, body in enumerate(bodies)
    ]
    rest = data.draw(
        st.lists(
            st.one_of(
                st.just(auth),
                mutations(auth),
                st.sampled_from(maced + bodies),
                mutations(maced[0]),
                mutations(bodies[1]),
                st.binary(max_size=80),
            ),
            max_size=6,
        )
    )
    feed_in_chunks(data, conn.protocol, rest)
    assert b.node.received == []
    assert not conn.ready


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_only_exact_maced_lines_in_sequence_are_delivered(data: st.DataObject) -> None:
    """After an authenticated handshake, delivery stops at the first line not sent exactly so."""
    _, b, client, server = secure_pair()
    sent = data.draw(st.lists(messages_of_a, min_size=1, max_size=5))
    valid = [line_of(client, message) for message in sent]
    stream = feed_in_chunks(data, server.protocol, draw_stream(data, valid))
    expected: list[Message] = []
    for line in stream.split(b"\n")[:-1]:
        if len(expected) < len(valid) and line == valid[len(expected)]:
            expected.append(sent[len(expected)])
        else:
            break
    delivered = [
        VoteResponse(m.term, m.granted, "a") if isinstance(m, VoteResponse) else m for m in expected
    ]
    assert b.node.received == delivered


def _acceptable_from_a(line: bytes) -> Message | None:
    """What a node without a secret should accept from peer a on this line, if anything."""
    try:
        message = decode_message(load(line))
    except (LineError, Exception):
        return None
    if isinstance(message, VoteRequest):
        return message if message.candidate == "a" else None
    if isinstance(message, Heartbeat):
        return message if message.leader == "a" else None
    return VoteResponse(message.term, message.granted, "a") if message.voter in ("", "a") else None


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_without_a_secret_only_valid_messages_of_the_peer_are_delivered(
    data: st.DataObject,
) -> None:
    """Without a secret, mutated lines raise nothing; delivery stops at the first invalid line."""
    a, b = Peer("a"), Peer("b")
    _, server = join(a, b)
    sent = data.draw(st.lists(messages_of_a, min_size=1, max_size=4))
    valid = [dump(encode_message(message)) for message in sent]
    stream = feed_in_chunks(data, server.protocol, draw_stream(data, valid))
    expected: list[Message] = []
    for line in stream.split(b"\n")[:-1]:
        message = _acceptable_from_a(line)
        if message is None:
            break
        expected.append(message)
    assert b.node.received == expected


# -- TcpRpc configuration -------------------------------------------------------------


LISTEN = "tcp:7001"
PEERS = ["tcp:host=127.0.0.1:port=7002", "tcp:host=127.0.0.1:port=7003"]


@pytest.mark.parametrize("listen", ["", "   "])
def test_empty_listen_is_a_config_error(listen: str) -> None:
    """An empty listen endpoint is refused when the TcpRpc is made."""
    with pytest.raises(TcpConfigError, match="listen"):
        TcpRpc(listen, PEERS)


@pytest.mark.parametrize("peers", [PEERS[0], PEERS[0].encode(), set(PEERS), None, 7002], ids=repr)
def test_peers_must_be_a_list_of_endpoints(peers: Any) -> None:
    """A single endpoint string (a common slip), bytes, a set or a non-sequence is refused."""
    with pytest.raises(TcpConfigError, match="peers must be a list"):
        TcpRpc(LISTEN, peers)


@pytest.mark.parametrize("peers", [[""], [PEERS[0], "  "]], ids=repr)
def test_an_empty_peer_endpoint_is_a_config_error(peers: list[str]) -> None:
    """An empty string among the peers is refused."""
    with pytest.raises(TcpConfigError, match="must not be empty"):
        TcpRpc(LISTEN, peers)


@pytest.mark.parametrize("secret", [b"", "", 5, ["x"]], ids=repr)
def test_secret_must_be_non_empty_bytes_or_str(secret: Any) -> None:
    """An empty secret, or one that is neither bytes nor str, is refused."""
    with pytest.raises(TcpConfigError, match="secret"):
        TcpRpc(LISTEN, PEERS, secret=secret)


OPTIONS = ["max_line_length", "handshake_timeout", "max_pending_handshakes", "retry_max_delay"]


@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("value", [0, -1, -0.5, True, "5", None], ids=repr)
def test_non_positive_or_non_numeric_options_are_config_errors(option: str, value: Any) -> None:
    """Every numeric option must be a positive number (not a bool or a string)."""
    with pytest.raises(TcpConfigError, match=option):
        TcpRpc(LISTEN, PEERS, **{option: value})


@pytest.mark.parametrize("option", OPTIONS)
def test_nan_options_are_config_errors(option: str) -> None:
    """NaN is not a positive number: every numeric option refuses it."""
    with pytest.raises(TcpConfigError, match=option):
        TcpRpc(LISTEN, PEERS, **{option: float("nan")})


@pytest.mark.parametrize("option", ["max_line_length", "max_pending_handshakes"])
def test_infinite_counts_are_config_errors(option: str) -> None:
    """An infinite line length or handshake count is a TcpConfigError, not an OverflowError."""
    with pytest.raises(TcpConfigError, match=option):
        TcpRpc(LISTEN, PEERS, **{option: float("inf")})


def test_max_line_length_must_be_at_least_1024() -> None:
    """A maximum line length below 1024 bytes is refused; 1024 is accepted."""
    with pytest.raises(TcpConfigError, match="at least 1024"):
        TcpRpc(LISTEN, PEERS, max_line_length=1023)
    assert TcpRpc(LISTEN, PEERS, max_line_length=1024).max_line_length == 1024


def test_config_error_is_a_graft_error_and_a_value_error() -> None:
    """TcpConfigError can be caught as GraftError or ValueError."""
    assert issubclass(TcpConfigError, GraftError) and issubclass(TcpConfigError, ValueError)


def test_nothing_happens_before_init() -> None:
    """Making a TcpRpc neither listens nor dials; init does both, on the given reactor."""
    reactor = MemoryReactorClock()
    rpc = TcpRpc("tcp:7001:interface=127.0.0.1", PEERS, reactor=reactor)
    assert reactor.tcpServers == [] and reactor.tcpClients == []
    rpc.init(RecordingNode("a", size=3))
    assert [(port, interface) for port, _, _, interface in reactor.tcpServers] == [
        (7001, "127.0.0.1")
    ]
    assert [(host, port) for host, port, *_ in reactor.tcpClients] == [
        ("127.0.0.1", 7002),
        ("127.0.0.1", 7003),
    ]
    assert rpc.port is not None


@pytest.mark.parametrize(("size", "peers"), [(5, 2), (2, 2), (1, 2), (3, 0)])
def test_init_refuses_a_size_that_is_not_peers_plus_one(size: int, peers: int) -> None:
    """A node whose cluster size is not the number of peers plus one is refused, naming both."""
    reactor = MemoryReactorClock()
    rpc = TcpRpc(LISTEN, PEERS[:peers], reactor=reactor)
    with pytest.raises(TcpConfigError, match=rf"size {size}\b.*\b{peers} peer\(s\)"):
        rpc.init(RecordingNode("a", size=size))
    assert reactor.tcpServers == [] and reactor.tcpClients == []


def test_init_twice_is_refused() -> None:
    """A TcpRpc carries one node, once."""
    peer = Peer("a")
    with pytest.raises(GraftError):
        peer.rpc.init(RecordingNode("z"))


@pytest.mark.parametrize(
    ("listen", "peers"),
    [("bogus:7001", PEERS), (LISTEN, [PEERS[0], "bogus:host=x"])],
    ids=["listen", "peer"],
)
def test_unparsable_endpoints_are_config_errors_at_init(listen: str, peers: list[str]) -> None:
    """An endpoint string Twisted cannot parse is a TcpConfigError naming it."""
    rpc = TcpRpc(listen, peers, reactor=MemoryReactorClock())
    with pytest.raises(TcpConfigError, match="bogus"):
        rpc.init(RecordingNode("a", size=3))


class _RecordingService:
    """The part of a ClientService that _Outbound.retry_now uses, recording restarts."""

    def __init__(self) -> None:
        self.running = True
        self.restarts = 0

    def stopService(self) -> None:
        self.running = False

    def startService(self) -> None:
        self.running = True
        self.restarts += 1


def test_a_peer_heard_again_cuts_short_only_a_waiting_connector_that_may_reach_it() -> None:
    """retry_now restarts a connector only while it waits out a backoff, and only if it may
    be the peer just heard; a connect in flight, or another peer's connector, is left alone
    (restarting those on every inbound handshake was a storm of connects in big clusters)."""
    clock = Clock()
    outbound = _Outbound(lambda attempt: 1.0, clock)
    service = _RecordingService()
    outbound.service = service  # type: ignore[assignment]

    outbound.retry_now("b")  # never failed: connecting, not waiting
    assert service.restarts == 0
    assert outbound.delay(1) == 1.0  # a failed attempt: the retry is due in 1 s
    outbound.retry_now("b")  # unknown endpoint, waiting: may be b
    assert service.restarts == 1
    outbound.retry_now("b")  # now connecting again
    assert service.restarts == 1

    outbound.peer_id = "b"
    outbound.delay(2)
    outbound.retry_now("c")  # known to be b's endpoint
    assert service.restarts == 1
    clock.advance(1.0)  # the retry is due: it is connecting
    outbound.retry_now("b")
    assert service.restarts == 1
    outbound.delay(3)
    outbound.retry_now("b")
    assert service.restarts == 2


@pytest.mark.parametrize(
    ("listen", "backlog"),
    [("tcp:7001:interface=127.0.0.1", 1024), ("tcp:7001:backlog=7", 7)],
)
def test_a_listen_string_gets_a_deep_backlog_unless_it_names_one(listen: str, backlog: int) -> None:
    """A flood fills Twisted's default backlog of 50 and the kernel drops a peer's SYN: a
    listen string without backlog= gets 1024, one with it keeps its own."""
    rpc = TcpRpc(listen, ["tcp:host=127.0.0.1:port=7002"], reactor=MemoryReactorClock())
    endpoint = rpc._server_endpoint()
    assert endpoint._backlog == backlog  # type: ignore[attr-defined]
