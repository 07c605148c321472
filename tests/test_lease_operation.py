"""The lease in ordinary operation: restarts under new ids, wall-clock steps,
mismatched timings, hostile terms, priority flapping, and the smaller
hand-over and pre-vote faults that broke it (issue 11).

Each test here failed before the fix it names. Unit tests play one node's
peers by hand (L{txnodes.unit}); the proofs run real nodes on a MemoryNetwork
(L{txnodes.Net}), which checks after every event that no two nodes hold a
lease at once and no term has two leaders.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

import pytest
from fakes import Lowest, RecordingHandler, RecordingRpc, failure_of, fired, result_of
from twisted.internet.task import Clock
from twisted.logger import LogEvent, LogLevel, globalLogPublisher
from txnodes import FIXED, ME, F, L, Net, W, lead, unit

import graft_tx
import graft_tx.clocks
import graft_tx.node
from graft_tx import (
    ClusterInfo,
    Heartbeat,
    HeartbeatAck,
    NodeIdError,
    Timing,
    TransferError,
    VoteRequest,
    VoteResponse,
)
from graft_tx.lease import DRIFT, Lease
from graft_tx.messages import MAX_TERM
from graft_tx.node import TERM_JUMP
from graft_tx.statefile import PersistentState, StateFile

INFO = ClusterInfo("cluster", 3)


def make(path: Path, node_id: str | None = None, **kwargs: object) -> graft_tx.Node:
    return graft_tx.new(
        INFO,
        RecordingHandler(),
        RecordingRpc(),
        str(path),
        clock=Clock(),
        node_id=node_id,
        **kwargs,
    )  # type: ignore[arg-type]


class Warnings(list[LogEvent]):
    """Warnings and worse logged while it listens."""

    def __call__(self, event: LogEvent) -> None:
        if event.get("log_level", LogLevel.info) >= LogLevel.warn:
            self.append(event)


@pytest.fixture
def warnings() -> Warnings:
    seen = Warnings()
    globalLogPublisher.addObserver(seen)
    yield seen
    globalLogPublisher.removeObserver(seen)


# -- 1. identity that survives restarts ------------------------------------------


def test_a_node_started_without_an_id_keeps_the_one_its_file_records(tmp_path: Path) -> None:
    """new() without node_id takes the id the state file recorded at the first start."""
    path = tmp_path / "state"
    first = make(path)
    result_of(first.close())
    assert StateFile(str(path)).load().node_id == first.id
    second = make(path)
    assert second.id == first.id
    result_of(second.close())


def test_an_explicit_id_other_than_the_recorded_one_is_refused(tmp_path: Path) -> None:
    """A node id that differs from the one the state file records raises NodeIdError naming both."""
    path = tmp_path / "state"
    result_of(make(path, "alpha").close())
    with pytest.raises(NodeIdError) as caught:
        make(path, "beta")
    assert "'alpha'" in str(caught.value) and "'beta'" in str(caught.value)
    assert StateFile(str(path)).load().node_id == "alpha"


def test_a_go_graft_file_gets_the_id_and_stays_readable_by_go(tmp_path: Path) -> None:
    """A file without an id keeps its term and vote, gains the id, and keeps Go's two fields."""
    path = tmp_path / "state"
    StateFile(str(path)).save(PersistentState(7, "x"))
    node = make(path, "alpha")
    assert (node.current_term, node.current_vote) == (7, "x")
    envelope = json.loads(path.read_bytes())
    data = json.loads(base64.b64decode(envelope["Data"]))
    # Go's encoding/json skips the unknown keys and reads the rest.
    assert data == {"CurrentTerm": 7, "VotedFor": "x", "NodeID": "alpha", "WindowUs": 500_000}
    result_of(node.close())


def test_a_new_identity_acknowledges_nothing_until_its_old_self_has_expired(
    tmp_path: Path,
) -> None:
    """A node whose file did not record its id acks no heartbeat for a minimum election timeout."""
    rpc = RecordingRpc()
    clock = Clock()
    graft_tx.new(
        INFO, RecordingHandler(), rpc, str(tmp_path / "s"), clock=clock, timing=FIXED, node_id=ME
    )
    clock.advance(0.5)
    rpc.node.handle_heartbeat(Heartbeat(1, "L", 1))  # type: ignore[union-attr]
    clock.advance(0.49)
    rpc.node.handle_heartbeat(Heartbeat(1, "L", 2))  # type: ignore[union-attr]
    assert rpc.acks == []
    clock.advance(0.01)
    rpc.node.handle_heartbeat(Heartbeat(1, "L", 3))  # type: ignore[union-attr]
    assert rpc.acks == [("L", HeartbeatAck(1, ME, 3, 1, W))]


