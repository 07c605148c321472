"""NATS without a server: connection options, subject names, the reactor check, IRpc."""

from __future__ import annotations

import asyncio
import inspect
import re
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from nats.aio.client import Client
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from zope.interface.verify import verifyObject

import graft_tx
from graft_tx import ClusterInfo, NatsConfigError, NatsReactorError, NatsRpc, SubjectError
from graft_tx.interfaces import IRpc
from graft_tx.transport import natsclient
from graft_tx.transport.nats import (
    check_token,
    heartbeat_subject,
    vote_request_subject,
    vote_response_subject,
)
from graft_tx.transport.natsclient import NatsConnection, asyncio_loop, connection_options

URL = "nats://127.0.0.1:4222"
DEFAULTS = {
    "allow_reconnect": True,
    "max_reconnect_attempts": -1,
    "reconnect_time_wait": 2.0,
    "connect_timeout": 2.0,
}


def refused(servers: Any, match: str, **options: Any) -> NatsConfigError:
    """Check that connection_options refuses, with a message matching C{match}."""
    with pytest.raises(NatsConfigError, match=match) as info:
        connection_options(servers, options)
    return info.value


# -- accepted options ------------------------------------------------------------


def test_defaults_reconnect_forever_every_two_seconds() -> None:
    """With no options: one URL, reconnect forever, at most 2 s between tries, 2 s timeout."""
    assert connection_options(URL, {}) == {"servers": [URL], **DEFAULTS}


def test_every_option_maps_to_nats_py() -> None:
    """Each documented option reaches nats-py under nats-py's keyword."""
    options = {
        "name": "node-1",
        "user": "alice",
        "password": "secret",
        "token": "tok",
        "credentials": "/etc/nats/user.creds",
        "nkey_seed": "/etc/nats/user.nk",
        "tls_hostname": "nats.example.org",
        "reconnect_wait": 0.5,
        "connect_timeout": 3,
        "ping_interval": 10,
        "max_reconnect_attempts": 7,
        "max_outstanding_pings": 4,
    }
    assert connection_options(URL, options) == {
        "servers": [URL],
        "allow_reconnect": True,
        "name": "node-1",
        "user": "alice",
        "password": "secret",
        "token": "tok",
        "user_credentials": "/etc/nats/user.creds",
        "nkeys_seed": "/etc/nats/user.nk",
        "tls_hostname": "nats.example.org",
        "reconnect_time_wait": 0.5,
        "connect_timeout": 3,
        "ping_interval": 10,
        "max_reconnect_attempts": 7,
        "max_outstanding_pings": 4,
    }


def test_documented_options_are_the_accepted_ones() -> None:
    """The options connect_nats documents are exactly those connection_options accepts."""
    doc = inspect.getdoc(natsclient.connect_nats) or ""
    documented = set(re.findall(r"C\{(\w+)\}", doc.split("Cancelling")[0]))
    assert documented == set(natsclient.OPTIONS)


def test_every_keyword_is_one_nats_py_takes() -> None:
    """Every keyword produced is a parameter of nats-py's Client.connect."""
    options = {
        **{key: "x" for key in ("name", "user", "password", "token", "credentials")},
        **{"nkey_seed": "x", "tls_hostname": "x", "tls": ssl.create_default_context()},
        **{"reconnect_wait": 1, "connect_timeout": 1, "ping_interval": 1},
        **{"max_reconnect_attempts": 1, "max_outstanding_pings": 1},
    }
    kwargs = connection_options([URL], options)
    parameters = inspect.signature(Client.connect).parameters
    assert set(kwargs) - set(parameters) == set()
    assert set(kwargs) == {
        "servers",
        "allow_reconnect",
        "name",
        "user",
        "password",
        "token",
        "user_credentials",
        "nkeys_seed",
        "tls_hostname",
        "tls",
        "reconnect_time_wait",
        "connect_timeout",
        "ping_interval",
        "max_reconnect_attempts",
        "max_outstanding_pings",
    }


def test_several_servers_as_a_list() -> None:
    """Several server URLs are passed on as a list, in order."""
    urls = ["nats://a:4222", "nats://b:4223", "tls://c:4224"]
    assert connection_options(urls, {})["servers"] == urls


