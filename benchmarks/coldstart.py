"""Cold-start benchmark: from launching N processes to every node naming one leader.

    python benchmarks/coldstart.py                     # nats and tcp, 3 and 5 nodes, 20 trials
    python benchmarks/coldstart.py --fast --trials 5   # election 0.15-0.3 s, heartbeat 0.03 s
    python benchmarks/coldstart.py --transports tcp --sizes 3 --trials 3

Each trial starts N `twistd -n graft` processes (graft_tx.local.LocalCluster)
in a fresh directory, so with no state files, over a private nats-server or
loopback TCP. Its time runs from just before the first process is launched
to the last node's `leader_known` event naming the leader all of them
agree on, from the nodes' own event logs: process start-up is included, as
a real cold start pays it.

To tell start-up from election, each node's start is also reported twice:
"ready", when it bound its status socket (interpreter started, everything
imported, services made; the socket file's mtime), and "first event", its
first line in the event log (its transport's first connection: NATS
connected, or a TCP peer). A trial's start-up is its slowest node's, as
agreement waits for every node.

Results: a table on stdout, and benchmarks/results/coldstart-<label>.json
(every trial) and .png (the distribution per case).
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

from graft_tx.local import describe

# What each trial reports, per node and for its slowest node.
MEASURES = {
    "ready_ms": "ready (status socket bound)",
    "first_event_ms": "first event (transport up)",
    "after_start_ms": "agreement after last first event",
}


@dataclass
class Case:
    transport: str
    size: int
    trials: list[dict[str, Any]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.transport} N={self.size}"

    def values(self, key: str) -> list[float]:
        return [t[key] for t in self.trials if t.get(key) is not None]

    @property
    def failed(self) -> int:
        return sum(1 for t in self.trials if t.get("ms") is None)


def ms_since(moment: float | None, launch: float) -> float | None:
    return None if moment is None else round((moment - launch) * 1000, 3)


def trial(workspace: harness.Workspace, case: Case, settings: harness.Settings) -> dict[str, Any]:
    cluster = workspace.cluster(f"{case.transport}-{case.size}", case.size, case.transport)
    names = [node.name for node in cluster.nodes]
    # Start-up can be slow with N interpreters starting on few cores: allow for it.
    timeout = harness.leader_timeout(settings) + 30.0
    followed = harness.tails(cluster, names)
    launch = time.time()
    result: dict[str, Any] = {"at": round(launch, 3), "ms": None}
    try:
        cluster.start()
        agreed = harness.wait_for_agreement(followed, launch, timeout=timeout)
        if agreed is None:
            result["error"] = f"no agreed leader within {timeout} s: {describe(cluster.statuses())}"
        else:
            result["leader"], at = agreed
            result["ms"] = round((at - launch) * 1000, 3)
        nodes: dict[str, dict[str, float | None]] = {}
        for node in cluster.nodes:
            nodes[node.name] = {
                "ready_ms": ms_since(harness.bound_time(node.status_socket), launch),
                "first_event_ms": ms_since(harness.first_event_time(node.events()), launch),
            }
        result["nodes"] = nodes
        for key in ("ready_ms", "first_event_ms"):
            known = [t for n in nodes.values() if (t := n[key]) is not None]
            result[key] = max(known) if len(known) == len(nodes) else None
        if result["ms"] is not None and result["first_event_ms"] is not None:
            result["after_start_ms"] = round(result["ms"] - result["first_event_ms"], 3)
    finally:
        cluster.stop()
    return result


def describe_trial(result: dict[str, Any]) -> str:
    if result["ms"] is None:
        return f"FAILED {result['error']}"

    def spread(key: str) -> str:
        known = [n[key] for n in result["nodes"].values() if n[key] is not None]
        return f"{min(known):.0f}-{max(known):.0f} ms" if known else "?"

    return (
        f"{result['ms']:.0f} ms, leader {result['leader']} "
        f"(ready {spread('ready_ms')}, first event {spread('first_event_ms')})"
    )


def tables(cases: list[Case], settings: harness.Settings) -> str:
    unit = settings.election_min * 1000
    rows: list[list[object]] = [["case", "trials", "failed", *stats.names(), *stats.names()]]
    for case in cases:
        summary = stats.summarize(case.values("ms"), unit)
        rows.append(
            [
                case.name,
                len(case.trials),
                case.failed,
                *stats.ms_cells(summary),
                *stats.ratio_cells(summary),
            ]
        )
    total = stats.format_table(rows, groups=[(3, "ms to agreement"), (8, "/ min election timeout")])
    rows = [["case", "start-up of the slowest node", *stats.names()]]
    for case in cases:
        for key, text in MEASURES.items():
            rows.append([case.name, text, *stats.ms_cells(stats.summarize(case.values(key)))])
    parts = stats.format_table(rows, left=2, groups=[(2, "ms")])
    return f"{total}\n\n{parts}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    harness.add_options(parser, trials=20)
    args = parser.parse_args(argv)
    settings = harness.settings_from(parser, args)
    info = harness.machine(settings.transports)
    print(harness.header("graft_tx cold-start benchmark", info, settings))
    print(
        "time: from launching the first process to the last node's leader_known event naming "
        "the leader all agree on (nodes' own clocks); ratio: to the minimum election timeout "
        f"({settings.election_min} s); percentiles nearest-rank",
        flush=True,
    )
    cases = [Case(transport, size) for transport in settings.transports for size in settings.sizes]
    started = time.monotonic()
    interrupted = False
    try:
        with harness.Workspace("coldstart", settings) as workspace:
            for case in cases:
                case_started = time.monotonic()
                print(f"{case.name}:", flush=True)
                while len(case.trials) < settings.trials:
                    result = trial(workspace, case, settings)
                    case.trials.append(result)
                    if result["ms"] is None:
                        workspace.failures += 1
                    print(
                        f"  {case.name} {len(case.trials)}/{settings.trials}: "
                        f"{describe_trial(result)}",
                        flush=True,
                    )
                harness.case_done(case.name, case_started, len(case.trials))
    except KeyboardInterrupt:
        # Every node is stopped by now; keep what was measured.
        interrupted = True
        print("interrupted: reporting the trials done so far", file=sys.stderr)
    done = [case for case in cases if case.trials]
    print()
    print(tables(done, settings) if done else "no trials completed")
    elapsed = time.monotonic() - started
    unit = settings.election_min * 1000
    document = {
        "benchmark": "coldstart",
        "interrupted": interrupted,
        "elapsed_s": round(elapsed, 1),
        "machine": info,
        "settings": settings.as_json(),
        "method": {
            "time": "launch of the first process (benchmark's time.time()) to the latest "
            "node's first leader_known event naming the common leader "
            "(graft_tx.local.agreement_time)",
            "ready_ms": "the slowest node's status socket bind time (socket file mtime)",
            "first_event_ms": "the slowest node's first event-log line (transport connected)",
            "after_start_ms": "ms - first_event_ms",
            "percentiles": "nearest-rank",
            "ratio": "ms / minimum election timeout",
        },
        "cases": [
            {
                "transport": c.transport,
                "size": c.size,
                "failed": c.failed,
                "summary": stats.summarize(c.values("ms"), unit),
                **{key: stats.summarize(c.values(key)) for key in MEASURES},
                "trials": c.trials,
            }
            for c in done
        ],
    }
    png_path = report.save_json(settings.out, f"coldstart-{settings.label}", document)
    rows = [
        report.Row(
            c.name + (f"\n({c.failed} failed)" if c.failed else ""),
            {
                "ready (slowest node)": c.values("ready_ms"),
                "first event (slowest node)": c.values("first_event_ms"),
                "all agree on a leader": c.values("ms"),
            },
        )
        for c in done
    ]
    skipped = report.draw(
        png_path,
        report.title(
            "graft_tx cold start: from launching N processes to all naming one leader",
            settings.timing_text,
            info,
            settings.trials,
        ),
        rows,
        # From launch, so that start-up and election read as parts of one line.
        unit=(unit, "/ min election timeout"),
        from_zero=True,
    )
    return report.finish(png_path, skipped, elapsed, interrupted)


if __name__ == "__main__":
    sys.exit(main())
