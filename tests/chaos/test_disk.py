"""Disk faults: a node whose state file sits on a read-only or full filesystem.

Node B keeps its state file on a small tmpfs of its own. Each round, with
another node A leading, B's filesystem is made read-only (remounted) or full
(filled to the last byte), and A is killed. The survivor C can then only win
with B's vote, which B cannot record: while B's disk is bad no leader may
appear, B must report the failed writes, must show no vote on its status
page and count no vote granted, and its state file must keep its old, valid
content. Once the disk is healed, B and C must elect a leader.

It needs root to mount the tmpfs, and is skipped otherwise. TCP only: what
is under test is the node and its state file, not the transport.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from graft_tx.local import LocalCluster, LocalNode, agreement_time, describe

from .checks import (
    check_event_logs,
    evidence,
    leaderships,
    no_agreement,
    read_state,
    show,
    start_agreed,
    wait_for_agreement,
)
from .conftest import ChaosReport, rounds

# The node on the faulty disk.
B = "n2"
# How long the cluster must stay without a leader while B's disk is bad:
# several maximum election timeouts, so that C campaigns again and again.
BAD_DISK_TIMEOUTS = 6
# What the failed write reports, for each fault.
REASONS = {"read-only": os.strerror(errno.EROFS), "full": os.strerror(errno.ENOSPC)}


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False)


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs, unmounted after the test whatever happens."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    directory = tmp_path / "disk"
    directory.mkdir()
    # mode=0700: a tmpfs root is 1777 by default, and twistd graft refuses a state
    # file in a directory other users can write to.
    mounted = run("mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(directory))
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {(mounted.stderr or mounted.stdout).strip()}")
    try:
        yield directory
    finally:
        # Nothing keeps a file open there (a node opens its state file only
        # to read or replace it), but a lazy unmount is the fallback.
        if run("umount", str(directory)).returncode != 0:
            run("umount", "-l", str(directory))


def probe_fails(directory: Path) -> OSError | None:
    """Try to write a small file there durably, as a node does; the error, if any."""
    probe = directory / "probe"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"x" * 128)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        return e
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    return None


def break_disk(kind: str, directory: Path) -> Callable[[], None]:
    """Make C{directory}'s filesystem read-only or full; returns what heals it."""
    if kind == "read-only":
        done = run("mount", "-o", "remount,ro", str(directory))
        if done.returncode != 0:
            pytest.fail(f"cannot remount {directory} read-only: {done.stderr.strip()}")

        def heal() -> None:
            healed = run("mount", "-o", "remount,rw", str(directory))
            assert healed.returncode == 0, healed.stderr

    else:
        filler = directory / "filler"
        with open(filler, "wb", buffering=0) as f:
            for size in (4096, 1):
                try:
                    while True:
                        f.write(b"\0" * size)
                except OSError as e:
                    assert e.errno == errno.ENOSPC, e

        def heal() -> None:
            filler.unlink()

    failure = probe_fails(directory)
    assert failure is not None, f"the {kind} filesystem still takes writes"
    assert failure.strerror == REASONS[kind], failure
    return heal


def lead_elsewhere(cluster: LocalCluster, names: list[str], leader: str | None) -> str | None:
    """While B leads, stop it cleanly (it hands over) and restart it; the leader then."""
    node = cluster.node(B)
    for _ in range(3):
        if leader != B:
            return leader
        node.stop()
        wait_for_agreement(cluster, [name for name in names if name != B])
        node.start()
        leader, _ = wait_for_agreement(cluster, names)
    return None


def errors_reported(node: LocalNode, since: float, path: Path) -> list[str]:
    """The async_error events C{node} logged since C{since} about the state file at C{path}."""
    return [
        str(e.get("error", ""))
        for e in node.events()
        if e.get("event") == "async_error"
        and float(e.get("log_time", 0)) >= since
        and str(path) in str(e.get("error", ""))
    ]