def test_max_reconnect_attempts_zero_and_forever() -> None:
    """max_reconnect_attempts is passed on as given, -1 (forever) being the default."""
    assert connection_options(URL, {"max_reconnect_attempts": 0})["max_reconnect_attempts"] == 0
    assert connection_options(URL, {"max_reconnect_attempts": -1})["max_reconnect_attempts"] == -1


def test_none_means_unset() -> None:
    """An option given as None is the same as leaving it out."""
    options = dict.fromkeys(natsclient.OPTIONS)
    assert connection_options(URL, options) == {"servers": [URL], **DEFAULTS}


def test_tls_context_passes_through() -> None:
    """An SSLContext given as tls is handed to nats-py unchanged."""
    context = ssl.create_default_context()
    assert connection_options(URL, {"tls": context})["tls"] is context


# -- refused options -------------------------------------------------------------


def test_unknown_option_lists_known_ones() -> None:
    """An unknown option is refused by name, and the message lists every known option."""
    error = refused(URL, "reconnect_time_wait", reconnect_time_wait=1)
    message = str(error)
    for known in natsclient.OPTIONS:
        assert known in message
    refused(URL, "bogus", bogus=1, name="n")


def test_config_error_is_a_graft_and_value_error() -> None:
    """NatsConfigError is exported, a GraftError and a ValueError."""
    assert issubclass(NatsConfigError, graft_tx.GraftError)
    assert issubclass(NatsConfigError, ValueError)


@pytest.mark.parametrize(
    "servers", ["", "   ", None, 4222, b"nats://a", [], [""], [URL, ""], [URL, 5], (URL,)]
)
def test_bad_servers_refused(servers: Any) -> None:
    """Empty, blank or non-string URLs, and an empty list, are refused."""
    with pytest.raises(NatsConfigError, match="URL"):
        connection_options(servers, {})


@pytest.mark.parametrize("key", ["reconnect_wait", "connect_timeout", "ping_interval"])
@pytest.mark.parametrize("value", [0, 0.0, -1, -0.5, True, False, "2", [2]])
def test_bad_seconds_refused(key: str, value: object) -> None:
    """Seconds that are not positive numbers, or are bools, are refused by option name."""
    refused(URL, key, **{key: value})


@pytest.mark.parametrize("key", ["reconnect_wait", "connect_timeout", "ping_interval"])
def test_nan_seconds_refused(key: str) -> None:
    """NaN is not a positive number of seconds and is refused."""
    refused(URL, key, **{key: float("nan")})


@pytest.mark.parametrize("key", ["max_reconnect_attempts", "max_outstanding_pings"])
@pytest.mark.parametrize("value", [True, 1.5, "3"])
def test_bad_counts_refused(key: str, value: object) -> None:
    """Counts that are not whole numbers (or are bools) are refused by option name."""
    refused(URL, key, **{key: value})


@pytest.mark.parametrize(
    "key",
    [
        "name",
        "user",
        "password",
        "token",
        "credentials",
        "nkey_seed",
        "tls_hostname",
        "tls_ca",
        "tls_cert",
        "tls_key",
    ],
)
@pytest.mark.parametrize("value", ["", 5, b"x"])
def test_bad_strings_refused(key: str, value: object) -> None:
    """String and file options that are empty or not str are refused by option name."""
    refused(URL, key, **{key: value})


def test_tls_key_without_cert_refused(tmp_path: Path) -> None:
    """A client key without a client certificate is refused."""
    key = tmp_path / "client.key"
    key.write_text("unused")
    refused(URL, "tls_key.*tls_cert", tls_key=str(key))


@pytest.mark.parametrize("value", ["/etc/ssl/ca.pem", True, object()])
def test_tls_must_be_an_ssl_context(value: object) -> None:
    """tls must be an ssl.SSLContext."""
    refused(URL, "tls.*SSLContext", tls=value)


@pytest.mark.parametrize("key", ["tls_ca", "tls_cert", "tls_key"])
def test_tls_context_with_tls_files_refused(key: str) -> None:
    """tls together with a TLS file option is refused, naming both ways."""
    options: dict[str, Any] = {"tls": ssl.create_default_context(), key: "/x.pem"}
    if key == "tls_key":
        options["tls_cert"] = "/y.pem"
    with pytest.raises(NatsConfigError, match=key) as info:
        connection_options(URL, options)
    assert "SSLContext" in str(info.value)


