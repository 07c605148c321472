"""GraftService: a node as a Twisted service, on task.Clock and MemoryNetwork."""

from __future__ import annotations

import gc
from dataclasses import replace
from pathlib import Path

import pytest
from fakes import RecordingHandler, RecordingRpc, result_of
from twisted.application.service import IService, MultiService
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from graft_tx import (
    ClusterInfo,
    GraftError,
    GraftService,
    LogCorruptError,
    NodeIdError,
    ProtocolModeError,
    QueueHandler,
    RpcRequiredError,
    State,
    StateChange,
    TimingError,
)
from graft_tx.interfaces import IElectionNode
from graft_tx.statefile import PersistentState, StateFile
from graft_tx.testing import MemoryNetwork, MemoryRpc

# Graft's algorithm as Go graft runs it; graft-tx features are tested on their own.
pytestmark = pytest.mark.protocol("graft")


def advance(clock: Clock, seconds: float, step: float = 0.01) -> None:
    for _ in range(round(seconds / step)):
        clock.advance(step)


class SlowCloseRpc(RecordingRpc):
    """A transport whose close() finishes only when the test says so."""

    def __init__(self) -> None:
        super().__init__()
        self.closing: Deferred[None] = Deferred()

    def close(self) -> Deferred[None]:  # type: ignore[override]
        self.closed = True
        return self.closing


def test_init_does_nothing(tmp_path: Path) -> None:
    """Building a GraftService creates no node, no file, no timer and no network member."""
    clock = Clock()
    network = MemoryNetwork(clock)
    path = tmp_path / "state"
    service = GraftService(
        ClusterInfo("c", 3), QueueHandler(), network.rpc(), str(path), clock=clock
    )
    assert service.node is None
    assert not service.running
    assert not path.exists()
    assert clock.getDelayedCalls() == []
    assert network.node_ids == frozenset()
    assert IService.providedBy(service)


def test_start_creates_node(tmp_path: Path) -> None:
    """startService creates and starts a FOLLOWER node with its election timer, and runs."""
    clock = Clock()
    network = MemoryNetwork(clock)
    path = tmp_path / "state"
    info = ClusterInfo("c", 3)
    service = GraftService(info, QueueHandler(), network.rpc(), str(path), clock=clock, node_id="a")
    service.startService()
    assert service.running
    node = service.node
    assert node is not None
    assert node.id == "a"
    assert node.cluster_info == info
    assert node.state is State.FOLLOWER
    assert path.exists()
    assert network.node_ids == frozenset({"a"})
    assert len(clock.getDelayedCalls()) == 1
    advance(clock, 1.0)
    assert node.state is State.CANDIDATE
    result_of(service.stopService())


def test_stop_closes_node(tmp_path: Path) -> None:
    """stopService returns a fired Deferred; the node is CLOSED and kept; the clock is empty."""
    clock = Clock()
    network = MemoryNetwork(clock)
    handler = QueueHandler()
    service = GraftService(
        ClusterInfo("c", 1), handler, network.rpc(), str(tmp_path / "state"), clock=clock
    )
    service.startService()
    advance(clock, 1.5)
    node = service.node
    assert node is not None
    assert node.state is State.LEADER
    d = service.stopService()
    assert isinstance(d, Deferred)
    assert result_of(d) is None
    assert not service.running
    assert service.node is node
    assert node.state is State.CLOSED
    assert clock.getDelayedCalls() == []
    assert network.node_ids == frozenset()
    # Closing emitted no state change.
    changes = []
    while handler.state_changes.pending:
        changes.append(result_of(handler.state_changes.get()))
    assert changes == [
        StateChange(State.FOLLOWER, State.CANDIDATE),
        StateChange(State.CANDIDATE, State.LEADER),
    ]


def test_stop_waits_for_transport(tmp_path: Path) -> None:
    """The Deferred from stopService fires only once the transport has finished closing."""
    clock = Clock()
    rpc = SlowCloseRpc()
    service = GraftService(
        ClusterInfo("c", 3), RecordingHandler(), rpc, str(tmp_path / "state"), clock=clock
    )
    service.startService()
    d = service.stopService()
    assert rpc.closed
    assert service.node is not None
    assert service.node.state is State.CLOSED
    assert not d.called
    rpc.closing.callback(None)
    assert result_of(d) is None


