"""End to end: real `twistd -n graft` and `graft` processes on loopback, as a user runs them.

Every process is started through the C{spawn} fixture, in its own process
group, and its whole group is killed at teardown whatever the outcome, so a
failing test leaves nothing behind (not even the children of C{graft demo}).
Real processes need real time: these tests poll with C{time.sleep}, always
with a deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from natsserver import NatsServer, free_port
from twisted.logger import eventsFromJSONLogFile

from graft_tx.statefile import PersistentState, StateFile

ROOT = Path(__file__).resolve().parent.parent
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
GRAFT = [sys.executable, "-c", "import sys; from graft_tx.cli import main; sys.exit(main())"]
# Faster than the defaults, still far above loopback latency.
TIMING = ["--election-timeout", "0.3-0.6", "--heartbeat", "0.05"]
# A module twistd's --logger can name: the log as one JSON event per record.
JSON_LOGGER = """\
from twisted.logger import jsonFileLogObserver


def observer():
    return jsonFileLogObserver(open("log.json", "a"))
"""


class Spawner:
    """Starts processes in their own process groups; C{kill_all} ends every group."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                [str(ROOT), str(cwd), *filter(None, [os.environ.get("PYTHONPATH")])]
            ),
            # graft demo keeps its state directory under here, inside tmp_path.
            "TMPDIR": str(cwd),
        }
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            process = subprocess.Popen(
                argv,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes.append(process)
        return process

    def run(self, argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run to completion (killed at the deadline), stdout and stderr merged."""
        process = subprocess.Popen(
            argv,
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.processes.append(process)
        output, _ = process.communicate(timeout=timeout)
        return subprocess.CompletedProcess(argv, process.returncode, output)

    def kill_all(self) -> None:
        for process in self.processes:
            # The group too: it holds the children of graft demo and of hooks.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait(10)


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawner]:
    """Start processes in tmp_path; all of them (and their groups) are killed after the test."""
    spawner = Spawner(tmp_path)
    try:
        yield spawner
    finally:
        spawner.kill_all()


def wait_until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll C{check} until it returns something true; fail after C{timeout} seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def http_get(url: str, timeout: float = 1.0) -> tuple[int, dict[str, str], bytes] | None:
    """Status code, headers and body of a GET; L{None} when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()
    except OSError:
        return None


def status(url: str) -> dict[str, Any] | None:
    got = http_get(url + "/status")
    if got is None or got[0] != 200:
        return None
    document: dict[str, Any] = json.loads(got[2])
    return document


@dataclass
class Daemon:
    """One C{twistd -n graft} process."""

    name: str
    process: subprocess.Popen[bytes]
    url: str
    state_file: Path
    log: Path

    def status(self) -> dict[str, Any] | None:
        return status(self.url) if self.process.poll() is None else None

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def twistd_graft(
    spawn: Spawner,
    name: str,
    *args: str,
    twistd_args: tuple[str, ...] = (),
    named: bool = True,
) -> Daemon:
    """Start C{twistd -n graft --node-id NAME --status ... --state-file NAME.state} with C{args}.

    C{named=False} leaves out C{--node-id}: the node takes the id its state
    file records (a random one on the first start).
    """
    state_file = spawn.cwd / f"{name}.state"
    log = spawn.cwd / f"{name}.log"
    url = f"http://127.0.0.1:{free_port()}"
    port = url.rsplit(":", 1)[1]
    argv = [
        *TWISTD,
        *twistd_args,
        "-n",
        "--pidfile=",
        "graft",
        *(["--node-id", name] if named else []),
        "--status",
        f"tcp:{port}:interface=127.0.0.1",
        "--state-file",
        str(state_file),
        *args,
    ]
    return Daemon(name, spawn.start(argv, log), url, state_file, log)


def tcp_cluster(spawn: Spawner, names: list[str], cluster: str = "e2e") -> list[Daemon]:
    """A TCP cluster of len(names) twistd processes on free loopback ports."""
    ports = {name: free_port() for name in names}
    daemons = []
    for name in names:
        peers = [
            arg
            for other in names
            if other != name
            for arg in ("--peer", f"tcp:host=127.0.0.1:port={ports[other]}")
        ]
        daemons.append(
            twistd_graft(
                spawn,
                name,
                "--cluster",
                cluster,
                "--listen",
                f"tcp:{ports[name]}:interface=127.0.0.1",
                *peers,
                *TIMING,
            )
        )
    return daemons


def agreed_leader(daemons: list[Daemon]) -> tuple[str, int] | None:
    """(leader, term) when every live daemon answers and all agree on one leader in one term."""
    statuses = [d.status() for d in daemons]
    if not statuses or any(s is None for s in statuses):
        return None
    leaders = [s for s in statuses if s is not None and s["state"] == "Leader"]
    if len(leaders) != 1:
        return None
    leader, term = leaders[0]["id"], leaders[0]["term"]
    if all(s is not None and s["leader"] == leader and s["term"] == term for s in statuses):
        return leader, term
    return None


def last_line(output: str) -> str:
    return [line for line in output.splitlines() if line.strip()][-1]


# -- a TCP cluster of three twistd processes ------------------------------


def test_three_node_tcp_cluster_elects_reports_and_fails_over(spawn: Spawner) -> None:
    """Three twistd graft nodes elect one leader, graft status reports it, SIGKILL moves it."""
    daemons = tcp_cluster(spawn, ["n1", "n2", "n3"])
    leader, term = wait_until(lambda: agreed_leader(daemons), 20, "a leader all three agree on")
    urls = [d.url for d in daemons]

    shown = spawn.run([*GRAFT, "status", *urls])
    assert shown.returncode == 0, shown.stdout
    assert f"{leader} leads term {term}" in shown.stdout
    assert shown.stdout.splitlines()[0].split() == ["NODE", "ID", "STATE", "TERM", "LEADER"]
    as_json = spawn.run([*GRAFT, "status", "--json", *urls])
    assert as_json.returncode == 0, as_json.stdout
    report = json.loads(as_json.stdout)
    assert report["ok"] is True
    assert sorted(node["id"] for node in report["nodes"]) == ["n1", "n2", "n3"]

    codes = {}
    for d in daemons:
        got = http_get(d.url + "/leader")
        assert got is not None
        codes[d.name] = got[0]
    assert codes == {d.name: 200 if d.name == leader else 503 for d in daemons}

    for d in daemons:
        metrics = http_get(d.url + "/metrics")
        assert metrics is not None and metrics[0] == 200
        assert metrics[1]["Content-Type"].startswith("text/plain")
        text = metrics[2].decode()
        assert f'graft_term{{cluster="e2e",node="{d.name}"}} {float(term)}' in text
        is_leader = 1.0 if d.name == leader else 0.0
        assert f'graft_is_leader{{cluster="e2e",node="{d.name}"}} {is_leader}' in text
        healthz = http_get(d.url + "/healthz")
        assert healthz is not None and healthz[0] == 200

    victim = next(d for d in daemons if d.name == leader)
    survivors = [d for d in daemons if d is not victim]
    victim.process.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    victim.process.wait(10)
    new_leader, new_term = wait_until(
        lambda: (found := agreed_leader(survivors)) and found[0] != leader and found,
        20,
        "the survivors to agree on a new leader",
        interval=0.01,
    )
    failover = time.monotonic() - killed_at
    print(f"\nfailover: {new_leader} leads term {new_term} {failover * 1000:.0f} ms after SIGKILL")
    assert new_term > term
    assert new_leader in {d.name for d in survivors}

    after = spawn.run([*GRAFT, "status", *urls])
    assert after.returncode == 0, after.stdout
    assert f"{new_leader} leads term {new_term}" in after.stdout
    assert "unreachable" in next(line for line in after.stdout.splitlines() if victim.url in line)
    winner = next(d for d in survivors if d.name == new_leader)
    assert f"Candidate -> Leader, term {new_term}, leader {new_leader}" in winner.output()


# -- one node: SIGTERM, logs, hooks ---------------------------------------


def single_node(spawn: Spawner, name: str, *args: str, **kw: Any) -> Daemon:
    """A TCP cluster of one: it leads as soon as it campaigns."""
    listen = f"tcp:{free_port()}:interface=127.0.0.1"
    solo = ["--cluster", "solo", "--transport", "tcp", "--listen", listen, *TIMING]
    return twistd_graft(spawn, name, *solo, *args, **kw)


def test_sigterm_stops_a_node_cleanly_and_keeps_its_state_file(spawn: Spawner) -> None:
    """SIGTERM ends twistd graft by the signal after a clean stop; the state file stays loadable."""
    node = single_node(spawn, "s1")
    leading = wait_until(
        lambda: (s := node.status()) and s["state"] == "Leader" and s, 15, "the node to lead"
    )
    node.process.send_signal(signal.SIGTERM)
    # twistd stops the reactor, then re-raises the signal on itself (143 in a shell).
    assert node.process.wait(15) == -signal.SIGTERM
    output = node.output()
    assert "Traceback" not in output
    assert "node s1 of solo closed" in output
    assert "Server Shut Down." in output
    saved = StateFile(str(node.state_file)).load()
    assert saved.term == leading["term"] >= 1
    assert saved.voted_for == "s1"


def test_restart_without_node_id_keeps_the_recorded_id(spawn: Spawner) -> None:
    """Without --node-id, a node restarted on its state file reports the same id on /status."""
    first = single_node(spawn, "r1", named=False)
    before = wait_until(first.status, 15, "the first start to answer /status")
    node_id = before["id"]
    assert node_id and node_id != "r1"
    first.process.send_signal(signal.SIGTERM)
    assert first.process.wait(15) == -signal.SIGTERM
    assert StateFile(str(first.state_file)).load().node_id == node_id

    second = single_node(spawn, "r1", named=False)
    after = wait_until(second.status, 15, "the second start to answer /status")
    assert after["id"] == node_id
    # Both starts log to r1.log: the same node started twice.
    assert second.output().count(f"node {node_id} of solo started") == 2
    assert "Traceback" not in second.output()


def test_state_changes_are_structured_log_events(spawn: Spawner) -> None:
    """Each state change is one JSON log event naming node, cluster, from, to, term and leader."""
    (spawn.cwd / "jsonlogger.py").write_text(JSON_LOGGER)
    node = single_node(spawn, "j1", twistd_args=("--logger", "jsonlogger.observer"))
    log = spawn.cwd / "log.json"

    def changes() -> list[dict[str, Any]]:
        if not log.exists():
            return []
        with open(log) as f:
            return [e for e in eventsFromJSONLogFile(f) if e.get("event") == "state_changed"]

    events = wait_until(lambda: len(changes()) >= 2 and changes(), 15, "two state changes")
    node.process.send_signal(signal.SIGTERM)
    node.process.wait(15)
    events = changes()
    assert [(e["previous"], e["state"]) for e in events] == [
        ("Follower", "Candidate"),
        ("Candidate", "Leader"),
    ]
    for event in events:
        assert event["node_id"] == "j1"
        assert event["cluster"] == "solo"
        assert event["term"] == 1
        assert event["log_level"].name == "info"
    # Each event tells the leader as it was at that change: a candidate has none yet.
    assert events[1]["leader"] == "j1"
    assert events[0]["leader"] == "", (
        "the Follower -> Candidate event names a leader: it reads the node when the "
        f"event is delivered, not when the state changed: {events[0]['log_format']!r} "
        f"with leader={events[0]['leader']!r}"
    )


def test_hooks_run_in_order_with_the_event_in_their_environment(spawn: Spawner) -> None:
    """Hook commands (split like a shell, run without one) run in order, with GRAFT_* set."""
    record = spawn.cwd / "hooks.txt"
    env_file = spawn.cwd / "leader.env"
    # $0 is the hook's name: the word after the script.
    fields = "$0 $GRAFT_PREVIOUS_STATE $GRAFT_STATE $GRAFT_TERM [$GRAFT_LEADER]"
    line = f'echo "{fields}" >> {shlex.quote(str(record))}'
    on_leader = f"env > {shlex.quote(str(env_file))}; {line}"
    node = single_node(
        spawn,
        "h1",
        "--on-leader",
        f"/bin/sh -c {shlex.quote(on_leader)} on-leader",
        "--on-change",
        f"/bin/sh -c {shlex.quote(line)} on-change",
        "--on-follower",
        f"/bin/sh -c {shlex.quote(line)} on-follower",
    )
    lines = wait_until(
        lambda: record.exists() and len(record.read_text().splitlines()) >= 3 and record,
        15,
        "three hooks to run",
    )
    env = dict(entry.split("=", 1) for entry in env_file.read_text().splitlines() if "=" in entry)
    assert {key: value for key, value in env.items() if key.startswith("GRAFT_")} == {
        "GRAFT_CLUSTER": "solo",
        "GRAFT_NODE_ID": "h1",
        "GRAFT_STATE": "Leader",
        "GRAFT_PREVIOUS_STATE": "Candidate",
        "GRAFT_TERM": "1",
        "GRAFT_LEADER": "h1",
    }
    assert node.status() is not None  # the node runs on
    # No on-follower: the node never stopped leading.
    ran = lines.read_text().splitlines()
    assert [entry.split(" [")[0] for entry in ran] == [
        "on-change Follower Candidate 1",
        "on-leader Candidate Leader 1",
        "on-change Candidate Leader 1",
    ]
    assert ran[1:] == ["on-leader Candidate Leader 1 [h1]", "on-change Candidate Leader 1 [h1]"]
    # The first hook ran for the change to Candidate: no leader then.
    assert ran[0] == "on-change Follower Candidate 1 []"


# -- graft status without a leader ----------------------------------------


def test_graft_status_fails_without_a_leader(spawn: Spawner) -> None:
    """graft status exits 1 when the only answering node has no leader; one row per URL."""
    # One node of a TCP cluster of three whose peers never start: it never leads (with
    # pre-vote it does not even raise its term).
    absent = [free_port(), free_port()]
    node = twistd_graft(
        spawn,
        "lonely",
        "--cluster",
        "trio",
        "--listen",
        f"tcp:{free_port()}:interface=127.0.0.1",
        *(arg for port in absent for arg in ("--peer", f"tcp:host=127.0.0.1:port={port}")),
        *TIMING,
    )
    started = time.monotonic()
    wait_until(
        lambda: node.status() is not None and time.monotonic() - started > 2.0,
        15,
        "the node to pass a few election timeouts",
    )
    dead = f"http://127.0.0.1:{free_port()}"
    shown = spawn.run([*GRAFT, "status", node.url, dead])
    assert shown.returncode == 1, shown.stdout
    lines = shown.stdout.splitlines()
    assert lines[0].split() == ["NODE", "ID", "STATE", "TERM", "LEADER"]
    assert lines[1].split()[:2] == [node.url, "lonely"]
    assert lines[1].split()[2] in ("Candidate", "Follower")
    assert lines[2].startswith(dead) and "unreachable" in lines[2]
    assert re.fullmatch(r"no leader in term \d+", lines[3])
    assert len(lines) == 4
    as_json = spawn.run([*GRAFT, "status", "--json", node.url, dead])
    assert as_json.returncode == 1
    assert json.loads(as_json.stdout)["ok"] is False


def test_graft_status_fails_when_no_node_answers(spawn: Spawner) -> None:
    """graft status exits 1 and says so when none of the URLs answers."""
    urls = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
    shown = spawn.run([*GRAFT, "status", *urls])
    assert shown.returncode == 1
    lines = shown.stdout.splitlines()
    assert lines[0].split() == ["NODE", "ID", "STATE", "TERM", "LEADER"]
    assert [row.split()[0] for row in lines[1:3]] == urls
    assert all("unreachable" in row for row in lines[1:3])
    assert lines[3:] == ["no node answered"]


# -- NATS and the reactor -------------------------------------------------


def test_nats_node_runs_without_naming_a_reactor(spawn: Spawner, nats_server: NatsServer) -> None:
    """twistd graft over NATS installs the asyncio reactor by itself and leads a cluster of one."""
    node = twistd_graft(spawn, "a1", "--cluster", "x", "--nats", nats_server.url, "--size", "1")
    wait_until(
        lambda: (s := node.status()) and s["state"] == "Leader" and s["leader"] == "a1",
        20,
        "the NATS node to lead",
    )
    assert "reactor class: twisted.internet.asyncioreactor.AsyncioSelectorReactor" in (
        node.output()
    )


@pytest.mark.parametrize("reactor", ["select", "poll"])
def test_nats_refuses_another_named_reactor(spawn: Spawner, reactor: str) -> None:
    """twistd --reactor=select|poll graft over NATS stops at once, telling to use asyncio."""
    started = time.monotonic()
    done = spawn.run(
        [*TWISTD, f"--reactor={reactor}", "-n", "--pidfile=", "graft", "--cluster", "x",
         "--nats", f"nats://127.0.0.1:{free_port()}"],
        timeout=20,
    )  # fmt: skip
    assert done.returncode != 0
    assert time.monotonic() - started < 15
    message = last_line(done.stdout)
    assert "needs the asyncio reactor" in message
    assert "--reactor=asyncio" in message
    assert "Traceback" not in done.stdout


# -- bad options ----------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "--cluster NAME is required"),
        (["--cluster", "c", "--transport", "tcp"], "--transport tcp needs --listen ENDPOINT"),
        (["--cluster", "c", "--listen", "tcp:7001"], "--listen is a TCP option"),
        (
            ["--cluster", "c", "--listen", "tcp:7001", "--peer", "tcp:host=127.0.0.1:port=7002",
             "--size", "3"],
            "--size 3 contradicts the 1 --peer given",
        ),
        (
            ["--cluster", "c", "--listen", "tcp:7001", "--peer", "tcp:host=127.0.0.1:port=7002",
             "--nats", "nats://127.0.0.1:4222"],
            "--nats is a NATS option",
        ),
        (
            ["--cluster", "c", "--listen", "tcp:7001", "--peer", "tcp:host=127.0.0.1:port=7002",
             "--secret-file", "missing.secret"],
            "--secret-file: cannot read missing.secret",
        ),
        (["--cluster", "c", "--election-timeout", "1"], "--election-timeout 1: the election"),
    ],
)  # fmt: skip
def test_bad_options_exit_with_the_usage_error(
    spawn: Spawner, args: list[str], message: str
) -> None:
    """twistd graft refuses a bad combination of options with a one-line message, exit 1."""
    done = spawn.run([*TWISTD, "-n", "--pidfile=", "graft", *args], timeout=20)
    assert done.returncode == 1
    assert message in last_line(done.stdout)
    assert "Traceback" not in done.stdout
    assert not list(spawn.cwd.glob("*.state"))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "belongs to node 'm1', not 'm2'"),
        (b"garbage", "is corrupt (not a JSON document)"),
    ],
)
def test_refused_state_file_exits_with_the_usage_error(
    spawn: Spawner, content: bytes | None, message: str
) -> None:
    """Another node's state file, or a corrupt one, stops twistd graft in one line, exit 1."""
    state_file = spawn.cwd / "m.state"
    if content is None:
        StateFile(str(state_file)).save(PersistentState(5, "m1", "m1"))
        content = state_file.read_bytes()
    else:
        state_file.write_bytes(content)
    done = spawn.run(
        [*TWISTD, "-n", "--pidfile=", "graft", "--cluster", "c", "--transport", "tcp",
         "--listen", f"tcp:{free_port()}:interface=127.0.0.1", "--state-file", str(state_file),
         "--node-id", "m2"],
        timeout=20,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout
    line = last_line(done.stdout)
    assert "--state-file" in line or "--node-id" in line, line
    assert message in line, line
    assert "Traceback" not in done.stdout
    assert state_file.read_bytes() == content


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        (
            "secret",
            ["--secret-file", "secret"],
            "--secret-file: secret has mode 0644, so other users can read or change the secret",
        ),
        (
            "shared",
            ["--state-file", "shared/m.state"],
            "(mode 1777) is shared with every local user",
        ),
        (None, ["--nats-password", "hunter2"], "--nats-password puts the password where every"),
    ],
)  # fmt: skip
def test_unsafe_local_files_and_secrets_exit_with_the_usage_error(
    spawn: Spawner, setup: str | None, args: list[str], message: str
) -> None:
    """twistd graft refuses a secret file others can read, a state directory others can write
    and a password on the command line, in one line, exit 1, creating no state file."""
    if setup == "secret":
        secret = spawn.cwd / "secret"
        secret.write_text("a long shared secret\n")
        secret.chmod(0o644)
    elif setup == "shared":
        (spawn.cwd / "shared").mkdir()
        (spawn.cwd / "shared").chmod(0o1777)
    done = spawn.run(
        [*TWISTD, "-n", "--pidfile=", "graft", "--cluster", "c", "--transport", "tcp",
         "--listen", f"tcp:{free_port()}:interface=127.0.0.1", *args],
        timeout=20,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout
    line = last_line(done.stdout)
    assert message in line, line
    assert "Traceback" not in done.stdout
    assert "hunter2" not in done.stdout
    assert not list(spawn.cwd.glob("**/*.state"))


# -- graft demo -----------------------------------------------------------


def live_processes() -> dict[int, tuple[int, str]]:
    """Every live (not zombie) process: pid -> (parent pid, command line)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError):
            # state and ppid come after the command name, which may hold spaces.
            state, ppid = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:2]
            if state != "Z":
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                found[int(entry.name)] = (int(ppid), command)
    return found


def children_of(pid: int) -> dict[int, str]:
    return {child: cmd for child, (ppid, cmd) in live_processes().items() if ppid == pid}


def run_demo(
    spawn: Spawner, *args: str, nats: bool = False, interrupt: bool = False, timeout: float = 30
) -> str:
    """Run graft demo to its end (or Ctrl-C it); check that it exits 0 and leaves nothing."""
    log = spawn.cwd / "demo.out"
    demo = spawn.start([*GRAFT, "demo", *args], log)
    directory = wait_until(
        lambda: (m := re.search(r"state and logs in (\S+);", log.read_text())) and m[1],
        10,
        "the demo's first line",
    )

    # Its nodes (and nats-server) are its children, in sessions of their own so that
    # Ctrl-C reaches only the demo: none may outlive it.
    started = wait_until(
        lambda: len(children_of(demo.pid)) >= 3 + nats and children_of(demo.pid),
        10,
        "the demo's processes",
    )
    running = list(started.values())
    assert sum(directory in c and " graft " in c for c in running) == 3, running
    assert any("nats-server" in c for c in running) == nats, running
    if interrupt:
        wait_until(
            lambda: re.search(r"^(n\d) +Leader +\d+ +\1$", log.read_text(), re.MULTILINE),
            15,
            "the demo to show a leader",
        )
        # Ctrl-C in a terminal signals the whole foreground process group.
        os.killpg(demo.pid, signal.SIGINT)
    assert demo.wait(timeout) == 0, log.read_text()
    output = log.read_text()
    wait_until(lambda: not set(started) & set(live_processes()), 5, "the demo's children to end")
    assert output.rstrip().endswith("graft demo: stopped, no node left running")
    assert "Traceback" not in output
    for name in ("n1", "n2", "n3"):
        node_log = (Path(directory) / f"{name}.log").read_text()
        assert "Traceback" not in node_log, node_log
    return output


def test_graft_demo_over_tcp_fails_over_and_exits_cleanly(spawn: Spawner) -> None:
    """graft demo (TCP) shows the table, kills leaders, prints failovers, exits 0, leaves none."""
    output = run_demo(spawn, "--duration", "8", "--kill-every", "3")
    assert re.search(r"^NODE +STATE +TERM +LEADER$", output, re.MULTILINE)
    assert re.search(r"^(n\d) +Leader +\d+ +\1$", output, re.MULTILINE)
    assert re.search(r"^killed the leader n\d \(SIGKILL\)$", output, re.MULTILINE)
    failovers = re.findall(r"^failover: (n\d) leads after (\d+) ms", output, re.MULTILINE)
    assert failovers, output
    print("\ndemo failovers (ms):", [int(ms) for _, ms in failovers])


def test_graft_demo_over_nats_exits_cleanly(spawn: Spawner) -> None:
    """graft demo --transport nats starts its own nats-server and stops everything at the end."""
    output = run_demo(
        spawn, "--transport", "nats", "--duration", "6", "--kill-every", "0", nats=True
    )
    assert "3 nodes over nats" in output
    assert re.search(r"^(n\d) +Leader +\d+ +\1$", output, re.MULTILINE)
    assert "failover:" not in output


def test_graft_demo_exits_cleanly_on_ctrl_c(spawn: Spawner) -> None:
    """Ctrl-C (SIGINT to its process group) ends graft demo with exit 0 and no process left."""
    output = run_demo(spawn, "--kill-every", "0", interrupt=True, timeout=15)
    assert "Traceback" not in output
