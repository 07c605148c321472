"""Scale benchmark: many graft_tx nodes in one process, over NATS or TCP.

    python benchmarks/scale.py nats --nodes 3000   # 1,000 clusters of 3 on one NATS connection
    python benchmarks/scale.py tcp --nodes 51      # one cluster of 51 over loopback TCP

It measures the time until every cluster has exactly one leader, then a
steady window: leader changes (the goal is none), terms moved, CPU, resident
memory per node, message rates, reactor lag (how late a 0.1 s timer fires:
an overloaded core shows there first) and garbage-collector pauses. It runs
on the real asyncio reactor, and only ever on loopback.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import os
import platform
import pstats
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, ensureDeferred
from twisted.internet.task import deferLater
from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogBeginner
from twisted.python.failure import Failure
from zope.interface import implementer

import graft_tx
from graft_tx import ClusterInfo, NatsRpc, Node, State, TcpRpc, Timing
from graft_tx.interfaces import IStateHandler
from graft_tx.local import NatsServer, free_port

Cluster = list[Node]


@dataclass
class Tally:
    """What the nodes' handlers saw; moves are counted only while C{open}."""

    open: bool = False
    into_leader: int = 0
    out_of_leader: int = 0
    errors: list[str] = field(default_factory=list)


@implementer(IStateHandler)
class Watch:
    """One node's handler, as an application would give each node its own."""

    def __init__(self, tally: Tally) -> None:
        self.tally = tally

    def state_changed(self, from_state: State, to_state: State) -> None:
        if self.tally.open and to_state is State.LEADER:
            self.tally.into_leader += 1
        elif self.tally.open and from_state is State.LEADER:
            self.tally.out_of_leader += 1

    def async_error(self, error: Exception) -> None:
        self.tally.errors.append(str(error))


class Pauses:
    """How late a 0.1 s timer fires, and how long the garbage collector stops us.

    The timer reschedules itself rather than being a LoopingCall, which skips
    missed beats and re-aligns to its grid: each sample is one timer's lateness.
    """

    def __init__(self, clock: Any, interval: float = 0.1) -> None:
        self.clock, self.interval, self.call = clock, interval, None
        self.lags: list[float] = []
        self.gc: list[float] = []
        self._due = self._gc_start = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_start = time.perf_counter()
        else:
            self.gc.append(time.perf_counter() - self._gc_start)

    def tick(self) -> None:
        now = time.monotonic()
        if self.call is not None:
            self.lags.append(max(0.0, now - self._due))
        self._due = now + self.interval
        self.call = self.clock.callLater(self.interval, self.tick)

    def summary(self) -> dict[str, float]:
        lags, pauses = sorted(self.lags) or [0.0], self.gc or [0.0]
        self.lags, self.gc = [], []
        return {
            "lag_max_ms": 1000 * lags[-1],
            "lag_p99_ms": 1000 * lags[min(len(lags) - 1, int(0.99 * len(lags)))],
            "lag_mean_ms": 1000 * sum(lags) / len(lags),
            "gc_max_ms": 1000 * max(pauses),
            "gc_total_s": sum(pauses),
        }


@implementer(ILogObserver)
class LogCounter:
    """Counts warnings and errors by kind and shows the first few; drops the rest."""

    def __init__(self, show: int = 5) -> None:
        self.kinds: Counter[str] = Counter()
        self.show = show

    def __call__(self, event: dict[str, Any]) -> None:
        if event.get("log_level", LogLevel.info) >= LogLevel.warn:
            self.kinds[str(event.get("log_format"))] += 1
            if self.kinds.total() <= self.show:
                print(f"log: {formatEvent(event)}", file=sys.stderr)


def sole_leader(nodes: Cluster) -> bool:
    """Exactly one Leader, and every other node follows it in its term."""
    leaders = [n for n in nodes if n.state is State.LEADER]
    return len(leaders) == 1 and all(
        n is leaders[0] or (n.leader == leaders[0].id and n.current_term == leaders[0].current_term)
        for n in nodes
    )


def rss_mib() -> float:
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


