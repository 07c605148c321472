"""What failover.py and coldstart.py share: their options, the machine they
ran on, a private nats-server, and waiting for the nodes' event logs to show
an agreed leader."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from graft_tx.cluster import Timing, parse_election_timeout
from graft_tx.errors import TimingError
from graft_tx.eventlog import RECORD_SEPARATOR
from graft_tx.local import LocalCluster, NatsServer, agreement_time, nats_server_binary

RESULTS = Path(__file__).resolve().parent / "results"
# The library's defaults, and the "fast" settings the issue asks to measure too.
DEFAULT_TIMING = ("0.5-1.0", "0.1")
FAST_TIMING = ("0.15-0.3", "0.03")
TRANSPORTS = ("nats", "tcp")


@dataclass
class Settings:
    """The command line, checked: what every case of a run shares."""

    transports: list[str]
    sizes: list[int]
    trials: int
    election_timeout: str
    heartbeat: str
    out: Path
    keep: bool
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def election_min(self) -> float:
        return parse_election_timeout(self.election_timeout)[0]

    @property
    def election_max(self) -> float:
        return parse_election_timeout(self.election_timeout)[1]

    @property
    def heartbeat_s(self) -> float:
        return float(self.heartbeat)

    @property
    def label(self) -> str:
        """Names the output files, so runs of other timings do not overwrite them."""
        timing = (self.election_timeout, self.heartbeat)
        if timing == DEFAULT_TIMING:
            return "default"
        if timing == FAST_TIMING:
            return "fast"
        return f"et{self.election_timeout}-hb{self.heartbeat}"

    @property
    def timing_text(self) -> str:
        return f"election timeout {self.election_timeout} s, heartbeat {self.heartbeat} s"

    def as_json(self) -> dict[str, Any]:
        return {
            "transports": self.transports,
            "sizes": self.sizes,
            "trials": self.trials,
            "election_timeout": [self.election_min, self.election_max],
            "heartbeat": self.heartbeat_s,
            "protocol": "graft-tx",
            **self.extra,
        }


def add_options(parser: argparse.ArgumentParser, trials: int) -> None:
    parser.add_argument(
        "--transports", default="nats,tcp", help="comma-separated: nats, tcp (default both)"
    )
    parser.add_argument("--sizes", default="3,5", help="cluster sizes, comma-separated (3,5)")
    parser.add_argument(
        "--trials", type=int, default=trials, help=f"trials per case (default {trials})"
    )
    parser.add_argument(
        "--election-timeout",
        metavar="MIN-MAX",
        help=f"seconds (default {DEFAULT_TIMING[0]}, the library's default)",
    )
    parser.add_argument(
        "--heartbeat", metavar="SECONDS", help=f"seconds (default {DEFAULT_TIMING[1]})"
    )
    parser.add_argument(
        "--fast",
        action="store_true",
        help=f"shorthand for --election-timeout {FAST_TIMING[0]} --heartbeat {FAST_TIMING[1]}",
    )
    parser.add_argument(
        "--out", type=Path, default=RESULTS, help=f"directory for JSON and PNG (default {RESULTS})"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the nodes' directories (logs, event logs)"
    )


def _list(parser: argparse.ArgumentParser, option: str, text: str) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        parser.error(f"{option} needs at least one value")
    return items


def settings_from(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Settings:
    transports = _list(parser, "--transports", args.transports)
    for transport in transports:
        if transport not in TRANSPORTS:
            parser.error(f"--transports: {transport!r} is not one of {', '.join(TRANSPORTS)}")
    try:
        sizes = [int(size) for size in _list(parser, "--sizes", args.sizes)]
    except ValueError:
        parser.error(f"--sizes takes whole numbers, not {args.sizes!r}")
    if any(size < 2 for size in sizes):
        # One node has nobody to fail over to.
        parser.error("--sizes must be at least 2")
    if args.trials < 1:
        parser.error("--trials must be at least 1")
    if args.fast and (args.election_timeout or args.heartbeat):
        parser.error("--fast sets --election-timeout and --heartbeat; give one or the other")
    election, heartbeat = FAST_TIMING if args.fast else DEFAULT_TIMING
    election = args.election_timeout or election
    heartbeat = args.heartbeat or heartbeat
    # The daemon's own rule, checked here so that a bad setting fails at
    # once rather than as N nodes that never start.
    try:
        Timing.parse(election, heartbeat)
    except TimingError as e:
        parser.error(f"--election-timeout {election}, --heartbeat {heartbeat}: {e}")
    return Settings(transports, sizes, args.trials, election, heartbeat, args.out, args.keep)


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def machine(transports: Sequence[str]) -> dict[str, Any]:
    """What the numbers depend on, for docs/benchmarks.md to quote."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cores": os.cpu_count(),
        "cpu": cpu or platform.processor(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "twisted": _version("Twisted"),
        "graft_tx": _version("graft_tx"),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if "nats" in transports:
        info["nats_py"] = _version("nats-py")
        try:
            out = subprocess.run(
                [nats_server_binary(), "--version"], capture_output=True, text=True, timeout=10
            )
            info["nats_server"] = out.stdout.strip() or out.stderr.strip()
        except (OSError, RuntimeError, subprocess.SubprocessError) as e:
            info["nats_server"] = f"unknown ({e})"
    return info


def header(title: str, info: dict[str, Any], settings: Settings) -> str:
    lines = [
        title,
        f"machine: {info['cores']} cores ({info['cpu']}), {info['platform']}, "
        f"load average {' '.join(str(x) for x in info['load_average'])}",
        f"software: Python {info['python']}, Twisted {info['twisted']}, "
        f"graft_tx {info['graft_tx']}"
        + (f", nats-py {info['nats_py']}, {info['nats_server']}" if "nats_server" in info else ""),
        f"settings: {settings.timing_text}, protocol graft-tx; "
        f"transports {','.join(settings.transports)}; sizes {','.join(map(str, settings.sizes))}; "
        f"{settings.trials} trials per case",
    ]
    return "\n".join(lines)


def case_done(name: str, started: float, trials: int) -> None:
    """Print how long a case took, in all and a trial (C{started}: time.monotonic())."""
    took = time.monotonic() - started
    print(f"  {name}: {took:.0f} s, {took / max(1, trials):.1f} s a trial", flush=True)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


class Workspace:
    """The run's temporary directory and nats-server; leaving it stops them.

    SIGTERM is turned into KeyboardInterrupt while it is open, so that a
    killed benchmark still runs its finally clauses and stops every node.
    """

    def __init__(self, name: str, settings: Settings) -> None:
        self.settings = settings
        self.directory = Path(tempfile.mkdtemp(prefix=f"graft-{name}-"))
        self.nats: NatsServer | None = None
        self.failures = 0
        self._previous: Any = None

    @property
    def nats_urls(self) -> list[str]:
        return [self.nats.url] if self.nats is not None else []

    def __enter__(self) -> Workspace:
        self._previous = signal.signal(signal.SIGTERM, _interrupt)
        if "nats" in self.settings.transports:
            # One private server on a free loopback port, for every case.
            self.nats = NatsServer().start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.nats is not None:
            self.nats.close()
        signal.signal(signal.SIGTERM, self._previous)
        if self.settings.keep or self.failures or kind is not None:
            print(f"the nodes' files are kept in {self.directory}", file=sys.stderr)
        else:
            shutil.rmtree(self.directory, ignore_errors=True)

    def cluster(self, name: str, size: int, transport: str) -> LocalCluster:
        """A new cluster (not started) in a fresh directory of its own."""
        directory = self.directory / name
        suffix = 1
        while directory.exists():
            suffix += 1
            directory = self.directory / f"{name}.{suffix}"
        directory.mkdir()
        return LocalCluster(
            directory,
            size=size,
            transport=transport,
            # A cluster name of its own, so that nothing left of an earlier
            # cluster on the shared nats-server can take part.
            cluster=directory.name.replace(".", "-"),
            election_timeout=self.settings.election_timeout,
            heartbeat=self.settings.heartbeat,
            nats_urls=self.nats_urls if transport == "nats" else (),
        )


class EventTail:
    """The events a node logs from now on, read incrementally.

    A poll that re-read whole logs would cost more with every trial, on the
    very cores the nodes elect on; this reads only what was appended.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._offset = path.stat().st_size
        except FileNotFoundError:
            self._offset = 0
        self.events: list[dict[str, Any]] = []

    def read(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return self.events
        # Only whole records: one being written is read on the next poll.
        end = data.rfind(b"\n") + 1
        self._offset += end
        for record in data[:end].decode("utf-8", errors="replace").split(RECORD_SEPARATOR):
            if record.strip():
                try:
                    event = json.loads(record)
                except ValueError:
                    continue
                if isinstance(event, dict):
                    self.events.append(event)
        return self.events


def tails(cluster: LocalCluster, names: Sequence[str]) -> dict[str, EventTail]:
    """Start following these nodes' event logs; take them before the moment timed."""
    return {name: EventTail(cluster.node(name).events_file) for name in names}


def wait_for_agreement(
    followed: dict[str, EventTail],
    after: float,
    exclude: str = "",
    timeout: float = 30.0,
    poll: float = 0.01,
) -> tuple[str, float] | None:
    """Poll the followed event logs until those nodes name one new leader.

    Reading files, rather than asking /status, costs the nodes nothing while
    they elect; the time returned is the nodes' own (the latest node's
    C{leader_known} event), so the poll interval does not enter it.
    """
    names = list(followed)
    deadline = time.monotonic() + timeout
    while True:
        events = {name: tail.read() for name, tail in followed.items()}
        agreed = agreement_time(events, names, after=after, exclude=exclude)
        if agreed is not None or time.monotonic() > deadline:
            return agreed
        time.sleep(poll)


def first_event_time(events: list[dict[str, Any]]) -> float | None:
    """When a node logged its first event: its transport's first connection."""
    times = [float(e["log_time"]) for e in events if "log_time" in e]
    return min(times) if times else None


def bound_time(socket_path: Path) -> float | None:
    """When a node bound its status socket, from the socket file's mtime.

    twistd binds it (privilegedStartService) once the interpreter has
    imported everything and made the services, before the reactor runs, and
    nothing changes the file afterwards. Filesystem times are coarse (a few
    ms), which is plenty for a start-up of hundreds of ms.
    """
    try:
        return socket_path.stat().st_mtime_ns / 1e9
    except OSError:
        return None


def leader_timeout(settings: Settings) -> float:
    """A generous bound for an election: many maximum election timeouts, and
    never under 10 s, so that a slow machine yields slow trials, not failed ones."""
    return max(10.0, 20 * settings.election_max)
