"""GraftService stopped and started again over real TCP and NATS, with transport factories."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import pytest_twisted
from natsserver import NatsServer, free_port
from realtime import sole_leader, wait_until

from graft_tx import (
    ClusterInfo,
    GraftError,
    GraftService,
    NatsRpc,
    Node,
    QueueHandler,
    State,
    TcpRpc,
    Timing,
)
from graft_tx.interfaces import IRpc
from graft_tx.statefile import StateFile
from graft_tx.tap import Options

# Fast enough to keep the module short, slow enough for a loaded 2-core machine.
FAST = Timing(0.3, 0.6, 0.05)
# A few election timeouts, and the TCP reconnection backoff (up to 2 s) on top.
SETTLE = 10.0


def tcp_listen(port: int) -> str:
    return f"tcp:{port}:interface=127.0.0.1"


def tcp_peer(port: int) -> str:
    return f"tcp:host=127.0.0.1:port={port}"


def tcp_factories(size: int) -> list[Callable[[], IRpc]]:
    """One factory per node of a loopback TCP cluster, each making a new TcpRpc."""
    ports = [free_port() for _ in range(size)]
    return [
        lambda i=i: TcpRpc(  # type: ignore[misc]
            tcp_listen(ports[i]),
            [tcp_peer(port) for j, port in enumerate(ports) if j != i],
            secret=b"restart",
        )
        for i in range(size)
    ]


def make_services(
    tmp_path: Path, cluster: str, factories: list[Callable[[], IRpc]]
) -> list[GraftService]:
    info = ClusterInfo(cluster, len(factories))
    return [
        GraftService(
            info,
            QueueHandler(),
            factory,
            str(tmp_path / f"{cluster}-n{i}.state"),
            timing=FAST,
            node_id=f"n{i}",
        )
        for i, factory in enumerate(factories)
    ]


def nodes_of(services: list[GraftService]) -> list[Node]:
    nodes = [s.node for s in services]
    assert all(n is not None for n in nodes)
    return [n for n in nodes if n is not None]


async def settled(services: list[GraftService], what: str) -> Node:
    """Wait until every service runs and one leader is followed by all; that leader."""

    def ready() -> bool:
        return all(s.running for s in services) and sole_leader(nodes_of(services)) is not None

    await wait_until(ready, SETTLE, what)
    leader = sole_leader(nodes_of(services))
    assert leader is not None
    return leader


async def stop_all(services: list[GraftService]) -> None:
    for service in services:
        if service.running:
            await service.stopService()


async def restart(service: GraftService) -> tuple[Node, IRpc | None]:
    """Stop the service, wait for its stop, start it again; its old node and transport."""
    old, old_rpc = service.node, service.rpc
    assert old is not None
    await service.stopService()
    assert old.state is State.CLOSED
    service.startService()
    assert service.node is not None and service.node is not old
    assert service.rpc is not None and service.rpc is not old_rpc
    return old, old_rpc


async def restart_follower_then_leader(services: list[GraftService]) -> None:
    """The stop/start cycle both transports go through."""
    leader = await settled(services, "a first leader")
    follower = next(s for s in services if s.node is not leader)
    old, _ = await restart(follower)
    assert follower.node is not None
    assert follower.node.id == old.id == follower.node_id
    assert StateFile(str(follower.log_path)).load().node_id == old.id
    assert follower.node.current_term >= old.current_term
    back = await settled(services, "the restarted follower following")
    assert back is leader
    assert follower.node.leader == leader.id

    leading = next(s for s in services if s.node is leader)
    term = leader.current_term
    old, _ = await restart(leading)
    assert leading.node is not None and leading.node.id == old.id
    again = await settled(services, "a leader after the leader's restart")
    assert again.current_term > term
    assert leading.node.state in (State.FOLLOWER, State.LEADER)
    assert leading.node.leader == again.id


@pytest_twisted.ensureDeferred
async def test_tcp_cluster_restarts_a_follower_and_the_leader(tmp_path: Path) -> None:
    """Over TCP, services built with factories restart as the same nodes, and the cluster heals."""
    services = make_services(tmp_path, "tcp-restart", tcp_factories(3))
    try:
        for service in services:
            service.startService()
        assert all(isinstance(s.rpc, TcpRpc) for s in services)
        await restart_follower_then_leader(services)
    finally:
        await stop_all(services)


@pytest_twisted.ensureDeferred
async def test_nats_cluster_restarts_a_follower_and_the_leader(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    """Over NATS, services built with factories restart as the same nodes, and the cluster heals."""
    services = make_services(
        tmp_path, "nats-restart", [lambda: NatsRpc(nats_server.url) for _ in range(3)]
    )
    try:
        for service in services:
            service.startService()
        assert all(isinstance(s.rpc, NatsRpc) for s in services)
        await restart_follower_then_leader(services)
    finally:
        await stop_all(services)


@pytest.mark.parametrize("transport", ["tcp", "nats"])
@pytest_twisted.ensureDeferred
async def test_transport_instance_refuses_a_second_start(
    tmp_path: Path, nats_server: NatsServer, transport: str
) -> None:
    """A service given a TcpRpc or NatsRpc itself refuses a second start, naming the factory."""
    rpc = TcpRpc(tcp_listen(free_port()), []) if transport == "tcp" else NatsRpc(nats_server.url)
    service = GraftService(ClusterInfo("once", 1), QueueHandler(), rpc, str(tmp_path / "s"))
    try:
        service.startService()
        await service.stopService()
        with pytest.raises(GraftError, match="transport factory") as info:
            service.startService()
        assert isinstance(info.value.__cause__, GraftError)
        assert str(info.value.__cause__) in str(info.value)
        assert not service.running
        assert service.rpc is rpc
    finally:
        await stop_all([service])


def tap_options(tmp_path: Path, port: int) -> Options:
    options = Options()
    options.parseOptions(
        [
            "--cluster", "tap-restart",
            "--transport", "tcp",
            "--listen", tcp_listen(port),
            "--state-file", str(tmp_path / "tap.state"),
            "--election-timeout", "0.1-0.2",
            "--heartbeat", "0.02",
        ]
    )  # fmt: skip
    return options


@pytest_twisted.ensureDeferred
async def test_tap_service_stops_and_starts_again(tmp_path: Path) -> None:
    """makeService's GraftService makes a new TcpRpc per start: start, stop, start all lead."""
    from graft_tx.tap import makeService

    tmp_path.chmod(0o700)
    top = makeService(tap_options(tmp_path, free_port()))
    graft = top.getServiceNamed("graft")
    assert isinstance(graft, GraftService)
    assert graft.rpc_factory is not None
    first = graft.rpc
    assert isinstance(first, TcpRpc)
    try:
        ids, rpcs = [], []
        for _ in range(2):
            top.startService()
            rpcs.append(graft.rpc)
            await wait_until(
                lambda: graft.node is not None and graft.node.state is State.LEADER,
                SETTLE,
                "leadership",
            )
            assert graft.node is not None
            ids.append(graft.node.id)
            await top.stopService()
        assert rpcs[0] is first
        assert isinstance(rpcs[1], TcpRpc) and rpcs[1] is not first
        assert ids[0] == ids[1] == StateFile(str(tmp_path / "tap.state")).load().node_id
    finally:
        if top.running:
            await top.stopService()
