"""Handshake slots under attack: strangers who hold every pending slot cannot keep peers out.

The attacker of these tests keeps more connections open against a node's
listening port than it has handshake slots, reopening each one the moment
it is dropped; some send nothing, some send a valid hello (cluster, size and
protocol are no secret) and then never prove the secret.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted
from realtime import reactor, sleep, sole_leader, wait_until
from test_tcp import Cluster, RawPeer, connect_raw, elect, hello, now
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

from graft_tx import Timing
from graft_tx.transport.lines import Keys, new_nonce

# The attack needs the reactor too: timings a loaded 2-core machine keeps.
TIMING = Timing(0.4, 0.8, 0.05)
SECRET = "the cluster's secret"
# Loopback, but not the peers' address.
ELSEWHERE = "127.0.0.2"


class SlotAttacker:
    """Keeps C{count} connections open to each port, each one reopened the moment
    it is dropped or refused (every other one sends a valid hello first)."""

    def __init__(
        self, ports: list[int], cluster: str, size: int, count: int = 32, source: str = ""
    ) -> None:
        self.source = source
        self.cluster = cluster
        self.size = size
        self.lanes = [port for port in ports for _ in range(count)]
        self.raws: set[RawPeer] = set()
        self.opened = 0
        self._running = False

    def start(self) -> None:
        self._running = True
        for lane, port in enumerate(self.lanes):
            self._connect(lane, port)

    def _connect(self, lane: int, port: int) -> None:
        if not self._running:
            return
        bind = (self.source, 0) if self.source else None
        endpoint = TCP4ClientEndpoint(reactor(), "127.0.0.1", port, timeout=5, bindAddress=bind)
        d = connectProtocol(endpoint, RawPeer())
        d.addCallbacks(
            lambda raw: self._connected(lane, port, raw),
            lambda _: reactor().callLater(0.001, self._connect, lane, port),
        )

    def _connected(self, lane: int, port: int, raw: RawPeer) -> None:
        if not self._running:
            raw.abort()
            return
        self.opened += 1
        self.raws.add(raw)
        if lane % 2:
            # A hello that passes every check, from a made-up node.
            raw.send_object(hello(self.cluster, self.size, f"x{self.opened}"))

        def again(_: None) -> None:
            self.raws.discard(raw)
            self._connect(lane, port)

        raw.lost.addCallback(again)

    def stop(self) -> None:
        self._running = False
        for raw in list(self.raws):
            raw.abort()


@pytest_twisted.ensureDeferred
async def test_a_node_restarted_under_a_slot_attack_hears_its_leader(tmp_path: Path) -> None:
    """A follower restarted while strangers hold its handshake slots hears its leader
    within one election timeout (old code: not until the attack stopped)."""
    cluster = Cluster(tmp_path, 3, name="slots", timing=TIMING, secret=SECRET)
    attacker: SlotAttacker | None = None
    try:
        cluster.start_all()
        leader = await elect(cluster.running())
        follower = next(n for n in cluster.running() if n is not leader)
        index = cluster.ids.index(follower.id)
        await cluster.stop(follower.id)

        # More connections than any address may hold pending, from another address.
        attacker = SlotAttacker([cluster.ports[index]], "slots", 3, count=80, source=ELSEWHERE)
        attacker.start()
        await sleep(0.5)
        restarted = cluster.start(index)
        started = now()
        await wait_until(
            lambda: restarted.leader == leader.id, 5, "the restarted node hears its leader"
        )
        heard = now() - started
        opened = attacker.opened
        print(f"\nheard the leader {heard * 1000:.0f} ms after the restart; {opened} attacks")
        assert heard < TIMING.election_timeout_max
        # And it stays with the cluster while the attack goes on.
        await sleep(1.0)
        assert sole_leader(cluster.running()) is leader
        assert restarted.current_term == leader.current_term
    finally:
        if attacker is not None:
            attacker.stop()
        await cluster.close()


@pytest.mark.parametrize("secret", [SECRET, None])
@pytest_twisted.ensureDeferred
async def test_a_cluster_started_under_a_slot_attack_elects(
    tmp_path: Path, secret: str | None
) -> None:
    """A whole cluster started while strangers hold every node's slots elects a leader
    within a few election timeouts, with or without a secret."""
    cluster = Cluster(tmp_path, 3, name="slots", timing=TIMING, secret=secret)
    attacker = SlotAttacker(cluster.ports, "slots", 3, count=24)
    try:
        attacker.start()
        await sleep(0.5)
        started = now()
        cluster.start_all()
        await elect(cluster.running(), 5 * TIMING.election_timeout_max)
        took = now() - started
        print(f"\nelected {took * 1000:.0f} ms after the start; {attacker.opened} attacks")
        await wait_until(cluster.fully_connected, 2, "all connected")
    finally:
        attacker.stop()
        await cluster.close()


@pytest_twisted.ensureDeferred
async def test_a_dropped_connection_comes_back_under_a_slot_attack(tmp_path: Path) -> None:
    """When the leader's connection to a follower drops while strangers at the peers' own
    address hold all its slots, the leader (its hello carries a ticket) reconnects and is
    heard within an election timeout."""
    cluster = Cluster(tmp_path, 3, name="slots", timing=TIMING, secret=SECRET)
    attacker: SlotAttacker | None = None
    try:
        cluster.start_all()
        leader = await elect(cluster.running())
        await wait_until(cluster.fully_connected, 5, "all connected")
        follower = next(n for n in cluster.running() if n is not leader)
        port = cluster.ports[cluster.ids.index(follower.id)]
        # From the peers' own address (same host, NAT), more than it may hold pending.
        attacker = SlotAttacker([port], "slots", 3, count=100)
        attacker.start()
        # Past the listen backlog's SYN retries: the address holds all it may.
        victim = cluster.rpcs[follower.id]
        await wait_until(lambda: victim.refused_connections > 500, 10, "the slots full")
        rpc = cluster.rpcs[leader.id]
        rpc._outbound[follower.id]._abort()
        await wait_until(lambda: follower.id not in rpc.connected_peers, 1, "the drop")
        dropped = now()
        await wait_until(lambda: follower.id in rpc.connected_peers, 5, "the reconnect")
        back = now() - dropped
        heard = follower.stats().heartbeats_received
        await wait_until(
            lambda: follower.stats().heartbeats_received > heard, 1, "a heartbeat heard"
        )
        print(f"\nreconnected {back * 1000:.0f} ms after the drop; {attacker.opened} attacks")
        assert back < TIMING.election_timeout_min
        await sleep(1.0)
        assert sole_leader(cluster.running()) is leader
    finally:
        if attacker is not None:
            attacker.stop()
        await cluster.close()


@pytest_twisted.ensureDeferred
async def test_a_hello_with_a_fresh_ticket_keeps_its_slot(tmp_path: Path) -> None:
    """A slow handshake whose hello shows the secret is never evicted by strangers;
    the same hello replayed (same nonce) is."""
    cluster = Cluster(tmp_path, 2, name="slots", timing=TIMING, secret=SECRET)
    attacker: SlotAttacker | None = None
    raws: list[RawPeer] = []
    try:
        cluster.start(0)
        port = cluster.ports[0]
        nonce = new_nonce()
        slow = hello("slots", 2, "n1", nonce)
        slow["ticket"] = Keys(SECRET.encode()).ticket(nonce, "slots", "n1")
        for _ in range(2):
            raw = await connect_raw(port)
            raw.send_object(slow)
            assert (await raw.next_object())["type"] == "hello"
            raws.append(raw)
        attacker = SlotAttacker([port], "slots", 2, count=64)
        attacker.start()
        await sleep(2.0)
        assert attacker.opened > 100
        ticketed, replayed = raws
        assert not ticketed.closed
        assert replayed.closed
    finally:
        if attacker is not None:
            attacker.stop()
        for raw in raws:
            raw.abort()
        await cluster.close()