@pytest.mark.parametrize("kind", ["read-only", "full"])
def test_a_vote_that_cannot_be_recorded_is_never_granted(
    kind: str,
    small_tmpfs: Path,
    make_cluster: Callable[..., LocalCluster],
    chaos_report: ChaosReport,
) -> None:
    """A node that cannot write its state file reports it and grants no vote; healed, it votes."""
    b_state = small_tmpfs / f"{B}.state"
    cluster = make_cluster(state_files={B: b_state})
    names = [node.name for node in cluster.nodes]
    b = cluster.node(B)
    window = BAD_DISK_TIMEOUTS * cluster.election_timeout_max
    leader = start_agreed(cluster, chaos_report)
    if leader is None:
        return
    try:
        for round_ in range(1, rounds(full=5, short=1) + 1):
            chaos_report.rounds = round_
            when = f"round {round_}"
            leader = lead_elsewhere(cluster, names, leader)
            if leader is None:
                no_agreement(chaos_report, cluster, f"{when}, handing over from {B}", {})
                return
            a = cluster.node(leader)
            c = cluster.node(next(name for name in names if name not in (leader, B)))
            recorded = b_state.read_bytes()
            before = read_state(b_state)
            b_before, c_before = b.status(), c.status()

            broken_at = time.time()
            heal = break_disk(kind, small_tmpfs)
            chaos_report.fault(f"{kind} state file")
            killed_at = time.time()
            a.kill()
            chaos_report.fault("SIGKILL leader")

            # While B's disk is bad: no leader, and B holds no vote beyond
            # what its file says. Every status is checked, not just the last.
            seen_leader = ""
            b_last, c_last = b_before, c_before
            while time.time() < killed_at + window:
                b_now, c_now = b.status(), c.status()
                for node, status in ((b, b_now), (c, c_now)):
                    if "error" in status:
                        chaos_report.violation(f"{when}: {node.name} stopped answering")
                        return
                    if status["state"] == "Leader" or node.leader_page() == 200:
                        seen_leader = seen_leader or describe({B: b_now, c.name: c_now})
                if b_now["term"] > before.term and b_now["vote"]:
                    chaos_report.violation(
                        f"{when}: {B} shows a vote for {b_now['vote']!r} in term "
                        f"{b_now['term']}, but its state file holds term {before.term}"
                    )
                    break
                if b_now["votes_granted"] != b_before["votes_granted"]:
                    chaos_report.violation(
                        f"{when}: {B} granted a vote on a {kind} filesystem "
                        f"(votes granted {b_before['votes_granted']} -> {b_now['votes_granted']})"
                    )
                    break
                b_last, c_last = b_now, c_now
                time.sleep(0.05)
            if seen_leader:
                chaos_report.violation(f"{when}: a leader appeared on a {kind} disk: {seen_leader}")
            try:
                kept = b_state.read_bytes()
                read_state(b_state)
            except (OSError, ValueError) as e:
                chaos_report.violation(f"{when}: {B}'s state file on a {kind} disk: {e}")
            else:
                if kept != recorded:
                    chaos_report.violation(f"{when}: {B}'s state file changed on a {kind} disk")
            reported = errors_reported(b, broken_at, b_state)
            if not any(REASONS[kind] in error for error in reported):
                chaos_report.violation(f"{when}: {B} did not report its failed writes")
                evidence(f"{B} since the fault", (show(B, e) for e in b.events()[-12:]))
            healed_at = time.time()
            heal()

            if not chaos_report.violations:
                # The round judged something: C asked for B's vote, B heard it.
                assert c_last["elections_started"] > c_before["elections_started"], (
                    f"{c.name} never campaigned while {B}'s disk was {kind}"
                )
                assert b_last["term"] > before.term, f"{B} never heard of a newer term"
            won = {
                term: who
                for term, who in leaderships(cluster.events()).items()
                if any(broken_at <= at <= healed_at for at in who.values())
            }
            if won:
                chaos_report.violation(f"{when}: elected on a {kind} disk (event logs): {won}")

            survivors = [B, c.name]
            new_leader, last = wait_for_agreement(cluster, survivors)
            if new_leader is None:
                no_agreement(chaos_report, cluster, f"{when}, {B}'s disk healed", last)
                return
            agreed = agreement_time(cluster.events(), survivors, healed_at, exclude=a.name)
            chaos_report.leaderless((agreed[1] if agreed else time.time()) - killed_at)
            try:
                after = read_state(b_state)
            except ValueError as e:
                chaos_report.violation(f"{when}: {B}'s state file after healing {e}")
            else:
                if after.term < before.term:
                    chaos_report.violation(
                        f"{when}: {B}'s state file went back from term {before.term} to "
                        f"{after.term}"
                    )
            print(
                f"{chaos_report.name} {when}: {len(reported)} failed writes reported by {B}, "
                f"{c.name} campaigned {c_last['elections_started'] - c_before['elections_started']}"
                f" times in vain; {B}'s term {before.term} on disk, {b_last['term']} in memory"
            )

            a.start()
            leader, last = wait_for_agreement(cluster, names)
            if leader is None:
                no_agreement(chaos_report, cluster, f"{when}, {a.name} back", last)
                return
    finally:
        leaders = check_event_logs(chaos_report, cluster.events())
        chaos_report.leader_changes = max(0, len(leaders) - 1)