def cpu_seconds(pid: int | None = None) -> float:
    """CPU (user + system) of this process, or of another one by pid."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def parse_timing(args: argparse.Namespace) -> Timing:
    default = Timing()
    low, high = default.election_timeout_min, default.election_timeout_max
    if args.election_timeout:
        low, high = (float(x) for x in args.election_timeout.split("-", 1))
    return Timing(low, high, args.heartbeat or default.heartbeat_interval)


def build(args: argparse.Namespace, conn: Any, timing: Timing, tally: Tally) -> list[Cluster]:
    """Every node, in one reactor turn, as a service starting them all would."""
    state = Path(args.workdir, "state")
    state.mkdir()

    def node(cluster: str, size: int, node_id: str, rpc: Any) -> Node:
        info, path = ClusterInfo(cluster, size), state / f"{node_id}.state"
        return graft_tx.new(info, Watch(tally), rpc, path, node_id=node_id, timing=timing)

    if args.transport == "nats":
        return [
            [node(f"c{k}", 3, f"c{k}n{i}", NatsRpc.from_connection(conn)) for i in range(3)]
            for k in range(args.nodes // 3)
        ]
    # Below the ephemeral range: the first nodes' outgoing connections start
    # before the last ones listen, and must not take their ports.
    chosen: set[int] = set()
    while len(chosen) < args.nodes:
        chosen.add(free_port())
    ports = sorted(chosen)
    peers = [f"tcp:host=127.0.0.1:port={p}" for p in ports]
    nodes = []
    for i, port in enumerate(ports):
        # With a secret, as a deployment should: peers authenticate, every line has a MAC.
        others = peers[:i] + peers[i + 1 :]
        rpc = TcpRpc(f"tcp:{port}:interface=127.0.0.1", others, secret=b"benchmark secret")
        nodes.append(node("tcp", args.nodes, f"n{i}", rpc))
    return [nodes]


def totals(clusters: list[Cluster], conn: Any) -> dict[str, float]:
    """Counters summed over every node (and the NATS client), to diff across the window."""
    stats = [n.stats() for c in clusters for n in c]
    out = {
        "terms": sum(max(n.current_term for n in c) for c in clusters),
        "elections": sum(s.elections_started for s in stats),
        "heartbeats_sent": sum(s.heartbeats_sent for s in stats),
        "heartbeats_received": sum(s.heartbeats_received for s in stats),
        # Both transports count what they could not send (a peer not connected).
        "dropped_sends": sum(n._rpc.dropped_outgoing for c in clusters for n in c),  # type: ignore[attr-defined]
        "cpu": cpu_seconds(),
        "time": time.monotonic(),
    }
    if conn is not None:
        out["nats_msgs_in"] = conn.client.stats["in_msgs"]
        out["nats_msgs_out"] = conn.client.stats["out_msgs"]
    return out


async def run(reactor: Any, args: argparse.Namespace, url: str) -> dict[str, Any]:
    timing, tally, pauses = parse_timing(args), Tally(), Pauses(reactor)
    conn = None
    if args.transport == "nats":
        try:  # It would retry forever by default; a benchmark should rather fail.
            conn = await graft_tx.connect_nats(url, name="graft-scale").addTimeout(10, reactor)
        except Exception as e:
            raise RuntimeError(f"no NATS server answered at {url} within 10 s") from e
        v = conn.client.connected_server_version
        args.nats_server = f"{v.major}.{v.minor}.{v.patch}"
    rss, clusters = {"baseline": rss_mib()}, list[Cluster]()
    try:
        started, cpu_started = time.monotonic(), cpu_seconds()
        clusters = build(args, conn, timing, tally)
        create_s, rss["created"] = time.monotonic() - started, rss_mib()
        if args.gc_freeze:
            # What a large deployment would do once set up: the nodes live for
            # good, so keep them out of the collector's full passes.
            gc.freeze()
        pauses.tick()  # creating the nodes blocked the reactor once; measure what follows
        first: list[float | None] = [None] * len(clusters)
        all_led = None
        while all_led is None and time.monotonic() - started < args.startup_timeout:
            await deferLater(reactor, 0.1, lambda: None)
            now, led = time.monotonic() - started, [sole_leader(c) for c in clusters]
            first = [now if f is None and ok else f for f, ok in zip(first, led, strict=True)]
            all_led = now if all(led) else None
        times = sorted(f for f in first if f is not None)
        # By when the ceil(q * n)-th cluster first had a sole leader.
        ranks = {q: -int(-q * len(clusters) // 1) - 1 for q in (0.5, 0.9, 1.0)}
        startup = {
            "create_s": create_s,
            "all_led_s": all_led,
            "clusters_led": len(times),
            **{f"p{q * 100:.0f}_s": times[k] if k < len(times) else None for q, k in ranks.items()},
            "cpu_s": cpu_seconds() - cpu_started,
            **pauses.summary(),
        }
        rss["led"] = rss_mib()

        before = totals(clusters, conn)
        server_before = cpu_seconds(args.server_pid) if args.server_pid else 0.0
        tally.open = True
        profile = cProfile.Profile() if args.profile else None
        if profile is not None:
            profile.enable()
        leaderless: set[int] = set()
        samples = leaderless_samples = 0
        while time.monotonic() - before["time"] < args.steady:
            await deferLater(reactor, 0.5, lambda: None)
            missing = [k for k, c in enumerate(clusters) if not sole_leader(c)]
            samples, leaderless_samples = samples + 1, leaderless_samples + len(missing)
            leaderless.update(missing)
        if profile is not None:
            profile.disable()
        tally.open = False
        after = totals(clusters, conn)
        window, cpu = after["time"] - before["time"], after["cpu"] - before["cpu"]
        rss["end"] = rss_mib()
        rss["per_node_kib"] = 1024 * (rss["end"] - rss["baseline"]) / args.nodes
        moved = ("terms", "elections", "dropped_sends")
        return {
            "startup": startup,
            "steady": {
                "window_s": window,
                "into_leader": tally.into_leader,
                "out_of_leader": tally.out_of_leader,
                **{k: after[k] - before[k] for k in moved},
                "samples": samples,
                "clusters_ever_leaderless": len(leaderless),
                "leaderless_cluster_samples": leaderless_samples,
                "cpu_s": cpu,
                "cpu_percent": 100 * cpu / window,
                "nats_server_cpu_percent": args.server_pid
                and 100 * (cpu_seconds(args.server_pid) - server_before) / window,
                "per_second": {
                    k: (after[k] - before[k]) / window
                    for k in after
                    if k.startswith(("heartbeats", "nats"))
                },
                **pauses.summary(),
            },
            "rss_mib": rss,
            "handler_errors": len(tally.errors),
            "profile": profile,
        }
    finally:
        if pauses.call is not None and pauses.call.active():
            pauses.call.cancel()
        await DeferredList([n.close() for c in clusters for n in c]).addTimeout(30, reactor)
        if conn is not None:
            await conn.close()


def environment(args: argparse.Namespace) -> dict[str, Any]:
    cpu = [x for x in Path("/proc/cpuinfo").read_text().splitlines() if x.startswith("model name")]
    df = subprocess.run(["df", "--output=fstype", args.workdir], capture_output=True, text=True)
    nats = args.transport == "nats"
    return {
        "transport": args.transport,
        "nodes": args.nodes,
        "clusters": args.nodes // 3 if nats else 1,
        "cluster_size": 3 if nats else args.nodes,
        "timing": vars(parse_timing(args)),
        "python": platform.python_version(),
        "packages": {p: version(p) for p in ("graft_tx", "Twisted", "nats-py", "protobuf")},
        "platform": platform.platform(),
        "cpu": cpu[0].split(":", 1)[1].strip() if cpu else platform.processor(),
        "cores": os.cpu_count(),
        "load_average": os.getloadavg(),
        "state_files_on": df.stdout.split()[-1],
        "gc_freeze": args.gc_freeze,
    }


def report(r: dict[str, Any]) -> None:
    e, s, st, m, t = r["environment"], r["startup"], r["steady"], r["rss_mib"], r["timing"]

    def sec(x: float | None) -> str:
        return "never" if x is None else f"{x:.2f} s"

    def lag(x: dict[str, float]) -> str:
        return (
            f"reactor lag max {x['lag_max_ms']:.0f} ms, p99 {x['lag_p99_ms']:.0f} ms, mean "
            f"{x['lag_mean_ms']:.1f} ms; GC pauses max {x['gc_max_ms']:.0f} ms, "
            f"{x['gc_total_s']:.1f} s in all"
        )

    nats = e["transport"] == "nats"
    shape = f"{e['clusters']} clusters of 3 on one NATS connection" if nats else "one cluster"
    via = f"nats-server {r.get('nats_server')}" if nats else "TCP on loopback with a secret"
    server = st["nats_server_cpu_percent"]
    server = f" (and nats-server {server:.0f}%)" if server is not None else ""
    rates = ", ".join(f"{k.replace('_', ' ')} {v:,.0f}/s" for k, v in st["per_second"].items())
    kinds = "".join(f"\n  {n} x {kind}" for kind, n in r["log_kinds"].items())
    print(f"""\
