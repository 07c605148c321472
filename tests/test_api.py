"""The public API: graft_tx.new's argument checks, value types, timings, messages, interfaces."""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fakes import PolicyHandler, RecordingHandler, RecordingRpc
from twisted.internet.task import Clock
from zope.interface import Interface
from zope.interface.verify import verifyObject

import graft_tx
import graft_tx.messages
import graft_tx.testing
from graft_tx import (
    ClusterInfo,
    ClusterNameError,
    ClusterSizeError,
    GraftError,
    HandlerRequiredError,
    Heartbeat,
    LogRequiredError,
    MessageError,
    NodeConfig,
    NodeIdError,
    ProtocolModeError,
    RpcRequiredError,
    State,
    StateChange,
    Timing,
    TimingError,
    VoteRequest,
    VoteResponse,
    quorum,
)
from graft_tx.interfaces import (
    IElectionNode,
    IRpc,
    IStateHandler,
    IStateMachineHandler,
    ITransportStats,
)

# Graft's algorithm as Go graft runs it; graft-tx features are tested on their own.
pytestmark = pytest.mark.protocol("graft")

PROJECT = Path(__file__).resolve().parent.parent
MAX_TERM = 2**64 - 1


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def log_path(tmp_path: Path) -> str:
    return str(tmp_path / "state")


# -- graft_tx.new: argument errors ------------------------------------------

H = RecordingHandler
R = RecordingRpc

# (info, handler factory or None, rpc factory or None, use a real path?, expected error)
ORDER: list[tuple[ClusterInfo, Any, Any, bool, type[GraftError]]] = [
    (ClusterInfo("", 0), None, None, False, ClusterNameError),
    (ClusterInfo("", 3), H, R, True, ClusterNameError),
    (ClusterInfo("c", 0), None, None, False, ClusterSizeError),
    (ClusterInfo("c", -1), H, R, True, ClusterSizeError),
    (ClusterInfo("c", 3), None, None, False, HandlerRequiredError),
    (ClusterInfo("c", 3), None, R, True, HandlerRequiredError),
    (ClusterInfo("c", 3), H, None, False, RpcRequiredError),
    (ClusterInfo("c", 3), H, None, True, RpcRequiredError),
    (ClusterInfo("c", 3), H, R, False, LogRequiredError),
]


@pytest.mark.parametrize(
    ("info", "handler", "rpc", "real_path", "error"),
    ORDER,
    ids=[
        "name over everything",
        "name alone",
        "size over handler, rpc, path",
        "size alone",
        "handler over rpc and path",
        "handler alone",
        "rpc over path",
        "rpc alone",
        "path alone",
    ],
)
def test_new_errors_in_documented_order(
    clock: Clock,
    log_path: str,
    info: ClusterInfo,
    handler: Any,
    rpc: Any,
    real_path: bool,
    error: type[GraftError],
) -> None:
    """new() raises for the first wrong argument in the order name, size, handler, rpc, path."""
    the_rpc = rpc() if rpc else None
    with pytest.raises(error) as caught:
        graft_tx.new(
            info,
            handler() if handler else None,
            the_rpc,
            log_path if real_path else "",
            clock=clock,
        )
    assert type(caught.value) is error
    assert isinstance(caught.value, GraftError)
    # Nothing was touched: no file, no transport, no timer.
    assert not os.path.exists(log_path)
    assert the_rpc is None or the_rpc.node is None
    assert clock.getDelayedCalls() == []


@pytest.mark.parametrize("size", [0, -1, False, True])
def test_bad_sizes(clock: Clock, log_path: str, size: int) -> None:
    """A size below 1, or a bool, is a ClusterSizeError whose message names the size."""
    with pytest.raises(ClusterSizeError) as caught:
        graft_tx.new(ClusterInfo("c", size), H(), R(), log_path, clock=clock)
    assert "size" in str(caught.value)
    assert repr(size) in str(caught.value)


