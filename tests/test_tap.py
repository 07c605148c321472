"""twistd graft: the option parser, makeService's service tree, and the plugin."""

from __future__ import annotations

import json
import os
import shlex
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import trustme
from natsserver import free_port
from realtime import wait_until
from twisted.application.service import MultiService
from twisted.python import usage

from graft_tx import ClusterInfo, GraftService, NatsRpc, State, TcpRpc, Timing
from graft_tx.hooks import HookHandler, HookRunner
from graft_tx.statefile import PersistentState, StateFile
from graft_tx.tap import DEFAULT_NATS, Options, make_rpc, makeService
from graft_tx.web import GraftResource

ROOT = Path(__file__).resolve().parent.parent
TWISTD_ARGS = ["-c", "from twisted.scripts.twistd import run; run()"]
TWISTD = [sys.executable, *TWISTD_ARGS]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Default state files land in a scratch directory, never in the project."""
    monkeypatch.chdir(tmp_path)


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


def refused(args: list[str], *fragments: str) -> str:
    """Check that the arguments are refused with a one-line message holding C{fragments}."""
    with pytest.raises(usage.UsageError) as info:
        parse(*args)
    message = str(info.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def servers_of(rpc: NatsRpc) -> list[str]:
    servers: Any = rpc._servers
    return [servers] if isinstance(servers, str) else list(servers)


def tcp_args(*extra: str) -> list[str]:
    return ["--cluster", "c", "--listen", "tcp:7001", *extra]


def private(path: Path, content: bytes | str, mode: int = 0o600) -> Path:
    """Write a secret file with C{mode} (0600 by default), whatever the umask."""
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    path.chmod(mode)
    return path


# -- good combinations -----------------------------------------------------------


def test_minimal_options_join_nats(tmp_path: Path) -> None:
    """--cluster alone: NATS, 3 nodes, ./graft-CLUSTER.state, graft's timings, no hooks."""
    options = parse("--cluster", "hm")
    assert options["cluster"] == "hm"
    assert options["transport"] == "nats"
    assert options["size"] == 3
    assert options["state-file"] == "graft-hm.state"
    assert options["node-id"] is None
    assert options["timing"] == Timing()
    assert options["secret"] is None
    assert not options["hooks"]
    assert options["status"] is None
    rpc = make_rpc(options)
    assert isinstance(rpc, NatsRpc)
    assert servers_of(rpc) == [DEFAULT_NATS] == ["nats://127.0.0.1:4222"]
    assert rpc._options == {}
    assert not (tmp_path / "graft-hm.state").exists()


def test_repeated_nats_urls_all_reach_the_transport() -> None:
    """Each --nats URL is kept, in order, and handed to NatsRpc."""
    options = parse("--cluster", "hm", "--nats", "nats://a:4222", "--nats", "tls://b:4223")
    assert options["nats"] == ["nats://a:4222", "tls://b:4223"]
    rpc = make_rpc(options)
    assert isinstance(rpc, NatsRpc)
    assert servers_of(rpc) == ["nats://a:4222", "tls://b:4223"]


def test_nats_auth_options_map_to_connection_options(tmp_path: Path) -> None:
    """--nats-name/-user/-password-file/-token-file/-credentials/-nkey-seed become NatsRpc
    keywords: the password and token files' content, the other files' paths."""
    creds = private(tmp_path / "user.creds", "creds")
    seed = private(tmp_path / "seed.nk", "seed")
    options = parse(
        "--cluster", "hm",
        "--nats-name", "node-7",
        "--nats-user", "alice",
        "--nats-password-file", str(private(tmp_path / "password", "pw\n")),
        "--nats-token-file", str(private(tmp_path / "token", "tok")),
        "--nats-credentials", str(creds),
        "--nats-nkey-seed", str(seed),
    )  # fmt: skip
    rpc = make_rpc(options)
    assert isinstance(rpc, NatsRpc)
    assert rpc._options == {
        "name": "node-7",
        "user": "alice",
        "password": "pw",
        "token": "tok",
        "credentials": str(creds),
        "nkey_seed": str(seed),
    }


def test_nats_tls_options_map_to_connection_options(tmp_path: Path) -> None:
    """--nats-tls-ca/-cert/-key reach NatsRpc as tls_ca/tls_cert/tls_key (real PEM files)."""
    ca = trustme.CA()
    issued = ca.issue_cert("graft-node")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    issued.cert_chain_pems[0].write_to_path(str(tmp_path / "client.pem"))
    issued.private_key_pem.write_to_path(str(tmp_path / "client.key"))
    (tmp_path / "client.key").chmod(0o600)
    options = parse(
        "--cluster", "hm",
        "--nats", "tls://127.0.0.1:4222",
        "--nats-tls-ca", str(tmp_path / "ca.pem"),
        "--nats-tls-cert", str(tmp_path / "client.pem"),
        "--nats-tls-key", str(tmp_path / "client.key"),
    )  # fmt: skip
    rpc = make_rpc(options)
    assert isinstance(rpc, NatsRpc)
    assert servers_of(rpc) == ["tls://127.0.0.1:4222"]
    assert rpc._options == {
        "tls_ca": str(tmp_path / "ca.pem"),
        "tls_cert": str(tmp_path / "client.pem"),
        "tls_key": str(tmp_path / "client.key"),
    }


