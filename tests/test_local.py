"""graft_tx.local: the process harness behind graft demo, the benchmarks and the chaos suite."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from graft_tx.local import LocalCluster, agreement_time, free_port
from graft_tx.statefile import StateFile


def known(node: str, leader: str, at: float) -> dict[str, Any]:
    return {"event": "leader_known", "node": node, "leader": leader, "log_time": at}


def test_agreement_is_the_latest_survivor_to_name_the_leader() -> None:
    """The time is when the last survivor named the new leader; earlier events do not count."""
    events = {
        "n1": [known("n1", "n1", 5.0), known("n1", "n2", 10.4)],
        "n2": [known("n2", "n1", 5.1), known("n2", "n2", 10.2)],
        "n3": [known("n3", "n1", 5.2), known("n3", "n2", 10.3)],
    }
    assert agreement_time(events, ["n2", "n3"], after=10.0, exclude="n1") == ("n2", 10.3)
    assert agreement_time(events, ["n1", "n2", "n3"], after=10.0, exclude="n1") == ("n2", 10.4)


def test_no_agreement_until_every_survivor_names_the_same_leader() -> None:
    """Split opinions, the excluded old leader and events before the kill give no answer."""
    events = {
        "n2": [known("n2", "n2", 10.2), {"event": "state_changed", "log_time": 10.5}],
        "n3": [known("n3", "n1", 10.1), known("n3", "n2", 9.0)],
    }
    assert agreement_time(events, ["n2", "n3"], after=10.0, exclude="n1") is None
    events["n3"].append(known("n3", "n2", 11.0))
    assert agreement_time(events, ["n2", "n3"], after=10.0, exclude="n1") == ("n2", 11.0)


def test_the_first_leader_all_agree_on_wins() -> None:
    """If they agree on one leader and later on another, the first agreement is the answer."""
    events = {
        "n2": [known("n2", "n2", 1.0), known("n2", "n3", 2.0)],
        "n3": [known("n3", "n2", 1.1), known("n3", "n3", 2.1)],
    }
    assert agreement_time(events, ["n2", "n3"], after=0.0) == ("n2", 1.1)


def test_free_ports_avoid_the_ephemeral_range() -> None:
    """Listening ports come from below the range outgoing connections draw from, so no
    node's connection can take a port between its choice and the node's bind."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = {free_port() for _ in range(20)}
    assert all(10000 <= port < low for port in ports), ports


def test_tcp_cluster_arguments(tmp_path: Path) -> None:
    """Each node listens on its own host and lists every other node as a peer."""
    cluster = LocalCluster(tmp_path, size=3, hosts=["10.9.0.1", "10.9.0.2", "10.9.0.3"])
    argv = cluster.nodes[1].argv
    graft = argv[argv.index("graft") :]
    listen = graft[graft.index("--listen") + 1]
    assert listen.startswith("tcp:") and listen.endswith(":interface=10.9.0.2")
    peers = [graft[i + 1] for i, arg in enumerate(graft) if arg == "--peer"]
    assert [p.split(":")[1] for p in peers] == ["host=10.9.0.1", "host=10.9.0.3"]
    assert graft[graft.index("--state-file") + 1] == str(tmp_path / "n2.state")
    assert graft[graft.index("--status") + 1] == f"unix:{tmp_path / 'n2.sock'}"


def test_a_node_may_keep_its_state_file_elsewhere(tmp_path: Path) -> None:
    """state_files moves one node's state file; the others stay in the cluster's directory."""
    elsewhere = tmp_path / "disk" / "n2.state"
    cluster = LocalCluster(tmp_path, size=3, state_files={"n2": elsewhere})
    files = [node.argv[node.argv.index("--state-file") + 1] for node in cluster.nodes]
    assert files == [str(tmp_path / "n1.state"), str(elsewhere), str(tmp_path / "n3.state")]
    assert [node.state_file for node in cluster.nodes] == [Path(f) for f in files]


def test_nats_cluster_arguments(tmp_path: Path) -> None:
    """NATS nodes get every server URL and the cluster size, and no TCP options."""
    urls = ["nats://127.0.0.1:1", "nats://127.0.0.1:2"]
    cluster = LocalCluster(tmp_path, size=5, transport="nats", nats_urls=urls)
    argv = cluster.nodes[0].argv
    assert [argv[i + 1] for i, arg in enumerate(argv) if arg == "--nats"] == urls
    assert argv[argv.index("--size") + 1] == "5"
    assert "--listen" not in argv and "--peer" not in argv


def test_bad_clusters_are_refused(tmp_path: Path) -> None:
    """An unknown transport, or NATS without a server, is refused at once."""
    with pytest.raises(ValueError, match="transport must be tcp or nats"):
        LocalCluster(tmp_path, transport="udp")
    with pytest.raises(ValueError, match="needs nats_urls"):
        LocalCluster(tmp_path, transport="nats")


def test_real_cluster_kill_restart_and_pause(tmp_path: Path) -> None:
    """Three real nodes: status over Unix sockets, /leader, event logs, kill, restart, pause."""
    cluster = LocalCluster(tmp_path, size=3, election_timeout="0.3-0.6", heartbeat="0.05")
    with cluster:
        cluster.start()
        leader = cluster.wait_for_leader(30, expect_live=3)
        assert cluster.node(leader).leader_page() == 200
        followers = [node for node in cluster.nodes if node.name != leader]
        assert {node.leader_page() for node in followers} == {503}

        killed_at = time.time()
        cluster.node(leader).kill()
        assert cluster.node(leader).status() == {"error": "not running"}
        new = cluster.wait_for_leader(30, exclude=[leader])
        survivors = [node.name for node in followers]
        agreed = agreement_time(cluster.events(), survivors, after=killed_at, exclude=leader)
        assert agreed is not None and agreed[0] == new and agreed[1] > killed_at
        # The killed node's state file survived intact.
        assert StateFile(str(cluster.node(leader).state_file)).load().term >= 1

        cluster.node(leader).start()
        assert cluster.wait_for_leader(30, expect_live=3) == new
        assert cluster.node(leader).starts == 2

        paused = cluster.node(new)
        paused.pause()
        assert "error" in paused.status(timeout=0.3)
        third = cluster.wait_for_leader(30, exclude=[new])
        paused.resume()
        assert cluster.wait_for_leader(30, expect_live=3) == third
    assert not any(node.alive for node in cluster.nodes)
    assert all(node.process and node.process.returncode == -15 for node in cluster.nodes)
