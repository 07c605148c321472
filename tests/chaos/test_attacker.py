"""Attackers: a live cluster keeps its leader while someone abuses its ports.

Each test starts a cluster, lets an attacker loose on it and, while the
attack runs, restarts a follower (SIGTERM, start) and, in another round,
the leader (SIGKILL, start), so that the restarted node must make its
handshakes and be heard under attack. One poller thread per node asks its
/leader page throughout. The attacks:

- handshake-slot starvation (TCP): ~80 connections per node from another
  address (127.0.0.2), reopened as soon as the node drops them; half send
  nothing, half a valid-looking hello and then nothing. The cluster has a
  shared secret, so a hello without a ticket proves nothing;
- status-port abuse (both transports): ~200 idle connections to each
  node's status socket, refilled as they are dropped, and 20 MB POST
  uploads, sent at once and trickled;
- NATS only: heartbeats naming wildcard ids ("evil.>", of a higher term:
  taken, they would depose the leader) and a flood of heartbeat
  acknowledgements from made-up followers, of the current term.

Judged from the poller's answers: no two nodes answering 200 to
overlapping requests; no stretch without any 200 longer than the fault of
the moment explains (a leader kill: two maximum election timeouts and
SLACK; otherwise, a follower restart included, NO_LEADER_GAP); no node
dying on its own; the restarted node following the leader within a
maximum election timeout and SLACK of its status page answering.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from graft_tx.local import LocalCluster, LocalNode
from graft_tx.messages import Heartbeat, HeartbeatAck
from graft_tx.transport import wire
from graft_tx.transport.lines import VERSION, new_nonce
from graft_tx.transport.nats import heartbeat_ack_subject, heartbeat_subject

from .checks import (
    Answer,
    Watch,
    check_event_logs,
    evidence,
    no_agreement,
    start_agreed,
    wait_for_agreement,
)
from .conftest import ChaosReport, rounds
from .test_pause import LeaderPoller, report_overlapping_200s

# Scheduling slack on a busy 2-core machine.
SLACK = 1.0
# The longest stretch without a 200 that no fault explains: a few failed polls.
NO_LEADER_GAP = 0.5
# The pause after a /leader request that got no answer.
POLL_RETRY = 0.01
# How long the attack runs before the first fault, and after each recovery.
SETTLE = 1.0

ATTACK_ADDRESS = "127.0.0.2"
SLOT_CONNECTIONS = 80  # per node
STATUS_IDLE = 200  # per node
UPLOAD_BYTES = 20 * 1024 * 1024
GHOSTS = 20
ACKS_PER_BATCH = 40  # every 20 ms: ~2000 a second
MAX_RSS_GROWTH_KB = 50 * 1024


class Attack:
    """An attacker thread; C{stop} ends it and closes every socket it holds."""

    name = "attack"

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._guarded, daemon=True)
        self.error: BaseException | None = None

    def _guarded(self) -> None:
        try:
            self.run()
        except BaseException as e:  # reported by the test
            self.error = e

    def run(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)

    def notes(self) -> str:
        return ""


@dataclass
class _Slot:
    port: int
    hello: bytes | None
    sock: socket.socket | None = None
    retry_at: float = 0.0


class SlotAttack(Attack):
    """Hold SLOT_CONNECTIONS connections to each node's TCP port from ATTACK_ADDRESS."""

    name = "handshake slots"

    def __init__(self, cluster: LocalCluster) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()
        self._slots: list[_Slot] = []
        for node in cluster.nodes:
            port = listen_port(node)
            for i in range(SLOT_CONNECTIONS):
                hello = None
                if i % 2:
                    hello = (
                        json.dumps(
                            {
                                "type": "hello",
                                "version": VERSION,
                                "cluster": cluster.cluster,
                                "node": f"x{i}",
                                "size": cluster.size,
                                "protocol": "graft-tx",
                                "nonce": new_nonce(),
                            }
                        ).encode()
                        + b"\n"
                    )
                self._slots.append(_Slot(port, hello))

    def _open(self, slot: _Slot, selector: selectors.BaseSelector, now: float) -> None:
        sock = socket.socket()
        try:
            sock.bind((ATTACK_ADDRESS, 0))
            sock.settimeout(0.2)
            sock.connect(("127.0.0.1", slot.port))
            if slot.hello is not None:
                sock.sendall(slot.hello)
            sock.setblocking(False)
        except OSError:
            sock.close()
            self.counts["refused"] += 1
            slot.retry_at = now + 0.05  # the node is down: not a tight loop
            return
        slot.sock = sock
        selector.register(sock, selectors.EVENT_READ, slot)
        self.counts["opened"] += 1

    def run(self) -> None:
        selector = selectors.DefaultSelector()
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                for slot in self._slots:
                    if slot.sock is None and slot.retry_at <= now:
                        self._open(slot, selector, now)
                for key, _ in selector.select(0.02):
                    slot = key.data
                    assert slot.sock is not None
                    try:
                        data = slot.sock.recv(65536)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    if data:
                        continue  # the node's hello (and proof): never answered
                    selector.unregister(slot.sock)
                    slot.sock.close()
                    slot.sock = None
                    self.counts["dropped by the node"] += 1
        finally:
            for slot in self._slots:
                if slot.sock is not None:
                    slot.sock.close()
            selector.close()

    def notes(self) -> str:
        return (
            f"slot attack: {self.counts['opened']} connections opened "
            f"({SLOT_CONNECTIONS}/node), {self.counts['dropped by the node']} dropped by the "
            f"nodes, {self.counts['refused']} refused"
        )


