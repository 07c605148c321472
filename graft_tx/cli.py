"""The C{graft} command: C{graft demo} and C{graft status}."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from graft_tx.cluster import parse_election_timeout
from graft_tx.local import LocalCluster, LocalNode, NatsServer, agreement_time

# -- graft status -------------------------------------------------------


def fetch_status(url: str, timeout: float = 2.0) -> dict[str, Any]:
    """GET a node's /status; C{{"error": ...}} when it cannot be had."""
    target = url.rstrip("/")
    if not target.endswith("/status"):
        target += "/status"
    if "://" not in target:
        target = "http://" + target
    try:
        with urllib.request.urlopen(target, timeout=timeout) as response:
            status = json.loads(response.read())
    except (OSError, ValueError) as e:
        return {"url": url, "error": str(getattr(e, "reason", e))}
    if not isinstance(status, dict):
        return {"url": url, "error": "not a status document"}
    return {"url": url, **status}


def verdict(statuses: Sequence[dict[str, Any]]) -> tuple[bool, str]:
    """Whether the nodes show exactly one leader in the highest term, and why not."""
    live = [s for s in statuses if "error" not in s and isinstance(s.get("term"), int)]
    if not live:
        return False, "no node answered"
    top = max(s["term"] for s in live)
    leaders = sorted({s["id"] for s in live if s.get("state") == "Leader" and s["term"] == top})
    if len(leaders) == 1:
        return True, f"{leaders[0]} leads term {top}"
    if not leaders:
        return False, f"no leader in term {top}"
    return False, f"{len(leaders)} leaders in term {top}: {', '.join(leaders)}"


def format_table(rows: Sequence[Sequence[object]]) -> str:
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def status_table(statuses: Sequence[dict[str, Any]]) -> str:
    rows: list[list[object]] = [["NODE", "ID", "STATE", "TERM", "LEADER"]]
    for s in statuses:
        if "error" in s:
            rows.append([s["url"], "-", f"unreachable ({s['error']})", "-", "-"])
        else:
            rows.append(
                [s["url"], s.get("id"), s.get("state"), s.get("term"), s.get("leader") or "-"]
            )
    return format_table(rows)


def status_main(args: argparse.Namespace) -> int:
    statuses = [fetch_status(url, args.timeout) for url in args.urls]
    ok, why = verdict(statuses)
    if args.json:
        print(json.dumps({"ok": ok, "verdict": why, "nodes": statuses}, indent=2, sort_keys=True))
    else:
        print(status_table(statuses))
        print(why)
    return 0 if ok else 1


# -- graft demo ---------------------------------------------------------


@dataclass
class Demo:
    args: argparse.Namespace
    directory: Path
    cluster: LocalCluster | None = None
    nats: NatsServer | None = None
    failovers: list[float] = field(default_factory=list)
    # The leader killed last, when (wall clock), and when to kill the next.
    killed: LocalNode | None = None
    killed_at: float = 0.0
    next_kill: float = 0.0
    shown: str = ""

    def setup(self) -> None:
        urls: list[str] = []
        if self.args.transport == "nats":
            try:
                self.nats = NatsServer().start()
            except RuntimeError as e:
                raise SystemExit(f"graft demo: {e}") from None
            urls.append(self.nats.url)
        self.cluster = LocalCluster(
            self.directory,
            size=self.args.nodes,
            transport=self.args.transport,
            cluster="demo",
            election_timeout=self.args.election_timeout,
            nats_urls=urls,
        )
        self.cluster.start()

    @property
    def nodes(self) -> list[LocalNode]:
        return self.cluster.nodes if self.cluster else []

    def statuses(self) -> dict[str, dict[str, Any]]:
        return self.cluster.statuses(0.5) if self.cluster else {}

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()
        if self.nats is not None:
            self.nats.close()

    def show(self, statuses: dict[str, dict[str, Any]], tty: bool) -> None:
        """Print the table when it changed: in place on a terminal."""
        table = render(statuses)
        if table != self.shown:
            print(("\033[2J\033[H" + table) if tty else (table + "\n"), flush=True)
            self.shown = table

    def step(self, leader: str | None, now: float) -> None:
        """Time the failover under way, or kill the leader when it is time."""
        killed = self.killed
        if killed is not None and leader is not None and leader != killed.name:
            # The nodes' own timestamps, not this loop's polling interval.
            survivors = [node.name for node in self.nodes if node is not killed]
            events = self.cluster.events() if self.cluster else {}
            agreed = agreement_time(events, survivors, self.killed_at, exclude=killed.name)
            took = agreed[1] - self.killed_at if agreed else time.time() - self.killed_at
            self.failovers.append(took)
            low = parse_election_timeout(self.args.election_timeout)[0]
            print(
                f"failover: {leader} leads after {took * 1000:.0f} ms "
                f"({took / low:.1f} x the minimum election timeout)",
                flush=True,
            )
            killed.start()
            self.killed = None
            self.next_kill = now + self.args.kill_every
        elif killed is None and leader is not None and self.args.kill_every > 0:
            if now < self.next_kill:
                return
            self.killed = next(node for node in self.nodes if node.name == leader)
            self.killed_at = time.time()
            self.killed.kill()
            print(f"killed the leader {self.killed.name} (SIGKILL)", flush=True)

    def summary(self) -> str:
        ms = sorted(t * 1000 for t in self.failovers)
        return (
            f"{len(ms)} failovers: min {ms[0]:.0f} ms, median {ms[len(ms) // 2]:.0f} ms, "
            f"max {ms[-1]:.0f} ms"
        )


