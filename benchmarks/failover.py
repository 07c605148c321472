"""Failover benchmark: how long from losing the leader to every survivor naming a new one.

    python benchmarks/failover.py                      # nats and tcp, 3 and 5 nodes, 50 trials
    python benchmarks/failover.py --fast --trials 10   # election 0.15-0.3 s, heartbeat 0.03 s
    python benchmarks/failover.py --transports tcp --sizes 3 --kills sigterm --trials 3

Each case runs N `twistd -n graft` processes (graft_tx.local.LocalCluster)
over a private nats-server or over loopback TCP. A trial notes the wall
clock, then either SIGKILLs the leader (a crash: the others notice only when
their election timeouts run out) or SIGTERMs it (a planned stop: the leader
hands leadership to a follower before it exits). The time of a trial is from
that moment to the last survivor's `leader_known` event naming the same new
leader, read from the nodes' own event logs: the benchmark polls only to
know when to look. The stopped node is then started again with its state
file, and the next trial waits until all N agree and the cluster is steady.

Results: a table on stdout, and benchmarks/results/failover-<label>.json
(every trial) and .png (the distribution per case) where <label> names the
timing settings.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import harness
import report
import stats

from graft_tx.local import LocalCluster, describe

KILLS = ("sigkill", "sigterm")
KIND = {"sigkill": "crash", "sigterm": "hand-over"}
# Fresh clusters that may fail in a row before a case is abandoned.
MAX_REBUILDS = 3


@dataclass
class Case:
    transport: str
    size: int
    kill: str
    trials: list[dict[str, Any]] = field(default_factory=list)
    rebuilds: int = 0

    @property
    def name(self) -> str:
        return f"{self.transport} N={self.size} {self.kill}"

    @property
    def times_ms(self) -> list[float]:
        return [t["ms"] for t in self.trials if t.get("ms") is not None]

    @property
    def failed(self) -> int:
        return sum(1 for t in self.trials if t.get("ms") is None)


class ClusterBroken(Exception):
    """The cluster did not come back to N nodes agreeing: start a fresh one."""


def settle_time(settings: harness.Settings) -> float:
    # Two heartbeats, so that every follower has acknowledged the leader (its
    # lease, and the choice of hand-over target, depend on those); and a
    # minimum election timeout, because a node that has just started refuses
    # pre-votes for that long (graft_tx/node.py, _hears_leader), which would
    # slow the next failover for reasons that have nothing to do with it.
    return settings.election_min + 2 * settings.heartbeat_s + 0.05


def wait_all_agree(cluster: LocalCluster, settings: harness.Settings) -> str:
    """All N live and naming one leader, then steady; the leader's name."""
    for _ in range(5):
        try:
            leader = cluster.wait_for_leader(
                harness.leader_timeout(settings), expect_live=len(cluster.nodes)
            )
        except TimeoutError as e:
            raise ClusterBroken(str(e)) from None
        time.sleep(settle_time(settings))
        # Still the same leader, and everyone still answering, after settling?
        statuses = cluster.statuses()
        if cluster.agreed_leader(statuses) == leader and all(
            "error" not in s for s in statuses.values()
        ):
            return leader
    raise ClusterBroken(f"the leader keeps changing: {describe(statuses)}")


def handed_to(events: list[dict[str, Any]], after: float) -> str | None:
    """The target of the old leader's hand-over, from its event log."""
    for event in events:
        if float(event.get("log_time", 0)) >= after and "target" in event:
            return str(event["target"])
    return None


def trial(cluster: LocalCluster, case: Case, settings: harness.Settings) -> dict[str, Any]:
    """One kill and one failover; the node is started again before returning."""
    leader = wait_all_agree(cluster, settings)
    old = cluster.node(leader)
    survivors = [node.name for node in cluster.nodes if node.name != leader]
    followed = harness.tails(cluster, survivors)
    killed_at = time.time()
    # The kill's wall-clock time finds the trial in the nodes' logs (--keep).
    result: dict[str, Any] = {"killed": leader, "at": round(killed_at, 3), "ms": None}
    if case.kill == "sigkill":
        old.kill()
    else:
        old.terminate()
    agreed = harness.wait_for_agreement(
        followed, killed_at, exclude=leader, timeout=harness.leader_timeout(settings)
    )
    seen = time.time()
    if agreed is None:
        result["error"] = (
            f"survivors named no common new leader within {harness.leader_timeout(settings)} s: "
            f"{describe(cluster.statuses())}"
        )
    else:
        result["leader"] = agreed[0]
        result["ms"] = round((agreed[1] - killed_at) * 1000, 3)
        # When the poll saw it: a check on the event-log time, never the result.
        result["seen_ms"] = round((seen - killed_at) * 1000, 1)
    if case.kill == "sigterm":
        # A clean stop exits 143 (-15 from Popen); a hand-over that went
        # wrong shows in the target.
        result["exit"] = old.wait(harness.leader_timeout(settings))
        result["handed_to"] = handed_to(old.events(), killed_at)
    old.start()
    return result