class StatusAttack(Attack):
    """Idle connections and big uploads against every node's status socket."""

    name = "status port"

    def __init__(self, cluster: LocalCluster) -> None:
        super().__init__()
        self._nodes = cluster.nodes
        self.counts: Counter[str] = Counter()
        self.upload_answers: Counter[str] = Counter()
        self.max_rss_growth_kb = 0
        self._rss: dict[tuple[str, int], int] = {}

    def _connect(self, node: LocalNode) -> socket.socket | None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(0.2)
            sock.connect(str(node.status_socket))
        except OSError:
            sock.close()
            return None
        return sock

    def _upload(self, node: LocalNode, slowly: bool) -> None:
        """POST UPLOAD_BYTES: at once, or a 64 kB chunk every 20 ms for a second."""
        sock = self._connect(node)
        if sock is None:
            return
        self.counts["uploads"] += 1
        answer = b""
        try:
            sock.settimeout(2.0)
            sock.sendall(
                b"POST /status HTTP/1.1\r\nHost: localhost\r\n"
                b"Content-Type: application/octet-stream\r\n"
                b"Content-Length: %d\r\n\r\n" % UPLOAD_BYTES
            )
            chunk = b"x" * 65536
            if slowly:
                for _ in range(50):
                    sock.sendall(chunk)
                    if self._stop.wait(0.02):
                        break
            else:
                for _ in range(UPLOAD_BYTES // len(chunk)):
                    sock.sendall(chunk)
        except OSError:
            pass  # the node closed it: what it answered is still to be read
        try:
            sock.settimeout(2.0)
            while len(answer) < 4096:
                data = sock.recv(4096)
                if not data:
                    break
                answer += data
        except OSError:
            pass
        finally:
            sock.close()
        status = answer.split(b"\r\n", 1)[0].decode(errors="replace") or "closed, no answer"
        self.upload_answers[status] += 1

    def _check_rss(self, node: LocalNode) -> None:
        pid = node.pid
        if pid is None or not node.alive:
            return
        with contextlib.suppress(OSError, ValueError, IndexError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                    first = self._rss.setdefault((node.name, pid), rss)
                    self.max_rss_growth_kb = max(self.max_rss_growth_kb, rss - first)

    def run(self) -> None:
        idle: dict[str, list[socket.socket]] = {node.name: [] for node in self._nodes}
        try:
            last_upload = 0.0
            uploads = 0
            while not self._stop.is_set():
                for node in self._nodes:
                    self._check_rss(node)
                    held = idle[node.name]
                    # Forget what the node dropped, then refill to STATUS_IDLE.
                    still = []
                    for sock in held:
                        try:
                            dropped = sock.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK) == b""
                        except BlockingIOError:
                            dropped = False
                        except OSError:
                            dropped = True
                        if dropped:
                            sock.close()
                            self.counts["idle dropped"] += 1
                        else:
                            still.append(sock)
                    while len(still) < STATUS_IDLE and not self._stop.is_set():
                        sock = self._connect(node)
                        if sock is None:
                            break
                        still.append(sock)
                        self.counts["idle opened"] += 1
                    idle[node.name] = still
                if time.monotonic() - last_upload > 1.0:
                    node = self._nodes[uploads % len(self._nodes)]
                    self._upload(node, slowly=bool(uploads % 2))
                    uploads += 1
                    last_upload = time.monotonic()
                self._stop.wait(0.5)
        finally:
            for held in idle.values():
                for sock in held:
                    sock.close()

    def notes(self) -> str:
        answers = ", ".join(
            f"{count} '{what}'" for what, count in sorted(self.upload_answers.items())
        )
        return (
            f"status attack: {self.counts['idle opened']} idle connections opened "
            f"(aiming at {STATUS_IDLE} held per node), "
            f"{self.counts['idle dropped']} dropped by the nodes; "
            f"{self.counts['uploads']} 20 MB uploads answered: {answers or 'none'}; "
            f"max RSS growth {self.max_rss_growth_kb} kB"
        )


class NatsAttack(Attack):
    """Wildcard-id heartbeats and made-up acknowledgements, over a raw NATS connection."""

    name = "nats"

    def __init__(self, cluster: LocalCluster) -> None:
        super().__init__()
        self._cluster = cluster
        url = urlsplit(cluster.nats_urls[0])
        self._address = (url.hostname or "127.0.0.1", url.port or 4222)
        self.counts: Counter[str] = Counter()

    def _term_and_leader(self) -> tuple[int, str]:
        statuses = [node.status(0.5) for node in self._cluster.nodes]
        live = [s for s in statuses if "error" not in s]
        term = max((int(s["term"]) for s in live), default=0)
        leaders = [str(s["id"]) for s in live if s.get("state") == "Leader"]
        return term, leaders[0] if leaders else ""

    def run(self) -> None:
        size = self._cluster.size
        names = [node.name for node in self._cluster.nodes]
        sock = socket.create_connection(self._address, timeout=2)
        try:
            sock.recv(4096)  # INFO
            sock.sendall(b'CONNECT {"verbose":false,"pedantic":false,"name":"attacker"}\r\n')
            sock.setblocking(False)
            term, leader = 0, ""
            refreshed = 0.0
            seq = 0
            while not self._stop.is_set():
                with contextlib.suppress(BlockingIOError):
                    if b"PING" in sock.recv(65536):
                        sock.sendall(b"PONG\r\n")
                now = time.monotonic()
                if now - refreshed > 0.5:
                    term, leader = self._term_and_leader()
                    refreshed = now
                    # Of a higher term: a node that took it would step down.
                    for evil in ("evil.>", "evil.*", "evil >"):
                        self._pub(
                            sock,
                            heartbeat_subject(self._cluster.cluster),
                            wire.encode(Heartbeat(term + 1, evil, 1), size),
                        )
                        self.counts["wildcard heartbeats"] += 1
                if term > 0:
                    targets = [leader] if leader else names
                    for _ in range(ACKS_PER_BATCH):
                        seq = seq % 1000 + 1
                        ack = HeartbeatAck(term, f"ghost{seq % GHOSTS + 1}", seq, 1)
                        payload = wire.encode(ack, size)
                        for target in targets:
                            self._pub(sock, heartbeat_ack_subject(target), payload)
                            self.counts["acks"] += 1
                self._stop.wait(0.02)
        finally:
            sock.close()

    @staticmethod
    def _pub(sock: socket.socket, subject: str, payload: bytes) -> None:
        message = b"PUB %s %d\r\n%s\r\n" % (subject.encode(), len(payload), payload)
        deadline = time.monotonic() + 2
        while message:
            try:
                sent = sock.send(message)
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.001)
                continue
            message = message[sent:]

    def notes(self) -> str:
        return (
            f"nats attack: {self.counts['acks']} acks from {GHOSTS} made-up followers, "
            f"{self.counts['wildcard heartbeats']} wildcard heartbeats"
        )