@pytest.mark.parametrize("key", ["tls_ca", "tls_cert"])
def test_missing_tls_file_refused(tmp_path: Path, key: str) -> None:
    """A TLS file that cannot be read is refused, saying which option or file."""
    missing = tmp_path / "missing.pem"
    with pytest.raises(NatsConfigError) as info:
        connection_options(URL, {key: str(missing)})
    message = str(info.value)
    assert key in message or str(missing) in message, message


def test_tls_file_that_is_not_pem_refused(tmp_path: Path) -> None:
    """A TLS file with garbage in it is refused as a config error, not an ssl.SSLError."""
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(NatsConfigError):
        connection_options(URL, {"tls_ca": str(garbage)})
    with pytest.raises(NatsConfigError):
        connection_options(URL, {"tls_cert": str(garbage)})


def test_natsrpc_checks_options_at_construction() -> None:
    """NatsRpc refuses bad options when it is built, before any connection."""
    with pytest.raises(NatsConfigError, match="bogus"):
        NatsRpc(URL, bogus=1)
    with pytest.raises(NatsConfigError, match="reconnect_wait"):
        NatsRpc(URL, reconnect_wait=0)
    with pytest.raises(NatsConfigError, match="URL"):
        NatsRpc([])
    with pytest.raises(NatsConfigError, match="bogus"):
        graft_tx.connect_nats(URL, reactor=Clock(), bogus=1)


# -- TLS files -------------------------------------------------------------------

trustme = pytest.importorskip("trustme")


