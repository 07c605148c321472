"""TcpRpc: a fixed set of peers elect a leader over direct TCP connections.

Each node listens for its peers and keeps one outgoing connection to each of
them (with Twisted's ClientService: retries with backoff and jitter). A node
sends only on its outgoing connections and receives only on incoming ones,
so every connection carries messages one way, from the connecting node.

The line protocol (README.md, "The TCP line protocol"):

    connecting node                        listening node
    hello {version, cluster, node, size, nonce[, ticket]}  ->
                            <-  hello {version, cluster, node, size, nonce[, proof]}
    auth {proof}  ->                      (only with a shared secret)
    message lines  ->                      ([<mac> ]<json>, one per line)

A peer of another version, cluster or size, or one with this node's own id,
is refused: it gets an C{error} line with the reason, the connection is
closed, and both sides log why.
"""

from __future__ import annotations

import contextlib
import math
import random
import socket
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, cast

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IReactorTime,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
    ITCPTransport,
)
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from graft_tx.dispatch import deliver
from graft_tx.errors import GraftError, MessageError
from graft_tx.interfaces import IAckingRpc, IElectionNode, ITransportStats
from graft_tx.messages import Heartbeat, HeartbeatAck, VoteRequest, VoteResponse, check_id
from graft_tx.ratelimit import QUOTE_LIMIT, RateLimitedLog, escape
from graft_tx.transport.lines import (
    VERSION,
    Keys,
    LineError,
    Message,
    decode_message,
    dump,
    encode_message,
    is_nonce,
    load,
    new_nonce,
    same,
)

CLIENT, SERVER = "connecting", "listening"
DEFAULT_MAX_LINE = 16 * 1024
# Seconds a new inbound connection keeps its handshake slot, however many
# come after it: time for a peer's hello, sent as it connects, to arrive.
PROVE_WITHIN = 0.25
# Pending handshakes in all, as a multiple of the limit per address, beyond
# which a newcomer pushes out an old one: a bound on descriptors.
HARD_LIMIT_FACTOR = 8
TICKETS_KEPT = 1024
# Connections the kernel may queue for accept() (the system caps it: somaxconn).
LISTEN_BACKLOG = 1024


class TcpConfigError(GraftError, ValueError):
    """TcpRpc was given arguments it cannot work with."""