def test_tcp_inferred_from_peers() -> None:
    """--listen and two --peer: TCP transport, size 3, a TcpRpc with those endpoints."""
    peers = ["tcp:host=10.0.0.2:port=7001", "tcp:host=10.0.0.3:port=7001"]
    options = parse(
        "--cluster", "c", "--listen", "tcp:7001", "--peer", peers[0], "--peer", peers[1]
    )
    assert options["transport"] == "tcp"
    assert options["peers"] == peers
    assert options["size"] == 3
    rpc = make_rpc(options)
    assert isinstance(rpc, TcpRpc)
    assert rpc._listen == "tcp:7001"
    assert rpc._peers == peers
    assert rpc.keys is None


def test_explicit_size_agreeing_with_peers() -> None:
    """--size equal to peers + 1 is accepted, also with an explicit --transport tcp."""
    options = parse(*tcp_args("--transport", "tcp", "--peer", "tcp:a:1", "--size", "2"))
    assert options["size"] == 2
    assert options["transport"] == "tcp"


def test_tcp_without_peers_is_a_cluster_of_one() -> None:
    """--transport tcp --listen with no --peer is a one-node cluster."""
    options = parse("--cluster", "solo", "--transport", "tcp", "--listen", "tcp:0")
    assert options["size"] == 1
    assert isinstance(make_rpc(options), TcpRpc)


def test_nats_size_option() -> None:
    """Over NATS --size sets the cluster size, whatever the default."""
    assert parse("--cluster", "hm", "--size", "5")["size"] == 5
    assert parse("--cluster", "hm", "--size", "1")["size"] == 1


def test_timing_options() -> None:
    """--election-timeout 0.2-0.4 and --heartbeat 0.05 make Timing(0.2, 0.4, 0.05)."""
    options = parse("--cluster", "hm", "--election-timeout", "0.2-0.4", "--heartbeat", "0.05")
    assert options["timing"] == Timing(0.2, 0.4, 0.05)


def test_election_timeout_alone_keeps_default_heartbeat() -> None:
    """--election-timeout without --heartbeat keeps graft's 0.1 s heartbeat."""
    options = parse("--cluster", "hm", "--election-timeout", "1-2")
    assert options["timing"] == Timing(1.0, 2.0, 0.1)


def test_hooks_split_like_a_shell_without_one() -> None:
    """Hook commands are split with shell quoting but no shell: metacharacters stay literal."""
    options = parse(
        "--cluster", "hm",
        "--on-leader", "notify-send 'I lead' now",
        "--on-follower", '/usr/bin/logger -t graft "lost it"',
        "--on-change", "echo $GRAFT_STATE; rm -rf x",
    )  # fmt: skip
    hooks = options["hooks"]
    assert hooks
    assert hooks.on_leader == ("notify-send", "I lead", "now")
    assert hooks.on_follower == ("/usr/bin/logger", "-t", "graft", "lost it")
    assert hooks.on_change == ("echo", "$GRAFT_STATE;", "rm", "-rf", "x")


def test_hook_shell_runs_hooks_through_sh() -> None:
    """--hook-shell turns each hook into /bin/sh -c with the line unchanged."""
    line = "echo $GRAFT_STATE >> /tmp/x && true"
    options = parse("--cluster", "hm", "--hook-shell", "--on-change", line)
    hooks = options["hooks"]
    assert hooks.on_change == ("/bin/sh", "-c", line)
    assert hooks.on_leader is None
    assert hooks.on_follower is None


def test_hook_timeout() -> None:
    """--hook-timeout is parsed as seconds; the default is 30."""
    assert parse("--cluster", "hm", "--hook-timeout", "2.5")["hook-timeout"] == 2.5
    assert parse("--cluster", "hm")["hook-timeout"] == 30.0


def test_secret_file_read_and_stripped(tmp_path: Path) -> None:
    """--secret-file is read as bytes without surrounding whitespace and given to TcpRpc."""
    secret = private(tmp_path / "secret", b"  s3cret value\n\n")
    options = parse(*tcp_args("--peer", "tcp:a:1", "--secret-file", str(secret)))
    assert options["secret"] == b"s3cret value"
    rpc = make_rpc(options)
    assert isinstance(rpc, TcpRpc)
    assert rpc.keys is not None
    assert rpc.keys._secret == b"s3cret value"


def test_node_id_and_state_file(tmp_path: Path) -> None:
    """--node-id and --state-file are kept as given."""
    path = str(tmp_path / "node.state")
    options = parse("--cluster", "hm", "--node-id", "node-1", "--state-file", path)
    assert options["node-id"] == "node-1"
    assert options["state-file"] == path


def test_status_endpoint_kept() -> None:
    """--status keeps the endpoint string for makeService."""
    options = parse("--cluster", "hm", "--status", "tcp:8080:interface=127.0.0.1")
    assert options["status"] == "tcp:8080:interface=127.0.0.1"


# -- bad combinations ------------------------------------------------------------


def test_cluster_required() -> None:
    """Without --cluster (or with an empty one) the parser asks for it."""
    refused([], "--cluster")
    refused(["--cluster", ""], "--cluster")
    refused(["--listen", "tcp:1", "--peer", "tcp:a:1"], "--cluster")


def test_unknown_transport() -> None:
    """--transport foo is refused, naming both choices and the bad value."""
    refused(["--cluster", "c", "--transport", "foo"], "--transport", "nats", "tcp", "foo")


