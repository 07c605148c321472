"""A leader's lease: the heartbeats a quorum acknowledged, and how long that holds.

A follower that acknowledges heartbeat k (sent at time t) resets its election
timer when it receives it, and in graft-tx mode it grants no vote or pre-vote
for anyone else until the minimum election timeout has passed since it last
heard from the leader. Any new leader needs the vote of one of the quorum that
acknowledged heartbeat k, so none can be elected before t + the minimum
election timeout, and the leader may consider itself the only leader until
then. The lease keeps a margin (L{DRIFT}) for clocks that run at slightly
different rates on different machines.

Nodes may run different timings: each acknowledgement carries the
follower's own promise (its minimum election timeout), and a follower counts
for no longer than it promised, nor longer than the leader's own minimum.
Each follower id counts once, with its newest acknowledgement.
"""

from __future__ import annotations

DRIFT = 0.05
_KEEP = 64


class Lease:
    """What one leader, in one term, knows of its followers' acknowledgements."""

    def __init__(self, now: float, duration: float, quorum: int, gap: float, room: int = 0) -> None:
        """C{gap}: the longest pause between a follower's acks that still
        counts as steady (for priority handovers). C{room}: how many
        followers are tracked at most (default four times the quorum)."""
        self.started = now
        self._room = room or 4 * quorum
        self._gap = gap
        self.steady_since: dict[str, float] = {}
        self.duration = duration * (1 - DRIFT)
        self._quorum = quorum
        self._sent: dict[int, float] = {}
        self.acked: dict[str, int] = {}
        self._promises: dict[str, float] = {}
        self.ack_times: dict[str, float] = {}
        self.priorities: dict[str, int] = {}
        self.seq = 0
        self.expiry: float | None = None
        # Acknowledgements dropped for want of room (see ack()).
        self.crowded = 0

    def _forget(self, follower: str) -> None:
        for table in (self.acked, self._promises, self.ack_times, self.priorities):
            table.pop(follower, None)
        self.steady_since.pop(follower, None)

    def next_heartbeat(self, now: float) -> int:
        """Number the next heartbeat, sent C{now}."""
        self.seq += 1
        self._sent[self.seq] = now
        self._sent.pop(self.seq - _KEEP, None)
        if self._quorum <= 1:
            self.expiry = now + self.duration
        return self.seq

    def ack(self, follower: str, seq: int, priority: int, now: float, window: float = 0.0) -> bool:
        """Record an acknowledgement; whether the lease grew.

        C{window}: the follower's promise in seconds (0: unknown, take ours).
        """
        if seq > self.seq or seq <= self.acked.get(follower, 0):
            return False
        if follower not in self.acked and len(self.acked) >= self._room:
            # More ids than the cluster has nodes: some are made up. Room is
            # made only by one that stopped acknowledging, so a flood of new
            # ids costs no memory and cannot push out a follower that keeps up.
            stale = min(self.ack_times, key=self.ack_times.__getitem__)
            if now - self.ack_times[stale] <= self._gap:
                self.crowded += 1
                return False
            self._forget(stale)
        self.acked[follower] = seq
        promise = self.duration if window <= 0 else min(self.duration, window * (1 - DRIFT))
        self._promises[follower] = promise
        last = self.ack_times.get(follower)
        if last is None or now - last > self._gap:
            self.steady_since[follower] = now
        self.ack_times[follower] = now
        self.priorities[follower] = priority
        needed = self._quorum - 1
        if needed <= 0:
            return False
        # Each follower refuses other candidates until its promise, counted
        # from the send time of the newest heartbeat it acknowledged.
        ends = sorted(
            (self._sent[s] + self._promises[f] for f, s in self.acked.items() if s in self._sent),
            reverse=True,
        )
        if len(ends) < needed:
            return False
        expiry = ends[needed - 1]
        if self.expiry is not None and expiry <= self.expiry:
            return False
        self.expiry = expiry
        return True

    def sent_at(self, seq: int) -> float:
        """When heartbeat C{seq} was sent (minus infinity if unknown or long gone)."""
        return self._sent.get(seq, float("-inf"))

    def holds(self, now: float) -> bool:
        return self.expiry is not None and now < self.expiry

    def lost(self, now: float) -> bool:
        """No quorum within a lease's length: the leader must step down."""
        deadline = self.expiry if self.expiry is not None else self.started + self.duration
        return now >= deadline

    def best_follower(self) -> str | None:
        """The follower most up to date with our heartbeats (then the highest
        priority), leaving out those of priority 0, which never lead."""
        able = [f for f in self.acked if self.priorities.get(f, 1) > 0]
        if not able:
            return None
        return max(able, key=lambda f: (self.acked[f], self.priorities.get(f, 1), f))