def test_a_restarted_node_with_its_recorded_id_acknowledges_at_once(tmp_path: Path) -> None:
    """A node that restarts under the id its file records acks the first heartbeat it hears."""
    u = unit(tmp_path, saved=PersistentState(1, "", ME))
    u.node.handle_heartbeat(Heartbeat(1, "L", 1))
    assert u.rpc.acks == [("L", HeartbeatAck(1, ME, 1, 1, W))]


@pytest.mark.parametrize("lost_file", [False, True], ids=["file-kept", "file-lost"])
def test_a_follower_restarted_without_an_id_does_not_count_twice(
    tmp_path: Path, lost_file: bool
) -> None:
    """{leader, follower} cut off from 3; the follower restarts without --node-id: one lease only.

    Kept file: it comes back under its recorded id. Lost file: it comes back
    under a new id, and keeps quiet until its old acknowledgements expired.
    """
    net = Net(tmp_path)
    names = {net.start(node_id, anonymous=True).id: node_id for node_id in net.ids}
    old = net.elect()
    net.run(1.0)
    partner = sorted((n for n in net.nodes.values() if n is not old), key=lambda n: n.id)[0]
    rest = [n for n in net.nodes.values() if n not in (old, partner)]
    net.network.split([old, partner], rest)
    # The partner acknowledges the cut-off leader for a while, then restarts.
    net.run(0.3)
    net.crash(partner)
    again = net.start(names[partner.id], anonymous=True, fresh=lost_file)
    assert (again.id == partner.id) is not lost_file
    net.network.restore()
    net.network.split([old, again], rest)
    net.run(3.0)  # Net.check: never two leases at once
    (leader,) = net.leaders()
    assert leader in rest
    net.close()


def test_a_restart_with_shorter_timings_keeps_the_old_promise(tmp_path: Path) -> None:
    """A node restarted with a shorter minimum timeout refuses votes for its old one first:
    its earlier self may have promised that long. Its file then records the new one."""
    path = tmp_path / "s"
    first = make(path, ME, timing=FIXED)
    result_of(first.close())
    assert StateFile(str(path)).load().window_us == 1_000_000
    clock = Clock()
    rpc = RecordingRpc()
    short = Timing(0.2, 0.4, 0.05)
    graft_tx.new(INFO, RecordingHandler(), rpc, str(path), clock=clock, timing=short, node_id=ME)
    node = rpc.node
    assert node is not None
    clock.advance(0.5)
    node.handle_vote_request(VoteRequest(1, "c"))
    assert rpc.vote_responses[-1] == ("c", VoteResponse(0, False, ME))
    clock.advance(0.5)
    node.handle_vote_request(VoteRequest(1, "c"))
    assert rpc.vote_responses[-1] == ("c", VoteResponse(1, True, ME))
    assert StateFile(str(path)).load() == PersistentState(1, "c", ME, 200_000)


def test_an_absurdly_long_timeout_still_fits_the_ack(tmp_path: Path) -> None:
    """A minimum timeout whose microseconds overflow 64 bits acks with the largest promise."""
    path = tmp_path / "s"
    huge = Timing(2e13, 3e13, 0.1)
    result_of(make(path, ME, timing=huge).close())
    node = make(path, ME, timing=huge)
    rpc = cast(RecordingRpc, node._rpc)
    node.handle_heartbeat(Heartbeat(1, "L", 1))
    assert rpc.acks == [("L", HeartbeatAck(1, ME, 1, 1, MAX_TERM))]
    result_of(node.close())


# -- 2. every safety decision on the monotonic clock -----------------------------


def restarted_on(tmp_path: Path, wall: Clock, steady: Callable[[], float]) -> RecordingRpc:
    """A node "me" that ran before (its id recorded) scheduling on C{wall} and
    deciding on C{steady}, with exact 1s election timeouts; its transport."""
    rpc = RecordingRpc()
    path = str(tmp_path / "s")
    StateFile(path).save(PersistentState(0, "", ME))
    graft_tx.new(
        INFO,
        RecordingHandler(),
        rpc,
        path,
        clock=wall,
        monotonic=steady,
        timing=FIXED,
        node_id=ME,
        rng=Lowest(),
    )
    return rpc