@pytest.mark.parametrize(
    ("extra", "option"),
    [
        (["--nats", "nats://a:4222"], "--nats"),
        (["--nats-user", "u"], "--nats-user"),
        (["--nats-password-file", "p"], "--nats-password-file"),
        (["--nats-token-file", "t"], "--nats-token-file"),
        (["--nats-name", "n"], "--nats-name"),
        (["--nats-credentials", "x.creds"], "--nats-credentials"),
        (["--nats-nkey-seed", "x.nk"], "--nats-nkey-seed"),
        (["--nats-tls-ca", "ca.pem"], "--nats-tls-ca"),
        (["--nats-tls-cert", "c.pem"], "--nats-tls-cert"),
        (["--nats-tls-key", "k.pem"], "--nats-tls-key"),
    ],
)
def test_nats_options_refused_over_tcp(extra: list[str], option: str) -> None:
    """A NATS option with the TCP transport is refused, naming the option."""
    refused([*tcp_args("--peer", "tcp:a:1"), *extra], option, "NATS", "tcp")
    refused([*tcp_args("--transport", "tcp"), *extra], option, "NATS", "tcp")


@pytest.mark.parametrize(
    ("extra", "option"),
    [
        (["--listen", "tcp:7001"], "--listen"),
        (["--secret-file", "secret"], "--secret-file"),
    ],
)
def test_tcp_options_refused_over_nats(tmp_path: Path, extra: list[str], option: str) -> None:
    """--listen or --secret-file without TCP is refused, saying to use --transport tcp."""
    (tmp_path / "secret").write_text("s")
    refused(["--cluster", "c", *extra], option, "--transport tcp")
    refused(["--cluster", "c", "--transport", "nats", *extra], option, "--transport tcp")


def test_peer_refused_with_explicit_nats() -> None:
    """--peer with --transport nats is refused."""
    refused(
        ["--cluster", "c", "--transport", "nats", "--peer", "tcp:a:1"], "--peer", "--transport tcp"
    )


def test_tcp_needs_listen() -> None:
    """TCP (explicit or inferred from --peer) without --listen asks for --listen."""
    refused(["--cluster", "c", "--transport", "tcp"], "--listen")
    refused(["--cluster", "c", "--peer", "tcp:a:1"], "--listen")


@pytest.mark.parametrize(("size", "peers"), [("5", 2), ("1", 1), ("2", 0)])
def test_size_contradicting_peers(size: str, peers: int) -> None:
    """A --size other than peers + 1 over TCP is refused, naming both numbers."""
    args = tcp_args("--transport", "tcp", "--size", size)
    for n in range(peers):
        args += ["--peer", f"tcp:host=10.0.0.{n + 2}:port=7001"]
    refused(args, f"--size {size}", f"{peers} --peer")


@pytest.mark.parametrize(("size", "fragment"), [("0", "at least 1"), ("-2", "at least 1")])
def test_size_too_small(size: str, fragment: str) -> None:
    """--size below 1 is refused."""
    refused(["--cluster", "c", "--size", size], "--size", fragment)


@pytest.mark.parametrize("size", ["abc", "2.5", ""])
def test_size_not_a_number(size: str) -> None:
    """--size that is not a whole number is refused, quoting it."""
    refused(["--cluster", "c", "--size", size], "--size", "whole number", repr(size))


def test_secret_file_missing(tmp_path: Path) -> None:
    """A --secret-file that does not exist is refused, naming the path."""
    path = str(tmp_path / "nope")
    refused(tcp_args("--peer", "tcp:a:1", "--secret-file", path), "--secret-file", path)


def test_secret_file_unreadable(tmp_path: Path) -> None:
    """A --secret-file that cannot be read (a directory) is refused, naming the path."""
    refused(
        tcp_args("--peer", "tcp:a:1", "--secret-file", str(tmp_path)),
        "--secret-file",
        "cannot read",
        str(tmp_path),
    )


@pytest.mark.parametrize("content", [b"", b" \n\t\n"])
def test_secret_file_empty(tmp_path: Path, content: bytes) -> None:
    """An empty (or all-whitespace) --secret-file is refused as empty."""
    path = private(tmp_path / "secret", content)
    refused(tcp_args("--peer", "tcp:a:1", "--secret-file", str(path)), "--secret-file", "empty")


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("abc", "MIN-MAX"),
        ("0.5", "MIN-MAX"),
        ("-1-2", "MIN-MAX"),
        ("1-2-3", "MIN-MAX"),
        ("a-b", "seconds"),
        ("0-1", "positive"),
        ("1-inf", "positive"),
        ("nan-1", "positive"),
        ("1-0.5", "exceed"),
    ],
)
def test_bad_election_timeout(value: str, fragment: str) -> None:
    """A malformed or impossible --election-timeout is refused with a reason."""
    message = refused(["--cluster", "c", "--election-timeout", value], fragment)
    assert "election" in message


@pytest.mark.parametrize("value", ["abc", "0", "-0.1", "inf"])
def test_bad_heartbeat(value: str) -> None:
    """A --heartbeat that is not a positive number of seconds is refused."""
    refused(["--cluster", "c", "--heartbeat", value], "--heartbeat")


def test_heartbeat_too_slow_for_election_timeout() -> None:
    """A heartbeat not below half the minimum election timeout is refused, with the limit."""
    message = refused(
        ["--cluster", "c", "--election-timeout", "0.2-0.4", "--heartbeat", "0.1"], "heartbeat"
    )
    assert "0.1" in message
    assert "below" in message
    # The default heartbeat (0.1 s) is too slow for a 0.1 s minimum timeout.
    refused(["--cluster", "c", "--election-timeout", "0.1-0.4"], "heartbeat")


@pytest.mark.parametrize("value", ["abc", "0", "-1", "inf", "nan", ""])
def test_bad_hook_timeout(value: str) -> None:
    """A --hook-timeout that is not a positive number of seconds is refused."""
    refused(["--cluster", "c", "--hook-timeout", value], "--hook-timeout")