def listen_port(node: LocalNode) -> int:
    """The TCP port in the node's C{--listen tcp:PORT:...}."""
    listen = node.argv[node.argv.index("--listen") + 1]
    return int(listen.split(":")[1])


@dataclass
class Fault:
    kind: str
    at: float  # time.monotonic()
    allowed: float  # the longest stretch without a leader it explains


@dataclass
class Gaps:
    """Stretches without any 200 from the poller's answers: (start, end) monotonic."""

    stretches: list[tuple[float, float]] = field(default_factory=list)

    @classmethod
    def of(cls, answers: list[Answer], until: float) -> Gaps:
        times = sorted(a.answered for a in answers if a.code == 200)
        gaps = cls()
        for before, after in zip(times, [*times[1:], until], strict=True):
            gaps.stretches.append((before, after))
        return gaps


def follows_within(cluster: LocalCluster, node: LocalNode, timeout: float) -> tuple[bool, float]:
    """Wait until C{node}'s status page answers, then until it follows the leader.

    Returns (followed within C{timeout} of answering, seconds it took).
    """
    deadline = time.monotonic() + 30
    while "error" in node.status() and time.monotonic() < deadline:
        time.sleep(0.01)
    up = time.monotonic()
    while time.monotonic() - up < timeout:
        own = node.status()
        leader = own.get("leader")
        if leader and leader not in [n.name for n in cluster.nodes]:
            raise AssertionError(f"{node.name} names {leader!r} as its leader: no such node")
        if own.get("state") == "Follower" and leader:
            other = cluster.node(str(leader)).status() if leader != node.name else {}
            if other.get("state") == "Leader" and other.get("is_leader"):
                return True, time.monotonic() - up
        time.sleep(0.01)
    return False, time.monotonic() - up