def test_a_wall_clock_step_does_not_start_an_early_campaign(tmp_path: Path) -> None:
    """A follower whose wall clock jumps ahead waits out its promise on the monotonic clock."""
    wall, steady = Clock(), Clock()
    rpc = restarted_on(tmp_path, wall, steady.seconds)
    for clock in (steady, wall):
        clock.advance(0.75)
    rpc.node.handle_heartbeat(Heartbeat(1, "L", 1))  # type: ignore[union-attr]
    assert rpc.acks
    wall.advance(3600)
    assert rpc.vote_requests == []
    # The steady clock moves first, as time passes before a timer fires.
    for clock in (steady, wall):
        clock.advance(0.75)
    assert rpc.vote_requests == []
    for clock in (steady, wall):
        clock.advance(0.25)
    assert rpc.vote_requests == [VoteRequest(2, ME, pre_vote=True)]


def test_a_wait_below_the_clock_s_resolution_does_not_spin(tmp_path: Path) -> None:
    """An election timer that fires a hair before the steady clock agrees waits at least
    a millisecond, instead of firing again and again at the same instant."""
    wall = Clock()
    wall.advance(1e6)
    reads = [0]

    def steady() -> float:
        # A hair slower than the wall clock: after 1s, less behind than the
        # wall clock's float resolution at 1e6.
        reads[0] += 1
        if reads[0] > 10_000:
            raise AssertionError("the election timer spins")
        return (wall.seconds() - 1e6) * (1 - 1e-12)

    rpc = restarted_on(tmp_path, wall, steady)
    wall.advance(1.0)
    assert rpc.vote_requests == []
    wall.advance(0.001)
    assert rpc.vote_requests == [VoteRequest(1, ME, pre_vote=True)]


def test_the_default_steady_clock_counts_a_suspended_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """steady_clock() reads CLOCK_BOOTTIME where the platform has it, not time.monotonic."""
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    if boottime is None:
        assert graft_tx.clocks.steady_clock() is time.monotonic
        return
    real = time.clock_gettime

    def fake(clock_id: int) -> float:
        return 1234.5 if clock_id == boottime else real(clock_id)

    monkeypatch.setattr(time, "clock_gettime", fake)
    assert graft_tx.clocks.steady_clock()() == 1234.5


def test_new_without_a_clock_measures_leases_on_the_steady_clock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node on the real reactor measures its lease on steady_clock()."""
    monkeypatch.setattr(graft_tx.node, "steady_clock", lambda: lambda: 42.0)
    node = graft_tx.new(INFO, RecordingHandler(), RecordingRpc(), str(tmp_path / "s"))
    try:
        assert node.monotonic() == 42.0
    finally:
        result_of(node.close())


# -- 3. timings that cannot disagree silently -----------------------------------


def test_a_lease_never_outlasts_a_follower_s_shorter_promise() -> None:
    """A follower promising 0.5s bounds the lease of a leader on 1.0s timeouts to 0.475s."""
    lease = Lease(0.0, 1.0, 2, gap=0.2)
    seq = lease.next_heartbeat(10.0)
    assert lease.ack("a", seq, 1, 10.001, window=0.5)
    assert lease.expiry == pytest.approx(10.0 + 0.5 * (1 - DRIFT))
    # An unknown promise (an older peer) counts as the leader's own minimum.
    seq = lease.next_heartbeat(11.0)
    assert lease.ack("b", seq, 1, 11.001)
    assert lease.expiry == pytest.approx(11.0 + 1.0 * (1 - DRIFT))


def test_a_slow_leader_cut_off_from_faster_followers_leaves_before_they_elect(
    tmp_path: Path,
) -> None:
    """A leader on 1.0-2.0s timeouts, cut off from followers on 0.5-1.0s: never two leases."""
    slow = Timing(1.0, 2.0, 0.1)
    net = Net(tmp_path, size=3)
    net.start("n0", timing=slow)
    net.start("n1")
    net.start("n2")
    leader = net.elect()
    # n0 is a new identity: it acknowledges nothing for its first second.
    net.run(1.5)
    if leader.id != "n0":
        leader.transfer_leadership("n0")
        net.run(3.0, until=lambda: net.agreed() is net.nodes["n0"])
    assert net.agreed() is net.nodes["n0"]
    net.run(1.0)
    net.network.split(["n0"], ["n1", "n2"])
    net.run(4.0)  # Net.check: never two leases at once
    (leader,) = net.leaders()
    assert leader.id != "n0"
    net.close()


# -- 4. terms that cannot be used up --------------------------------------------


def test_an_absurd_term_is_dropped_and_elections_go_on(tmp_path: Path, warnings: Warnings) -> None:
    """Messages of term 2**64-1 from a stranger are dropped; each moves terms up by 2**32 only."""
    net = Net(tmp_path, size=3).start_all()
    leader = net.elect()
    term = leader.current_term
    for node in net.nodes.values():
        node.handle_heartbeat(Heartbeat(MAX_TERM, "evil", 1, node.id))
        node.handle_vote_request(VoteRequest(MAX_TERM, "evil"))
        node.handle_vote_response(VoteResponse(MAX_TERM, False, "evil"))
        node.handle_heartbeat_ack(HeartbeatAck(MAX_TERM, "evil", 1))
    assert {node.current_term for node in net.nodes.values()} == {term + 4 * TERM_JUMP}
    assert {node.leader for node in net.nodes.values()} == {""}
    assert any("more than 2**32 above" in str(e.get("log_format")) for e in warnings)
    net.crash(leader)
    net.elect()
    net.close()


def test_a_pre_vote_request_from_far_above_changes_nothing(tmp_path: Path) -> None:
    """A pre-vote request of an absurd term is dropped without moving the node's term."""
    u = unit(tmp_path, saved=PersistentState(5, ""))
    u.clock.advance(2.0)
    u.node.handle_vote_request(VoteRequest(MAX_TERM, "evil", pre_vote=True))
    assert u.node.current_term == 5
    assert u.rpc.vote_responses == []