@pytest.mark.parametrize("option", ["--on-leader", "--on-follower", "--on-change"])
@pytest.mark.parametrize("value", ["", "   "], ids=["empty", "blank"])
def test_empty_hook_command(option: str, value: str) -> None:
    """An empty hook command is refused rather than silently dropped."""
    refused(["--cluster", "c", option, value], "empty")


def test_empty_hook_command_with_shell() -> None:
    """An empty hook command is refused also with --hook-shell."""
    refused(["--cluster", "c", "--hook-shell", "--on-leader", "  "], "empty")


def test_unterminated_quote_in_hook() -> None:
    """A hook command with an unterminated quote is refused, saying it is a hook command."""
    message = refused(["--cluster", "c", "--on-leader", "echo 'oops"], "hook command")
    assert "quotation" in message


def test_state_file_in_missing_directory(tmp_path: Path) -> None:
    """A --state-file whose directory does not exist is refused, naming the directory."""
    missing = tmp_path / "no" / "such"
    refused(
        ["--cluster", "c", "--state-file", str(missing / "x.state")], "--state-file", str(missing)
    )


def test_node_id_default_help_names_the_state_file() -> None:
    """--node-id's help says the default is the id the state file records, random at first."""
    help_text = str(Options())
    assert "fresh random id" not in help_text
    flat = " ".join(help_text.split())
    assert "the id its state file records, or a new random id on the first start" in flat


def test_node_id_recorded_in_state_file_is_accepted(tmp_path: Path) -> None:
    """The recorded id, or no --node-id at all, is accepted; the file is left as it was."""
    path = tmp_path / "n.state"
    StateFile(str(path)).save(PersistentState(4, "a", "a"))
    content = path.read_bytes()
    assert parse("--cluster", "c", "--state-file", str(path), "--node-id", "a")["node-id"] == "a"
    assert parse("--cluster", "c", "--state-file", str(path))["node-id"] is None
    assert path.read_bytes() == content


def test_node_id_refused_for_another_nodes_state_file(tmp_path: Path) -> None:
    """A --node-id other than the one the state file records is refused, naming both ids."""
    path = tmp_path / "n.state"
    StateFile(str(path)).save(PersistentState(4, "a", "a"))
    content = path.read_bytes()
    refused(
        ["--cluster", "c", "--state-file", str(path), "--node-id", "b"],
        "--node-id",
        repr(str(path)),
        "belongs to node 'a', not 'b'",
    )
    assert path.read_bytes() == content


def test_node_id_free_for_a_state_file_without_one(tmp_path: Path) -> None:
    """A state file that records no id (Go graft's, or empty) takes any --node-id."""
    path = tmp_path / "go.state"
    StateFile(str(path)).save(PersistentState(2, "x"))
    assert parse("--cluster", "c", "--state-file", str(path), "--node-id", "b")["node-id"] == "b"
    path.write_bytes(b"")
    assert parse("--cluster", "c", "--state-file", str(path), "--node-id", "b")["node-id"] == "b"


def test_corrupt_state_file_refused(tmp_path: Path) -> None:
    """A corrupt state file is refused in one line before anything starts; it is left untouched."""
    path = tmp_path / "bad.state"
    path.write_bytes(b"garbage")
    refused(["--cluster", "c", "--state-file", str(path)], "--state-file", "is corrupt")
    assert path.read_bytes() == b"garbage"


def test_unreadable_state_file_refused(tmp_path: Path) -> None:
    """A state file that cannot be read (here a directory) is refused in one line."""
    path = tmp_path / "dir.state"
    path.mkdir()
    refused(["--cluster", "c", "--state-file", str(path)], "--state-file: cannot read", str(path))


@pytest.mark.parametrize("node_id", ["a\nb", "tab\there", "\x00"])
def test_invalid_node_id(node_id: str) -> None:
    """A --node-id that is not printable text is refused in one line."""
    refused(["--cluster", "c", "--node-id", node_id], "--node-id")


