"""Crashes: SIGKILL the leader again and again, and restart it from its state file.

Each round kills the leader, waits for the two survivors to agree on a new
one, checks every state file (the killed node's above all), restarts the
killed node from its file and waits until all three agree again. Terms and
votes are followed on the status pages and in the state files all along
(L{Watch}); at the end every node's event log, the killed ones' included,
must show at most one leader per term and no term going back.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from graft_tx.local import LocalCluster, agreement_time

from .checks import Watch, check_event_logs, no_agreement, start_agreed, wait_for_agreement
from .conftest import ChaosReport, rounds


@pytest.mark.parametrize("transport", ["tcp", "nats"])
def test_killing_the_leader_again_and_again(
    transport: str,
    cluster_over: Callable[..., LocalCluster],
    chaos_report: ChaosReport,
) -> None:
    """Every leader kill ends in one agreed leader, no term going back and valid state files."""
    cluster = cluster_over(transport)
    names = [node.name for node in cluster.nodes]
    watch = Watch(chaos_report)
    leader = start_agreed(cluster, chaos_report, watch)
    if leader is None:
        return
    try:
        for round_ in range(1, rounds(full=30, short=5) + 1):
            chaos_report.rounds = round_
            victim = cluster.node(leader)
            survivors = [name for name in names if name != leader]
            killed_at = time.time()
            victim.kill()
            chaos_report.fault("SIGKILL leader")
            watch.state_files(cluster.nodes, f"round {round_}, {leader} killed")

            new_leader, last = wait_for_agreement(cluster, survivors, exclude=[leader], watch=watch)
            if new_leader is None:
                no_agreement(chaos_report, cluster, f"round {round_}, {leader} killed", last)
                return
            agreed = agreement_time(cluster.events(), survivors, killed_at, exclude=leader)
            chaos_report.leaderless((agreed[1] if agreed else time.time()) - killed_at)

            restart = watch.restart(victim)
            leader, last = wait_for_agreement(cluster, names, watch=watch)
            if leader is None:
                no_agreement(chaos_report, cluster, f"round {round_}, {victim.name} back", last)
                return
            # The term the restarted node loaded from its file (it logs it
            # before its status page answers), and every file once more:
            # nothing may have gone back.
            back = f"round {round_}, {victim.name} back"
            watch.started(victim, restart, back)
            watch.state_files(cluster.nodes, back)
    finally:
        leaders = check_event_logs(chaos_report, cluster.events())
        chaos_report.leader_changes = max(0, len(leaders) - 1)
    # Each round must have moved leadership at least once: a new leader
    # every round, each in a term of its own.
    assert len(leaders) >= chaos_report.rounds + 1, leaders