def test_a_node_far_behind_catches_up_in_steps_of_2_to_the_32(tmp_path: Path) -> None:
    """A heartbeat more than TERM_JUMP ahead is dropped and lifts the term by TERM_JUMP;
    the leader's next heartbeat is then within reach and followed."""
    u = unit(tmp_path, saved=PersistentState(5, ""))
    far = 5 + TERM_JUMP + 1
    u.node.handle_heartbeat(Heartbeat(far, "L", 1))
    assert (u.node.current_term, u.node.leader) == (5 + TERM_JUMP, "")
    u.node.handle_heartbeat(Heartbeat(far, "L", 2))
    assert (u.node.current_term, u.node.leader) == (far, "L")


@pytest.mark.parametrize("size", [1, 3])
def test_a_node_at_the_last_term_neither_raises_nor_writes_a_bad_file(
    tmp_path: Path, size: int, warnings: Warnings
) -> None:
    """At term 2**64-1 (from its file) a node warns instead of campaigning; its file still loads."""
    path = tmp_path / "s"
    StateFile(str(path)).save(PersistentState(MAX_TERM - 1, "", ME))
    clock = Clock()
    rpc = RecordingRpc()
    node = graft_tx.new(
        ClusterInfo("c", size),
        RecordingHandler(),
        rpc,
        str(path),
        clock=clock,
        timing=FIXED,
        node_id=ME,
        rng=Lowest(),
    )
    if size == 1:
        clock.advance(1.0)
        assert (node.state, node.current_term) == (L, MAX_TERM)
    else:
        clock.advance(0.75)
        node.handle_heartbeat(Heartbeat(MAX_TERM - 1, "L", 1))
        clock.advance(0.5)  # past its start window, before its timeout
        node.handle_heartbeat(Heartbeat(MAX_TERM - 1, "L", 2, ME))
        assert node.current_term == MAX_TERM
    node.handle_heartbeat(Heartbeat(MAX_TERM, "K", 1, ME))
    node.close()
    node = graft_tx.new(
        ClusterInfo("c", size),
        RecordingHandler(),
        RecordingRpc(),
        str(path),
        clock=clock,
        timing=FIXED,
        node_id=ME,
    )
    assert node.current_term == MAX_TERM
    clock.advance(5.0)
    assert node.current_term == MAX_TERM
    assert any("cannot campaign" in str(e.get("log_format")) for e in warnings)
    node.close()


# -- 5. priorities that settle ---------------------------------------------------