def test_nats_refused_under_another_reactor(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a non-asyncio reactor installed, NATS is refused with the twistd flag to use."""
    import twisted.internet

    class FakeReactor:
        pass

    monkeypatch.setattr(twisted.internet, "reactor", FakeReactor(), raising=False)
    monkeypatch.setitem(sys.modules, "twisted.internet.reactor", FakeReactor())
    refused(["--cluster", "hm"], "asyncio", "FakeReactor", "--reactor=asyncio")
    # TCP needs no particular reactor.
    parse("--cluster", "c", "--transport", "tcp", "--listen", "tcp:0")


def test_nats_accepted_under_asyncio_reactor() -> None:
    """Under the asyncio reactor (this suite's), NATS options pass the reactor check."""
    from twisted.internet import asyncioreactor, reactor

    assert isinstance(reactor, asyncioreactor.AsyncioSelectorReactor)
    assert parse("--cluster", "hm")["transport"] == "nats"


def test_nats_installs_asyncio_reactor_when_none_is(tmp_path: Path) -> None:
    """In a fresh process, parsing NATS options installs the asyncio reactor."""
    script = (
        "import sys\n"
        "from graft_tx.tap import Options\n"
        "assert 'twisted.internet.reactor' not in sys.modules, 'imported too early'\n"
        "Options().parseOptions(['--cluster', 'hm'])\n"
        "from twisted.internet import reactor\n"
        "print(type(reactor).__name__)\n"
    )
    done = run_python(["-c", script], tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "AsyncioSelectorReactor"


def test_nats_refused_in_fresh_process_with_default_reactor(tmp_path: Path) -> None:
    """In a fresh process with the default reactor installed, NATS is refused with advice."""
    script = (
        "from twisted.internet import reactor\n"
        "from twisted.python import usage\n"
        "from graft_tx.tap import Options\n"
        "try:\n"
        "    Options().parseOptions(['--cluster', 'hm'])\n"
        "except usage.UsageError as e:\n"
        "    print(e)\n"
    )
    done = run_python(["-c", script], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "--reactor=asyncio" in done.stdout


# -- makeService -----------------------------------------------------------------


def children(top: MultiService) -> list[Any]:
    return list(top)


def test_make_service_nats_tree(tmp_path: Path) -> None:
    """Over NATS: a MultiService holding only the GraftService "graft", set up from the options."""
    options = parse(
        "--cluster", "hm",
        "--size", "5",
        "--node-id", "node-1",
        "--state-file", str(tmp_path / "n.state"),
        "--election-timeout", "0.2-0.4",
        "--heartbeat", "0.05",
        "--nats", "nats://127.0.0.1:4999",
    )  # fmt: skip
    top = makeService(options)
    assert isinstance(top, MultiService)
    assert not top.running
    graft = top.getServiceNamed("graft")
    assert isinstance(graft, GraftService)
    assert children(top) == [graft]
    assert graft.info == ClusterInfo("hm", 5)
    assert graft.timing == Timing(0.2, 0.4, 0.05)
    assert graft.node_id == "node-1"
    assert graft.log_path == str(tmp_path / "n.state")
    assert isinstance(graft.rpc, NatsRpc)
    assert servers_of(graft.rpc) == ["nats://127.0.0.1:4999"]
    assert isinstance(graft.handler, HookHandler)
    assert graft.node is None
    assert not (tmp_path / "n.state").exists()
    with pytest.raises(KeyError):
        top.getServiceNamed("status")


def test_make_service_tcp_with_hooks_and_status(tmp_path: Path) -> None:
    """Over TCP with hooks and --status: graft (TcpRpc), a hook service, and "status"."""
    options = parse(
        "--cluster", "c",
        "--listen", "tcp:7001",
        "--peer", "tcp:host=10.0.0.2:port=7001",
        "--on-leader", "true",
        "--hook-timeout", "3",
        "--status", "tcp:8080:interface=127.0.0.1",
    )  # fmt: skip
    top = makeService(options)
    assert isinstance(top, MultiService)
    graft = top.getServiceNamed("graft")
    status = top.getServiceNamed("status")
    hooks = [child for child in children(top) if child not in (graft, status)]
    assert len(hooks) == 1
    assert isinstance(hooks[0].runner, HookRunner)
    assert hooks[0].runner._timeout == 3.0
    assert isinstance(graft, GraftService)
    assert graft.info == ClusterInfo("c", 2)
    assert graft.log_path == "graft-c.state"
    assert graft.node_id is None
    assert isinstance(graft.rpc, TcpRpc)
    assert isinstance(graft.handler, HookHandler)
    assert graft.handler._runner is hooks[0].runner
    assert isinstance(status.factory.resource, GraftResource)
    assert status.endpoint._port == 8080
    assert status.endpoint._interface == "127.0.0.1"


def test_make_service_without_hooks_has_no_hook_service() -> None:
    """Without hooks the tree holds no hook service, and the handler no runner."""
    top = makeService(parse("--cluster", "hm", "--status", "tcp:0"))
    names = sorted(child.name for child in children(top))
    assert names == ["graft", "status"]
    graft = top.getServiceNamed("graft")
    assert graft.handler._runner is None


def test_make_service_refuses_bad_nats_tls_files(tmp_path: Path) -> None:
    """A NATS TLS file that cannot be read is refused as a one-line UsageError."""
    options = parse("--cluster", "hm", "--nats-tls-ca", str(tmp_path / "missing.pem"))
    with pytest.raises(usage.UsageError) as info:
        makeService(options)
    assert "tls_ca" in str(info.value)
    assert "\n" not in str(info.value)


async def http_get(url: str) -> tuple[int, bytes]:
    from twisted.internet import reactor
    from twisted.web.client import Agent, readBody

    response = await Agent(reactor).request(b"GET", url.encode("ascii"))
    body = await readBody(response)
    return response.code, body


@pytest.mark.filterwarnings("ignore:Using readBody with a transport:DeprecationWarning")
@pytest_twisted.ensureDeferred
async def test_tcp_service_tree_runs_and_stops(tmp_path: Path) -> None:
    """A one-node TCP tree becomes leader, runs its hook, serves /status, stops, keeps its state."""
    port, status_port = free_port(), free_port()
    state = tmp_path / "solo.state"
    out = tmp_path / "hook.out"
    options = parse(
        "--cluster", "solo",
        "--transport", "tcp",
        "--listen", f"tcp:{port}:interface=127.0.0.1",
        "--status", f"tcp:{status_port}:interface=127.0.0.1",
        "--state-file", str(state),
        "--node-id", "solo-1",
        "--election-timeout", "0.1-0.2",
        "--heartbeat", "0.02",
        "--hook-shell",
        "--on-leader", f"echo $GRAFT_STATE $GRAFT_TERM $GRAFT_LEADER > {shlex.quote(str(out))}",
        "--hook-timeout", "5",
    )  # fmt: skip
    top = makeService(options)
    graft = top.getServiceNamed("graft")
    top.startService()
    try:
        await wait_until(
            lambda: graft.node is not None and graft.node.state is State.LEADER, 5, "leadership"
        )
        base = f"http://127.0.0.1:{status_port}"
        code, body = await http_get(base + "/status")
        assert code == 200
        status = json.loads(body)
        assert status["id"] == "solo-1"
        assert status["cluster"] == "solo"
        assert status["size"] == 1
        assert status["state"] == "Leader"
        assert status["leader"] == "solo-1"
        assert status["term"] >= 1
        assert (await http_get(base + "/leader"))[0] == 200
        assert (await http_get(base + "/healthz"))[0] == 200
        code, metrics = await http_get(base + "/metrics")
        assert code == 200
        assert b"graft_is_leader" in metrics
        await wait_until(lambda: out.exists() and out.read_text().strip() != "", 5, "the hook")
        words = out.read_text().split()
        assert words[0] == "Leader"
        assert int(words[1]) >= 1
        assert words[2] == "solo-1"
    finally:
        await top.stopService()
    assert not top.running
    assert graft.node is not None
    assert graft.node.state is State.CLOSED
    assert state.exists()
    assert StateFile(str(state)).load().term >= 1


# -- the plugin ------------------------------------------------------------------


def run_python(args: list[str], cwd: Path, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_twistd_lists_graft(tmp_path: Path) -> None:
    """twistd --help lists the graft plugin with its description."""
    done = run_python([*TWISTD_ARGS, "--help"], tmp_path)
    assert done.returncode == 0, done.stderr
    lines = [line.strip() for line in done.stdout.splitlines()]
    assert any(line.startswith("graft ") and "leader election" in line for line in lines), (
        done.stdout
    )


def test_twistd_graft_help_lists_options(tmp_path: Path) -> None:
    """twistd graft --help explains every option."""
    done = run_python([*TWISTD_ARGS, "graft", "--help"], tmp_path)
    assert done.returncode == 0, done.stderr
    for option in (
        "--cluster", "--size", "--state-file", "--node-id", "--transport", "--nats=",
        "--nats-user", "--nats-tls-ca", "--listen", "--peer=", "--secret-file",
        "--election-timeout", "--heartbeat", "--status", "--on-leader", "--on-follower",
        "--on-change", "--hook-timeout", "--hook-shell",
    ):  # fmt: skip
        assert option in done.stdout, option


def test_twistd_graft_refuses_bad_options(tmp_path: Path) -> None:
    """twistd graft without --cluster exits non-zero and says --cluster is required."""
    done = run_python([*TWISTD_ARGS, "graft"], tmp_path)
    assert done.returncode != 0
    assert "--cluster NAME is required" in done.stdout + done.stderr


def test_twistd_graft_runs_and_stops_on_sigterm(tmp_path: Path) -> None:
    """twistd -n graft over TCP (one node) leads, and SIGTERM stops it cleanly, keeping state."""
    state = tmp_path / "solo.state"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [
        *TWISTD, "-n", "--pidfile=", "--logfile=-", "graft",
        "--cluster", "solo",
        "--transport", "tcp",
        "--listen", f"tcp:{free_port()}:interface=127.0.0.1",
        "--state-file", str(state),
        "--node-id", "solo-1",
        "--election-timeout", "0.1-0.2",
        "--heartbeat", "0.02",
    ]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 15
        while not (state.exists() and StateFile(str(state)).load().term >= 1):
            assert process.poll() is None, process.communicate()[0].decode()
            assert time.monotonic() < deadline, "no term was recorded"
            time.sleep(0.05)
        time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    text = output.decode(errors="replace")
    # twistd re-raises SIGTERM after a clean stop: a shell reports 143, Popen -15.
    assert process.returncode in (0, 143, -signal.SIGTERM), text
    assert "became leader" in text
    assert "node solo-1 of solo closed" in text
    assert "Main loop terminated" in text
    assert "Traceback" not in text
    assert state.exists()
    assert StateFile(str(state)).load().term >= 1


def test_protocol_and_priority_reach_the_service() -> None:
    """--protocol and --priority are checked and passed to the GraftService."""
    options = parse("--cluster", "c", "--protocol", "graft")
    assert (options["protocol"], options["priority"]) == ("graft", 1)
    options = parse("--cluster", "c", "--priority", "3")
    assert (options["protocol"], options["priority"]) == ("graft-tx", 3)
    service = makeService(options).getServiceNamed("graft")
    assert (service.protocol, service.priority) == ("graft-tx", 3)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--protocol", "raft"], "--protocol must be graft-tx or graft"),
        (["--priority", "x"], "--priority must be a whole number"),
        (["--priority", "-1"], "--priority must be between 0"),
        (["--protocol", "graft", "--priority", "2"], "--priority needs --protocol graft-tx"),
    ],
)
def test_bad_protocol_or_priority(args: list[str], fragment: str) -> None:
    """A bad --protocol or --priority is refused with a one-line message."""
    refused(["--cluster", "c", *args], fragment)


# -- local files: permissions and links ------------------------------------------

OTHER_UID = 54321


def state_dir(tmp_path: Path, mode: int) -> Path:
    directory = tmp_path / "d"
    directory.mkdir()
    directory.chmod(mode)
    return directory


@pytest.mark.parametrize(
    ("mode", "fragments"),
    [
        (0o777, ("mode 0777", "writable by other users", "chmod go-w")),
        (0o1777, ("mode 1777", "shared with every local user", "mkdir -m 700")),
        (0o1733, ("mode 1733", "shared with every local user")),
        (0o757, ("mode 0757", "writable by other users", "chmod go-w")),
        (0o775, ("mode 0775", "writable by its group's members", "chmod go-w")),
        (0o2770, ("mode 2770", "writable by its group's members", "chmod go-w")),
    ],
)
def test_state_directory_writable_by_others_refused(
    tmp_path: Path, mode: int, fragments: tuple[str, ...]
) -> None:
    """A state file's directory that others (or its group) may write to is refused, with its
    mode and the fix; nothing is created there."""
    directory = state_dir(tmp_path, mode)
    refused(
        ["--cluster", "c", "--state-file", str(directory / "n.state")],
        f"--state-file: the directory {directory}",
        *fragments,
    )
    assert list(directory.iterdir()) == []


@pytest.mark.parametrize("mode", [0o700, 0o755, 0o750, 0o705])
def test_state_directory_writable_by_its_owner_only_accepted(tmp_path: Path, mode: int) -> None:
    """A state file's directory that only its owner may write to is accepted."""
    directory = state_dir(tmp_path, mode)
    assert parse("--cluster", "c", "--state-file", str(directory / "n.state"))["cluster"] == "c"


def test_default_state_file_in_a_shared_directory_refused(tmp_path: Path) -> None:
    """Without --state-file, a current directory like /tmp (1777) is refused too."""
    os.chdir(state_dir(tmp_path, 0o1777))
    refused(["--cluster", "c"], "--state-file: the directory", "shared with every local user")


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_state_directory_of_another_user_refused(tmp_path: Path) -> None:
    """A state file's directory owned by another user (not root) is refused, naming the uid."""
    directory = state_dir(tmp_path, 0o755)
    os.chown(directory, OTHER_UID, -1)
    refused(
        ["--cluster", "c", "--state-file", str(directory / "n.state")],
        str(directory),
        f"belongs to uid {OTHER_UID}",
    )


@pytest.mark.parametrize("mode", [0o664, 0o662, 0o646, 0o666])
def test_state_file_others_may_change_refused(tmp_path: Path, mode: int) -> None:
    """An existing state file writable by group or others is refused with its mode and
    'chmod 600'; it is left as it was."""
    path = tmp_path / "n.state"
    StateFile(str(path)).save(PersistentState(4, "a", "a"))
    path.chmod(mode)
    refused(
        ["--cluster", "c", "--state-file", str(path)],
        "--state-file",
        str(path),
        f"mode {mode:04o}",
        f"chmod 600 {path}",
    )
    assert stat.S_IMODE(path.stat().st_mode) == mode


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o644, 0o400])
def test_state_file_only_its_owner_may_change_accepted(tmp_path: Path, mode: int) -> None:
    """An existing state file that only its owner may write is accepted, its mode unchanged."""
    path = tmp_path / "n.state"
    StateFile(str(path)).save(PersistentState(4, "a", "a"))
    path.chmod(mode)
    assert parse("--cluster", "c", "--state-file", str(path))["state-file"] == str(path)
    assert stat.S_IMODE(path.stat().st_mode) == mode


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_state_file_of_another_user_refused(tmp_path: Path) -> None:
    """An existing state file owned by another user is refused, naming both uids."""
    path = tmp_path / "n.state"
    StateFile(str(path)).save(PersistentState(4, "a", "a"))
    os.chown(path, OTHER_UID, -1)
    refused(
        ["--cluster", "c", "--state-file", str(path)],
        f"belongs to uid {OTHER_UID}",
        f"uid {os.geteuid()}",
    )


@pytest.mark.parametrize("dangling", [False, True], ids=["to a state file", "dangling"])
def test_state_file_symlink_refused(tmp_path: Path, dangling: bool) -> None:
    """A symbolic link at the state path is refused, dangling or not; its target is not created."""
    target = tmp_path / "real.state"
    if not dangling:
        StateFile(str(target)).save(PersistentState(4, "a", "a"))
    path = tmp_path / "n.state"
    os.symlink(target, path)
    refused(
        ["--cluster", "c", "--state-file", str(path)],
        "--state-file",
        str(path),
        "is a symbolic link",
        "does not follow links",
    )
    assert os.path.lexists(target) == (not dangling)


def test_state_file_fifo_refused_without_hanging(tmp_path: Path) -> None:
    """A FIFO at the state path is refused at once as not a regular file."""
    path = tmp_path / "n.state"
    os.mkfifo(path)

    def hung(signum: int, frame: object) -> None:
        raise AssertionError("opening the FIFO blocked")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(5)
    try:
        refused(["--cluster", "c", "--state-file", str(path)], "--state-file", "not a regular file")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o606, 0o660, 0o620, 0o666])