def render(statuses: dict[str, dict[str, Any]]) -> str:
    rows: list[list[object]] = [["NODE", "STATE", "TERM", "LEADER"]]
    for name, s in statuses.items():
        if "error" in s:
            rows.append([name, s["error"], "-", "-"])
        else:
            rows.append([name, s.get("state"), s.get("term"), s.get("leader") or "-"])
    return format_table(rows)


def demo_main(args: argparse.Namespace) -> int:
    parse_election_timeout(args.election_timeout)
    directory = Path(tempfile.mkdtemp(prefix="graft-demo-"))
    demo = Demo(args, directory)
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    previous = signal.signal(signal.SIGTERM, on_signal)
    tty = sys.stdout.isatty()
    print(
        f"graft demo: {args.nodes} nodes over {args.transport}; state and logs in {directory}; "
        "Ctrl-C to stop",
        flush=True,
    )
    started = time.monotonic()
    demo.next_kill = started + args.kill_every
    try:
        demo.setup()
        while not stopping:
            now = time.monotonic()
            if args.duration and now - started >= args.duration:
                break
            statuses = demo.statuses()
            demo.show(statuses, tty)
            demo.step(demo.cluster.agreed_leader(statuses) if demo.cluster else None, now)
            time.sleep(0.1)
    except KeyboardInterrupt:
        pass
    finally:
        demo.stop()
        signal.signal(signal.SIGTERM, previous)
    if demo.failovers:
        print(demo.summary())
    print("graft demo: stopped, no node left running")
    return 0


# -- entry point --------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="graft", description="graft_tx leader election tools")
    commands = top.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="run a local cluster of twistd graft nodes and kill its leader now and then"
    )
    demo.add_argument("--nodes", type=int, default=3, help="how many nodes (default 3)")
    demo.add_argument("--transport", choices=("tcp", "nats"), default="tcp")
    demo.add_argument(
        "--kill-every", type=float, default=5.0, help="seconds between leader kills (0: never)"
    )
    demo.add_argument(
        "--duration", type=float, default=0, help="stop after this many seconds (0: at Ctrl-C)"
    )
    demo.add_argument("--election-timeout", default="0.5-1.0", help="MIN-MAX seconds")
    demo.set_defaults(main=demo_main)
    status = commands.add_parser("status", help="ask nodes for their /status and check them")
    status.add_argument("urls", nargs="+", help="status endpoints, such as http://127.0.0.1:8080")
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    status.add_argument("--timeout", type=float, default=2.0, help="seconds per node")
    status.set_defaults(main=status_main)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "demo" and args.nodes < 1:
        parser().error("--nodes must be at least 1")
    return int(args.main(args))


if __name__ == "__main__":
    sys.exit(main())