def test_multiservice_elects_one_leader(tmp_path: Path) -> None:
    """Three GraftServices of one cluster under a MultiService elect exactly one leader."""
    clock = Clock()
    network = MemoryNetwork(clock)
    info = ClusterInfo("trio", 3)
    parent = MultiService()
    services = []
    for name in ("a", "b", "c"):
        service = GraftService(
            info,
            QueueHandler(),
            network.rpc(),
            str(tmp_path / f"{name}.state"),
            clock=clock,
            node_id=name,
        )
        service.setServiceParent(parent)
        services.append(service)
    assert all(s.node is None for s in services)
    parent.startService()
    assert all(s.running for s in services)
    advance(clock, 2.0)
    nodes = [s.node for s in services]
    assert all(n is not None for n in nodes)
    leaders = [n for n in nodes if n is not None and n.state is State.LEADER]
    assert len(leaders) == 1
    (leader,) = leaders
    for n in nodes:
        assert n is not None
        assert n.leader == leader.id
        assert n.current_term == leader.current_term
        if n is not leader:
            assert n.state is State.FOLLOWER

    d = parent.stopService()
    result_of(d)
    assert all(not s.running for s in services)
    assert all(n is not None and n.state is State.CLOSED for n in nodes)
    assert clock.getDelayedCalls() == []
    assert network.node_ids == frozenset()


def test_start_fails_on_corrupt_state(tmp_path: Path) -> None:
    """A corrupt state file makes startService raise; the service is not running, the file stays."""
    clock = Clock()
    path = tmp_path / "state"
    content = b'{"SHA":"AAAA","Data":"e30="}'
    path.write_bytes(content)
    rpc = RecordingRpc()
    service = GraftService(ClusterInfo("c", 3), RecordingHandler(), rpc, str(path), clock=clock)
    with pytest.raises(LogCorruptError):
        service.startService()
    assert not service.running
    assert service.node is None
    assert rpc.node is None
    assert clock.getDelayedCalls() == []
    assert path.read_bytes() == content


def test_start_fails_under_multiservice(tmp_path: Path) -> None:
    """A corrupt state file makes the parent's startService raise; that child is not running."""
    clock = Clock()
    path = tmp_path / "state"
    path.write_bytes(b"garbage")
    parent = MultiService()
    service = GraftService(
        ClusterInfo("c", 3), RecordingHandler(), RecordingRpc(), str(path), clock=clock
    )
    service.setServiceParent(parent)
    with pytest.raises(LogCorruptError):
        parent.startService()
    assert not service.running
    assert path.read_bytes() == b"garbage"


def test_restart_same_node(tmp_path: Path) -> None:
    """A stopped service started again brings back a node with the same id, term and vote."""
    clock = Clock()
    network = MemoryNetwork(clock)
    handler = QueueHandler()
    service = GraftService(
        ClusterInfo("solo", 1), handler, network.rpc(), str(tmp_path / "state"), clock=clock
    )
    service.startService()
    advance(clock, 1.5)
    first = service.node
    assert first is not None
    assert first.state is State.LEADER
    term, node_id = first.current_term, first.id
    assert term >= 1
    result_of(service.stopService())

    service.startService()
    second = service.node
    assert second is not None
    assert second is not first
    assert second.id == node_id
    assert second.state is State.FOLLOWER
    assert second.current_term == term
    assert second.current_vote == node_id
    advance(clock, 1.5)
    assert second.state is State.LEADER
    assert second.current_term == term + 1
    result_of(service.stopService())
    assert clock.getDelayedCalls() == []


def test_new_service_on_same_state_file_keeps_node_id(tmp_path: Path) -> None:
    """A second GraftService on the same state file, both without node_id, is the same node.

    As when a process restarts: the first service's id is random and recorded in
    the file; the second reads it back, with the term and vote.
    """
    clock = Clock()
    network = MemoryNetwork(clock)
    path = tmp_path / "state"
    info = ClusterInfo("solo", 1)
    first = GraftService(info, QueueHandler(), network.rpc(), str(path), clock=clock)
    first.startService()
    advance(clock, 1.5)
    assert first.node is not None
    assert first.node.state is State.LEADER
    node_id, term = first.node.id, first.node.current_term
    assert node_id
    result_of(first.stopService())
    saved = StateFile(str(path)).load()
    assert (saved.term, saved.voted_for, saved.node_id) == (term, node_id, node_id)

    second = GraftService(info, QueueHandler(), network.rpc(), str(path), clock=clock)
    assert second.node_id is None
    second.startService()
    assert second.node is not None
    assert second.node.id == second.node_id == node_id
    assert second.node.current_term == term
    assert second.node.current_vote == node_id
    result_of(second.stopService())
    assert clock.getDelayedCalls() == []