def run_under_attack(
    cluster: LocalCluster,
    report: ChaosReport,
    attacks: list[Callable[[LocalCluster], Attack]],
) -> None:
    """Start C{cluster}, attack it, restart a follower and the leader in turns, and judge."""
    names = [node.name for node in cluster.nodes]
    watch = Watch(report)
    leader = start_agreed(cluster, report, watch)
    if leader is None:
        return
    max_et = cluster.election_timeout_max
    faults: list[Fault] = []
    stopped: set[str] = set()  # nodes this test stops on purpose, just now
    follow_times: list[float] = []
    running: list[Attack] = []
    poller = LeaderPoller(cluster.nodes, retry=POLL_RETRY)
    try:
        with poller:
            for make in attacks:
                attack = make(cluster)
                attack.start()
                running.append(attack)
            time.sleep(SETTLE)
            for round_ in range(1, rounds(full=6, short=2) + 1):
                report.rounds = round_
                if round_ % 2:
                    victim = cluster.node(next(n for n in names if n != leader))
                    kind = "SIGTERM+start follower"
                    faults.append(Fault(kind, time.monotonic(), NO_LEADER_GAP))
                    stopped.add(victim.name)
                    victim.stop()
                    stopped.discard(victim.name)
                    victim.start()
                else:
                    victim = cluster.node(leader)
                    kind = "SIGKILL+start leader"
                    faults.append(Fault(kind, time.monotonic(), 2 * max_et + SLACK))
                    stopped.add(victim.name)
                    victim.kill()
                    survivors = [n for n in names if n != leader]
                    new, last = wait_for_agreement(cluster, survivors, exclude=[leader])
                    if new is None:
                        no_agreement(report, cluster, f"round {round_}, {leader} killed", last)
                        return
                    stopped.discard(victim.name)
                    victim.start()
                report.fault(kind)
                ok, took = follows_within(cluster, victim, max_et + SLACK)
                follow_times.append(took)
                if not ok:
                    report.violation(
                        f"round {round_}: {victim.name}, restarted under attack, did not follow "
                        f"a leader within {max_et + SLACK:.1f}s of its status page answering"
                    )
                leader, last = wait_for_agreement(cluster, names, watch=watch)
                if leader is None:
                    no_agreement(report, cluster, f"round {round_}, {victim.name} back", last)
                    return
                time.sleep(SETTLE)
            ended = time.monotonic()
    finally:
        for attack in running:
            attack.stop()
            if attack.error is not None:
                report.violation(f"the {attack.name} attacker failed: {attack.error!r}")
            report.note(attack.notes())
        for node in cluster.nodes:
            if not node.alive and node.name not in stopped:
                code = node.process.returncode if node.process else None
                report.violation(f"{node.name} died on its own (exit code {code})")
                evidence(f"{node.name}'s output", node.output().splitlines()[-20:])
        leaders = check_event_logs(report, cluster.events())
        report.leader_changes = max(0, len(leaders) - 1)

    answers = poller.answers()
    report_overlapping_200s(report, answers)
    by_kind: Counter[str] = Counter()
    for start, end in Gaps.of(answers, ended).stretches:
        length = end - start
        report.leaderless(length)
        # A fault explains the stretches that begin around it.
        explaining = [f for f in faults if f.at - 0.5 <= start <= f.at + f.allowed]
        allowed = max([NO_LEADER_GAP, *(f.allowed for f in explaining)])
        kind = max(explaining, key=lambda f: f.allowed).kind if explaining else "no fault"
        by_kind[kind] = max(by_kind[kind], round(length * 1000))
        if length > allowed:
            report.violation(
                f"no node answered 200 for {length:.3f}s ({kind}; at most {allowed:.1f}s explained)"
            )
    report.note(
        "longest without a leader by fault: "
        + ", ".join(f"{kind} {ms} ms" for kind, ms in sorted(by_kind.items()))
        + f"; restarted node followed after {', '.join(f'{t:.2f}' for t in follow_times)} s"
    )
    assert sum(1 for a in answers if a.code == 200) > 0, "no node ever answered 200"