def test_secret_file_others_may_read_or_change_refused(tmp_path: Path, mode: int) -> None:
    """A --secret-file readable or writable by others, or writable by its group, is refused
    with its mode and 'chmod 600'."""
    path = private(tmp_path / "secret", "s3cret", mode)
    refused(
        tcp_args("--peer", "tcp:a:1", "--secret-file", str(path)),
        "--secret-file",
        str(path),
        f"mode {mode:04o}",
        f"chmod 600 {path}",
    )


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o400, 0o440])
def test_secret_file_private_or_group_readable_accepted(tmp_path: Path, mode: int) -> None:
    """A --secret-file only its owner may change, and only its group may also read, is used."""
    path = private(tmp_path / "secret", "s3cret", mode)
    assert parse(*tcp_args("--peer", "tcp:a:1", "--secret-file", str(path)))["secret"] == (
        b"s3cret"
    )


def test_symlinked_secret_file_is_judged_by_its_target(tmp_path: Path) -> None:
    """A --secret-file that is a link (as Kubernetes mounts secrets) is used when the file it
    leads to is private, and refused when that file is readable by others."""
    target = private(tmp_path / "..data-secret", "s3cret")
    link = tmp_path / "secret"
    os.symlink(target, link)
    assert parse(*tcp_args("--peer", "tcp:a:1", "--secret-file", str(link)))["secret"] == (
        b"s3cret"
    )
    target.chmod(0o644)
    refused(tcp_args("--peer", "tcp:a:1", "--secret-file", str(link)), "mode 0644")