@pytest.mark.parametrize(
    ("call", "error", "words"),
    [
        (
            lambda p: graft_tx.new(ClusterInfo("", 1), H(), R(), p, clock=Clock()),
            ClusterNameError,
            ["name"],
        ),
        (
            lambda p: graft_tx.new(ClusterInfo("c", 0), H(), R(), p, clock=Clock()),
            ClusterSizeError,
            ["size"],
        ),
        (
            lambda p: graft_tx.new(ClusterInfo("c", 1), None, R(), p, clock=Clock()),
            HandlerRequiredError,
            ["handler"],
        ),
        (
            lambda p: graft_tx.new(ClusterInfo("c", 1), H(), None, p, clock=Clock()),
            RpcRequiredError,
            ["rpc"],
        ),
        (
            lambda p: graft_tx.new(ClusterInfo("c", 1), H(), R(), "", clock=Clock()),
            LogRequiredError,
            ["log_path"],
        ),
    ],
    ids=["name", "size", "handler", "rpc", "log_path"],
)
def test_error_messages_name_the_problem(
    log_path: str, call: Callable[[str], object], error: type[GraftError], words: list[str]
) -> None:
    """Each argument error says in words what is wrong."""
    with pytest.raises(error) as caught:
        call(log_path)
    message = str(caught.value)
    assert len(message) > 15
    for word in words:
        assert word in message


def test_handler_without_interface_is_refused(clock: Clock, log_path: str) -> None:
    """An object that does not provide IStateHandler (even an IRpc swapped in) is refused."""
    for bad in (object(), R()):
        with pytest.raises(HandlerRequiredError, match="IStateHandler"):
            graft_tx.new(ClusterInfo("c", 3), bad, R(), log_path, clock=clock)
    assert not os.path.exists(log_path)


def test_rpc_without_interface_is_refused(clock: Clock, log_path: str) -> None:
    """An object that does not provide IRpc (even a handler swapped in) is refused."""
    for bad in (object(), H()):
        with pytest.raises(RpcRequiredError, match="IRpc"):
            graft_tx.new(ClusterInfo("c", 3), H(), bad, log_path, clock=clock)
    assert not os.path.exists(log_path)


@pytest.mark.parametrize("node_id", ["", 5, "a\nb", "\udcff"])
def test_bad_node_id_refused(clock: Clock, log_path: str, node_id: Any) -> None:
    """An empty, non-string, unprintable or non-UTF-8 node_id is a NodeIdError; nothing starts."""
    rpc = R()
    with pytest.raises(NodeIdError):
        graft_tx.new(ClusterInfo("c", 3), H(), rpc, log_path, clock=clock, node_id=node_id)
    assert rpc.node is None
    assert clock.getDelayedCalls() == []


def test_rpc_init_failure_propagates(clock: Clock, log_path: str) -> None:
    """An exception from rpc.init comes out of new() and the node never runs."""
    rpc = R()
    rpc.fail_init = RuntimeError("transport refused the node")
    handler = H()
    with pytest.raises(RuntimeError, match="transport refused the node"):
        graft_tx.new(ClusterInfo("c", 3), handler, rpc, log_path, clock=clock)
    assert clock.getDelayedCalls() == []
    clock.advance(10)
    assert handler.changes == []
    assert handler.errors == []
    assert rpc.vote_requests == []


def test_default_node_ids_unique(clock: Clock, tmp_path: Path) -> None:
    """Nodes created without node_id get distinct, non-empty string ids."""
    nodes = [
        graft_tx.new(ClusterInfo("c", 3), H(), R(), str(tmp_path / f"s{i}"), clock=clock)
        for i in range(20)
    ]
    ids = [node.id for node in nodes]
    assert all(isinstance(i, str) and i for i in ids)
    assert len(set(ids)) == len(ids)
    for node in nodes:
        node.close()


def test_new_starts_follower_with_one_election_timer(clock: Clock, log_path: str) -> None:
    """new() returns an initialised FOLLOWER attached to its rpc, with one timer in [min, max)."""
    info = ClusterInfo("c", 3)
    rpc = R()
    node = graft_tx.new(info, H(), rpc, log_path, clock=clock, node_id="me")
    assert rpc.node is node
    assert node.state is State.FOLLOWER
    assert node.id == "me"
    assert node.cluster_info == info
    assert node.log_path == log_path
    assert (node.current_term, node.current_vote, node.leader) == (0, "", "")
    calls = clock.getDelayedCalls()
    assert len(calls) == 1
    assert 0.5 <= calls[0].getTime() - clock.seconds() < 1.0
    # That timer is the election timer.
    clock.advance(1.0)
    assert node.state is State.CANDIDATE
    node.close()


