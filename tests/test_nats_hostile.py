"""Strangers on the NATS server: ids no node can have, and floods of made-up followers.

Each test runs a real nats-server on loopback. A spy subscribed to every
subject records what the nodes publish, so a publish to a subject built
from a stranger's id would be seen.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import pytest_twisted
from natsserver import NatsServer
from realtime import sleep, wait_until
from test_nats import CapturedLog, all_connected, close_all, elect, make_node, rpc_of, snapshot

import graft_tx
from graft_tx import Heartbeat, HeartbeatAck, NatsConnection, NatsRpc, Node, Timing, VoteResponse
from graft_tx.transport import wire
from graft_tx.transport.natsclient import NatsMessage

TIMING = Timing(0.4, 0.8, 0.05)
WILDCARD_IDS = ["evil.>", "*", ">", "a.b", "x y"]


class Spy:
    """A connection subscribed to every subject, keeping the subjects it saw."""

    def __init__(self, connection: NatsConnection) -> None:
        self.connection = connection
        self.subjects: list[str] = []

    @classmethod
    async def start(cls, url: str) -> Spy:
        spy = cls(await graft_tx.connect_nats(url))
        await spy.connection.subscribe(">", spy._seen)
        await spy.connection.flush()
        return spy

    def _seen(self, message: NatsMessage) -> None:
        self.subjects.append(message.subject)

    def odd_subjects(self, cluster: str, ids: list[str]) -> list[str]:
        """Subjects that are not graft.<cluster or a node id>.<kind>."""
        allowed = {cluster, *ids}
        return [
            s
            for s in self.subjects
            if len(parts := s.split(".")) != 3 or parts[0] != "graft" or parts[1] not in allowed
        ]


@pytest_twisted.ensureDeferred
async def test_ids_that_cannot_be_subjects_are_dropped(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """Heartbeats, votes and acks naming ids with '.', '*', '>' or blanks change nothing,
    and no node publishes to a subject made from them."""
    nodes: list[Node] = []
    raw: NatsConnection | None = None
    spy: Spy | None = None
    with CapturedLog():
        try:
            nodes = [
                make_node(tmp_path, "hostile", 3, NatsRpc(nats_server.url), f"n{i}", TIMING)
                for i in range(3)
            ]
            rpcs = [rpc_of(n) for n in nodes]
            await all_connected(rpcs)
            spy = await Spy.start(nats_server.url)
            raw = await graft_tx.connect_nats(nats_server.url)
            leader = await elect(nodes)
            term = leader.current_term
            before = snapshot(nodes)
            invalid = [rpc.invalid_messages for rpc in rpcs]
            for bad in WILDCARD_IDS:
                messages = [
                    ("graft.hostile.heartbeat", Heartbeat(term + 1, bad, 1)),
                    ("graft.hostile.heartbeat", Heartbeat(term, leader.id, 1, bad)),
                    (f"graft.{leader.id}.vote_response", VoteResponse(term + 1, True, bad)),
                    (f"graft.{leader.id}.heartbeat_ack", HeartbeatAck(term, bad, 1, 1)),
                ]
                for subject, message in messages:
                    await raw.publish(subject, wire.encode(message, 3))
            await raw.flush()
            sent = 4 * len(WILDCARD_IDS)
            # Heartbeats reach all three; responses and acks only the leader.
            expected = [
                n + (sent if node is leader else 2 * len(WILDCARD_IDS))
                for n, node in zip(invalid, nodes, strict=True)
            ]
            await wait_until(
                lambda: [rpc.invalid_messages for rpc in rpcs] == expected, 10, "all dropped"
            )
            await sleep(TIMING.election_timeout_max)
            assert snapshot(nodes) == before
            ids = [n.id for n in nodes]
            assert spy.odd_subjects("hostile", ids) == []
            assert any(s == f"graft.{leader.id}.heartbeat_ack" for s in spy.subjects)
        finally:
            await close_all(nodes)
            for connection in (raw, spy.connection if spy else None):
                if connection is not None:
                    await connection.close()


@pytest.mark.parametrize("flood", [20_000])
@pytest_twisted.ensureDeferred
async def test_an_ack_flood_from_made_up_followers_costs_the_leader_nothing(
    nats_server: NatsServer, tmp_path: Path, flood: int
) -> None:
    """20,000 acknowledgements from made-up follower ids, for the leader's newest heartbeats:
    the leader keeps its lease throughout, tracks no more followers than twice the cluster,
    and logs a handful of lines."""
    nodes: list[Node] = []
    raw: NatsConnection | None = None
    with CapturedLog() as log:
        try:
            nodes = [
                make_node(tmp_path, "flooded", 3, NatsRpc(nats_server.url), f"n{i}", TIMING)
                for i in range(3)
            ]
            await all_connected([rpc_of(n) for n in nodes])
            raw = await graft_tx.connect_nats(nats_server.url)
            leader = await elect(nodes)
            await wait_until(leader.is_leader, 5, "the lease")
            term = leader.current_term
            lease = leader._lease
            assert lease is not None
            subject = f"graft.{leader.id}.heartbeat_ack"

            lapses = 0
            started = time.monotonic()
            for i in range(flood):
                ack = HeartbeatAck(term, f"ghost{i}", lease.seq, 1)
                await raw.publish(subject, wire.encode(ack, 3))
                if i % 500 == 0:
                    await raw.flush()
                    lapses += not leader.is_leader()
            await raw.flush()
            took = time.monotonic() - started
            for _ in range(20):
                await sleep(0.05)
                lapses += not leader.is_leader()
            tracked = len(lease.acked)
            print(
                f"\n{flood} acks in {took:.2f}s: the lease lapsed at {lapses} of "
                f"{flood // 500 + 20} checks; {tracked} followers tracked; "
                f"{lease.crowded} acks dropped for want of room"
            )
            assert lapses == 0
            assert leader.current_term == term and leader._lease is lease
            assert tracked <= 2 * 3
            assert lease.crowded > flood / 2
            assert len(log.warnings(source=leader)) <= 12
        finally:
            await close_all(nodes)
            if raw is not None:
                await raw.close()
