"""C{twistd graft}: a node as a daemon (the plugin in twisted/plugins names this module).

Local files are checked before anything starts, because the daemon often
runs as root: the state file's directory must be writable by its owner only
(anyone else could plant the state file, which decides the node's id and
vote) and an existing state file must belong to this user and be writable by
it alone; files holding secrets (C{--secret-file} and the NATS secret files)
must not be readable by others nor writable by anyone but their owner. A
group may read a secret (0640, for a service group). Symbolic links are
never followed to the state file or the event log, but a secret file may be
one (Kubernetes mounts secrets as links): its target is checked. Secrets are
never taken on the command line, where C{ps} shows them to every local user.
"""

from __future__ import annotations

import os
import shlex
import stat
import sys
from functools import partial
from typing import Any, ClassVar
from urllib.parse import urlsplit

from twisted.application import strports
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred
from twisted.python import usage

from graft_tx.cluster import ClusterInfo, Timing
from graft_tx.errors import GraftError, NodeIdError, TimingError
from graft_tx.eventlog import EventLogService
from graft_tx.hooks import HookCommands, HookHandler, HookRunner, command
from graft_tx.interfaces import IRpc
from graft_tx.messages import MAX_PRIORITY, check_id
from graft_tx.node import GRAFT, PROTOCOLS, owner_id
from graft_tx.service import GraftService
from graft_tx.statefile import decode_state
from graft_tx.transport.nats import NatsRpc
from graft_tx.transport.tcp import TcpRpc
from graft_tx.web import GraftResource, StatusSite

# Option name -> NatsRpc keyword, for the options passed on as given.
NATS_OPTIONS = {
    "nats-name": "name",
    "nats-user": "user",
    "nats-credentials": "credentials",
    "nats-nkey-seed": "nkey_seed",
    "nats-tls-ca": "tls_ca",
    "nats-tls-cert": "tls_cert",
    "nats-tls-key": "tls_key",
}
# Option name -> NatsRpc keyword, for secrets passed as the content of a file.
NATS_SECRET_FILES = {
    "nats-password-file": "password",
    "nats-token-file": "token",
}
# The options naming files that hold secrets: others must not read them.
SECRET_FILE_OPTIONS = (
    "secret-file",
    *NATS_SECRET_FILES,
    "nats-credentials",
    "nats-nkey-seed",
    "nats-tls-key",
)
DEFAULT_NATS = "nats://127.0.0.1:4222"
DEFAULT_SIZE = 3