def test_start_fails_on_another_nodes_state_file(tmp_path: Path) -> None:
    """A node_id other than the one the file records makes startService raise NodeIdError.

    Like a corrupt file: the service is not running, nothing joined the transport,
    and the file still names its node.
    """
    clock = Clock()
    path = tmp_path / "state"
    StateFile(str(path)).save(PersistentState(3, "a", "a"))
    content = path.read_bytes()
    rpc = RecordingRpc()
    service = GraftService(
        ClusterInfo("c", 3), RecordingHandler(), rpc, str(path), clock=clock, node_id="b"
    )
    with pytest.raises(NodeIdError) as info:
        service.startService()
    assert "'a'" in str(info.value) and "'b'" in str(info.value)
    assert not service.running
    assert service.node is None
    assert rpc.node is None
    assert clock.getDelayedCalls() == []
    assert path.read_bytes() == content


def test_stop_without_start_is_harmless(tmp_path: Path) -> None:
    """stopService on a service that never started returns a fired Deferred and creates nothing."""
    clock = Clock()
    path = tmp_path / "state"
    service = GraftService(
        ClusterInfo("c", 3), RecordingHandler(), RecordingRpc(), str(path), clock=clock
    )
    d = service.stopService()
    assert result_of(d) is None
    assert service.node is None
    assert not service.running
    assert not path.exists()


def test_multiservice_stops_after_failed_start(tmp_path: Path, logged_errors: list[object]) -> None:
    """When one child cannot start, stopping the MultiService closes the others without errors."""
    clock = Clock()
    network = MemoryNetwork(clock)
    info = ClusterInfo("c", 3)
    parent = MultiService()
    good = GraftService(info, QueueHandler(), network.rpc(), str(tmp_path / "good"), clock=clock)
    good.setServiceParent(parent)
    bad_path = tmp_path / "bad"
    bad_path.write_bytes(b"not a state file")
    bad = GraftService(info, QueueHandler(), network.rpc(), str(bad_path), clock=clock)
    bad.setServiceParent(parent)
    with pytest.raises(LogCorruptError):
        parent.startService()
    assert good.running
    assert not bad.running
    stopping = parent.stopService()
    outcomes = [(ok, repr(result)) for ok, result in result_of(stopping)]
    # A child whose stop failed leaves an unhandled failure in its Deferred;
    # collect it now so that it is logged during this test and no other.
    del stopping
    gc.collect()
    assert [ok for ok, _ in outcomes] == [True, True], outcomes
    assert logged_errors == []
    assert good.node is not None
    assert good.node.state is State.CLOSED
    assert clock.getDelayedCalls() == []
    assert bad_path.read_bytes() == b"not a state file"


# -- the transport: an instance or a factory ---------------------------------------


@pytest.mark.parametrize("rpc", [None, "tcp:7001", 42])
def test_rpc_neither_transport_nor_factory_is_refused(tmp_path: Path, rpc: object) -> None:
    """An rpc that neither provides IRpc nor is callable is refused at construction, a TypeError."""
    with pytest.raises(RpcRequiredError) as info:
        GraftService(ClusterInfo("c", 3), QueueHandler(), rpc, str(tmp_path / "s"))  # type: ignore[arg-type]
    assert isinstance(info.value, TypeError)
    assert "factory" in str(info.value) and repr(rpc) in str(info.value)


def factory_service(tmp_path: Path) -> tuple[Clock, list[MemoryRpc], GraftService]:
    """A one-node service whose factory records each transport it makes."""
    clock = Clock()
    network = MemoryNetwork(clock)
    made: list[MemoryRpc] = []

    def factory() -> MemoryRpc:
        made.append(network.rpc())
        return made[-1]

    service = GraftService(
        ClusterInfo("solo", 1), QueueHandler(), factory, str(tmp_path / "s"), clock=clock
    )
    return clock, made, service


def test_factory_makes_a_transport_per_start(tmp_path: Path) -> None:
    """A factory is called at each start; .rpc is None before, then the current or last one."""
    clock, made, service = factory_service(tmp_path)
    assert service.rpc is None
    assert made == []
    for start in range(1, 4):
        service.startService()
        assert len(made) == start
        assert service.rpc is made[-1]
        assert made[-1].node is service.node
        advance(clock, 1.5)
        assert service.node is not None
        assert service.node.state is State.LEADER
        node_id = service.node.id
        result_of(service.stopService())
        assert service.rpc is made[-1]
        assert made[-1].node is None
    assert service.node_id == node_id
    assert clock.getDelayedCalls() == []


def test_prepare_rpc_makes_the_first_transport_early(tmp_path: Path) -> None:
    """prepare_rpc makes the next start's transport now; that start uses it, the next does not."""
    _clock, made, service = factory_service(tmp_path)
    first = service.prepare_rpc()
    assert service.prepare_rpc() is first
    assert made == [first] and service.rpc is first
    service.startService()
    assert made == [first] and first.node is service.node
    result_of(service.stopService())
    service.startService()
    assert len(made) == 2 and service.rpc is made[1]
    result_of(service.stopService())