def test_new_uses_given_timing(clock: Clock, log_path: str) -> None:
    """The election timer is drawn from the given Timing's range."""
    node = graft_tx.new(
        ClusterInfo("c", 3), H(), R(), log_path, clock=clock, timing=Timing(2.0, 3.0, 0.5)
    )
    (call,) = clock.getDelayedCalls()
    assert 2.0 <= call.getTime() < 3.0
    clock.advance(1.99)
    assert node.state is State.FOLLOWER
    node.close()


def test_new_rejects_non_timing(clock: Clock, log_path: str) -> None:
    """A timing that is not a graft_tx.Timing is a TimingError."""
    with pytest.raises(TimingError):
        graft_tx.new(ClusterInfo("c", 3), H(), R(), log_path, clock=clock, timing=(1, 2, 0.1))  # type: ignore[arg-type]


def test_new_accepts_path_object(clock: Clock, tmp_path: Path) -> None:
    """log_path may be a pathlib.Path; the node reports it as a str."""
    node = graft_tx.new(ClusterInfo("c", 3), H(), R(), tmp_path / "state", clock=clock)
    assert node.log_path == str(tmp_path / "state")
    assert (tmp_path / "state").exists()
    node.close()


@pytest.mark.parametrize(
    "attribute",
    ["id", "cluster_info", "state", "leader", "current_term", "current_vote", "log_path"],
)
def test_node_attributes_read_only(clock: Clock, log_path: str, attribute: str) -> None:
    """A Node's public attributes cannot be assigned."""
    node = graft_tx.new(ClusterInfo("c", 3), H(), R(), log_path, clock=clock)
    with pytest.raises(AttributeError):
        setattr(node, attribute, getattr(node, attribute))
    node.close()


def test_no_reactor_imported() -> None:
    """Importing graft_tx (and creating a node on a Clock) never imports the global reactor."""
    script = textwrap.dedent(
        """
        import sys, tempfile, os
        import graft_tx, graft_tx.testing
        assert 'twisted.internet.reactor' not in sys.modules, 'imported by import'
        from twisted.internet.task import Clock
        clock = Clock()
        net = graft_tx.testing.MemoryNetwork(clock)
        path = os.path.join(tempfile.mkdtemp(), 'state')
        node = graft_tx.new(graft_tx.ClusterInfo('c', 1), graft_tx.QueueHandler(), net.rpc(),
                            path, clock=clock)
        clock.advance(2)
        node.close()
        assert 'twisted.internet.reactor' not in sys.modules, 'imported by new()'
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=PROJECT,
        env={**os.environ, "PYTHONPATH": str(PROJECT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_default_clock_is_global_reactor() -> None:
    """Without a clock, new() arms its timer on the global reactor (imported then)."""
    script = textwrap.dedent(
        """
        import sys, tempfile, os
        import graft_tx
        from fakes import RecordingHandler, RecordingRpc
        path = os.path.join(tempfile.mkdtemp(), 'state')
        node = graft_tx.new(graft_tx.ClusterInfo('c', 3), RecordingHandler(), RecordingRpc(), path)
        from twisted.internet import reactor
        assert len(reactor.getDelayedCalls()) == 1, reactor.getDelayedCalls()
        node.close()
        assert reactor.getDelayedCalls() == []
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=PROJECT,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(PROJECT), str(PROJECT / "tests")])},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


# -- value types -------------------------------------------------------------