@pytest.mark.parametrize(
    "option",
    ["--nats-password-file", "--nats-token-file", "--nats-credentials", "--nats-nkey-seed"],
)
def test_nats_secret_files_others_may_read_refused(tmp_path: Path, option: str) -> None:
    """Every NATS file holding a secret is refused when others may read it; 0640 is accepted."""
    path = private(tmp_path / "f", "secret", 0o644)
    refused(["--cluster", "c", option, str(path)], option, str(path), "mode 0644", "chmod 600")
    path.chmod(0o640)
    parse("--cluster", "c", option, str(path))


def test_nats_tls_key_others_may_read_refused(tmp_path: Path) -> None:
    """--nats-tls-key readable by others is refused; the certificate and CA may be public."""
    cert = private(tmp_path / "client.pem", "cert", 0o644)
    key = private(tmp_path / "client.key", "key", 0o644)
    args = ["--cluster", "c", "--nats-tls-cert", str(cert), "--nats-tls-key", str(key)]
    refused(args, "--nats-tls-key", str(key), "mode 0644")
    key.chmod(0o600)
    assert parse(*args)["nats-tls-key"] == str(key)


@pytest.mark.parametrize("option", ["--nats-credentials", "--nats-nkey-seed", "--nats-tls-key"])
def test_nats_secret_file_missing_refused(tmp_path: Path, option: str) -> None:
    """A NATS secret file that does not exist is refused at once, naming it."""
    path = str(tmp_path / "missing")
    refused(["--cluster", "c", option, path], option, "cannot read", path)