def test_factory_returning_no_transport_is_refused(tmp_path: Path) -> None:
    """A factory that returns something without IRpc makes startService raise RpcRequiredError."""
    service = GraftService(
        ClusterInfo("c", 3), QueueHandler(), lambda: object(), str(tmp_path / "s")
    )
    with pytest.raises(RpcRequiredError, match="returned <object object"):
        service.startService()
    assert not service.running
    assert service.node is None


def test_failed_start_closes_the_factorys_transport(tmp_path: Path) -> None:
    """When a start fails (a corrupt state file), the transport the factory made is closed."""
    path = tmp_path / "s"
    path.write_bytes(b"garbage")
    made: list[RecordingRpc] = []

    def factory() -> RecordingRpc:
        made.append(RecordingRpc())
        return made[-1]

    service = GraftService(
        ClusterInfo("c", 3), RecordingHandler(), factory, str(path), clock=Clock()
    )
    with pytest.raises(LogCorruptError):
        service.startService()
    assert not service.running
    assert [rpc.closed for rpc in made] == [True]
    assert made[0].node is None


def test_start_before_stop_finished_is_refused(tmp_path: Path) -> None:
    """startService before stopService's Deferred fired raises; once it has fired, it starts."""
    clock = Clock()
    made: list[SlowCloseRpc] = []

    def factory() -> SlowCloseRpc:
        made.append(SlowCloseRpc())
        return made[-1]

    service = GraftService(
        ClusterInfo("c", 3), RecordingHandler(), factory, str(tmp_path / "s"), clock=clock
    )
    service.startService()
    stopped = service.stopService()
    with pytest.raises(GraftError, match="before its stop finished"):
        service.startService()
    assert not service.running
    assert len(made) == 1
    made[0].closing.callback(None)
    assert result_of(stopped) is None
    service.startService()
    assert service.running and len(made) == 2
    made[1].closing.callback(None)
    result_of(service.stopService())


def test_instance_restart_keeps_state_file_errors(tmp_path: Path) -> None:
    """A restart of a service given a transport reports a corrupt state file as LogCorruptError."""
    clock = Clock()
    path = tmp_path / "s"
    service = GraftService(
        ClusterInfo("c", 3), QueueHandler(), MemoryNetwork(clock).rpc(), str(path), clock=clock
    )
    service.startService()
    result_of(service.stopService())
    path.write_bytes(b"garbage")
    with pytest.raises(LogCorruptError):
        service.startService()
    assert not service.running


def test_instance_that_refuses_a_second_init_names_the_fix(tmp_path: Path) -> None:
    """A transport instance that refuses a second start makes startService raise a GraftError
    naming the transport factory, with the transport's own error as its cause."""
    clock = Clock()
    rpc = OnceRpc()
    service = GraftService(
        ClusterInfo("c", 3), RecordingHandler(), rpc, str(tmp_path / "s"), clock=clock
    )
    service.startService()
    result_of(service.stopService())
    with pytest.raises(GraftError, match="transport factory") as info:
        service.startService()
    assert "carries one node, once" in str(info.value)
    assert isinstance(info.value.__cause__, GraftError)
    assert not service.running
    assert service.rpc is rpc


class OnceRpc(RecordingRpc):
    """A transport that, like TcpRpc and NatsRpc, carries one node once."""

    def init(self, node: IElectionNode) -> None:
        if self.closed:
            raise GraftError("this OnceRpc carries one node, once")
        super().init(node)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"priority": -1}, ProtocolModeError),
        ({"protocol": "raft"}, ProtocolModeError),
        ({"node_id": ""}, NodeIdError),
        ({"timing": "fast"}, TimingError),
    ],
)
def test_a_bad_configuration_is_refused_where_it_is_made(
    tmp_path: Path, kwargs: dict[str, object], error: type[Exception]
) -> None:
    """GraftService checks its configuration (one NodeConfig) when it is made, not at start."""
    with pytest.raises(error):
        GraftService(
            ClusterInfo("c", 3),
            RecordingHandler(),
            RecordingRpc(),
            tmp_path / "s",
            **kwargs,  # type: ignore[arg-type]
        )


def test_the_service_keeps_one_configuration(tmp_path: Path) -> None:
    """The service's configuration is what its node runs with, with the node's id once started."""
    service = GraftService(
        ClusterInfo("c", 1), RecordingHandler(), RecordingRpc(), tmp_path / "s", clock=Clock()
    )
    assert service.config.node_id is None and service.log_path == str(tmp_path / "s")
    service.startService()
    assert service.node is not None
    assert service.config == replace(service.node.config, node_id=service.node.id)
    assert service.node_id == service.node.id
    result_of(service.stopService())