def run_case(workspace: harness.Workspace, case: Case, settings: harness.Settings) -> None:
    base = f"{case.transport}-{case.size}-{case.kill}"
    cluster = workspace.cluster(base, case.size, case.transport)
    cluster.start()
    broken_in_a_row = 0
    try:
        while len(case.trials) < settings.trials:
            try:
                result = trial(cluster, case, settings)
            except ClusterBroken as e:
                # Counted and reported: a fresh cluster carries on the case,
                # unless fresh clusters keep failing too.
                case.rebuilds += 1
                broken_in_a_row += 1
                workspace.failures += 1
                if broken_in_a_row >= MAX_REBUILDS:
                    print(f"  {case.name}: giving up, the cluster does not recover: {e}")
                    return
                print(f"  {case.name}: cluster broken, starting a fresh one: {e}", flush=True)
                cluster.stop()
                cluster = workspace.cluster(base, case.size, case.transport)
                cluster.start()
                continue
            broken_in_a_row = 0
            case.trials.append(result)
            n = len(case.trials)
            if result["ms"] is None:
                workspace.failures += 1
                print(f"  {case.name} {n}/{settings.trials}: FAILED {result['error']}", flush=True)
            else:
                extra = f", handed to {result['handed_to']}" if case.kill == "sigterm" else ""
                print(
                    f"  {case.name} {n}/{settings.trials}: {result['ms']:.0f} ms "
                    f"({result['killed']} -> {result['leader']}{extra})",
                    flush=True,
                )
    finally:
        cluster.stop()


def table(cases: list[Case], settings: harness.Settings) -> str:
    unit = settings.election_min * 1000
    rows: list[list[object]] = [["case", "trials", "failed", *stats.names(), *stats.names()]]
    for case in cases:
        summary = stats.summarize(case.times_ms, unit)
        rows.append(
            [
                case.name,
                len(case.trials),
                case.failed,
                *stats.ms_cells(summary),
                *stats.ratio_cells(summary),
            ]
        )
    groups = [(3, "ms"), (8, "/ min election timeout")]
    return stats.format_table(rows, groups=groups)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    harness.add_options(parser, trials=50)
    parser.add_argument(
        "--kills", default="sigkill,sigterm", help="comma-separated: sigkill, sigterm (both)"
    )
    args = parser.parse_args(argv)
    settings = harness.settings_from(parser, args)
    kills = [k.strip().lower() for k in args.kills.split(",") if k.strip()]
    if not kills or any(k not in KILLS for k in kills):
        parser.error(f"--kills takes a list of {', '.join(KILLS)}")
    settings.extra["kills"] = kills
    info = harness.machine(settings.transports)
    print(harness.header("graft_tx failover benchmark", info, settings))
    print(
        "time: from the kill to the last survivor's leader_known event naming the new leader "
        f"(nodes' own clocks); ratio: to the minimum election timeout ({settings.election_min} s); "
        "percentiles nearest-rank",
        flush=True,
    )
    cases = [
        Case(transport, size, kill)
        for transport in settings.transports
        for size in settings.sizes
        for kill in kills
    ]
    started = time.monotonic()
    interrupted = False
    try:
        with harness.Workspace("failover", settings) as workspace:
            for case in cases:
                case_started = time.monotonic()
                print(f"{case.name}:", flush=True)
                run_case(workspace, case, settings)
                harness.case_done(case.name, case_started, len(case.trials))
    except KeyboardInterrupt:
        # Every node is stopped by now; keep what was measured.
        interrupted = True
        print("interrupted: reporting the trials done so far", file=sys.stderr)
    done = [case for case in cases if case.trials or case.rebuilds]
    print()
    print(table(done, settings) if done else "no trials completed")
    rebuilt = [f"{c.name}: {c.rebuilds}" for c in cases if c.rebuilds]
    if rebuilt:
        print("clusters restarted after they did not recover: " + ", ".join(rebuilt))
    elapsed = time.monotonic() - started
    document = {
        "benchmark": "failover",
        "interrupted": interrupted,
        "elapsed_s": round(elapsed, 1),
        "machine": info,
        "settings": settings.as_json(),
        "method": {
            "time": "kill (benchmark's time.time()) to the latest survivor's first leader_known "
            "event naming the common new leader (graft_tx.local.agreement_time)",
            "percentiles": "nearest-rank",
            "ratio": "ms / minimum election timeout",
        },
        "cases": [
            {
                "transport": c.transport,
                "size": c.size,
                "kill": c.kill,
                "failed": c.failed,
                "cluster_restarts": c.rebuilds,
                "summary": stats.summarize(c.times_ms, settings.election_min * 1000),
                "trials": c.trials,
            }
            for c in done
        ],
    }
    png_path = report.save_json(settings.out, f"failover-{settings.label}", document)
    rows: list[report.Row] = []
    for transport in settings.transports:
        for size in settings.sizes:
            group = [c for c in done if (c.transport, c.size) == (transport, size)]
            if not group:
                continue
            failed = ", ".join(f"{c.failed} {c.kill} failed" for c in group if c.failed)
            rows.append(
                report.Row(
                    f"{transport} N={size}" + (f"\n({failed})" if failed else ""),
                    {f"{c.kill} ({KIND[c.kill]})": c.times_ms for c in group},
                )
            )
    skipped = report.draw(
        png_path,
        report.title(
            "graft_tx failover: from killing the leader to every survivor naming a new one",
            settings.timing_text,
            info,
            settings.trials,
        ),
        rows,
        marks=[
            (settings.election_min * 1000, "min election timeout"),
            (settings.election_max * 1000, "max election timeout"),
        ],
        unit=(settings.election_min * 1000, "/ min election timeout"),
    )
    return report.finish(png_path, skipped, elapsed, interrupted)


if __name__ == "__main__":
    sys.exit(main())
