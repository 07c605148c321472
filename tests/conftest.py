"""Fixtures shared by the whole suite.

Every test fails if anything was logged at error level or above, unless it
takes the C{logged_errors} fixture and so says that it expects (and checks)
such events: swallowed failures cannot hide.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from natsserver import NatsServer
from twisted.logger import LogEvent, LogLevel, formatEvent, globalLogPublisher


class LoggedErrors(list[LogEvent]):
    """The error events logged during one test."""

    def messages(self) -> list[str]:
        return [formatEvent(event) for event in self]


@pytest.fixture
def logged_errors() -> LoggedErrors:
    """Take this fixture in a test that expects errors to be logged."""
    return LoggedErrors()


@pytest.fixture(autouse=True)
def _fail_on_logged_errors(request: pytest.FixtureRequest) -> Iterator[None]:
    expected = "logged_errors" in request.fixturenames
    captured: LoggedErrors = (
        request.getfixturevalue("logged_errors") if expected else LoggedErrors()
    )

    def observe(event: LogEvent) -> None:
        if event.get("log_level", LogLevel.info) >= LogLevel.error:
            captured.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        yield
    finally:
        globalLogPublisher.removeObserver(observe)
    if captured and not expected:
        pytest.fail("unexpected errors logged:\n" + "\n".join(captured.messages()))


@pytest.fixture
def nats_server() -> Iterator[NatsServer]:
    """A nats-server on a free loopback port, stopped after the test whatever happens."""
    server = NatsServer()
    try:
        yield server.start()
    finally:
        server.close()


@pytest.fixture
def make_nats_server() -> Iterator[Callable[..., NatsServer]]:
    """Start nats-servers on demand; all are stopped after the test."""
    servers: list[NatsServer] = []

    def make(*args: str, port: int | None = None, start: bool = True) -> NatsServer:
        server = NatsServer(*args, port=port)
        servers.append(server)
        return server.start() if start else server

    try:
        yield make
    finally:
        for server in servers:
            server.close()


@pytest.fixture(autouse=True)
def _protocol_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """C{pytest.mark.protocol("graft")} runs a test with that protocol as the default.

    The core's tests of graft's algorithm run in "graft" mode, where the node
    behaves exactly as Go graft (with its bugs fixed); graft-tx features have
    their own tests.
    """
    marker = request.node.get_closest_marker("protocol")
    if marker is None:
        return
    import graft_tx.node
    import graft_tx.service

    mode = marker.args[0]
    monkeypatch.setitem(graft_tx.node.new.__kwdefaults__, "protocol", mode)
    monkeypatch.setitem(graft_tx.service.GraftService.__init__.__kwdefaults__, "protocol", mode)