def _handshake(client: ssl.SSLContext, server: ssl.SSLContext, hostname: str) -> ssl.SSLObject:
    """Run a TLS handshake in memory; the server's SSLObject once done."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    c = client.wrap_bio(c_in, c_out, server_hostname=hostname)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    done = {c: False, s: False}
    for _ in range(20):
        for side in (c, s):
            if not done[side]:
                try:
                    side.do_handshake()
                    done[side] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            return s
    raise AssertionError("the handshake did not finish")


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Any]:
    """A CA, a server certificate for localhost and a client certificate, as files."""
    ca = trustme.CA()
    server = ca.issue_cert("localhost")
    client = ca.issue_cert("node-1.example.org")
    paths = {
        "ca_file": tmp_path / "ca.pem",
        "cert": tmp_path / "client.pem",
        "key": tmp_path / "client.key",
        "both": tmp_path / "client-and-key.pem",
    }
    ca.cert_pem.write_to_path(str(paths["ca_file"]))
    client.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    client.private_key_pem.write_to_path(str(paths["key"]))
    client.private_key_and_cert_chain_pem.write_to_path(str(paths["both"]))
    return {"ca": ca, "server": server, **paths}


def _server_context(pki: dict[str, Any], *, client_cert: bool) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    pki["server"].configure_cert(context)
    if client_cert:
        pki["ca"].configure_trust(context)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def test_tls_ca_builds_a_verifying_context(pki: dict[str, Any]) -> None:
    """tls_ca gives an SSLContext that trusts that CA, checks host names, and completes TLS."""
    kwargs = connection_options(URL, {"tls_ca": str(pki["ca_file"])})
    context = kwargs["tls"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    _handshake(context, _server_context(pki, client_cert=False), "localhost")


def test_tls_ca_is_the_only_trust(pki: dict[str, Any]) -> None:
    """With tls_ca, a server certificate from another CA is refused."""
    other = trustme.CA().issue_cert("localhost")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    other.configure_cert(server)
    context = connection_options(URL, {"tls_ca": str(pki["ca_file"])})["tls"]
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(context, server, "localhost")


def test_tls_cert_and_key_are_presented(pki: dict[str, Any]) -> None:
    """tls_cert and tls_key make the client present its certificate to the server."""
    options = {
        "tls_ca": str(pki["ca_file"]),
        "tls_cert": str(pki["cert"]),
        "tls_key": str(pki["key"]),
    }
    context = connection_options(URL, options)["tls"]
    server = _handshake(context, _server_context(pki, client_cert=True), "localhost")
    peer = server.getpeercert()
    assert peer is not None
    assert ("DNS", "node-1.example.org") in peer["subjectAltName"]


def test_tls_cert_with_its_key_in_one_file(pki: dict[str, Any]) -> None:
    """tls_cert alone may hold both the certificate and its key."""
    options = {"tls_ca": str(pki["ca_file"]), "tls_cert": str(pki["both"])}
    context = connection_options(URL, options)["tls"]
    server = _handshake(context, _server_context(pki, client_cert=True), "localhost")
    assert server.getpeercert()


def test_tls_key_that_does_not_match_refused(pki: dict[str, Any], tmp_path: Path) -> None:
    """A client key that does not belong to the certificate is refused."""
    stranger = tmp_path / "stranger.key"
    pki["ca"].issue_cert("other").private_key_pem.write_to_path(str(stranger))
    with pytest.raises(NatsConfigError):
        connection_options(URL, {"tls_cert": str(pki["cert"]), "tls_key": str(stranger)})


# -- subject tokens --------------------------------------------------------------


@pytest.mark.parametrize("value", ["node-1", "a_b", "Node:7", "x@y", "ü-日本", "0", "a/b", "a|b"])
def test_check_token_accepts_names(value: str) -> None:
    """Names without '.', '*', '>' or white space are accepted."""
    check_token("node id", value)


def test_check_token_refuses_empty() -> None:
    """An empty name is refused, saying what it is."""
    with pytest.raises(SubjectError, match=r"cluster name.*empty"):
        check_token("cluster name", "")


@pytest.mark.parametrize(
    ("value", "bad"),
    [
        (".", "."),
        ("a.b", "."),
        ("*", "*"),
        ("node*", "*"),
        (">", ">"),
        (">x", ">"),
        ("a b", " "),
        ("a\tb", "\t"),
        ("a\nb", "\n"),
        ("a\r", "\r"),
        ("a\u00a0b", "\u00a0"),
        ("\x00", "\x00"),
    ],
)
def test_check_token_refuses_subject_characters(value: str, bad: str) -> None:
    """Names with '.', '*', '>', white space or control characters are refused, naming them."""
    with pytest.raises(SubjectError) as info:
        check_token("node id", value)
    message = str(info.value)
    assert repr(bad) in message
    assert "node id" in message
    assert repr(value) in message


def test_check_token_names_every_bad_character() -> None:
    """All the offending characters are listed, once each."""
    with pytest.raises(SubjectError) as info:
        check_token("cluster name", "a.b.c*d e")
    message = str(info.value)
    for bad in (".", "*", " "):
        assert repr(bad) in message
    assert message.count("'.'") == 2  # in the list of bad ones, and in the explanation


def test_subject_error_is_exported() -> None:
    """SubjectError is exported, a GraftError and a ValueError."""
    assert graft_tx.SubjectError is SubjectError
    assert issubclass(SubjectError, graft_tx.GraftError)
    assert issubclass(SubjectError, ValueError)


def test_subjects_are_go_graft_ones() -> None:
    """Heartbeats and vote requests go to the cluster, vote responses to the candidate."""
    assert heartbeat_subject("prod") == "graft.prod.heartbeat"
    assert vote_request_subject("prod") == "graft.prod.vote_request"
    assert vote_response_subject("node-3") == "graft.node-3.vote_response"


class FakeNode:
    """Just what NatsRpc.init reads of a node."""

    def __init__(self, cluster: str, node_id: str) -> None:
        self.id = node_id
        self.cluster_info = ClusterInfo(cluster, 3)


@pytest.mark.parametrize(
    ("cluster", "node_id"), [("a.b", "n1"), ("c", "n 1"), ("", "n"), ("c", "")]
)
def test_natsrpc_init_refuses_bad_names(cluster: str, node_id: str) -> None:
    """A node whose cluster name or id would break a subject is refused when it starts."""
    rpc = NatsRpc(URL, reactor=MemoryReactorClock())
    with pytest.raises(SubjectError):
        rpc.init(FakeNode(cluster, node_id))  # type: ignore[arg-type]
    assert rpc.connection is None


# -- the reactor -----------------------------------------------------------------


def test_asyncio_loop_under_the_asyncio_reactor() -> None:
    """Under Twisted's asyncio reactor, asyncio_loop gives the loop the reactor runs on."""
    from twisted.internet import reactor

    loop = asyncio_loop()
    assert isinstance(loop, asyncio.AbstractEventLoop)
    assert loop is asyncio_loop(reactor)
    assert loop is reactor._asyncioEventloop  # type: ignore[attr-defined]