def test_a_higher_priority_node_without_a_quorum_does_not_make_the_cluster_flap(
    tmp_path: Path,
) -> None:
    """n4 (priority 3) hears only n0 (priority 2): leadership settles instead of flapping.

    n0 campaigns first and wins each time n4 fails to; without a back-off it
    handed over to n4 again at once, every couple of seconds.
    """
    net = Net(tmp_path, size=5)
    for node_id in net.ids:
        net.start(node_id, priority={"n4": 3, "n0": 2}.get(node_id, 1))
    net.elect()
    net.network.split(["n4"], ["n1", "n2", "n3"])
    changes: list[tuple[int, str]] = []
    led = [0]

    def sample() -> None:
        leading = net.leaders()
        if leading:
            led[0] += 1
            seen = (leading[0].current_term, leading[0].id)
            if not changes or changes[-1] != seen:
                changes.append(seen)

    steps = 30.0 / net.step
    net.run(30.0, each=sample)
    assert len(changes) <= 7, changes
    assert led[0] >= 0.9 * steps
    net.close()


def test_a_hand_over_to_the_same_follower_backs_off(tmp_path: Path) -> None:
    """After a priority hand-over to a target, the next one to it waits, twice as long each time."""
    u = unit(tmp_path, size=3)
    base = graft_tx.node.HANDOVER_BACKOFF * FIXED.election_timeout_max
    u.node._back_off("h")
    assert u.node._backoffs["h"].delay == base
    u.node._back_off("h")
    assert u.node._backoffs["h"].delay == 2 * base
    assert u.node._backoffs["h"].not_before == pytest.approx(u.clock.seconds() + 2 * base)


def test_the_back_off_ends_once_the_target_has_led_that_long(tmp_path: Path) -> None:
    """Following the target as leader for the whole back-off clears it; less does not."""
    u = unit(tmp_path, saved=PersistentState(1, ""))
    u.node._back_off("h")
    delay = u.node._backoffs["h"].delay
    u.node.handle_heartbeat(Heartbeat(1, "h", 1))
    for seq in range(2, 2 + int(delay / FIXED.heartbeat_interval)):
        u.clock.advance(FIXED.heartbeat_interval)
        assert "h" in u.node._backoffs
        u.node.handle_heartbeat(Heartbeat(1, "h", seq))
    assert "h" not in u.node._backoffs


# -- 6. a second transfer does not drop the first --------------------------------


def test_a_pending_transfer_fails_when_the_node_leads_again(tmp_path: Path) -> None:
    """Transfer, win again before it times out, transfer again: the first Deferred fails."""
    u = unit(tmp_path)
    lead(u, ("a",))
    first = u.node.transfer_leadership("a")
    u.clock.advance(1.0)  # its own election timeout: a pre-vote for term 2
    u.node.handle_vote_response(VoteResponse(2, True, "b", pre_vote=True))
    u.node.handle_vote_response(VoteResponse(2, True, "b"))
    assert u.node.state is L
    assert "won term 2 itself" in failure_of(first).getErrorMessage()
    u.node.handle_heartbeat_ack(HeartbeatAck(2, "a", u.node._lease.seq))  # type: ignore[union-attr]
    second = u.node.transfer_leadership("a")
    assert not fired(second)
    u.clock.advance(FIXED.election_timeout_max)
    assert failure_of(second).check(TransferError)


# -- 7. a late pre-vote grant ----------------------------------------------------


def test_a_late_pre_vote_grant_does_not_depose_a_fresh_leader(tmp_path: Path) -> None:
    """A candidate that starts a pre-vote round and then wins ignores that round's late grants."""
    u = unit(tmp_path)
    u.clock.advance(1.0)
    u.node.handle_vote_response(VoteResponse(1, True, "a", pre_vote=True))
    assert u.node.state.name == "CANDIDATE"
    u.clock.advance(1.0)  # the candidate's timeout: a pre-vote round for term 2
    assert u.rpc.vote_requests[-1] == VoteRequest(2, ME, pre_vote=True)
    u.node.handle_vote_response(VoteResponse(1, True, "a"))  # a late vote: it wins term 1
    assert (u.node.state, u.node.current_term) == (L, 1)
    u.node.handle_vote_response(VoteResponse(2, True, "b", pre_vote=True))
    assert (u.node.state, u.node.current_term) == (L, 1)


# -- 9. a hand-over is repeated --------------------------------------------------


