"""NATS faults under real `twistd graft` nodes: the server restarted mid-election, and
the leader's own server killed in a three-server NATS cluster."""

from __future__ import annotations

import json
import random
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from graft_tx.local import LocalCluster, NatsServer, cluster_args, free_port
from graft_tx.transport.nats import vote_response_subject

from .checks import check_event_logs
from .conftest import ChaosReport, rounds

# Generous for a busy 2-core machine: a NATS client reconnects every 2 s at most.
AGREE_WITHIN = 30.0


def agree_after_fault(cluster: LocalCluster, report: ChaosReport, since: float) -> str:
    leader = cluster.wait_for_leader(AGREE_WITHIN, expect_live=cluster.size)
    report.leaderless(time.monotonic() - since)
    return leader


def test_nats_server_restarted_during_elections(
    make_cluster: Callable[..., LocalCluster],
    make_nats: Callable[..., NatsServer],
    chaos_report: ChaosReport,
) -> None:
    """Killing the leader, then crashing and restarting the nats-server mid-election, ends with
    one agreed leader each round, one leader per term and no term going back."""
    server = make_nats()
    cluster = make_cluster(transport="nats", nats_urls=[server.url])
    cluster.start()
    leader = cluster.wait_for_leader(AGREE_WITHIN, expect_live=3)
    rng = random.Random(7)
    for _ in range(rounds(full=10, short=2)):
        fault_at = time.monotonic()
        cluster.node(leader).kill()
        chaos_report.fault("SIGKILL leader")
        # Somewhere inside the election that follows.
        time.sleep(rng.uniform(0, cluster.election_timeout_max))
        server.kill()
        chaos_report.fault("SIGKILL nats-server")
        time.sleep(rng.uniform(0.1, 1.0))
        server.start()
        cluster.node(leader).start()
        leader = agree_after_fault(cluster, chaos_report, fault_at)
        chaos_report.rounds += 1
    chaos_report.leader_changes = len(check_event_logs(chaos_report, cluster.events())) - 1


def monitoring(port: int, path: str) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}/{path}"
    with urllib.request.urlopen(url, timeout=2) as response:
        document: dict[str, Any] = json.loads(response.read())
    return document


def server_of(node_id: str, monitors: list[int]) -> int | None:
    """Which server the node is connected to: the one holding its vote-response subscription."""
    subject = vote_response_subject(node_id)
    for index, port in enumerate(monitors):
        try:
            connz = monitoring(port, "connz?subs=1")
        except OSError:
            continue
        for connection in connz.get("connections") or []:
            if subject in (connection.get("subscriptions_list") or []):
                return index
    return None


def test_leaders_nats_server_killed_in_a_three_server_cluster(
    make_cluster: Callable[..., LocalCluster],
    make_nats: Callable[..., NatsServer],
    chaos_report: ChaosReport,
) -> None:
    """Killing the nats-server the leader is connected to, in a three-server NATS cluster,
    ends with one agreed leader each round (the old leader moves or steps down)."""
    ports = [free_port() for _ in range(3)]
    routes = [free_port() for _ in range(3)]
    monitors = [free_port() for _ in range(3)]

    def start(index: int) -> NatsServer:
        others = [routes[j] for j in range(3) if j != index]
        args = [*cluster_args("chaos", routes[index], others), "-m", str(monitors[index])]
        return make_nats(*args, port=ports[index])

    servers = [start(i) for i in range(3)]
    # Wait for the routes, so that the nodes on different servers hear each other.
    deadline = time.monotonic() + AGREE_WITHIN
    while any(monitoring(m, "routez").get("num_routes", 0) < 2 for m in monitors):
        assert time.monotonic() < deadline, "the NATS cluster did not form"
        time.sleep(0.05)
    cluster = make_cluster(transport="nats", nats_urls=[s.url for s in servers])
    cluster.start()
    leader = cluster.wait_for_leader(AGREE_WITHIN, expect_live=3)
    for _ in range(rounds(full=10, short=2)):
        # Let subscriptions settle so the leader's server can be told.
        deadline = time.monotonic() + AGREE_WITHIN
        while (victim := server_of(leader, monitors)) is None:
            assert time.monotonic() < deadline, f"no server holds {leader}'s subscriptions"
            time.sleep(0.05)
        fault_at = time.monotonic()
        servers[victim].kill()
        chaos_report.fault("SIGKILL the leader's nats-server")
        # Over when all agree on a leader that is connected to a surviving server: the
        # old one moved (nats-py reconnects to another server at once) or was replaced.
        while True:
            leader = cluster.wait_for_leader(AGREE_WITHIN, expect_live=3)
            if server_of(leader, monitors) not in (None, victim):
                break
            assert time.monotonic() < fault_at + AGREE_WITHIN, f"{leader} found no server"
            time.sleep(0.02)
        chaos_report.leaderless(time.monotonic() - fault_at)
        servers[victim].start()
        while monitoring(monitors[victim], "routez").get("num_routes", 0) < 2:
            assert time.monotonic() < fault_at + 2 * AGREE_WITHIN, "the server did not rejoin"
            time.sleep(0.05)
        chaos_report.rounds += 1
    chaos_report.leader_changes = len(check_event_logs(chaos_report, cluster.events())) - 1
