"""NatsRpc: graft's own transport, wire-compatible with Go graft.

Subjects, as Go graft uses them:

    graft.<cluster>.heartbeat        leaders publish, everyone subscribes
    graft.<cluster>.vote_request     candidates publish, everyone subscribes
    graft.<candidate id>.vote_response
                                     a candidate's answers; the reply subject
                                     of its vote requests

Payloads are graft's protobuf messages (see C{graft.proto}).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, fail, gatherResults, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from graft_tx.dispatch import Message
from graft_tx.errors import GraftError
from graft_tx.interfaces import IAckingRpc, IElectionNode, ITransportStats
from graft_tx.messages import Heartbeat, HeartbeatAck, VoteRequest, VoteResponse
from graft_tx.ratelimit import RateLimitedLog, escape
from graft_tx.transport import wire
from graft_tx.transport.natsclient import (
    NatsClosedError,
    NatsConnection,
    NatsMessage,
    NatsSubscription,
    asyncio_loop,
    connect_nats,
    connection_options,
)

M = TypeVar("M", VoteRequest, VoteResponse, Heartbeat, HeartbeatAck)


class SubjectError(GraftError, ValueError):
    """A cluster name or node id that cannot be part of a NATS subject."""


def check_token(what: str, value: str) -> None:
    """Refuse C{value} unless it can stand as one token of a NATS subject.

    @raise SubjectError: it is empty, or holds C{.}, C{*}, C{>} or white space.
    """
    if not value:
        raise SubjectError(f"the {what} must not be empty to travel over NATS")
    bad = sorted({c for c in value if c in ".*>" or c.isspace() or not c.isprintable()})
    if bad:
        raise SubjectError(
            f"the {what} {value!r} cannot travel over NATS: it contains {bad!r} "
            "(NATS subjects forbid '.', '*', '>' and white space in a name)"
        )


def heartbeat_subject(cluster: str) -> str:
    return f"graft.{cluster}.heartbeat"


def vote_request_subject(cluster: str) -> str:
    return f"graft.{cluster}.vote_request"


def vote_response_subject(node_id: str) -> str:
    return f"graft.{node_id}.vote_response"


def heartbeat_ack_subject(node_id: str) -> str:
    return f"graft.{node_id}.heartbeat_ack"


def _ids(message: Message) -> list[tuple[str, str]]:
    """The node ids a message names, with what each is."""
    if isinstance(message, VoteRequest):
        return [("candidate id", message.candidate)]
    if isinstance(message, VoteResponse):
        return [("voter id", message.voter)]
    if isinstance(message, Heartbeat):
        return [("leader id", message.leader), ("transfer target", message.transfer_to)]
    return [("follower id", message.follower)]


@implementer(IAckingRpc, ITransportStats)
class NatsRpc:
    """One node's NATS transport.

    C{NatsRpc(servers, **options)} opens its own connection in the
    background once the node starts (options as for L{connect_nats}), and
    closes it with the node. C{NatsRpc.from_connection(conn)} shares a
    connection that the caller opened and closes: closing the node leaves it
    open. Messages sent while the connection is down are dropped, never
    queued; the election tolerates loss.

    Its counters (L{ITransportStats}) are counted where each thing happens;
    a NATS transport accepts no connections, so C{refused_connections} is
    L{None}.
    """

    log = Logger()

    def __init__(
        self,
        servers: str | list[str] = "nats://127.0.0.1:4222",
        *,
        reactor: IReactorTime | None = None,
        **connection_options_: Any,
    ) -> None:
        # Check the options now, where the mistake was made.
        connection_options(servers, connection_options_)
        self._servers = servers
        self._options = connection_options_
        self._reactor = reactor
        self._connection: NatsConnection | None = None
        self._owns_connection = True
        self._connecting: Deferred[NatsConnection] | None = None
        self._node: IElectionNode | None = None
        self._size = 0
        self._wire_protocol = wire.PROTOCOL
        self._subscriptions: list[NatsSubscription] = []
        self._ready = False
        self._waiters: list[Deferred[None]] = []
        self._remove_listener: Callable[[], None] | None = None
        self._warnings: RateLimitedLog | None = None
        self._closed = False
        self.invalid_messages = 0
        self.other_protocol_messages = 0
        self.failed_sends = 0
        self.dropped_outgoing = 0
        self.refused_connections = None

    @classmethod
    def from_connection(cls, connection: NatsConnection) -> NatsRpc:
        """A transport over a shared connection, which it will never close."""
        rpc = cls()
        rpc._connection = connection
        rpc._owns_connection = False
        return rpc

    # -- IRpc -----------------------------------------------------------

    def init(self, node: IElectionNode) -> None:
        if self._node is not None:
            raise GraftError(f"this NatsRpc already carries node {self._node.id}")
        if self._closed:
            raise NatsClosedError("this NatsRpc was closed; make a new one")
        check_token("cluster name", node.cluster_info.name)
        check_token("node id", node.id)
        reactor = self._reactor
        if reactor is None:
            from twisted.internet import reactor as installed

            reactor = installed
        asyncio_loop(reactor)
        if self._connection is not None and self._connection.is_closed:
            raise NatsClosedError("the shared NATS connection is closed")
        self._node = node
        self._size = node.cluster_info.size
        self._wire_protocol = wire.wire_protocol(node.protocol)
        self._warnings = RateLimitedLog(self.log, reactor)
        if self._connection is not None:
            self._connected(self._connection)
        else:
            self._connecting = connect_nats(self._servers, reactor=reactor, **self._options)
            self._connecting.addCallbacks(self._connected, self._connect_failed)

    def close(self) -> Deferred[None]:
        if self._closed:
            return succeed(None)
        self._closed = True
        self._fail_waiters(Failure(NatsClosedError("the NATS transport was closed")))  # type: ignore[no-untyped-call]
        if self._connecting is not None:
            self._connecting.cancel()
        if self._remove_listener is not None:
            self._remove_listener()
        pending: list[Deferred[None]] = [sub.unsubscribe() for sub in self._subscriptions]
        self._subscriptions = []
        if self._owns_connection and self._connection is not None:
            pending.append(self._connection.close())
        return gatherResults(pending).addCallback(lambda _: None)

    def request_vote(self, req: VoteRequest) -> None:
        assert self._node is not None
        self._publish(
            vote_request_subject(self._node.cluster_info.name),
            self._encode(req),
            reply=vote_response_subject(self._node.id),
        )

    def heartbeat(self, hb: Heartbeat) -> None:
        assert self._node is not None
        self._publish(heartbeat_subject(self._node.cluster_info.name), self._encode(hb))

    def send_vote_response(self, candidate_id: str, resp: VoteResponse) -> None:
        self._publish(vote_response_subject(candidate_id), self._encode(resp))

    def send_heartbeat_ack(self, leader_id: str, ack: HeartbeatAck) -> None:
        self._publish(heartbeat_ack_subject(leader_id), self._encode(ack))

    def _encode(self, message: Message) -> bytes:
        return wire.encode(message, self._size, self._wire_protocol)

    # -- connection -----------------------------------------------------

    def when_connected(self) -> Deferred[None]:
        """Fires once connected with the node's subscriptions in place.

        At once when they already are; fails with L{NatsClosedError} if the
        transport is closed first.
        """
        if self._closed:
            return fail(NatsClosedError("the NATS transport is closed"))
        waiter: Deferred[None] = Deferred(lambda d: self._waiters.remove(d))
        self._waiters.append(waiter)
        self._fire_waiters()
        return waiter

    @property
    def connection(self) -> NatsConnection | None:
        """The connection underneath, once there is one."""
        return self._connection

    def _connected(self, connection: NatsConnection) -> None:
        self._connecting = None
        if self._closed:
            if self._owns_connection:
                connection.close()
            return
        self._connection = connection
        self._remove_listener = connection.on_connected(self._fire_waiters)
        assert self._node is not None
        cluster = self._node.cluster_info.name
        subscribing = [
            connection.subscribe(heartbeat_subject(cluster), self._on_heartbeat),
            connection.subscribe(vote_request_subject(cluster), self._on_vote_request),
            connection.subscribe(vote_response_subject(self._node.id), self._on_vote_response),
            connection.subscribe(heartbeat_ack_subject(self._node.id), self._on_heartbeat_ack),
        ]
        d = gatherResults(subscribing, consumeErrors=True)
        d.addCallback(self._subscribed)
        d.addErrback(self._subscribe_failed)

    def _subscribed(self, subscriptions: list[NatsSubscription]) -> Deferred[None] | None:
        if self._closed:
            for sub in subscriptions:
                sub.unsubscribe()
            return None
        self._subscriptions = subscriptions
        self._ready = True
        if not self._connection or not self._connection.is_connected:
            # nats-py sends the subscriptions again once it reconnects.
            return None
        # Once flushed, the server has the subscriptions.
        flushed = self._connection.flush()
        flushed.addCallbacks(lambda _: self._fire_waiters(), lambda _: None)
        return None

    def _subscribe_failed(self, failure: Failure) -> None:
        if not self._closed:
            self.log.failure("NatsRpc could not subscribe", failure)
            self._fail_waiters(failure)

    def _connect_failed(self, failure: Failure) -> None:
        self._connecting = None
        if self._closed:
            return
        self.log.error(
            "node {node} gave up connecting to NATS at {servers}: {error}",
            node=self._node.id if self._node else "?",
            servers=self._servers,
            error=failure.getErrorMessage(),
        )
        self._fail_waiters(failure)

    def _fire_waiters(self) -> None:
        connection = self._connection
        if self._closed or not self._ready or connection is None or not connection.is_connected:
            return
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _fail_waiters(self, failure: Failure) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.errback(failure)

    # -- traffic --------------------------------------------------------

    def _publish(self, subject: str, payload: bytes, reply: str = "") -> None:
        connection = self._connection
        if self._closed or connection is None or not connection.is_connected:
            self.dropped_outgoing += 1
            return
        connection.publish(subject, payload, reply).addErrback(self._publish_failed, subject)

    def _publish_failed(self, failure: Failure, subject: str) -> None:
        self.failed_sends += 1
        if self._warnings is not None:
            self._warnings.warn(
                "could not publish on {subject}: {error}",
                subject=subject,
                error=failure.getErrorMessage(),
            )

    def _drop(self, message: NatsMessage, error: Exception) -> None:
        self.invalid_messages += 1
        assert self._warnings is not None
        self._warnings.warn(
            "dropped an invalid message on {subject}: {error}",
            key="invalid " + message.subject.rpartition(".")[2],
            subject=escape(message.subject),
            error=escape(error),
        )

    def _decoded(
        self, message: NatsMessage, read: Callable[[bytes, int], tuple[M, str]]
    ) -> M | None:
        if self._closed or self._node is None:
            return None
        try:
            decoded, protocol = read(message.data, self._size)
        except wire.WireError as e:
            self._drop(message, e)
            return None
        try:
            # Ids become subjects (answers, acks) and log fields: a message
            # naming one that no node can have is dropped whole.
            for what, value in _ids(decoded):
                if value:
                    check_token(what, value)
        except SubjectError as e:
            self._drop(message, e)
            return None
        if protocol != self._wire_protocol:
            # Delivered all the same: a cluster part-way through changing
            # mode keeps electing, and the warning says what to fix.
            self.other_protocol_messages += 1
            assert self._warnings is not None
            self._warnings.warn(
                'a message on {subject} comes from a node of protocol {theirs!r} ("" is Go '
                "graft or mode 'graft'), this node runs {ours!r}: every node of a cluster "
                "must use the same protocol",
                subject=message.subject,
                theirs=protocol,
                ours=self._node.protocol,
            )
        return decoded

    def _on_vote_request(self, message: NatsMessage) -> None:
        req = self._decoded(message, wire.read_vote_request)
        if req is not None and self._node is not None and req.candidate != self._node.id:
            self._node.handle_vote_request(req)

    def _on_vote_response(self, message: NatsMessage) -> None:
        resp = self._decoded(message, wire.read_vote_response)
        if resp is not None and self._node is not None:
            self._node.handle_vote_response(resp)

    def _on_heartbeat(self, message: NatsMessage) -> None:
        hb = self._decoded(message, wire.read_heartbeat)
        if hb is not None and self._node is not None:
            self._node.handle_heartbeat(hb)

    def _on_heartbeat_ack(self, message: NatsMessage) -> None:
        ack = self._decoded(message, wire.read_heartbeat_ack)
        if ack is not None and self._node is not None:
            self._node.handle_heartbeat_ack(ack)