def _check_refused(reactor: object) -> None:
    with pytest.raises(NatsReactorError) as info:
        asyncio_loop(reactor)
    message = str(info.value)
    assert "asyncio" in message
    assert "twistd --reactor=asyncio" in message
    assert type(reactor).__name__ in message


@pytest.mark.parametrize("make", [Clock, MemoryReactorClock], ids=lambda m: m.__name__)
def test_asyncio_loop_refuses_other_reactors(make: type) -> None:
    """Another reactor object is refused with an error saying how to get the asyncio one."""
    _check_refused(make())


def test_asyncio_loop_refuses_select_reactor() -> None:
    """A SelectReactor (made, not installed) is refused the same way."""
    from twisted.internet.selectreactor import SelectReactor

    reactor = SelectReactor()  # type: ignore[no-untyped-call]
    try:
        _check_refused(reactor)
    finally:
        reactor.removeReader(reactor.waker)  # type: ignore[no-untyped-call]
        reactor.waker.connectionLost(None)  # type: ignore[attr-defined]


def test_reactor_error_is_exported() -> None:
    """NatsReactorError is exported and a GraftError."""
    assert issubclass(graft_tx.NatsReactorError, graft_tx.GraftError)


def test_connect_nats_refuses_other_reactor_at_once() -> None:
    """connect_nats under another reactor raises at once instead of never connecting."""
    with pytest.raises(NatsReactorError):
        graft_tx.connect_nats(URL, reactor=Clock())


def test_natsrpc_init_refuses_other_reactor_at_once() -> None:
    """A NatsRpc started under another reactor raises at once and opens nothing."""
    rpc = NatsRpc(URL, reactor=Clock())
    with pytest.raises(NatsReactorError):
        rpc.init(FakeNode("c", "n1"))  # type: ignore[arg-type]
    assert rpc.connection is None


# -- IRpc ------------------------------------------------------------------------


class FakeClient:
    """Stands in for a nats-py Client; records close calls."""

    def __init__(self) -> None:
        self.is_connected = True
        self.is_closed = False
        self.connected_url: Any = urlparse("nats://127.0.0.1:4222")
        self.closes = 0

    async def close(self) -> None:
        self.closes += 1


def test_natsrpc_provides_irpc() -> None:
    """NatsRpc(url) provides IRpc, and building it connects nothing."""
    rpc = NatsRpc(URL)
    assert verifyObject(IRpc, rpc)
    assert rpc.connection is None


def test_shared_natsrpc_provides_irpc() -> None:
    """NatsRpc.from_connection(conn) provides IRpc and uses that connection."""
    connection = NatsConnection(FakeClient(), asyncio.new_event_loop())
    try:
        rpc = NatsRpc.from_connection(connection)
        assert verifyObject(IRpc, rpc)
        assert rpc.connection is connection
    finally:
        connection._loop.close()


def test_closing_shared_natsrpc_leaves_the_connection_open() -> None:
    """Closing a NatsRpc on a shared connection does not close that connection."""
    client = FakeClient()
    connection = NatsConnection(client, asyncio.new_event_loop())
    try:
        rpc = NatsRpc.from_connection(connection)
        fired: list[object] = []
        d = rpc.close()
        d.addBoth(fired.append)
        assert fired == [None]
        assert client.closes == 0
        assert not connection.is_closed
    finally:
        connection._loop.close()


def test_connection_reports_client_state() -> None:
    """NatsConnection reports the client's URL, connected and closed state."""
    client = FakeClient()
    connection = NatsConnection(client, asyncio.new_event_loop())
    try:
        assert connection.client is client
        assert connection.connected_url == "nats://127.0.0.1:4222"
        assert connection.is_connected and not connection.is_closed
        client.connected_url = None
        client.is_connected = False
        assert connection.connected_url == ""
        assert not connection.is_connected
        client.is_closed = True
        assert connection.is_closed
    finally:
        connection._loop.close()
