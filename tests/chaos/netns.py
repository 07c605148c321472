"""Network namespaces for the partition tests: a private switch and one namespace per node.

    gtx<pid>-<k>-sw   a bridge br0, with one port p<i> per node
    gtx<pid>-<k>-n<i> lo, and eth0 (10.213.<N>.<i>/24), the other end of p<i>

The /24 exists only inside these namespaces (N is drawn per network, so two
runs never even look alike), nothing is added to the root namespace, and
every interface is created inside its namespace, so nothing outside is
touched. Faults:

- L{Network.link_down}: the node's switch port goes down, as if its cable
  were pulled: nothing in or out, and no error for the sender either.
- L{Network.block}: a blackhole route on one node for another's address:
  the first can no longer send to the second, whose packets still arrive.
  Over TCP this is a one-way cut at the IP level only: the blocked side's
  ACKs are lost too, so a connection in the other direction delivers what
  it sends for about one retransmission timeout (~0.2 s), then stalls, and
  no new connection can complete. Blocking both ways is a pairwise cut.

Namespaces carry the owning process's pid in their names, so a later run
deletes those left by a run that died (L{sweep_leftovers}) and never those
of a run still alive.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from itertools import count

PREFIX = "gtx"
_OURS = re.compile(rf"^{PREFIX}(\d+)-")
_networks = count(1)


class NetnsError(Exception):
    """An C{ip} command failed."""


def ip(*args: str) -> str:
    """Run C{ip ARGS}; its output, or L{NetnsError} with its complaint."""
    try:
        done = subprocess.run(
            ["ip", *args], capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise NetnsError(f"ip {' '.join(args)}: {e}") from None
    if done.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done.stdout


def unavailable() -> str | None:
    """Why namespaces cannot be made here (before trying), or None."""
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    if shutil.which("ip") is None:
        return "iproute2's ip command is not installed"
    return None


def namespaces() -> list[str]:
    """The names of all network namespaces (C{ip netns list})."""
    return [line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_namespace(name: str) -> None:
    """Kill what still runs in namespace C{name} (processes the tests started
    there, such as nodes of a run that died) and delete it."""
    try:
        pids = [int(pid) for pid in ip("netns", "pids", name).split()]
    except (NetnsError, ValueError):
        pids = []
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    try:
        ip("netns", "delete", name)
    except NetnsError:
        if name in namespaces():
            raise


def sweep_leftovers() -> list[str]:
    """Delete our namespaces whose owning process is gone; the names deleted."""
    swept = []
    for name in namespaces():
        match = _OURS.match(name)
        if match and int(match.group(1)) != os.getpid() and not _alive(int(match.group(1))):
            remove_namespace(name)
            swept.append(name)
    return swept


class Network:
    """C{size} nodes on one switch, each in a namespace of its own."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.tag = f"{PREFIX}{os.getpid()}-{next(_networks)}-"
        subnet = random.randint(1, 254)
        self.switch = self.tag + "sw"
        self.namespaces = [f"{self.tag}n{i + 1}" for i in range(size)]
        self.addresses = [f"10.213.{subnet}.{i + 1}" for i in range(size)]
        self._down: set[int] = set()
        self._blocked: set[tuple[int, int]] = set()

    def create(self) -> None:
        """Build the switch and the nodes' namespaces; L{NetnsError} if the machine cannot."""
        sw = self.switch
        ip("netns", "add", sw)
        ip("-n", sw, "link", "set", "lo", "up")
        ip("-n", sw, "link", "add", "br0", "type", "bridge")
        ip("-n", sw, "link", "set", "br0", "up")
        for i, ns in enumerate(self.namespaces):
            port = f"p{i + 1}"
            ip("netns", "add", ns)
            ip("-n", ns, "link", "set", "lo", "up")
            ip(
                "link",
                "add",
                "eth0",
                "netns",
                ns,
                "type",
                "veth",
                "peer",
                "name",
                port,
                "netns",
                sw,
            )
            ip("-n", sw, "link", "set", port, "master", "br0")
            ip("-n", sw, "link", "set", port, "up")
            ip("-n", ns, "addr", "add", f"{self.addresses[i]}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
        # What the nodes are started with.
        ip("netns", "exec", self.namespaces[0], "true")

    def destroy(self) -> None:
        """Delete every namespace of this network that exists (idempotent)."""
        errors = []
        for name in namespaces():
            if name.startswith(self.tag):
                try:
                    remove_namespace(name)
                except NetnsError as e:
                    errors.append(str(e))
        if errors:
            raise NetnsError("; ".join(errors))

    def prefix(self, i: int) -> list[str]:
        """The command prefix that runs a program as node C{i}."""
        return ["ip", "netns", "exec", self.namespaces[i]]

    # -- faults -----------------------------------------------------------

    def link_down(self, i: int) -> None:
        """Cut node C{i} off from everyone, both ways: its switch port goes down."""
        ip("-n", self.switch, "link", "set", f"p{i + 1}", "down")
        self._down.add(i)

    def link_up(self, i: int) -> None:
        ip("-n", self.switch, "link", "set", f"p{i + 1}", "up")
        self._down.discard(i)

    def block(self, source: int, target: int) -> None:
        """Node C{source} can no longer send to node C{target} (a blackhole route)."""
        ip(
            "-n",
            self.namespaces[source],
            "route",
            "add",
            "blackhole",
            f"{self.addresses[target]}/32",
        )
        self._blocked.add((source, target))

    def unblock(self, source: int, target: int) -> None:
        ip(
            "-n",
            self.namespaces[source],
            "route",
            "del",
            "blackhole",
            f"{self.addresses[target]}/32",
        )
        self._blocked.discard((source, target))

    def heal(self) -> None:
        """Undo every fault."""
        for i in sorted(self._down):
            self.link_up(i)
        for source, target in sorted(self._blocked):
            self.unblock(source, target)

    @property
    def faulty(self) -> bool:
        return bool(self._down or self._blocked)

    # -- observing ----------------------------------------------------------

    def unsent(self) -> dict[str, list[str]] | None:
        """Each namespace's established TCP connections holding data not yet
        acknowledged (Send-Q > 0), with their retransmission timeout and
        backoff; None if C{ss} is not installed."""
        if shutil.which("ss") is None:
            return None
        stuck: dict[str, list[str]] = {}
        for i, ns in enumerate(self.namespaces):
            command = [*self.prefix(i), "ss", "-tinH", "state", "established"]
            try:
                output = subprocess.run(
                    command, capture_output=True, text=True, timeout=20, check=True
                ).stdout
            except (OSError, subprocess.SubprocessError) as e:
                raise NetnsError(f"{' '.join(command)}: {e}") from None
            # Each connection: "Recv-Q Send-Q Local Peer" (a state filter leaves
            # the state out), then its details on a tab-indented line.
            for line in output.replace("\n\t", " ").splitlines():
                fields = line.split()
                if len(fields) < 4 or fields[1] == "0":
                    continue
                timers = [w for w in fields[4:] if w.startswith(("rto:", "backoff:"))]
                stuck.setdefault(ns, []).append(
                    " ".join([f"{fields[2]}->{fields[3]}", f"send-q:{fields[1]}", *timers])
                )
        return stuck

    def wait_drained(self, timeout: float, poll: float = 0.1) -> float | None:
        """Wait until no connection anywhere holds unacknowledged data, seen
        twice in a row: after a heal, TCP retransmits on its own backoff
        (up to seconds), and until then some direction between two nodes is
        still silent. How long it took; None without C{ss}.

        @raise TimeoutError: still stuck after C{timeout}.
        """
        start = time.monotonic()
        clean = 0
        stuck = self.unsent()
        if stuck is None:
            return None
        while True:
            clean = clean + 1 if not stuck else 0
            if clean >= 2:
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise TimeoutError(f"TCP data still unacknowledged after {timeout}s: {stuck}")
            time.sleep(poll)
            stuck = self.unsent() or {}