class PeerProtocol(LineOnlyReceiver):
    """One connection to or from a peer, from handshake to close."""

    delimiter = b"\n"

    def __init__(self, rpc: TcpRpc, side: str, outbound: _Outbound | None = None) -> None:
        self._rpc = rpc
        self._side = side
        self._outbound = outbound
        self.MAX_LENGTH = rpc.max_line_length
        self.peer_id = ""
        self.state = "hello"
        self._nonce = new_nonce()
        self._peer_nonce = ""
        self._session: bytes | None = None
        self._received = 0
        self._sent = 0
        self._timer: IDelayedCall | None = None
        # Inbound only: when its handshake took a slot, and whether its hello
        # carried a fresh ticket (its sender holds the cluster secret).
        self.admitted_at = 0.0
        self.proven = False
        self.handshake: Deferred[None] = Deferred()
        self.closed: Deferred[None] = Deferred()

    # -- connection life ------------------------------------------------

    def connectionMade(self) -> None:
        # Each connection carries small messages one way: without NODELAY the
        # receiver's delayed ACK holds the next message back about 40 ms.
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)
        _set_user_timeout(self.transport, self._rpc.stall_timeout)
        if self._side == SERVER and not self._rpc._admit(self):
            self.state = "closed"
            self._abort()
            return
        self._timer = self._rpc.clock.callLater(
            self._rpc.handshake_timeout, self._handshake_timed_out
        )
        if self._side == CLIENT:
            self._send_object(self._hello())

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel_timer()
        self.state = "closed"
        self._rpc._lost(self)
        if not self.handshake.called:
            self.handshake.errback(reason)
            # Why it failed was logged where it happened.
            self.handshake.addErrback(lambda _: None)
        self.closed.callback(None)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._refuse(f"a line longer than {self.MAX_LENGTH} bytes")

    def _handshake_timed_out(self) -> None:
        self._timer = None
        self._refuse(f"no handshake within {self._rpc.handshake_timeout}s")
        self._abort()

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    # -- receiving ------------------------------------------------------

    def lineReceived(self, line: bytes) -> None:
        if self.state == "closed":
            return
        try:
            self._line(line)
        except LineError as e:
            self._refuse(str(e))

    def _line(self, line: bytes) -> None:
        if self.state == "ready":
            if self._side == CLIENT or (self._session is not None and line.startswith(b"{")):
                # Nothing but the peer's refusal may come unauthenticated.
                try:
                    refused = self._peer_refused(load(line))
                except LineError:
                    refused = False
                if not refused and self._side == CLIENT:
                    raise LineError("a line from a peer that only receives on this connection")
                if not refused:
                    raise LineError("a line failed authentication")
                return
            obj = load(self._authenticated(line))
            if not self._peer_refused(obj):
                self._rpc._deliver(self, decode_message(obj))
            return
        obj = load(line)
        if self._peer_refused(obj):
            return
        if self.state == "hello":
            self._on_hello(obj)
        else:
            self._on_auth(obj)

    def _peer_refused(self, obj: dict[str, Any]) -> bool:
        """Log and close on the peer's C{error} line; whether it was one."""
        if obj["type"] != "error":
            return False
        self._rpc._warn(
            "peer {peer} refused the connection: {reason}",
            key=f"peer refused in {self.state}",
            peer=self._describe(),
            reason=escape(obj.get("reason", "")),
        )
        self._close()
        return True

    def _on_hello(self, obj: dict[str, Any]) -> None:
        rpc = self._rpc
        node = rpc.node
        if obj["type"] != "hello":
            raise LineError(f"expected a hello, got {obj['type']!r}")
        if obj.get("version") != VERSION:
            raise LineError(f"protocol version {obj.get('version')!r}; this node speaks {VERSION}")
        if obj.get("cluster") != node.cluster_info.name:
            raise LineError(
                f"peer of cluster {obj.get('cluster')!r}; "
                f"this node is of {node.cluster_info.name!r}"
            )
        size = obj.get("size")
        if type(size) is not int or size != node.cluster_info.size:
            raise LineError(
                f"peer says the cluster has {obj.get('size')!r} nodes; "
                f"this node says {node.cluster_info.size}"
            )
        if obj.get("protocol") != node.protocol:
            raise LineError(
                f"peer runs protocol {obj.get('protocol')!r}, this node {node.protocol!r}: "
                "every node of a cluster must use the same protocol"
            )
        peer = obj.get("node")
        try:
            check_id("node id", peer)
        except MessageError as e:
            raise LineError(str(e)) from None
        if peer == node.id:
            raise LineError(f"the peer has this node's own id {peer!r}")
        nonce = obj.get("nonce")
        if not is_nonce(nonce):
            raise LineError("a hello without a valid nonce")
        assert isinstance(nonce, str)
        assert isinstance(peer, str)
        self.peer_id, self._peer_nonce = peer, nonce
        keys = rpc.keys
        names = (node.cluster_info.name,)
        if self._side == SERVER and keys is not None:
            self.proven = rpc._fresh_ticket(obj.get("ticket"), nonce, peer)
        if self._side == SERVER:
            reply = self._hello()
            if keys is not None:
                reply["proof"] = keys.proof("server", nonce, self._nonce, *names, node.id, peer)
            self._send_object(reply)
            if keys is None:
                self._ready()
            else:
                self.state = "auth"
            return
        if keys is None:
            if "proof" in obj:
                raise LineError("the peer uses a cluster secret and this node has none")
            self._ready()
            return
        expected = keys.proof("server", self._nonce, nonce, *names, peer, node.id)
        if not same(obj.get("proof"), expected):
            raise LineError("the peer does not prove the cluster secret (wrong secret?)")
        self._send_object(
            {
                "type": "auth",
                "proof": keys.proof("client", self._nonce, nonce, *names, node.id, peer),
            }
        )
        self._session = keys.session(self._nonce, nonce)
        self._ready()

    def _on_auth(self, obj: dict[str, Any]) -> None:
        keys, node = self._rpc.keys, self._rpc.node
        assert keys is not None
        if obj["type"] != "auth":
            raise LineError(f"expected auth, got {obj['type']!r}")
        expected = keys.proof(
            "client", self._peer_nonce, self._nonce, node.cluster_info.name, self.peer_id, node.id
        )
        if not same(obj.get("proof"), expected):
            raise LineError("the peer does not prove the cluster secret (wrong secret?)")
        self._session = keys.session(self._peer_nonce, self._nonce)
        self._ready()

    def _authenticated(self, line: bytes) -> bytes:
        if self._session is None:
            return line
        mac, _, body = line.partition(b" ")
        expected = Keys.line_mac(self._session, self._received, body)
        if not same(mac.decode("ascii", "replace"), expected):
            raise LineError("a line failed authentication")
        self._received += 1
        return body

    def _ready(self) -> None:
        self._cancel_timer()
        if self._rpc.closed:
            self._close()
            return
        self.state = "ready"
        if self._outbound is not None:
            self._outbound.failures = 0
        self._rpc._ready(self)
        self.handshake.callback(None)

    # -- sending --------------------------------------------------------

    def send_message(self, message: Message) -> None:
        body = dump(encode_message(message))
        if self._session is not None:
            body = Keys.line_mac(self._session, self._sent, body).encode("ascii") + b" " + body
            self._sent += 1
        self.sendLine(body)  # type: ignore[no-untyped-call]

    def _hello(self) -> dict[str, Any]:
        node = self._rpc.node
        hello = {
            "type": "hello",
            "version": VERSION,
            "cluster": node.cluster_info.name,
            "node": node.id,
            "size": node.cluster_info.size,
            "protocol": node.protocol,
            "nonce": self._nonce,
        }
        keys = self._rpc.keys
        if self._side == CLIENT and keys is not None:
            # Lets the listening side tell a secret holder from a stranger
            # at once, and keep its handshake slot (see TcpRpc._admit).
            hello["ticket"] = keys.ticket(self._nonce, node.cluster_info.name, node.id)
        return hello

    def _send_object(self, obj: dict[str, Any]) -> None:
        self.sendLine(dump(obj))  # type: ignore[no-untyped-call]

    def _refuse(self, reason: str) -> None:
        if self.state == "closed":
            return
        self._rpc.invalid_messages += 1
        direction = "to" if self._side == CLIENT else "from"
        self._rpc._warn(
            "dropped the connection {direction} {peer}: {reason}",
            # A stranger's noise before the handshake must not hide a peer's
            # failures after it, nor those of our own connections.
            key=f"refused {direction} in {self.state}",
            direction=direction,
            peer=self._describe(),
            reason=escape(reason, QUOTE_LIMIT * 2),
        )
        self._send_object({"type": "error", "reason": reason[: QUOTE_LIMIT * 2]})
        if self._outbound is not None:
            self._outbound.failures += 1
        self._close()

    def _close(self) -> None:
        self.state = "closed"
        self._cancel_timer()
        self._tcp().loseConnection()

    def _tcp(self) -> ITCPTransport:
        assert self.transport is not None
        return cast(ITCPTransport, self.transport)

    def _evict(self) -> None:
        """Drop this pending handshake for a newer one (logged by the caller)."""
        self.state = "closed"
        self._cancel_timer()
        self._abort()

    def _abort(self) -> None:
        if self.transport is not None:
            self._tcp().abortConnection()

    def _describe(self) -> str:
        address = self.transport.getPeer() if self.transport is not None else "?"
        return f"{self.peer_id or '?'} ({address})"