def test_the_hand_over_heartbeat_is_repeated_until_the_target_leads(tmp_path: Path) -> None:
    """The old leader sends the hand-over every heartbeat interval until the target leads."""
    u = unit(tmp_path)
    lead(u, ("a",))

    def handovers() -> int:
        return sum(1 for hb in u.rpc.heartbeats if hb.transfer_to == "a")

    done = u.node.transfer_leadership("a")
    assert handovers() == 1
    u.clock.advance(FIXED.heartbeat_interval)
    assert handovers() == 2
    u.clock.advance(FIXED.heartbeat_interval)
    assert handovers() == 3
    u.node.handle_heartbeat(Heartbeat(2, "a", 1))
    assert result_of(done) == "a"
    u.clock.advance(1.0)
    assert handovers() == 3


def test_a_target_in_its_start_window_takes_over_at_a_later_copy(tmp_path: Path) -> None:
    """A target named while in its start window does not vote for itself then; a copy of the
    hand-over after its window makes it campaign."""
    u = unit(tmp_path, saved=PersistentState(2, ""))
    u.node.handle_heartbeat(Heartbeat(2, "L", 1))
    u.node.handle_heartbeat(Heartbeat(2, "L", 0, ME))
    assert [r for r in u.rpc.vote_requests if r.transfer] == []
    u.clock.advance(FIXED.election_timeout_min)
    u.node.handle_heartbeat(Heartbeat(2, "L", 0, ME))
    assert [r for r in u.rpc.vote_requests if r.transfer] == [VoteRequest(3, ME, transfer=True)]


def test_the_hand_over_is_repeated_until_the_transfer_times_out(tmp_path: Path) -> None:
    """Without an answer, the copies stop when the transfer fails."""
    u = unit(tmp_path)
    lead(u, ("a",))
    u.node.transfer_leadership("a").addErrback(lambda _: None)
    for _ in range(8):
        u.clock.advance(FIXED.heartbeat_interval)
    repeats = [hb for hb in u.rpc.heartbeats if hb.transfer_to == "a"]
    # At 0, 0.25, 0.5, 0.75 and 1.0 s; the transfer fails at 1.25 s.
    assert len(repeats) == 5


# -- 10. smaller ---------------------------------------------------------------


def test_same_term_heartbeats_from_another_leader_are_rate_limited(
    tmp_path: Path, warnings: Warnings
) -> None:
    """3,000 same-term heartbeats naming another leader log ten warnings at most, no error."""
    u = unit(tmp_path)
    lead(u, ("a",))
    for _ in range(3000):
        u.node.handle_heartbeat(Heartbeat(u.node.current_term, "intruder", 1))
    about = [e for e in warnings if "in the same term" in str(e.get("log_format"))]
    assert 1 <= len(about) <= 10
    assert u.node.state is L


def test_a_follower_follows_the_newest_leader_of_its_term(
    tmp_path: Path, warnings: Warnings
) -> None:
    """A follower of L in term 1 that hears another leader of term 1 warns and follows it,
    so that a stranger who spoke first cannot keep it from its real leader."""
    u = unit(tmp_path, saved=PersistentState(1, ""))
    u.node.handle_heartbeat(Heartbeat(1, "stranger", 1))
    u.node.handle_heartbeat(Heartbeat(1, "L", 1))
    assert (u.node.state, u.node.leader) == (F, "L")
    assert [leader for leader, _ in u.rpc.acks] == ["stranger", "L"]
    assert any("in the same term" in str(e.get("log_format")) for e in warnings)


def test_a_follower_switched_between_two_leaders_of_one_term_logs_a_bounded_amount(
    tmp_path: Path,
) -> None:
    """3,000 same-term heartbeats alternating between two leaders: the follower follows
    each (newest wins), but its log gets ten lines of each kind at most, not 6,000."""
    seen: list[LogEvent] = []
    globalLogPublisher.addObserver(seen.append)
    try:
        u = unit(tmp_path, saved=PersistentState(1, ""))
        for i in range(3000):
            u.node.handle_heartbeat(Heartbeat(1, ("L", "stranger")[i % 2], 1))
    finally:
        globalLogPublisher.removeObserver(seen.append)
    assert u.node.leader == "stranger"
    known = [e for e in seen if e.get("event") == "leader_known"]
    odd = [e for e in seen if "in the same term" in str(e.get("log_format"))]
    assert 1 <= len(known) <= 11 and 1 <= len(odd) <= 10
    assert u.node.stats().leader_changes == 3000