def test_cluster_info_immutable_value() -> None:
    """ClusterInfo cannot be changed and compares and hashes by value."""
    info = ClusterInfo("c", 3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.size = 5  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.name = "d"  # type: ignore[misc]
    assert info == ClusterInfo("c", 3)
    assert hash(info) == hash(ClusterInfo("c", 3))
    assert info != ClusterInfo("c", 4)
    assert info != ClusterInfo("d", 3)
    assert (info.name, info.size) == ("c", 3)


def test_state_names() -> None:
    """str() of each State gives graft's name."""
    assert str(State.FOLLOWER) == "Follower"
    assert str(State.LEADER) == "Leader"
    assert str(State.CANDIDATE) == "Candidate"
    assert str(State.CLOSED) == "Closed"
    assert len(set(State)) == 4


def test_state_change_immutable() -> None:
    """StateChange has from_state/to_state, cannot be changed and compares by value."""
    change = StateChange(State.FOLLOWER, State.CANDIDATE)
    assert change.from_state is State.FOLLOWER
    assert change.to_state is State.CANDIDATE
    with pytest.raises(dataclasses.FrozenInstanceError):
        change.to_state = State.LEADER  # type: ignore[misc]
    assert change == StateChange(from_state=State.FOLLOWER, to_state=State.CANDIDATE)
    assert change != StateChange(State.CANDIDATE, State.FOLLOWER)


def test_quorum() -> None:
    """quorum(n) is n // 2 + 1, and 0 for 0."""
    assert [quorum(n) for n in range(8)] == [0, 1, 2, 2, 3, 3, 4, 4]


# -- Timing --------------------------------------------------------------


def test_timing_defaults() -> None:
    """Timing() has graft's constants: 0.5s, 1.0s, 0.1s."""
    timing = Timing()
    assert timing.election_timeout_min == 0.5
    assert timing.election_timeout_max == 1.0
    assert timing.heartbeat_interval == 0.1


def test_timing_accepts_edges() -> None:
    """A range exactly one heartbeat wide and a heartbeat just below half the minimum are valid."""
    Timing(0.5, 0.6, 0.1)
    Timing(0.5, 1.0, 0.2499)
    Timing(4, 8, 1)


FIELDS = ["election_timeout_min", "election_timeout_max", "heartbeat_interval"]
BAD_NUMBERS = [0, -1, -0.5, math.nan, math.inf, -math.inf, True, "1", None]


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("value", BAD_NUMBERS, ids=repr)
def test_timing_rejects_bad_number(field: str, value: Any) -> None:
    """A non-positive, NaN, infinite, bool or non-number timing is a TimingError naming it."""
    with pytest.raises(TimingError) as caught:
        Timing(**{field: value})
    assert field in str(caught.value)


def test_timing_min_above_max() -> None:
    """An election minimum above the maximum is a TimingError naming both."""
    with pytest.raises(TimingError) as caught:
        Timing(election_timeout_min=2.0, election_timeout_max=1.0, heartbeat_interval=0.1)
    assert "election_timeout_min" in str(caught.value)
    assert "election_timeout_max" in str(caught.value)


@pytest.mark.parametrize("high", [0.5, 0.55, 0.5999])
def test_timing_range_narrower_than_a_heartbeat(high: float) -> None:
    """Equal timeouts, or a range under one heartbeat wide, are a TimingError (split votes)."""
    with pytest.raises(TimingError) as caught:
        Timing(election_timeout_min=0.5, election_timeout_max=high, heartbeat_interval=0.1)
    assert "must exceed election_timeout_min (0.5s) by at least heartbeat_interval" in str(
        caught.value
    )


@pytest.mark.parametrize("beat", [0.25, 0.3, 0.5, 0.9])
def test_timing_heartbeat_too_slow(beat: float) -> None:
    """A heartbeat at or above half the minimum election timeout is a TimingError naming it."""
    with pytest.raises(TimingError) as caught:
        Timing(election_timeout_min=0.5, election_timeout_max=1.0, heartbeat_interval=beat)
    assert "heartbeat_interval" in str(caught.value)


def test_timing_is_immutable() -> None:
    """A Timing cannot be changed after validation."""
    with pytest.raises(dataclasses.FrozenInstanceError):
        Timing().heartbeat_interval = 10.0  # type: ignore[misc]


# -- messages ----------------------------------------------------------------


def test_messages_reexported() -> None:
    """graft_tx re-exports the message types of graft_tx.messages."""
    assert graft_tx.VoteRequest is graft_tx.messages.VoteRequest
    assert graft_tx.VoteResponse is graft_tx.messages.VoteResponse
    assert graft_tx.Heartbeat is graft_tx.messages.Heartbeat


def test_messages_accept_valid_fields() -> None:
    """Messages at the edges of the valid range are built with their fields and defaults."""
    req = VoteRequest(MAX_TERM, "c")
    assert (req.term, req.candidate, req.current_state) == (MAX_TERM, "c", b"")
    assert VoteRequest(0, "c", b"pos").current_state == b"pos"
    resp = VoteResponse(0, False)
    assert (resp.term, resp.granted, resp.voter) == (0, False, "")
    assert VoteResponse(MAX_TERM, True, "v").voter == "v"
    hb = Heartbeat(MAX_TERM, "l")
    assert (hb.term, hb.leader) == (MAX_TERM, "l")


BAD_MESSAGES: dict[str, Callable[[], object]] = {
    "request term str": lambda: VoteRequest("1", "c"),  # type: ignore[arg-type]
    "request term float": lambda: VoteRequest(1.0, "c"),  # type: ignore[arg-type]
    "request term bool": lambda: VoteRequest(True, "c"),
    "request term negative": lambda: VoteRequest(-1, "c"),
    "request term too big": lambda: VoteRequest(2**64, "c"),
    "request candidate empty": lambda: VoteRequest(1, ""),
    "request candidate None": lambda: VoteRequest(1, None),  # type: ignore[arg-type]
    "request state str": lambda: VoteRequest(1, "c", "pos"),  # type: ignore[arg-type]
    "response term str": lambda: VoteResponse("1", True),  # type: ignore[arg-type]
    "response term negative": lambda: VoteResponse(-1, True),
    "response term too big": lambda: VoteResponse(2**64, True),
    "response granted int": lambda: VoteResponse(1, 1),  # type: ignore[arg-type]
    "response granted str": lambda: VoteResponse(1, "yes"),  # type: ignore[arg-type]
    "response voter None": lambda: VoteResponse(1, True, None),  # type: ignore[arg-type]
    "heartbeat term None": lambda: Heartbeat(None, "l"),  # type: ignore[arg-type]
    "heartbeat term negative": lambda: Heartbeat(-1, "l"),
    "heartbeat term too big": lambda: Heartbeat(2**64, "l"),
    "heartbeat leader empty": lambda: Heartbeat(1, ""),
    "heartbeat leader int": lambda: Heartbeat(1, 5),  # type: ignore[arg-type]
}


@pytest.mark.parametrize("build", list(BAD_MESSAGES.values()), ids=list(BAD_MESSAGES))
def test_messages_reject_bad_fields(build: Callable[[], object]) -> None:
    """A message with a field of the wrong type or range is a MessageError (a GraftError)."""
    with pytest.raises(MessageError) as caught:
        build()
    assert isinstance(caught.value, GraftError)
    assert str(caught.value)


def test_messages_immutable() -> None:
    """Messages cannot be changed once built."""
    with pytest.raises(dataclasses.FrozenInstanceError):
        VoteRequest(1, "c").term = 2  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        VoteResponse(1, True).granted = False  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        Heartbeat(1, "l").leader = "x"  # type: ignore[misc]


# -- interfaces --------------------------------------------------------------


def _node(tmp_path: Path) -> object:
    return graft_tx.new(ClusterInfo("c", 3), H(), R(), str(tmp_path / "state"), clock=Clock())


PROVIDERS: list[tuple[str, Callable[[Path], object], Any]] = [
    ("Node", _node, IElectionNode),
    ("QueueHandler", lambda _: graft_tx.QueueHandler(), IStateMachineHandler),
    (
        "QueueHandler with machine",
        lambda _: graft_tx.QueueHandler(PolicyHandler()),
        IStateMachineHandler,
    ),
    ("MemoryRpc", lambda _: graft_tx.testing.MemoryNetwork(Clock()).rpc(), IRpc),
    ("NatsRpc stats", lambda _: graft_tx.NatsRpc(), ITransportStats),
    (
        "TcpRpc stats",
        lambda _: graft_tx.TcpRpc("tcp:7001", ["tcp:host=127.0.0.1:port=7002"]),
        ITransportStats,
    ),
    ("RecordingRpc", lambda _: R(), IRpc),
    ("RecordingHandler", lambda _: H(), IStateHandler),
    ("PolicyHandler", lambda _: PolicyHandler(), IStateMachineHandler),
]


@pytest.mark.parametrize(
    ("make", "interface"),
    [(make, iface) for _, make, iface in PROVIDERS],
    ids=[name for name, _, _ in PROVIDERS],
)
def test_providers_verify(
    tmp_path: Path, make: Callable[[Path], object], interface: type[Interface]
) -> None:
    """Every provider in the package and the test fakes passes verifyObject for its interface."""
    obj = make(tmp_path)
    assert interface.providedBy(obj)  # type: ignore[attr-defined]
    assert verifyObject(interface, obj)


def test_state_machine_handler_extends_state_handler() -> None:
    """IStateMachineHandler providers are IStateHandler providers too."""
    assert IStateMachineHandler.extends(IStateHandler)
    assert IStateHandler.providedBy(graft_tx.QueueHandler())


# -- the package -----------------------------------------------------------


def test_all_names_exist() -> None:
    """Every name in graft_tx.__all__ exists, once, and the spec's names are all there."""
    assert len(set(graft_tx.__all__)) == len(graft_tx.__all__)
    for name in graft_tx.__all__:
        assert hasattr(graft_tx, name), name
    required = {
        "ClusterInfo",
        "State",
        "StateChange",
        "quorum",
        "new",
        "Node",
        "Timing",
        "QueueHandler",
        "GraftService",
        "VoteRequest",
        "VoteResponse",
        "Heartbeat",
        "GraftError",
        "ClusterNameError",
        "ClusterSizeError",
        "HandlerRequiredError",
        "RpcRequiredError",
        "LogRequiredError",
        "LogCorruptError",
        "LogAccessError",
        "TimingError",
        "MessageError",
        "NodeIdError",
    }
    assert required <= set(graft_tx.__all__)


def test_errors_derive_from_graft_error() -> None:
    """Every exception class graft_tx exports derives from GraftError."""
    errors = [
        getattr(graft_tx, name)
        for name in graft_tx.__all__
        if isinstance(getattr(graft_tx, name), type)
        and issubclass(getattr(graft_tx, name), BaseException)
    ]
    assert len(errors) >= 12
    for error in errors:
        assert issubclass(error, GraftError), error


def test_node_config_checks_each_field(tmp_path: Path) -> None:
    """NodeConfig refuses what new() refuses, in field order, and is what the node keeps."""
    info = ClusterInfo("c", 3)
    path = str(tmp_path / "n.state")
    for kwargs, error in [
        ({"info": ClusterInfo("", 3)}, ClusterNameError),
        ({"info": ClusterInfo("c", 0)}, ClusterSizeError),
        ({"state_path": ""}, LogRequiredError),
        ({"node_id": "a\nb"}, NodeIdError),
        ({"timing": 1.0}, TimingError),
        ({"protocol": "raft"}, ProtocolModeError),
        ({"priority": -1}, ProtocolModeError),
        ({"priority": True}, ProtocolModeError),
    ]:
        with pytest.raises(error):
            NodeConfig(**{"info": info, "state_path": path, **kwargs})
    config = NodeConfig(info, tmp_path / "n.state", node_id="a", protocol="graft")  # type: ignore[arg-type]
    assert config.state_path == path
    node = graft_tx.new(info, H(), R(), path, clock=Clock(), node_id="a", protocol="graft")
    assert node.config == config


@pytest.mark.parametrize(
    ("text", "heartbeat", "expected"),
    [
        ("0.5-1.0", None, Timing(0.5, 1.0, 0.1)),
        ("1-2", "0.2", Timing(1.0, 2.0, 0.2)),
        ("0.15-0.3", 0.03, Timing(0.15, 0.3, 0.03)),
    ],
)
def test_timing_parses_the_option_text(
    text: str, heartbeat: str | float | None, expected: Timing
) -> None:
    """Timing.parse reads "MIN-MAX" seconds and a heartbeat, as the daemon's options give them."""
    assert Timing.parse(text, heartbeat) == expected


@pytest.mark.parametrize(
    ("text", "heartbeat", "words"),
    [
        ("0.5", None, "MIN-MAX"),
        ("0.5-1.0-2", None, "MIN-MAX"),
        ("a-1", None, "minimum election timeout"),
        ("0.5-inf", None, "maximum election timeout"),
        ("0.5-1.0", "soon", "heartbeat"),
        ("1.0-0.5", None, "must not exceed"),
        ("0.5-1.0", "0.3", "below half"),
    ],
)
def test_timing_parse_refuses_bad_text(text: str, heartbeat: str | None, words: str) -> None:
    """Bad option text is a TimingError that says what is wrong."""
    with pytest.raises(TimingError, match=words):
        Timing.parse(text, heartbeat)
