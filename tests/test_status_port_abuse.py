"""The status port under abuse: a real `twistd -n graft --status` on loopback, attacked.

Whoever reaches the status port must not be able to use it against the node:
fill its disk with request bodies, take its file descriptors with idle
connections, or grow its log with requests. Each test starts a TCP cluster of
one (it leads at once), attacks its status port, and checks that the node
still leads in the same term and still answers /status.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import resource
import socket
import threading
import time
from pathlib import Path
from typing import Any

from test_daemon import Daemon, Spawner, http_get, single_node, wait_until
from test_daemon import spawn as spawn  # the fixture

UPLOAD = 20_000_000
NOFILE = 128


def leading(node: Daemon, timeout: float = 1.0) -> dict[str, Any] | None:
    """The node's /status while it answers 200 as Leader, else None."""
    got = http_get(node.url + "/status", timeout)
    if got is None or got[0] != 200:
        return None
    document: dict[str, Any] = json.loads(got[2])
    return document if document["state"] == "Leader" else None


def address(node: Daemon) -> tuple[str, int]:
    return "127.0.0.1", int(node.url.rsplit(":", 1)[1])


def stored_in(directory: Path, pid: int) -> tuple[int, list[str]]:
    """Bytes the process keeps under C{directory}, and the names listed there.

    Files listed in the directory count, and so do the process's open files
    there that have no name: Python's TemporaryFile on Linux is an O_TMPFILE,
    never listed, which only /proc/PID/fd shows.
    """
    names = sorted(os.listdir(directory))
    total = sum((directory / name).stat().st_size for name in names)
    fds = Path(f"/proc/{pid}/fd")
    with contextlib.suppress(OSError):
        for fd in fds.iterdir():
            with contextlib.suppress(OSError):
                if os.readlink(fd).startswith(str(directory) + os.sep):
                    total += fd.stat().st_size
    return total, names


def descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_request_bodies_are_refused_before_anything_reaches_tmpdir(spawn: Spawner) -> None:
    """Six concurrent 20 MB uploads (one chunked) get 413 or a close; TMPDIR gets no byte."""
    tmpdir = spawn.cwd / "tmpdir"
    tmpdir.mkdir()
    spawn.env["TMPDIR"] = str(tmpdir)
    node = single_node(spawn, "u1")
    term = wait_until(lambda: leading(node), 15, "the node to lead")["term"]

    block = b"x" * 65536
    head = b"POST /status HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
    uploads = [(head + b"Content-Length: %d\r\n\r\n" % UPLOAD, block)] * 5
    # Chunks of 64 KiB, never the last one: the upload stays open.
    uploads.append((head + b"Transfer-Encoding: chunked\r\n\r\n", b"10000\r\n" + block + b"\r\n"))
    sockets: list[socket.socket] = []
    try:
        for request_head, _ in uploads:
            sock = socket.create_connection(address(node), timeout=2)
            sock.sendall(request_head)
            sock.setblocking(False)
            sockets.append(sock)
        sent = [0] * len(sockets)
        answers = [b""] * len(sockets)
        closed = [False] * len(sockets)
        peak, seen = 0, set()
        started = time.monotonic()
        # Send all but the last byte of each body, then hold the uploads open a while.
        while time.monotonic() - started < 6:
            for i, sock in enumerate(sockets):
                if closed[i]:
                    continue
                try:
                    data = sock.recv(65536)
                    answers[i] += data
                    closed[i] = not data
                except BlockingIOError:
                    pass
                except OSError:
                    closed[i] = True
                payload = uploads[i][1]
                if not closed[i] and sent[i] < UPLOAD - 1:
                    offset = sent[i] % len(payload)
                    try:
                        sent[i] += sock.send(payload[offset : offset + UPLOAD - 1 - sent[i]])
                    except BlockingIOError:
                        pass
                    except OSError:
                        closed[i] = True
            stored, names = stored_in(tmpdir, node.process.pid)
            peak = max(peak, stored)
            seen.update(names)
            all_sent = all(c or s >= UPLOAD - 1 for c, s in zip(closed, sent, strict=True))
            if all(closed) or (all_sent and time.monotonic() - started > 4):
                break
            time.sleep(0.001)
        after, names = stored_in(tmpdir, node.process.pid)
        seen.update(names)
        print(
            f"\nuploads: {sum(sent) / 1e6:.1f} MB sent in {time.monotonic() - started:.2f} s, "
            f"refused {sum(a.startswith(b'HTTP/1.1 413') for a in answers)} with 413, "
            f"closed {sum(closed)}; TMPDIR peak {peak} bytes"
        )
    finally:
        for sock in sockets:
            sock.close()
    assert peak == 0 and after == 0 and not seen, f"TMPDIR held {peak} bytes: {sorted(seen)}"
    for answer, was_closed in zip(answers, closed, strict=True):
        assert answer.startswith(b"HTTP/1.1 413 ") or (was_closed and not answer), answer[:100]
    assert all(closed), "an upload's connection stayed open"
    status = wait_until(lambda: leading(node), 5, "/status to answer")
    assert status["term"] == term
    assert "Traceback" not in node.output()