class _PeerFactory(Factory):
    # One log line per peer connection attempt would drown the useful ones.
    noisy = False

    def __init__(self, rpc: TcpRpc, side: str, outbound: _Outbound | None = None) -> None:
        self._rpc = rpc
        self._side = side
        self._outbound = outbound

    def buildProtocol(self, addr: object) -> PeerProtocol:
        protocol = PeerProtocol(self._rpc, self._side, self._outbound)
        if self._outbound is not None:
            self._outbound.protocol = protocol
        return protocol


class _Outbound:
    """One peer endpoint: its ClientService, its connection and how its
    handshakes fare.

    ClientService counts only failed TCP connects; a peer that accepts the
    connection and then refuses the handshake would be retried at once,
    over and over, so the retry policy also counts failed handshakes.
    """

    def __init__(self, backoff: Callable[[int], float], clock: IReactorTime) -> None:
        self._backoff = backoff
        self._clock = clock
        self.failures = 0
        self.protocol: PeerProtocol | None = None
        self.service: ClientService | None = None
        # Who answers at this endpoint, once a handshake has told us.
        self.peer_id: str | None = None
        # When the pending retry is due; None while connecting or connected.
        self.retry_at: float | None = None

    def delay(self, attempt: int) -> float:
        delay = self._backoff(max(attempt, self.failures))
        self.retry_at = self._clock.seconds() + delay
        return delay

    def retry_now(self, peer_id: str) -> None:
        """Reconnect at once if waiting to retry, and this endpoint may be C{peer_id}
        (the peer is back, as we just heard).

        A connection attempt under way is left alone: restarting those on
        every inbound handshake made a storm of connects in large clusters.
        """
        if self.peer_id not in (None, peer_id) or self.protocol is not None:
            return
        if self.retry_at is None or self.retry_at <= self._clock.seconds():
            return
        if self.service is not None and self.service.running:
            self.retry_at = None
            self.service.stopService()
            self.service.startService()


