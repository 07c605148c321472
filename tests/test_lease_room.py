"""A lease tracks a bounded number of followers: made-up ids cannot crowd out real ones."""

from __future__ import annotations

from graft_tx.lease import Lease


def test_new_ids_beyond_the_room_are_dropped_while_every_tracked_one_keeps_up() -> None:
    """With room for 4, a fifth id is dropped while the four acknowledge steadily,
    and the lease stays what the real followers made it."""
    lease = Lease(0.0, 1.0, 2, gap=0.25, room=4)
    now = 0.0
    for step in range(10):
        now = step * 0.1
        seq = lease.next_heartbeat(now)
        for follower in ("a", "b", "c", "d"):
            lease.ack(follower, seq, 1, now + 0.001)
        assert not lease.ack(f"ghost{step}", seq, 1, now + 0.002)
    assert set(lease.acked) == {"a", "b", "c", "d"}
    assert lease.crowded == 10
    assert lease.expiry is not None and lease.holds(now + 0.5)


def test_a_follower_that_stopped_makes_room() -> None:
    """An id not heard for longer than the gap is forgotten to make room for a new one."""
    lease = Lease(0.0, 1.0, 2, gap=0.25, room=2)
    seq = lease.next_heartbeat(0.0)
    lease.ack("gone", seq, 1, 0.001)
    lease.ack("a", seq, 1, 0.001)
    for step in range(1, 5):
        now = step * 0.1
        seq = lease.next_heartbeat(now)
        lease.ack("a", seq, 1, now)
    lease.ack("b", seq, 1, 0.4)
    assert set(lease.acked) == {"a", "b"}
    assert "gone" not in lease.priorities and "gone" not in lease.ack_times


def test_the_default_room_is_four_times_the_quorum() -> None:
    """Without room=, a lease of quorum 2 tracks 8 followers at most."""
    lease = Lease(0.0, 1.0, 2, gap=0.25)
    seq = lease.next_heartbeat(0.0)
    for i in range(20):
        lease.ack(f"f{i}", seq, 1, 0.001)
    assert len(lease.acked) == 8