def test_idle_connections_cannot_take_the_nodes_descriptors(spawn: Spawner) -> None:
    """300 idle connections, then a reconnect storm, under 128 descriptors: the node leads on."""
    node = single_node(spawn, "i1")
    resource.prlimit(node.process.pid, resource.RLIMIT_NOFILE, (NOFILE, NOFILE))
    term = wait_until(lambda: leading(node), 15, "the node to lead")["term"]
    baseline = descriptors(node.process.pid)
    most = baseline

    def poll(seconds: float) -> tuple[list[float], int]:
        """Ask /status every 50 ms: the answer times, and the number of asks unanswered."""
        nonlocal most
        latencies, missed = [], 0
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            asked = time.monotonic()
            status = leading(node, timeout=1.0)
            if status is None:
                missed += 1
            else:
                latencies.append(time.monotonic() - asked)
                assert status["term"] == term
            most = max(most, descriptors(node.process.pid))
            time.sleep(0.05)
        return latencies, missed

    held: list[socket.socket] = []
    stop = threading.Event()
    storm: list[int] = [0]

    def reconnect() -> None:
        """An attacker opening about 2,000 connections a second, keeping the last 300."""
        mine: list[socket.socket] = []
        try:
            while not stop.wait(0.01):
                for _ in range(20):
                    sock = socket.socket()
                    sock.setblocking(False)
                    sock.connect_ex(address(node))
                    mine.append(sock)
                    storm[0] += 1
                while len(mine) > 300:
                    mine.pop(0).close()
        finally:
            for sock in mine:
                sock.close()

    attacker = threading.Thread(target=reconnect)
    try:
        for i in range(300):
            with contextlib.suppress(OSError):
                held.append(socket.create_connection(address(node), timeout=2))
            if i % 40 == 39:
                # Connections the node has yet to accept wait in its listen backlog (50);
                # past it the kernel drops them and each one retries a second later.
                time.sleep(0.01)
        assert len(held) == 300
        # First the node works through the connections its listen backlog queued.
        started = time.monotonic()
        wait_until(lambda: leading(node), 2, "/status to answer past 300 idle connections")
        first = time.monotonic() - started
        latencies, missed = poll(1.5)
        assert missed == 0, f"{missed} asks for /status unanswered while 300 connections idled"
        assert max(latencies) < 1.0
        attacker.start()
        storm_latencies, storm_missed = poll(1.5)
    finally:
        stop.set()
        if attacker.is_alive():
            attacker.join(5)
        for sock in held:
            sock.close()
    wait_until(lambda: leading(node), 2, "/status to answer after the storm")
    print(
        f"\nnode descriptors: {baseline} at rest, at most {most} (limit {NOFILE}); /status "
        f"past 300 idle connections: first in {first * 1000:.0f} ms, then {len(latencies)} "
        f"answers, slowest {max(latencies) * 1000:.0f} ms; while {storm[0]} connections "
        f"were opened: {len(storm_latencies)} answered, {storm_missed} missed"
    )
    assert most < NOFILE
    output = node.output()
    assert "Too many open files" not in output
    assert "EMFILE" not in output
    assert "Traceback" not in output
    # The node never left the role: the term is the first one.
    assert output.count("became leader") == 1


def test_requests_add_nothing_to_the_log(spawn: Spawner) -> None:
    """2,000 requests (GET and HEAD, kept alive and not, 404s too) add no line to the node's log."""
    node = single_node(spawn, "l1")
    wait_until(lambda: leading(node), 15, "the node to lead")
    time.sleep(0.5)  # the start's own log lines
    before = node.log.stat().st_size
    paths = ["/status", "/leader", "/healthz", "/metrics", "/nope"]
    host, port = address(node)
    answered = 0
    connection = http.client.HTTPConnection(host, port, timeout=2)
    try:
        for i in range(1800):
            connection.request("HEAD" if i % 2 else "GET", paths[i % len(paths)])
            response = connection.getresponse()
            response.read()
            answered += response.status in (200, 404)
    finally:
        connection.close()
    for i in range(200):
        got = http_get(node.url + paths[i % len(paths)])
        answered += got is not None and got[0] in (200, 404)
    assert answered == 2000
    time.sleep(0.3)
    grown = node.log.stat().st_size - before
    print(f"\n2,000 requests grew the log by {grown} bytes")
    assert grown < 200, node.output()[before:]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_pipelined_requests_never_read_cannot_fill_the_nodes_memory(spawn: Spawner) -> None:
    """Three clients pipeline 4 MB of /metrics requests each and never read the answers:
    the node drops them, its memory stays flat and /healthz answers at once."""
    node = single_node(spawn, "p1")
    term = wait_until(lambda: leading(node), 15, "the node to lead")["term"]
    request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
    before = rss_kib(node.process.pid)
    sockets: list[socket.socket] = []
    try:
        for _ in range(3):
            s = socket.create_connection(address(node))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.settimeout(5)
            sent = 0
            with contextlib.suppress(OSError):
                while sent < 4_000_000:
                    sent += s.send(request * 1000)
            sockets.append(s)
        slowest, peak = 0.0, before
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            started = time.monotonic()
            got = http_get(node.url + "/healthz", 2.0)
            slowest = max(slowest, time.monotonic() - started)
            assert got is not None and got[0] == 200
            peak = max(peak, rss_kib(node.process.pid))
            time.sleep(0.2)
        print(f"\nmemory {before} -> peak {peak} KiB; slowest /healthz {slowest * 1000:.0f} ms")
        assert peak - before < 50_000
        assert slowest < 0.5
        assert leading(node) is not None and leading(node)["term"] == term  # type: ignore[index]
    finally:
        for s in sockets:
            s.close()