def _host(protocol: PeerProtocol) -> str:
    address = protocol.transport.getPeer() if protocol.transport is not None else None
    return str(getattr(address, "host", address))


def _set_user_timeout(transport: object, seconds: float) -> None:
    """Drop the connection when sent data stays unacknowledged this long (Linux)."""
    option = getattr(socket, "TCP_USER_TIMEOUT", None)
    # TLS wraps the TCP transport: the socket is at the bottom.
    for _ in range(4):
        handle = getattr(transport, "getHandle", None)
        sock = handle() if handle is not None else None
        if isinstance(sock, socket.socket):
            if option is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, option, int(seconds * 1000))
            return
        transport = getattr(transport, "transport", None)


@implementer(IAckingRpc, ITransportStats)
class TcpRpc:
    """A node's TCP transport to a fixed set of peers.

    @param listen: a server endpoint string (C{"tcp:7001:interface=127.0.0.1"},
        C{"ssl:..."}, or C{"mtls:..."} for TLS that requires client
        certificates) or an L{IStreamServerEndpoint}.
    @param peers: a client endpoint string (C{"tcp:host=10.0.0.2:port=7001"},
        C{"tls:..."}) or an L{IStreamClientEndpoint} per other node.
    @param secret: a shared cluster secret (bytes or str); with it, peers
        prove they know it and every message is authenticated.
    @param stall_timeout: seconds that sent data may stay unacknowledged
        (TCP_USER_TIMEOUT, where the platform has it), and that a connection
        attempt to a C{tcp:} or C{tls:} peer string may take, before the
        connection is dropped and retried. Without it a connection that lost
        packets in a partition sits in the kernel's retransmission backoff,
        unheard for seconds to minutes after the network heals.

    Its counters (L{ITransportStats}): C{invalid_messages} counts the
    connections it dropped for what came on them (a bad line or hello, a
    failed proof, a handshake that timed out), C{refused_connections} the
    handshakes it refused or pushed out to make room. A peer of the other
    protocol mode is refused at its hello, and a write cannot fail apart
    from its connection, so C{other_protocol_messages} and C{failed_sends}
    are L{None}.
    """

    log = Logger()

    def __init__(
        self,
        listen: str | IStreamServerEndpoint,
        peers: Sequence[str | IStreamClientEndpoint],
        *,
        reactor: Any = None,
        secret: bytes | str | None = None,
        max_line_length: int = DEFAULT_MAX_LINE,
        handshake_timeout: float = 5.0,
        max_pending_handshakes: int = 16,
        retry_max_delay: float = 2.0,
        stall_timeout: float = 1.0,
    ) -> None:
        if isinstance(listen, str) and not listen.strip():
            raise TcpConfigError("listen must be a server endpoint, such as 'tcp:7001'")
        if isinstance(peers, (str, bytes)) or not isinstance(peers, Sequence):
            raise TcpConfigError(f"peers must be a list of client endpoints, not {peers!r}")
        for peer in peers:
            if isinstance(peer, str):
                if not peer.strip():
                    raise TcpConfigError("a peer endpoint must not be empty")
            elif not IStreamClientEndpoint.providedBy(peer):
                raise TcpConfigError(f"a peer must be an endpoint string, not {peer!r}")
        if isinstance(secret, str):
            secret = secret.encode("utf-8")
        if secret is not None and (not isinstance(secret, bytes) or not secret):
            raise TcpConfigError("secret must be non-empty bytes or str")
        for name, value in (
            ("max_line_length", max_line_length),
            ("handshake_timeout", handshake_timeout),
            ("max_pending_handshakes", max_pending_handshakes),
            ("retry_max_delay", retry_max_delay),
            ("stall_timeout", stall_timeout),
        ):
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value <= 0
            ):
                raise TcpConfigError(f"{name} must be a positive, finite number, not {value!r}")
        if max_line_length < 1024:
            raise TcpConfigError("max_line_length must be at least 1024 bytes")
        self._listen = listen
        self._peers = list(peers)
        self._reactor = reactor
        self.keys = Keys(secret) if secret is not None else None
        self.max_line_length = int(max_line_length)
        self.handshake_timeout = float(handshake_timeout)
        self.max_pending_handshakes = int(max_pending_handshakes)
        self._retry_max_delay = float(retry_max_delay)
        self.stall_timeout = float(stall_timeout)
        self._node: IElectionNode | None = None
        self._port: IListeningPort | None = None
        self._connectors: list[_Outbound] = []
        self._outbound: dict[str, PeerProtocol] = {}
        # Pending inbound handshakes, oldest first.
        self._pending: dict[PeerProtocol, None] = {}
        self._trimming: IDelayedCall | None = None
        # Client nonces of recent tickets, oldest first: each counts once.
        self._tickets: dict[str, None] = {}
        self._inbound: set[PeerProtocol] = set()
        self._warnings: RateLimitedLog | None = None
        self._closed = False
        self.invalid_messages = 0
        self.other_protocol_messages = None
        self.failed_sends = None
        self.dropped_outgoing = 0
        self.refused_connections = 0

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def node(self) -> IElectionNode:
        assert self._node is not None
        return self._node

    @property
    def clock(self) -> IReactorTime:
        return self._reactor  # type: ignore[no-any-return]

    @property
    def port(self) -> IListeningPort | None:
        """The listening port, once listening (C{port.getHost().port} for port 0)."""
        return self._port

    @property
    def connected_peers(self) -> frozenset[str]:
        """Ids of the peers this node can send to now."""
        return frozenset(self._outbound)

    # -- IRpc -----------------------------------------------------------

    def init(self, node: IElectionNode) -> None:
        if self._node is not None or self._closed:
            raise GraftError("a TcpRpc carries one node, once; make a new one")
        size = node.cluster_info.size
        if size != len(self._peers) + 1:
            raise TcpConfigError(
                f"cluster {node.cluster_info.name!r} has size {size}, but TcpRpc was given "
                f"{len(self._peers)} peer(s): a cluster of N nodes needs N-1 peers"
            )
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        server = self._server_endpoint()
        clients = [self._client_endpoint(peer) for peer in self._peers]
        self._node = node
        self._warnings = RateLimitedLog(self.log, self.clock)
        outcome: list[object] = []
        server.listen(_PeerFactory(self, SERVER)).addBoth(outcome.append)
        if outcome and isinstance(outcome[0], Failure):
            raise TcpConfigError(f"cannot listen on {self._listen!r}: {outcome[0].value}")
        if outcome:
            self._port = outcome[0]  # type: ignore[assignment]
        jitter = random.Random()
        policy = backoffPolicy(
            initialDelay=0.05,
            maxDelay=self._retry_max_delay,
            factor=2.0,
            jitter=lambda: jitter.uniform(0, 0.1),
        )
        for endpoint in clients:
            outbound = _Outbound(policy, self.clock)
            outbound.service = ClientService(
                endpoint,
                _PeerFactory(self, CLIENT, outbound),
                retryPolicy=outbound.delay,
                clock=self._reactor,
            )
            outbound.service.startService()
            self._connectors.append(outbound)

    def close(self) -> Deferred[None]:
        if self._closed:
            return succeed(None)
        self._closed = True
        if self._trimming is not None and self._trimming.active():
            self._trimming.cancel()
        self._trimming = None
        pending: list[Deferred[Any]] = [
            outbound.service.stopService()
            for outbound in self._connectors
            if outbound.service is not None
        ]
        if self._port is not None:
            pending.append(self._port.stopListening())  # type: ignore[arg-type]
        for protocol in [*self._inbound, *self._pending]:
            protocol._abort()
            pending.append(protocol.closed)
        self._outbound.clear()
        return gatherResults(pending).addCallback(lambda _: None)

    def request_vote(self, req: VoteRequest) -> None:
        self._broadcast(req)

    def heartbeat(self, hb: Heartbeat) -> None:
        self._broadcast(hb)

    def send_vote_response(self, candidate_id: str, resp: VoteResponse) -> None:
        self._send_to(candidate_id, resp)

    def send_heartbeat_ack(self, leader_id: str, ack: HeartbeatAck) -> None:
        self._send_to(leader_id, ack)

    def _send_to(self, peer: str, message: Message) -> None:
        protocol = self._outbound.get(peer)
        if protocol is None:
            self.dropped_outgoing += 1
        else:
            protocol.send_message(message)

    def _broadcast(self, message: Message) -> None:
        self.dropped_outgoing += len(self._peers) - len(self._outbound)
        for protocol in list(self._outbound.values()):
            protocol.send_message(message)

    # -- endpoints ------------------------------------------------------

    def _server_endpoint(self) -> IStreamServerEndpoint:
        if not isinstance(self._listen, str):
            return self._listen
        listen = self._listen
        if listen.split(":", 1)[0] in ("tcp", "tcp6", "ssl", "mtls") and "backlog=" not in listen:
            # Twisted's default of 50 is soon full of a flood's connections,
            # and the kernel then drops a peer's SYN: a second lost to its retry.
            listen += f":backlog={LISTEN_BACKLOG}"
        try:
            if listen.startswith("mtls:"):
                from graft_tx.transport.mtls import mutual_tls_server

                return mutual_tls_server(self._reactor, listen[len("mtls:") :])
            return cast(IStreamServerEndpoint, serverFromString(self._reactor, listen))  # type: ignore[no-untyped-call]
        except (ValueError, TypeError, OSError, ImportError) as e:
            raise TcpConfigError(f"listen endpoint {self._listen!r}: {e}") from e

    def _client_endpoint(self, peer: str | IStreamClientEndpoint) -> IStreamClientEndpoint:
        if not isinstance(peer, str):
            return peer
        if peer.split(":", 1)[0] in ("tcp", "tls") and "timeout=" not in peer:
            # Endpoint strings take whole seconds.
            peer += f":timeout={max(1, math.ceil(self.stall_timeout))}"
        try:
            return cast(IStreamClientEndpoint, clientFromString(self._reactor, peer))  # type: ignore[no-untyped-call]
        except (ValueError, TypeError, OSError, ImportError) as e:
            raise TcpConfigError(f"peer endpoint {peer!r}: {e}") from e

    # -- called by PeerProtocol -----------------------------------------

    def _admit(self, protocol: PeerProtocol) -> bool:
        """Give an inbound connection a handshake slot.

        Refusing newcomers while the slots are full would let anyone who
        can connect keep the peers out with a few idle sockets. So a
        newcomer always gets a slot, and keeps it for L{PROVE_WITHIN}
        seconds: time for a peer's hello, sent as it connects, to arrive.
        Then each address's handshakes beyond C{max_pending_handshakes} are
        trimmed: never one whose hello carried a fresh ticket (a secret
        holder), first those without a valid hello, then the oldest. Only
        when C{HARD_LIMIT_FACTOR} times that many are pending in all does a
        newcomer push out the oldest handshake of the address that holds
        the most, so that descriptors stay bounded.
        """
        if self._closed:
            return False
        if len(self._pending) >= self.max_pending_handshakes * HARD_LIMIT_FACTOR:
            hosts = Counter(_host(p) for p in self._pending)
            unproven = [p for p in self._pending if not p.proven]
            if not unproven:
                self.refused_connections += 1
                self._warn(
                    "refused a connection from {peer}: {count} handshakes already pending",
                    peer=protocol._describe(),
                    count=len(self._pending),
                )
                return False
            # min() keeps the first of equals, and _pending is oldest first.
            self._evict([min(unproven, key=lambda p: -hosts[_host(p)])])
        protocol.admitted_at = self.clock.seconds()
        self._pending[protocol] = None
        if len(self._pending) > self.max_pending_handshakes and self._trimming is None:
            self._trimming = self.clock.callLater(PROVE_WITHIN, self._trim)
        return True

    def _trim(self) -> None:
        """Evict each address's pending handshakes beyond the limit, as L{_admit} says."""
        self._trimming = None
        if self._closed:
            return
        now = self.clock.seconds()
        by_host: dict[str, list[PeerProtocol]] = {}
        for p in self._pending:
            by_host.setdefault(_host(p), []).append(p)
        again = False
        for pending in by_host.values():
            surplus = len(pending) - self.max_pending_handshakes
            if surplus <= 0:
                continue
            # sorted() keeps the order of equals, and _pending is oldest first.
            candidates = sorted(
                (p for p in pending if not p.proven and now - p.admitted_at >= PROVE_WITHIN),
                key=lambda p: p.state == "auth",
            )
            self._evict(candidates[:surplus])
            again = again or len(candidates) < surplus
        if again:
            self._trimming = self.clock.callLater(PROVE_WITHIN, self._trim)

    def _evict(self, victims: list[PeerProtocol]) -> None:
        for victim in victims:
            self.refused_connections += 1
            self._warn(
                "dropped a pending handshake from {peer} to make room: "
                "{count} handshakes were pending",
                peer=victim._describe(),
                count=len(self._pending),
            )
            del self._pending[victim]
            victim._evict()

    def _fresh_ticket(self, ticket: object, nonce: str, peer: str) -> bool:
        """Whether a hello's C{ticket} is valid and its nonce not seen before."""
        keys = self.keys
        if keys is None or not same(ticket, keys.ticket(nonce, self.node.cluster_info.name, peer)):
            return False
        if nonce in self._tickets:
            return False
        self._tickets[nonce] = None
        if len(self._tickets) > TICKETS_KEPT:
            del self._tickets[next(iter(self._tickets))]
        return True

    def _ready(self, protocol: PeerProtocol) -> None:
        self._pending.pop(protocol, None)
        if protocol._side == CLIENT:
            self._outbound[protocol.peer_id] = protocol
            if protocol._outbound is not None:
                protocol._outbound.peer_id = protocol.peer_id
                protocol._outbound.retry_at = None
            self.log.info(
                "node {node} connected to peer {peer}", node=self.node.id, peer=protocol.peer_id
            )
        else:
            self._inbound.add(protocol)
            if protocol.peer_id not in self._outbound:
                # A peer that just came (back) up: do not leave it unheard
                # until our next retry, or it may campaign meanwhile.
                for outbound in self._connectors:
                    outbound.retry_now(protocol.peer_id)

    def _lost(self, protocol: PeerProtocol) -> None:
        self._pending.pop(protocol, None)
        self._inbound.discard(protocol)
        if self._outbound.get(protocol.peer_id) is protocol:
            del self._outbound[protocol.peer_id]
        if protocol._outbound is not None and protocol._outbound.protocol is protocol:
            protocol._outbound.protocol = None

    def _deliver(self, protocol: PeerProtocol, message: Message) -> None:
        if self._closed:
            return
        peer = protocol.peer_id
        # A peer speaks only for itself: it was authenticated as peer_id.
        if isinstance(message, VoteRequest):
            if message.candidate != peer:
                raise LineError(f"a vote request for {message.candidate!r} from {peer!r}")
        elif isinstance(message, Heartbeat):
            if message.leader != peer:
                raise LineError(f"a heartbeat for {message.leader!r} from {peer!r}")
        elif isinstance(message, HeartbeatAck):
            if message.follower != peer:
                raise LineError(f"an acknowledgement of {message.follower!r} from {peer!r}")
        else:
            if message.voter not in ("", peer):
                raise LineError(f"a vote of {message.voter!r} from {peer!r}")
            message = VoteResponse(message.term, message.granted, peer, message.pre_vote)
        deliver(self.node, message)

    def _warn(self, format: str, key: str = "", **fields: Any) -> None:
        if self._warnings is not None:
            self._warnings.warn(format, key, **fields)