def secret_file(directory: Path) -> Path:
    path = directory / "cluster.secret"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(os.urandom(24).hex() + "\n")
    return path


@pytest.fixture
def secret(tmp_path: Path) -> Iterator[Path]:
    yield secret_file(tmp_path)


def test_handshake_slot_starvation(
    cluster_over: Callable[..., LocalCluster], chaos_report: ChaosReport, secret: Path
) -> None:
    """Idle and hello-only connections from another address never keep a restarted node out."""
    cluster = cluster_over("tcp", extra_args=["--secret-file", str(secret)])
    run_under_attack(cluster, chaos_report, [SlotAttack])


@pytest.mark.parametrize("transport", ["tcp", "nats"])
def test_status_port_abuse(
    transport: str,
    cluster_over: Callable[..., LocalCluster],
    chaos_report: ChaosReport,
    secret: Path,
) -> None:
    """Hundreds of idle status connections and 20 MB uploads leave /leader answering."""
    extra = ["--secret-file", str(secret)] if transport == "tcp" else []
    cluster = cluster_over(transport, extra_args=extra)
    run_under_attack(cluster, chaos_report, [StatusAttack])


def test_nats_wildcard_heartbeats_and_ghost_acks(
    cluster_over: Callable[..., LocalCluster], chaos_report: ChaosReport
) -> None:
    """Wildcard-id heartbeats and acks from made-up followers neither depose nor prop a leader."""
    cluster = cluster_over("nats")
    run_under_attack(cluster, chaos_report, [NatsAttack])