class Options(usage.Options):
    synopsis = "--cluster NAME [options]"
    longdesc = (
        "Run one node of a leader election (graft's half of RAFT). Over NATS (the default "
        "without --peer) the node meets its cluster through a NATS server, as Go graft does; "
        "over TCP (--listen and one --peer per other node) it talks to its peers directly."
    )
    optParameters: ClassVar[list[list[Any]]] = [
        ["cluster", None, None, "The cluster's name (required)."],
        ["size", None, None,
         f"Voting nodes. Default: --peer count + 1 over TCP, {DEFAULT_SIZE} over NATS."],
        ["state-file", None, None,
         "Where the node keeps its id, term and vote. Default: ./graft-CLUSTER.state."],
        ["node-id", None, None,
         "This node's id. Default: the id its state file records, or a new random id on the "
         "first start. An id other than the recorded one is refused."],
        ["transport", None, None, "nats or tcp. Default: tcp when --peer is given, else nats."],
        ["protocol", None, "graft-tx",
         "graft-tx (leases, pre-vote, transfer) or graft (Go graft's behaviour, to mix with "
         "Go nodes)."],
        ["priority", None, "1",
         "Nodes of higher priority campaign first and take over from lower ones; 0 never "
         "leads."],
        ["listen", None, None, "TCP: the server endpoint for peers, such as tcp:7001."],
        ["secret-file", None, None,
         "TCP: a file holding the cluster's shared secret (mode 0600 or 0640)."],
        ["election-timeout", None, None,
         "MIN-MAX seconds a follower waits for a leader before it campaigns. Default: 0.5-1.0."],
        ["heartbeat", None, None, "Seconds between a leader's heartbeats. Default: 0.1."],
        ["status", None, None,
         "A server endpoint (tcp:8080:interface=127.0.0.1) for /status, /leader, /healthz, "
         "/metrics."],
        ["event-log", None, None,
         "Append the node's log events to this file as JSON lines (state changes, leaders "
         "known, with their times)."],
        ["on-leader", None, None, "A command to run when this node becomes leader."],
        ["on-follower", None, None, "A command to run when this node stops being leader."],
        ["on-change", None, None, "A command to run on every state change."],
        ["hook-timeout", None, "30", "Seconds a hook may run before it is killed."],
        ["nats-name", None, None, "NATS: the connection's name, shown by the server."],
        ["nats-user", None, None, "NATS: user name."],
        ["nats-password-file", None, None,
         "NATS: a file holding --nats-user's password on one line (mode 0600 or 0640)."],
        ["nats-token-file", None, None,
         "NATS: a file holding the authentication token on one line (mode 0600 or 0640)."],
        ["nats-credentials", None, None, "NATS: a .creds file (mode 0600 or 0640)."],
        ["nats-nkey-seed", None, None, "NATS: an nkey seed file (mode 0600 or 0640)."],
        ["nats-tls-ca", None, None, "NATS: the CA file to trust."],
        ["nats-tls-cert", None, None, "NATS: the client certificate file."],
        ["nats-tls-key", None, None, "NATS: the client key file (mode 0600 or 0640)."],
    ]  # fmt: skip
    optFlags: ClassVar[list[list[Any]]] = [
        ["hook-shell", None, "Run hooks through /bin/sh -c (default: run them directly)."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["peers"] = []
        self["nats"] = []

    def opt_peer(self, endpoint: str) -> None:
        """TCP: another node's client endpoint, tcp:host=10.0.0.2:port=7001 (repeatable)."""
        self["peers"].append(endpoint)

    def opt_nats(self, url: str) -> None:
        """NATS: a server URL (repeatable), without credentials in it. Default:
        nats://127.0.0.1:4222."""
        _refuse_credentials_in_url(url)
        self["nats"].append(url)

    def opt_nats_password(self, password: str) -> None:
        """Refused: ps shows it to every local user. Use --nats-password-file."""
        raise usage.UsageError(_on_command_line("--nats-password", "password"))

    def opt_nats_token(self, token: str) -> None:
        """Refused: ps shows it to every local user. Use --nats-token-file."""
        raise usage.UsageError(_on_command_line("--nats-token", "token"))

    def postOptions(self) -> None:
        cluster = self["cluster"]
        if not cluster:
            raise usage.UsageError("--cluster NAME is required")
        transport = self["transport"] or ("tcp" if self["peers"] else "nats")
        if transport not in ("nats", "tcp"):
            raise usage.UsageError(f"--transport must be nats or tcp, not {transport!r}")
        self["transport"] = transport
        nats_given = [name for name in (*NATS_OPTIONS, *NATS_SECRET_FILES) if self[name]] + (
            ["nats"] if self["nats"] else []
        )
        tcp_given = [name for name in ("listen", "secret-file") if self[name]]
        tcp_given += ["peer"] if self["peers"] else []
        if transport == "tcp":
            if nats_given:
                raise usage.UsageError(
                    f"--{nats_given[0]} is a NATS option; it does not apply to --transport tcp"
                )
            if not self["listen"]:
                raise usage.UsageError("--transport tcp needs --listen ENDPOINT, such as tcp:7001")
        elif tcp_given:
            raise usage.UsageError(
                f"--{tcp_given[0]} is a TCP option; use --transport tcp (or give --peer)"
            )
        self["size"] = self._size(transport)
        if self["protocol"] not in PROTOCOLS:
            raise usage.UsageError(
                f"--protocol must be graft-tx or graft, not {self['protocol']!r}"
            )
        try:
            self["priority"] = int(self["priority"])
        except ValueError:
            raise usage.UsageError(
                f"--priority must be a whole number, not {self['priority']!r}"
            ) from None
        if not 0 <= self["priority"] <= MAX_PRIORITY:
            raise usage.UsageError(f"--priority must be between 0 and {MAX_PRIORITY}")
        if self["protocol"] == GRAFT and self["priority"] != 1:
            raise usage.UsageError("--priority needs --protocol graft-tx")
        if self["node-id"] is not None:
            try:
                check_id("--node-id", self["node-id"])
            except GraftError as e:
                raise usage.UsageError(str(e)) from None
        self["timing"] = self._timing()
        self["secret"] = self._secret()
        self["nats-secrets"] = {
            key: _read_line(name, self[name])
            for name, key in NATS_SECRET_FILES.items()
            if self[name] is not None
        }
        for name in ("nats-credentials", "nats-nkey-seed", "nats-tls-key"):
            if self[name] is not None:
                _check_secret_file(name, self[name])
        self["hook-timeout"] = _positive("--hook-timeout", self["hook-timeout"])
        self["hooks"] = HookCommands(
            *(self._hook(name) for name in ("on-leader", "on-follower", "on-change"))
        )
        self["state-file"] = self["state-file"] or f"graft-{cluster}.state"
        directory = os.path.dirname(os.path.abspath(self["state-file"]))
        if not os.path.isdir(directory):
            raise usage.UsageError(f"--state-file: the directory {directory} does not exist")
        _check_state_directory(directory)
        self._check_state_file()
        if self["event-log"] is not None:
            directory = os.path.dirname(os.path.abspath(self["event-log"]))
            if not os.path.isdir(directory):
                raise usage.UsageError(f"--event-log: the directory {directory} does not exist")
            if os.path.islink(self["event-log"]):
                raise usage.UsageError(
                    f"--event-log: {self['event-log']} is a symbolic link, and graft_tx does not "
                    "follow links for its event log: give the real file's path"
                )
        if transport == "nats":
            _use_asyncio_reactor()

    def _check_state_file(self) -> None:
        """Refuse, as a usage error, a state file the node would refuse when it starts.

        The node checks again in new(); this check only spares the user
        twistd's traceback for the common mistakes. It reads, never creates.
        It also refuses what the node would use but should not trust: a
        symbolic link, or a file that another user owns or may change (it
        decides the node's id and vote).
        """
        path = self["state-file"]
        try:
            # O_NONBLOCK: a FIFO planted there must not hang the start.
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        except OSError as e:
            if os.path.islink(path):
                raise usage.UsageError(
                    f"--state-file: {path} is a symbolic link, and graft_tx does not follow "
                    "links for its state file: give the real file's path"
                ) from None
            raise usage.UsageError(f"--state-file: cannot read {path}: {e.strerror}") from None
        try:
            status = os.fstat(fd)
            if not stat.S_ISREG(status.st_mode):
                raise usage.UsageError(f"--state-file: cannot read {path}: not a regular file")
            _check_state_file_owner(path, status)
            content = _read_all(fd)
        except OSError as e:
            raise usage.UsageError(f"--state-file: cannot read {path}: {e.strerror}") from None
        finally:
            os.close(fd)
        try:
            saved = decode_state(content, path)
        except GraftError as e:
            raise usage.UsageError(f"--state-file: {e}") from None
        if saved is not None and self["node-id"] is not None:
            try:
                owner_id(saved, self["node-id"], path)
            except NodeIdError as e:
                raise usage.UsageError(f"--node-id: {e}") from None

    def _hook(self, name: str) -> tuple[str, ...] | None:
        if self[name] is None:
            return None
        try:
            return command(self[name], shell=self["hook-shell"])
        except ValueError as e:
            raise usage.UsageError(f"--{name}: bad hook command: {e}") from None

    def _size(self, transport: str) -> int:
        peers = len(self["peers"])
        if self["size"] is None:
            return peers + 1 if transport == "tcp" else DEFAULT_SIZE
        try:
            size = int(self["size"])
        except ValueError:
            raise usage.UsageError(f"--size must be a whole number, not {self['size']!r}") from None
        if size < 1:
            raise usage.UsageError(f"--size must be at least 1, not {size}")
        if transport == "tcp" and size != peers + 1:
            raise usage.UsageError(
                f"--size {size} contradicts the {peers} --peer given: a TCP cluster of N nodes "
                "lists the N-1 others with --peer"
            )
        return size

    def _timing(self) -> Timing:
        text = self["election-timeout"] or "0.5-1.0"
        try:
            return Timing.parse(text, self["heartbeat"])
        except TimingError as e:
            given = f"--election-timeout {text}" + (
                f" --heartbeat {self['heartbeat']}" if self["heartbeat"] is not None else ""
            )
            raise usage.UsageError(f"{given}: {e}") from None

    def _secret(self) -> bytes | None:
        path = self["secret-file"]
        if path is None:
            return None
        secret = _read_secret_file("secret-file", path).strip()
        if not secret:
            raise usage.UsageError(f"--secret-file: {path} is empty")
        return secret


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _on_command_line(option: str, what: str) -> str:
    return (
        f"{option} puts the {what} where every local user can read it (ps); "
        f"write it to a file only this user can read and give {option}-file PATH"
    )


def _refuse_credentials_in_url(url: str) -> None:
    """Refuse a --nats URL carrying a password or token (nats://user:pass@host,
    nats://token@host), which ps would show; the message does not repeat them."""
    try:
        netloc = urlsplit(url if "://" in url else "nats://" + url).netloc
    except ValueError:
        netloc = url
    if "@" not in netloc:
        return
    host = netloc.rpartition("@")[2]
    raise usage.UsageError(
        f"--nats: the URL for {host} carries credentials, which every local user can read "
        "(ps); give the server without them and the password in --nats-password-file "
        "(with --nats-user) or the token in --nats-token-file"
    )


def _check_state_directory(directory: str) -> None:
    """Refuse a state file's directory where another user could create or
    replace files: writable by group or others (sticky or not: whoever can
    create a name there can plant the state file before the node first
    starts), or owned by another user than this one or root."""
    status = os.stat(directory)
    mode = stat.S_IMODE(status.st_mode)
    where = f"--state-file: the directory {directory} (mode {mode:04o})"
    if mode & 0o002 and mode & stat.S_ISVTX:
        raise usage.UsageError(
            f"{where} is shared with every local user, who could plant this node's state file; "
            f"keep it in a directory of its own, such as one made with 'mkdir -m 700 DIR'"
        )
    if mode & 0o022:
        who = "other users" if mode & 0o002 else "its group's members"
        raise usage.UsageError(
            f"{where} is writable by {who}, who could plant or replace this node's state file; "
            f"run 'chmod go-w {shlex.quote(directory)}' or keep the state file elsewhere"
        )
    if status.st_uid not in (os.geteuid(), 0):
        raise usage.UsageError(
            f"{where} belongs to uid {status.st_uid}, who could replace this node's state file; "
            f"keep it in a directory owned by this user (uid {os.geteuid()}) or root"
        )


def _check_state_file_owner(path: str, status: os.stat_result) -> None:
    """Refuse an existing state file that another user owns or may change."""
    mode = stat.S_IMODE(status.st_mode)
    if status.st_uid != os.geteuid():
        raise usage.UsageError(
            f"--state-file: {path} belongs to uid {status.st_uid}, not to this user "
            f"(uid {os.geteuid()}), and it decides this node's id and vote; "
            f"run 'chown {os.geteuid()} {shlex.quote(path)}' if it is this node's"
        )
    if mode & 0o022:
        raise usage.UsageError(
            f"--state-file: {path} has mode {mode:04o}: others may change it, and it decides "
            f"this node's id and vote; run 'chmod 600 {shlex.quote(path)}'"
        )


def _check_secret_mode(option: str, path: str, status: os.stat_result) -> None:
    """Refuse a secret file that others may read, or that anyone but its
    owner may change. A group may read it (0640, for a service group)."""
    mode = stat.S_IMODE(status.st_mode)
    if mode & 0o026:
        raise usage.UsageError(
            f"--{option}: {path} has mode {mode:04o}, so other users can read or change the "
            f"secret it holds; run 'chmod 600 {shlex.quote(path)}' (or 640 to share it with "
            "a group)"
        )


def _read_secret_file(option: str, path: str) -> bytes:
    """The content of a secret file, once its mode is checked (on the file a
    symbolic link leads to: secrets mounted as links are fine)."""
    try:
        with open(path, "rb") as f:
            _check_secret_mode(option, path, os.fstat(f.fileno()))
            return f.read()
    except OSError as e:
        raise usage.UsageError(f"--{option}: cannot read {path}: {e.strerror}") from None


def _check_secret_file(option: str, path: str) -> None:
    """Refuse a secret file that cannot be read or has a bad mode; nats-py reads it later."""
    _read_secret_file(option, path)


def _read_line(option: str, path: str) -> str:
    """A password or token: the file's one line, without its line ending."""
    content = _read_secret_file(option, path)
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        raise usage.UsageError(f"--{option}: {path} is not UTF-8 text") from None
    text = text.removesuffix("\n").removesuffix("\r")
    if not text.strip():
        raise usage.UsageError(f"--{option}: {path} is empty")
    if "\n" in text or "\r" in text:
        raise usage.UsageError(
            f"--{option}: {path} holds more than one line; it must hold the secret alone"
        )
    return text


def _positive(option: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise usage.UsageError(f"{option} takes seconds, not {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise usage.UsageError(f"{option} must be a positive number of seconds, not {text!r}")
    return value


def _use_asyncio_reactor() -> None:
    """NATS runs only on the asyncio reactor: install it unless another one is."""
    from twisted.internet import asyncioreactor

    if "twisted.internet.reactor" not in sys.modules:
        asyncioreactor.install()
        return
    from twisted.internet import reactor

    if not isinstance(reactor, asyncioreactor.AsyncioSelectorReactor):
        raise usage.UsageError(
            f"the NATS transport needs the asyncio reactor, but {type(reactor).__name__} is "
            "already installed: run 'twistd --reactor=asyncio graft ...'"
        )


class _HookService(Service):
    """Kills a running hook when the daemon stops."""

    def __init__(self, runner: HookRunner) -> None:
        self.runner = runner

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self.runner.stop()


def make_rpc(options: Options) -> IRpc:
    """A new transport as the options describe it (makeService's factory)."""
    if options["transport"] == "tcp":
        return TcpRpc(options["listen"], options["peers"], secret=options["secret"])
    nats = {key: options[name] for name, key in NATS_OPTIONS.items() if options[name]}
    nats.update(options.get("nats-secrets") or {})
    return NatsRpc(options["nats"] or DEFAULT_NATS, **nats)


def makeService(options: Options) -> IService:
    """The node, its hooks and its status pages, as one MultiService."""
    from twisted.internet import reactor

    top = MultiService()
    if options["event-log"]:
        # First in, last out: it records the other services' stopping too.
        EventLogService(options["event-log"]).setServiceParent(top)
    hooks: HookCommands = options["hooks"]
    runner = HookRunner(reactor, options["hook-timeout"]) if hooks else None
    graft: GraftService | None = None
    handler = HookHandler(lambda: graft.node if graft else None, hooks, runner)
    # A factory, not a transport, so that the service can be stopped and started
    # again: TcpRpc and NatsRpc carry one node once.
    graft = GraftService(
        ClusterInfo(options["cluster"], options["size"]),
        handler,
        partial(make_rpc, options),
        options["state-file"],
        timing=options["timing"],
        node_id=options["node-id"],
        protocol=options["protocol"],
        priority=options["priority"],
    )
    try:
        # The first transport now: a bad option is a usage error before anything
        # starts, and the status pages' metrics see the transport from the start.
        graft.prepare_rpc()
    except GraftError as e:
        raise usage.UsageError(str(e)) from None
    graft.setName("graft")
    graft.setServiceParent(top)
    if runner is not None:
        _HookService(runner).setServiceParent(top)
    if options["status"]:
        # Read-only and bounded: no request bodies, at most 32 connections (the least
        # recently active evicted), 10 s idle deadline, no access log (graft_tx.web).
        site = StatusSite(GraftResource(graft))
        status = strports.service(options["status"], site)
        status.setName("status")
        status.setServiceParent(top)
    return top