graft_tx scale benchmark: {e["transport"]}, {e["nodes"]} nodes = {shape}, in one process
  election timeout {t["election_timeout_min"]}-{t["election_timeout_max"]} s, \
heartbeat {t["heartbeat_interval"]} s, protocol graft-tx, {via}
  Python {e["python"]}; {", ".join(f"{k} {v}" for k, v in e["packages"].items())}
  {e["platform"]}, {e["cores"]} cores ({e["cpu"]}); load average at start \
{" ".join(f"{x:.2f}" for x in e["load_average"])}
startup (times from the first node's creation; state files on {e["state_files_on"]}; \
gc.freeze() after creation: {"yes" if e.get("gc_freeze") else "no"}):
  all nodes created in {s["create_s"]:.2f} s, in one reactor turn
  clusters with a sole leader: {s["clusters_led"]}/{e["clusters"]}; the first time they had \
one: 50% by {sec(s["p50_s"])}, 90% by {sec(s["p90_s"])}, 100% by {sec(s["p100_s"])}
  every cluster led at once: {sec(s["all_led_s"])}; CPU {s["cpu_s"]:.1f} s
  {lag(s)}
steady state: {st["window_s"]:.1f} s, every cluster sampled {st["samples"]} times
  leader changes: {st["into_leader"]} into Leader, {st["out_of_leader"]} out of Leader; \
terms moved {st["terms"]}; elections started {st["elections"]}
  clusters without a sole leader at some sample: {st["clusters_ever_leaderless"]} \
({st["leaderless_cluster_samples"]} cluster-samples)
  CPU {st["cpu_s"]:.1f} s = {st["cpu_percent"]:.0f}% of one core{server}
  {rates}; sends dropped {st["dropped_sends"]}
  {lag(st)}
memory: RSS {m["baseline"]:.0f} MiB before the nodes, {m["created"]:.0f} MiB once created, \
{m["led"]:.0f} MiB once led, {m["end"]:.0f} MiB at the end: {m["per_node_kib"]:.1f} KiB a node
handler errors: {r["handler_errors"]}; warnings and errors logged: \
{sum(r["log_kinds"].values())}{kinds}""")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("transport", choices=("nats", "tcp"))
    parser.add_argument("--nodes", type=int, help="default: 3000 over nats, 51 over tcp")
    parser.add_argument("--steady", type=float, default=60.0, help="steady window, seconds")
    parser.add_argument("--election-timeout", metavar="MIN-MAX", help="default: Timing()'s")
    parser.add_argument("--heartbeat", type=float, metavar="S", help="default: Timing()'s")
    parser.add_argument("--nats-url", help="an existing server (default: start a private one)")
    parser.add_argument("--startup-timeout", type=float, default=120.0, metavar="S")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--profile", action="store_true", help="cProfile the steady window")
    parser.add_argument(
        "--gc-freeze", action="store_true", help="gc.freeze() once the nodes are created"
    )
    args = parser.parse_args(argv)
    args.nodes = args.nodes or (3000 if args.transport == "nats" else 51)
    if args.transport == "nats" and (args.nodes % 3 or args.nodes < 3):
        parser.error("over NATS the nodes form clusters of 3: give a multiple of 3")
    try:
        parse_timing(args)  # a wrong timing fails here, before anything starts
    except (ValueError, graft_tx.GraftError) as e:
        parser.error(f"bad timing: {e}")

    # nats-py runs only on Twisted's asyncio reactor: install it before anything imports one.
    from twisted.internet import asyncioreactor

    asyncioreactor.install()  # type: ignore[no-untyped-call]
    from twisted.internet import reactor

    logged = LogCounter()
    globalLogBeginner.beginLoggingTo([logged], redirectStandardIO=False)
    args.workdir = tempfile.mkdtemp(prefix="graft-scale-")
    server: NatsServer | None = None
    outcome: list[Any] = []
    try:
        env = environment(args)
        url = args.nats_url or ""
        if args.transport == "nats" and not url:
            try:
                server = NatsServer().start()
            except RuntimeError as e:
                raise SystemExit(f"{e}; or give --nats-url") from None
            url = server.url
        pid = server.process.pid if server and server.process else None
        args.server_pid, args.nats_server = pid, None

        def start() -> None:
            d: Deferred[Any] = ensureDeferred(run(reactor, args, url))
            d.addBoth(outcome.append).addBoth(lambda _: reactor.stop())

        reactor.callWhenRunning(start)
        reactor.run()  # Ctrl-C stops it, and we go on below
    finally:
        if server is not None:
            server.close()
        shutil.rmtree(args.workdir, ignore_errors=True)
    if not outcome:
        print("interrupted", file=sys.stderr)
        return 130
    if isinstance(outcome[0], Failure):
        outcome[0].printTraceback(file=sys.stderr)  # type: ignore[no-untyped-call]
        return 1
    result, profile = outcome[0], outcome[0].pop("profile")
    result.update(environment=env, timing=env.pop("timing"), nats_server=args.nats_server)
    result["log_kinds"] = dict(logged.kinds.most_common(5))
    report(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if profile is not None:
        for order in ("tottime", "cumulative"):
            print(f"\nprofile of the steady window, top 15 by {order}:")
            pstats.Stats(profile, stream=sys.stdout).sort_stats(order).print_stats(15)
    return 0


if __name__ == "__main__":
    sys.exit(main())
