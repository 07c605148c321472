"""Leadership transfer and protocol modes over real transports.

A planned stop of the leader (GraftService.stopService) moves leadership in
about one round trip over a real nats-server and over TCP; graft mode puts Go
graft's messages on the wire, graft-tx mode its numbered heartbeats and their
acknowledgements; nodes of the two modes warn about each other over NATS and
refuse each other over TCP; hand-made protobuf bytes of the new fields decode
as graft.proto documents.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest_twisted
import realtime
from google.protobuf.message import Message as ProtobufMessage
from natsserver import NatsServer, free_port
from realtime import reactor, sleep, wait_until
from twisted.internet.defer import Deferred, DeferredList, gatherResults
from twisted.logger import LogEvent, LogLevel, formatEvent, globalLogPublisher

import graft_tx
from graft_tx import (
    ClusterInfo,
    GraftService,
    Heartbeat,
    HeartbeatAck,
    NatsConnection,
    NatsRpc,
    Node,
    QueueHandler,
    State,
    TcpRpc,
    Timing,
    VoteRequest,
    VoteResponse,
)
from graft_tx.interfaces import IRpc
from graft_tx.statefile import StateFile
from graft_tx.transport import graft_pb2 as pb
from graft_tx.transport import wire
from graft_tx.transport.natsclient import NatsMessage

# Many heartbeats per minimum election timeout, so that leases hold steadily.
TIMING = Timing(0.5, 1.0, 0.05)
# A hand-over must take far less than an election timeout.
TRANSFER_BOUND = 0.5 * TIMING.election_timeout_min
TX_WIRE = "graft-tx/1"


# -- services -------------------------------------------------------------


def make_service(
    tmp_path: Path,
    cluster: str,
    size: int,
    rpc: IRpc,
    node_id: str,
    *,
    protocol: str = "graft-tx",
    timing: Timing = TIMING,
) -> GraftService:
    return GraftService(
        ClusterInfo(cluster, size),
        QueueHandler(),
        rpc,
        str(tmp_path / f"{cluster}-{node_id}.state"),
        node_id=node_id,
        timing=timing,
        protocol=protocol,
    )


def node_of(service: GraftService) -> Node:
    assert service.node is not None
    return service.node


def tcp_listen(port: int) -> str:
    return f"tcp:{port}:interface=127.0.0.1"


def tcp_peer(port: int) -> str:
    return f"tcp:host=127.0.0.1:port={port}"


def tcp_services(
    tmp_path: Path, cluster: str, protocols: dict[str, str]
) -> tuple[list[GraftService], dict[str, TcpRpc]]:
    """One service per id in C{protocols} (id -> mode), each with every other as a peer."""
    ports = {node_id: free_port() for node_id in protocols}
    services, rpcs = [], {}
    for node_id, protocol in protocols.items():
        peers = [tcp_peer(port) for other, port in ports.items() if other != node_id]
        rpcs[node_id] = TcpRpc(tcp_listen(ports[node_id]), peers)
        services.append(
            make_service(
                tmp_path, cluster, len(protocols), rpcs[node_id], node_id, protocol=protocol
            )
        )
    return services, rpcs


async def stop_all(services: Iterable[GraftService]) -> None:
    """Stop every running service.

    Each node is closed first: a leader's stopService would hand over, and a
    cleanup that stops every node at once must not wait out the timeout of a
    transfer to a node that is closing too.
    """
    running = [s for s in services if s.running and s.node is not None]
    await DeferredList([node_of(s).close() for s in running])
    await DeferredList([s.stopService() for s in running])


def running_leader(services: Iterable[GraftService]) -> Node | None:
    """The running node that leads (with its lease in graft-tx mode), if every other follows it."""
    return realtime.sole_leader(
        [node_of(s) for s in services if s.running], leads=lambda n: n.is_leader()
    )


async def elect(services: list[GraftService], timeout: float = 10.0) -> Node:
    await wait_until(lambda: running_leader(services) is not None, timeout, "one leader")
    leader = running_leader(services)
    assert leader is not None
    return leader


async def stop_leader_and_measure(services: list[GraftService], transport: str) -> float:
    """Elect, stop the leader's service and return how long until another node led.

    Checks on the way that the old leader stops leading at once, that the
    new leader won the very next term (a transfer, not an election after a
    timeout), that the stopped node's state file is kept and that the two
    remaining nodes keep a leader with a lease.
    """
    leader = await elect(services)
    term = leader.current_term
    stopped = next(s for s in services if s.node is leader)
    others = [node_of(s) for s in services if s is not stopped]
    waiters = [node.when_leader() for node in others]
    first: Deferred[tuple[int, int]] = DeferredList(
        waiters, fireOnOneCallback=True, fireOnOneErrback=True, consumeErrors=True
    )  # type: ignore[assignment]
    first.addTimeout(5.0, reactor())
    try:
        start = time.monotonic()
        stopping = stopped.stopService()
        assert not leader.is_leader()
        new_term, index = await first
        took = time.monotonic() - start
        new = others[index]
        assert new.is_leader()
        assert [n.id for n in others if n.is_leader()] == [new.id]
    finally:
        for waiter in waiters:
            if not waiter.called:
                waiter.cancel()
    print(f"{transport}: leadership moved from {leader.id} to {new.id} in {took * 1000:.1f} ms")
    assert new_term == term + 1
    assert took < TRANSFER_BOUND, f"the hand-over took {took:.3f}s"

    await stopping
    assert not stopped.running
    assert leader.state is State.CLOSED
    saved = StateFile(leader.log_path).load()
    assert Path(leader.log_path).exists()
    assert (saved.term, saved.voted_for) == (new.current_term, new.id)

    await wait_until(lambda: running_leader(services) is new, 2.0, "the other node to follow")
    # Longer than a lease: it is renewed by the one remaining follower.
    await sleep(TIMING.election_timeout_min)
    assert running_leader(services) is new
    assert new.current_term == new_term
    return took


# -- transfer on stop -------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_stopping_the_leader_over_nats_hands_over_in_a_round_trip(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """Over NATS, stopService of the leader moves leadership far below an election timeout."""
    services = [
        make_service(tmp_path, "handover", 3, NatsRpc(nats_server.url), f"n{i}") for i in range(3)
    ]
    try:
        for service in services:
            service.startService()
        await stop_leader_and_measure(services, "NATS")
    finally:
        await stop_all(services)


@pytest_twisted.ensureDeferred
async def test_stopping_the_leader_over_tcp_hands_over_in_a_round_trip(tmp_path: Path) -> None:
    """Over TCP, stopService of the leader moves leadership far below an election timeout."""
    services, _ = tcp_services(tmp_path, "handover", {f"n{i}": "graft-tx" for i in range(3)})
    try:
        for service in services:
            service.startService()
        await stop_leader_and_measure(services, "TCP")
    finally:
        await stop_all(services)


# -- what each mode puts on the wire ---------------------------------------


class Recorder:
    """Raw NATS messages on some subjects, recorded in arrival order."""

    def __init__(self, connection: NatsConnection) -> None:
        self.connection = connection
        self.messages: list[NatsMessage] = []

    async def listen(self, *subjects: str) -> None:
        for subject in subjects:
            await self.connection.subscribe(subject, self.messages.append)
        await self.connection.flush()

    def decoded(self, kind: type[ProtobufMessage], subject: str) -> list[Any]:
        found = []
        for message in self.messages:
            if message.subject == subject:
                decoded = kind()
                decoded.ParseFromString(message.data)
                found.append(decoded)
        return found

    def decoded_acks(self) -> dict[str, list[pb.HeartbeatAck]]:
        """Acknowledgements by the leader they were sent to."""
        acks: dict[str, list[pb.HeartbeatAck]] = {}
        for message in self.messages:
            if message.subject.endswith(".heartbeat_ack"):
                ack = pb.HeartbeatAck()
                ack.ParseFromString(message.data)
                acks.setdefault(message.subject.split(".")[1], []).append(ack)
        return acks


def rising(numbers: list[int]) -> bool:
    return all(a < b for a, b in itertools.pairwise(numbers))


def field_names(message: ProtobufMessage) -> set[str]:
    """The fields actually present on the wire (proto3 leaves out zero values)."""
    return {descriptor.name for descriptor, _ in message.ListFields()}


@pytest_twisted.ensureDeferred
async def test_graft_mode_elects_over_nats_with_go_graft_messages(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """protocol="graft" elects over NATS with no protocol field, no graft-tx field and no acks."""
    cluster = "gomode"
    raw = await graft_tx.connect_nats(nats_server.url)
    services: list[GraftService] = []
    try:
        recorder = Recorder(raw)
        await recorder.listen(
            f"graft.{cluster}.heartbeat", f"graft.{cluster}.vote_request", "graft.*.heartbeat_ack"
        )
        services = [
            make_service(tmp_path, cluster, 3, NatsRpc(nats_server.url), f"g{i}", protocol="graft")
            for i in range(3)
        ]
        for service in services:
            service.startService()
        leader = await elect(services)
        assert all(node_of(s).protocol == "graft" for s in services)
        heartbeat_subject = f"graft.{cluster}.heartbeat"
        await wait_until(
            lambda: len(recorder.decoded(pb.Heartbeat, heartbeat_subject)) >= 10,
            5.0,
            "ten heartbeats",
        )

        heartbeats = recorder.decoded(pb.Heartbeat, heartbeat_subject)
        assert {hb.leader for hb in heartbeats if hb.term == leader.current_term} == {leader.id}
        for hb in heartbeats:
            assert hb.protocol == ""
            assert (hb.seq, hb.transfer_to) == (0, "")
            # Go graft's fields, and cluster_size, which Go graft skips as unknown.
            assert field_names(hb) <= {"term", "leader", "cluster_size"}
        requests = recorder.decoded(pb.VoteRequest, f"graft.{cluster}.vote_request")
        assert requests, "no vote request seen"
        for req in requests:
            assert req.protocol == ""
            assert (req.pre_vote, req.transfer) == (False, False)
            assert field_names(req) <= {"term", "candidate", "current_state", "cluster_size"}
        assert recorder.decoded_acks() == {}
    finally:
        await stop_all(services)
        await raw.close()


@pytest_twisted.ensureDeferred
async def test_graft_tx_mode_numbers_heartbeats_and_followers_acknowledge_them(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """In graft-tx mode heartbeats carry "graft-tx/1" and a rising seq; followers ack them."""
    cluster = "txmode"
    raw = await graft_tx.connect_nats(nats_server.url)
    services: list[GraftService] = []
    try:
        recorder = Recorder(raw)
        await recorder.listen(
            f"graft.{cluster}.heartbeat", f"graft.{cluster}.vote_request", "graft.*.heartbeat_ack"
        )
        services = [
            make_service(tmp_path, cluster, 3, NatsRpc(nats_server.url), f"t{i}") for i in range(3)
        ]
        for service in services:
            service.startService()
        leader = await elect(services)
        term = leader.current_term
        followers = {node_of(s).id for s in services} - {leader.id}
        heartbeat_subject = f"graft.{cluster}.heartbeat"

        def leader_heartbeats() -> list[pb.Heartbeat]:
            return [
                hb
                for hb in recorder.decoded(pb.Heartbeat, heartbeat_subject)
                if hb.term == term and hb.leader == leader.id
            ]

        def acks_of(follower: str) -> list[pb.HeartbeatAck]:
            acks = recorder.decoded_acks().get(leader.id, [])
            return [a for a in acks if a.follower == follower and a.term == term]

        await wait_until(
            lambda: len(leader_heartbeats()) >= 10 and all(len(acks_of(f)) >= 5 for f in followers),
            5.0,
            "ten heartbeats and five acknowledgements from each follower",
        )

        heartbeats = leader_heartbeats()
        seqs = [hb.seq for hb in heartbeats]
        assert seqs[0] >= 1
        assert rising(seqs), seqs
        for hb in heartbeats:
            assert hb.protocol == TX_WIRE
            assert hb.cluster_size == 3
            assert hb.transfer_to == ""
        for follower in followers:
            acks = acks_of(follower)
            acked = [a.seq for a in acks]
            assert rising(acked), acked
            assert set(acked) <= set(seqs)
            for ack in acks:
                assert (ack.protocol, ack.cluster_size, ack.priority) == (TX_WIRE, 3, 1)
        # Only the leader is acknowledged, and only by its followers.
        assert set(recorder.decoded_acks()) == {leader.id}
        requests = recorder.decoded(pb.VoteRequest, f"graft.{cluster}.vote_request")
        assert all(req.protocol == TX_WIRE for req in requests)
        # A fresh cluster asks for pre-votes before its first real campaign.
        assert any(req.pre_vote for req in requests)
        assert any(not req.pre_vote for req in requests)
    finally:
        await stop_all(services)
        await raw.close()


# -- mixed modes ------------------------------------------------------------


class CapturedLog:
    """Twisted log events, captured while registered with the global publisher."""

    def __init__(self) -> None:
        self.events: list[LogEvent] = []

    def __enter__(self) -> CapturedLog:
        globalLogPublisher.addObserver(self.events.append)
        return self

    def __exit__(self, *exc: object) -> None:
        globalLogPublisher.removeObserver(self.events.append)

    def warnings(self, source: object, *words: str) -> list[str]:
        """Warnings logged by C{source} that contain every one of C{words}."""
        return [
            text
            for event in self.events
            if event.get("log_level") == LogLevel.warn and event.get("log_source") is source
            for text in [formatEvent(event)]
            if all(word in text for word in words)
        ]


def names_both_modes(text: str) -> bool:
    return "'graft'" in text and "'graft-tx" in text


@pytest_twisted.ensureDeferred
async def test_mixed_modes_over_nats_warn_rate_limited_and_carry_on(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """Over NATS, nodes of the two modes warn about each other, rate-limited, and carry on."""
    cluster = "mixed"
    services: list[GraftService] = []
    with CapturedLog() as log:
        try:
            rpcs = {node_id: NatsRpc(nats_server.url) for node_id in ("t1", "t2", "g")}
            services = [make_service(tmp_path, cluster, 3, rpcs[i], i) for i in ("t1", "t2")]
            for service in services:
                service.startService()
            await gatherResults([rpcs[i].when_connected() for i in ("t1", "t2")])
            # The graft node campaigns first, so that both graft-tx nodes hear from it.
            graft_node = make_service(
                tmp_path,
                cluster,
                3,
                rpcs["g"],
                "g",
                protocol="graft",
                timing=Timing(0.2, 0.25, 0.05),
            )
            services.append(graft_node)
            graft_node.startService()
            await sleep(2.0)

            for node_id, rpc in rpcs.items():
                warned = log.warnings(rpc, "comes from a node of protocol")
                print(
                    f"{node_id}: {len(warned)} warnings logged for "
                    f"{rpc.other_protocol_messages} messages of the other mode"
                )
                assert 1 <= len(warned) < 15, (node_id, warned)
                assert len(warned) <= rpc.other_protocol_messages
                assert all(names_both_modes(text) for text in warned), warned
            for service in services:
                assert service.running
                assert node_of(service).state is not State.CLOSED
                assert isinstance(service.handler, QueueHandler)
                assert service.handler.errors.pending == []
            for rpc in rpcs.values():
                assert rpc.connection is not None and rpc.connection.is_connected
        finally:
            await stop_all(services)


@pytest_twisted.ensureDeferred
async def test_graft_mode_node_is_refused_by_a_graft_tx_cluster_over_tcp(tmp_path: Path) -> None:
    """Over TCP, graft-tx nodes and a graft node refuse each other; both sides log why."""
    services: list[GraftService] = []
    with CapturedLog() as log:
        try:
            services, rpcs = tcp_services(
                tmp_path, "strict", {"t1": "graft-tx", "t2": "graft-tx", "g": "graft"}
            )
            for service in services:
                service.startService()

            def refused_both_ways(rpc: TcpRpc) -> bool:
                # As the connecting side: the peer's refusal; as the listening side: our own.
                return all(
                    any(names_both_modes(text) for text in log.warnings(rpc, what))
                    for what in ("refused the connection", "dropped the connection")
                )

            await wait_until(
                lambda: all(refused_both_ways(rpc) for rpc in rpcs.values()),
                5.0,
                "every node to log refusals both ways",
            )
            for text in log.warnings(rpcs["t1"], "dropped the connection"):
                assert "peer runs protocol 'graft', this node 'graft-tx'" in text
            for text in log.warnings(rpcs["g"], "dropped the connection"):
                assert "peer runs protocol 'graft-tx', this node 'graft'" in text

            # The two graft-tx nodes are a quorum of three on their own.
            tx = [s for s in services if s.protocol == "graft-tx"]
            leader = await elect(tx)
            assert leader.id in ("t1", "t2")
            assert rpcs["g"].connected_peers == frozenset()
            assert rpcs["t1"].connected_peers == frozenset({"t2"})
            assert rpcs["t2"].connected_peers == frozenset({"t1"})
            graft_node = node_of(services[2])
            assert graft_node.state is not State.LEADER
            assert graft_node.leader == ""
        finally:
            await stop_all(services)


# -- the new fields, byte by byte ------------------------------------------

# Tags: (field number << 3) | wire type; 0 is a varint, 2 a length-delimited value.
PROTOCOL_FIELD = b"\x5a\x0a" + TX_WIRE.encode()  # 11 protocol = "graft-tx/1"
SIZE_FIELD = b"\x50\x03"  # 10 cluster_size = 3


def test_vote_request_fields_12_and_13_decode_as_pre_vote_and_transfer() -> None:
    """VoteRequest field 12 is pre_vote and 13 transfer; read_vote_request returns the protocol."""
    go_graft = b"\x08\x07" + b"\x12\x02n1" + b"\x1a\x02\x01\x02"  # term 7, "n1", position
    pre_vote = go_graft + SIZE_FIELD + PROTOCOL_FIELD + b"\x60\x01"  # 12 pre_vote = true
    transfer = go_graft + SIZE_FIELD + PROTOCOL_FIELD + b"\x68\x01"  # 13 transfer = true
    both = go_graft + SIZE_FIELD + PROTOCOL_FIELD + b"\x60\x01\x68\x01"

    assert wire.read_vote_request(go_graft, 3) == (VoteRequest(7, "n1", b"\x01\x02"), "")
    assert wire.read_vote_request(pre_vote, 3) == (
        VoteRequest(7, "n1", b"\x01\x02", pre_vote=True),
        TX_WIRE,
    )
    assert wire.read_vote_request(transfer, 3) == (
        VoteRequest(7, "n1", b"\x01\x02", transfer=True),
        TX_WIRE,
    )
    message = VoteRequest(7, "n1", b"\x01\x02", pre_vote=True, transfer=True)
    assert wire.read_vote_request(both, 3) == (message, TX_WIRE)
    assert wire.encode(message, 3, TX_WIRE) == both


def test_vote_response_field_12_decodes_as_pre_vote() -> None:
    """VoteResponse field 12 is pre_vote; read_vote_response returns the protocol."""
    go_graft = b"\x08\x09" + b"\x10\x01"  # term 9, granted
    answer = go_graft + b"\x1a\x02n2" + SIZE_FIELD + PROTOCOL_FIELD + b"\x60\x01"

    assert wire.read_vote_response(go_graft, 3) == (VoteResponse(9, True), "")
    message = VoteResponse(9, True, "n2", pre_vote=True)
    assert wire.read_vote_response(answer, 3) == (message, TX_WIRE)
    assert wire.encode(message, 3, TX_WIRE) == answer


def test_heartbeat_fields_12_and_13_decode_as_seq_and_transfer_to() -> None:
    """Heartbeat field 12 is seq (a uint64), 13 transfer_to; read_heartbeat returns the protocol."""
    go_graft = b"\x08\xac\x02" + b"\x12\x02n0"  # term 300 (a two-byte varint), "n0"
    numbered = go_graft + SIZE_FIELD + PROTOCOL_FIELD + b"\x60\x96\x01"  # 12 seq = 150
    handing = numbered + b"\x6a\x02n2"  # 13 transfer_to = "n2"
    largest = go_graft + SIZE_FIELD + PROTOCOL_FIELD + b"\x60" + b"\xff" * 9 + b"\x01"

    assert wire.read_heartbeat(go_graft, 3) == (Heartbeat(300, "n0"), "")
    assert wire.read_heartbeat(numbered, 3) == (Heartbeat(300, "n0", 150), TX_WIRE)
    message = Heartbeat(300, "n0", 150, "n2")
    assert wire.read_heartbeat(handing, 3) == (message, TX_WIRE)
    assert wire.encode(message, 3, TX_WIRE) == handing
    assert wire.read_heartbeat(largest, 3) == (Heartbeat(300, "n0", 2**64 - 1), TX_WIRE)


def test_heartbeat_ack_fields_1_to_4_decode_as_term_follower_seq_priority() -> None:
    """HeartbeatAck fields 1-4 are term, follower, seq and priority; an absent priority is 0."""
    fields = b"\x08\x05" + b"\x12\x02n1" + b"\x18\x2a"  # term 5, "n1", seq 42
    ack = fields + b"\x20\x07" + SIZE_FIELD + PROTOCOL_FIELD  # 4 priority = 7
    observer = fields + SIZE_FIELD + PROTOCOL_FIELD  # proto3 leaves out priority 0

    message = HeartbeatAck(5, "n1", 42, 7)
    assert wire.read_heartbeat_ack(ack, 3) == (message, TX_WIRE)
    assert wire.encode(message, 3, TX_WIRE) == ack
    assert wire.read_heartbeat_ack(observer, 3) == (HeartbeatAck(5, "n1", 42, 0), TX_WIRE)
    assert wire.read_heartbeat_ack(fields, 3) == (HeartbeatAck(5, "n1", 42, 0), "")
