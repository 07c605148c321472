"""What a simulation has seen of an election, and every contradiction in it.

Both random-schedule simulations feed it what they see on the wire and in
the nodes; it keeps who led and who voted in each term and each node's
highest term, and records a violation whenever a new sighting disagrees.

A node that loses its state file forgets its votes: L{Ledger.forget} sets
aside what it knew, and two leaders of one term are then the documented
cost of that loss, not a violation, if and only if one process (by
C{hosts}, id to process) voted for both, before and after the loss.
"""

from __future__ import annotations


class Ledger:
    """Leaders and votes by term, and terms by node, checked as they are claimed.

    C{tags} prefix the two kinds of violation (leadership; votes and
    terms), for simulations that name their invariants.
    """

    def __init__(
        self,
        quorum: int,
        tags: tuple[str, str] = ("", ""),
        hosts: dict[str, str] | None = None,
    ) -> None:
        self.quorum = quorum
        self.tags = tags
        self.hosts = hosts if hosts is not None else {}
        self.leaders: dict[int, str] = {}
        self.votes: dict[tuple[str, int], str] = {}
        self.forgotten: list[tuple[str, int, str]] = []
        self.excused: list[str] = []
        self.terms: dict[str, int] = {}
        self.sent_terms: dict[str, int] = {}
        self.violations: list[str] = []

    def forget(self, node_id: str) -> None:
        """C{node_id} lost its state file: its votes and terms start afresh."""
        for (voter, term), candidate in list(self.votes.items()):
            if voter == node_id:
                self.forgotten.append((voter, term, candidate))
                del self.votes[(voter, term)]
        self.terms.pop(node_id, None)
        self.sent_terms.pop(node_id, None)

    def _lost_vote_explains(self, term: int, first: str, second: str) -> bool:
        """Whether one process voted for C{first} and C{second} in C{term},
        across a loss of its state file."""
        voters: dict[str, set[str]] = {}
        cast = [(v, c) for (v, t), c in self.votes.items() if t == term]
        cast += [(v, c) for v, t, c in self.forgotten if t == term]
        for voter, candidate in cast:
            voters.setdefault(self.hosts.get(voter, voter), set()).add(candidate)
        lost = {self.hosts.get(v, v) for v, t, _ in self.forgotten if t == term}
        return any({first, second} <= chosen and host in lost for host, chosen in voters.items())

    def claim_leader(self, term: int, leader: str, source: str) -> None:
        """C{leader} led C{term}: no other node may, and a quorum must have voted for it."""
        tag = self.tags[0]
        known = self.leaders.get(term)
        if known is not None:
            if known != leader and self._lost_vote_explains(term, known, leader):
                excuse = f"two leaders in term {term}: {known} and {leader}"
                if excuse not in self.excused:
                    self.excused.append(excuse)
            elif known != leader:
                self.violations.append(
                    f"{tag}two leaders in term {term}: {known} and {leader} (seen by {source})"
                )
            return
        self.leaders[term] = leader
        self.claim_vote(leader, term, leader, "its own leadership")
        cast = [(v, t, c) for (v, t), c in self.votes.items()] + self.forgotten
        voters = sorted({v for v, t, c in cast if t == term and c == leader})
        if len(voters) < self.quorum:
            self.violations.append(
                f"{tag}{leader} leads term {term} with votes from only {voters} (seen by {source})"
            )

    def claim_vote(self, voter: str, term: int, candidate: str, source: str) -> None:
        """C{voter} voted for C{candidate} in C{term}: never for anyone else."""
        known = self.votes.setdefault((voter, term), candidate)
        if known != candidate:
            self.violations.append(
                f"{self.tags[1]}{voter} voted for both {known} and {candidate} in term {term} "
                f"(seen in {source})"
            )

    def claim_term(self, table: dict[str, int], node_id: str, term: int, source: str) -> None:
        """C{node_id} was seen in C{term} (in C{table}: sampled or sent); never lower later."""
        if term < table.get(node_id, 0):
            self.violations.append(
                f"{self.tags[1]}{node_id}'s term went back from {table[node_id]} to {term} "
                f"(seen in {source})"
            )
        else:
            table[node_id] = term