# -- secrets never on the command line -------------------------------------------


@pytest.mark.parametrize(
    ("content", "value"),
    [
        ("pw", "pw"),
        ("pw\n", "pw"),
        ("pw\r\n", "pw"),
        (" p w \n", " p w "),
        ("pässwörd\n", "pässwörd"),
    ],
)
def test_nats_password_and_token_files_are_read(tmp_path: Path, content: str, value: str) -> None:
    """--nats-password-file and --nats-token-file give NatsRpc the file's line, without its
    line ending, exactly as the old --nats-password and --nats-token did."""
    options = parse(
        "--cluster", "hm",
        "--nats-user", "alice",
        "--nats-password-file", str(private(tmp_path / "password", content)),
    )  # fmt: skip
    rpc = make_rpc(options)
    assert isinstance(rpc, NatsRpc)
    assert rpc._options == {"user": "alice", "password": value}
    options = parse("--cluster", "hm", "--nats-token-file", str(private(tmp_path / "t", content)))
    rpc = make_rpc(options)
    assert isinstance(rpc, NatsRpc)
    assert rpc._options == {"token": value}


@pytest.mark.parametrize("option", ["--nats-password-file", "--nats-token-file"])
@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"", "is empty"),
        (b"\n", "is empty"),
        (b"  \r\n", "is empty"),
        (b"one\ntwo\n", "more than one line"),
        (b"\xff\xfe", "not UTF-8"),
    ],
)
def test_nats_password_and_token_files_bad_content_refused(
    tmp_path: Path, option: str, content: bytes, fragment: str
) -> None:
    """An empty, blank, multi-line or non-UTF-8 password or token file is refused, naming it."""
    path = private(tmp_path / "f", content)
    refused(["--cluster", "c", option, str(path)], option, str(path), fragment)


@pytest.mark.parametrize("option", ["--nats-password-file", "--nats-token-file"])
def test_nats_password_and_token_files_unreadable_refused(tmp_path: Path, option: str) -> None:
    """A missing password or token file, or a directory, is refused in one line."""
    missing = str(tmp_path / "missing")
    refused(["--cluster", "c", option, missing], option, "cannot read", missing)
    refused(["--cluster", "c", option, str(tmp_path)], option, "cannot read", str(tmp_path))


@pytest.mark.parametrize(
    ("option", "what"), [("--nats-password", "password"), ("--nats-token", "token")]
)
@pytest.mark.parametrize("transport", [[], ["--transport", "tcp", "--listen", "tcp:0"]])
def test_secrets_on_the_command_line_refused(option: str, what: str, transport: list[str]) -> None:
    """The old --nats-password and --nats-token are refused, saying why and what to use,
    without repeating the secret."""
    message = refused(
        ["--cluster", "c", *transport, option, "hunter2"],
        f"{option} puts the {what} where every local user can read it (ps)",
        f"{option}-file",
    )
    assert "hunter2" not in message


@pytest.mark.parametrize(
    "url",
    [
        "nats://alice:hunter2@127.0.0.1:4222",
        "nats://hunter2@127.0.0.1:4222",
        "tls://alice:hunter2@127.0.0.1:4222",
        "alice:hunter2@127.0.0.1:4222",
        "nats://:hunter2@127.0.0.1:4222",
    ],
)
def test_nats_url_with_credentials_refused(url: str) -> None:
    """A --nats URL carrying a password or token is refused, pointing to the -file options,
    without repeating the secret."""
    message = refused(
        ["--cluster", "c", "--nats", "nats://ok:4222", "--nats", url],
        "--nats",
        "127.0.0.1:4222",
        "--nats-password-file",
        "--nats-token-file",
    )
    assert "hunter2" not in message
