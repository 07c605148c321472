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
from twisted.internet.testing import MemoryReactorClock, StringTransportWithDisconnection
from twisted.logger import LogEvent, Logger, LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import implementer
from zope.interface.verify import verifyObject

from graft_tx import (
    ClusterInfo,
    GraftError,
    Heartbeat,
    TcpConfigError,
    TcpRpc,
    VoteRequest,
    VoteResponse,
)
from graft_tx.interfaces import IElectionNode, IRpc
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
from graft_tx.transport.tcp import CLIENT, SERVER, PeerProtocol

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
        self.received: list[Message] = []

    def handle_vote_request(self, req: VoteRequest) -> None:
        self.received.append(req)

    def handle_vote_response(self, resp: VoteResponse) -> None:
        self.received.append(resp)

    def handle_heartbeat(self, hb: Heartbeat) -> None:
        self.received.append(hb)


class FakeTransport(StringTransportWithDisconnection):
    """An in-memory transport that closes its protocol at once and records aborts."""

    aborted = False

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()  # type: ignore[no-untyped-call]

    def take(self) -> bytes:
        data: bytes = self.value()
        self.clear()
        return data


class Connection:
    """One PeerProtocol on a FakeTransport, and how its handshake ended."""

    def __init__(self, rpc: TcpRpc, side: str) -> None:
        self.protocol = PeerProtocol(rpc, side)
        self.transport = FakeTransport()
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
        return bytes(self.transport.value()).split(b"\n")[:-1]

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

    def accept(self) -> Connection:
        """A connection from a peer to this node (its listening side)."""
        return Connection(self.rpc, SERVER)

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


def hello(node: str = "a", **changes: Any) -> dict[str, Any]:
    """A valid hello from node (to a node of cluster "c" of size 3), with changes (MISSING drops)."""
    obj: dict[str, Any] = {
        "type": "hello",
        "version": VERSION,
        "cluster": "c",
        "node": node,
        "size": 3,
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


# -- handshake happy paths ----------------------------------------------------


@pytest.mark.parametrize("secret", [None, SECRET, "sécret"], ids=["no secret", "bytes", "str"])
def test_handshake_lets_the_client_send_to_the_server(secret: bytes | str | None) -> None:
    """After the handshake the connecting side's messages reach the listening node, exactly."""
    a, b = Peer("a", secret=secret), Peer("b", secret=secret)
    client, server = join(a, b)
    assert client.ready and server.ready
    assert client.outcomes == [None] and server.outcomes == [None]
    assert (client.protocol.peer_id, server.protocol.peer_id) == ("b", "a")
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
    """The connecting side opens with a hello naming version, cluster, node, size and a nonce."""
    client = Peer("a", cluster="cl", size=3).dial()
    [first] = client.sent()
    assert {k: v for k, v in first.items() if k != "nonce"} == {
        "type": "hello",
        "version": VERSION,
        "cluster": "cl",
        "node": "a",
        "size": 3,
    }
    assert len(first["nonce"]) == 32 and bytes.fromhex(first["nonce"])
    assert Peer("a").dial().sent()[0]["nonce"] != first["nonce"]


@pytest.mark.parametrize("secret", [None, SECRET], ids=["no secret", "secret"])
def test_message_lines_carry_a_mac_only_with_a_secret(secret: bytes | None) -> None:
    """With a secret each message line is '<mac> <json>'; without, the bare JSON."""
    a, b = Peer("a", secret=secret), Peer("b", secret=secret)
    client, server = join(a, b)
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
    """The connecting side checks the listening node's hello the same way and fails its handshake."""
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
    a = Peer("a")
    b = Peer(server_options.pop("node_id"), **server_options)
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
    """The listening side checks the auth proof: anything but the exact expected proof is refused."""
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


