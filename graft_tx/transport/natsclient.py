"""A Twisted face for nats-py: connect, publish, subscribe, close.

nats-py is an asyncio library. It runs inside Twisted only on Twisted's
asyncio reactor, where the reactor and asyncio share one event loop; under
any other reactor its coroutines are never run, so it silently never
connects. Every entry point here checks the reactor first and says what to
do. Results come back as Deferreds, and subscription callbacks are plain
callables called on the reactor thread.
"""

from __future__ import annotations

import asyncio
import math
import os
import ssl
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from graft_tx.errors import GraftError
from graft_tx.ratelimit import RateLimitedLog

T = TypeVar("T")

# Reconnect forever, retrying each server at most every 2 seconds, so a
# cluster is back within a few election timeouts of its server.
DEFAULT_RECONNECT_WAIT = 2.0
DEFAULT_CONNECT_TIMEOUT = 2.0


class NatsReactorError(GraftError):
    """NATS was asked for under a reactor that cannot run nats-py."""


class NatsConfigError(GraftError, ValueError):
    """A NATS connection option is unknown or has a wrong value."""


class NatsClosedError(GraftError):
    """The NATS connection or transport was closed."""


def asyncio_loop(reactor: object | None = None) -> asyncio.AbstractEventLoop:
    """The asyncio loop under C{reactor} (default: the global reactor).

    @raise NatsReactorError: the reactor is not Twisted's asyncio reactor.
    """
    if reactor is None:
        from twisted.internet import reactor as installed

        reactor = installed
    from twisted.internet.asyncioreactor import AsyncioSelectorReactor

    if not isinstance(reactor, AsyncioSelectorReactor):
        raise NatsReactorError(
            f"NATS needs Twisted's asyncio reactor, but the reactor is "
            f"{type(reactor).__module__}.{type(reactor).__name__}. Install it before "
            "anything imports twisted.internet.reactor ('from twisted.internet import "
            "asyncioreactor; asyncioreactor.install()'), or run 'twistd --reactor=asyncio'."
        )
    return reactor._asyncioEventloop


_STRINGS = ("name", "user", "password", "token", "credentials", "nkey_seed", "tls_hostname")
_FILES = ("tls_ca", "tls_cert", "tls_key")
_SECONDS = ("reconnect_wait", "connect_timeout", "ping_interval")
_COUNTS = ("max_reconnect_attempts", "max_outstanding_pings")
_FLAGS = ("dont_randomize",)
OPTIONS = (*_STRINGS, *_FILES, *_SECONDS, *_COUNTS, *_FLAGS, "tls")


def connection_options(servers: str | list[str], options: dict[str, Any]) -> dict[str, Any]:
    """Check the options of L{connect_nats} and turn them into nats-py's.

    @raise NatsConfigError: an option is unknown or its value is wrong.
    """
    urls = [servers] if isinstance(servers, str) else servers
    if not isinstance(urls, list) or not urls:
        raise NatsConfigError(f"servers must be a URL or a non-empty list of URLs, not {servers!r}")
    for url in urls:
        if not isinstance(url, str) or not url.strip():
            raise NatsConfigError(f"a NATS server URL must be a non-empty string, not {url!r}")
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise NatsConfigError(
            f"unknown NATS option(s) {', '.join(unknown)}; known: {', '.join(sorted(OPTIONS))}"
        )
    for key in (*_STRINGS, *_FILES):
        value = options.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            raise NatsConfigError(f"NATS option {key} must be a non-empty string, not {value!r}")
    for key in _SECONDS:
        value = options.get(key)
        if value is not None and (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or value <= 0
        ):
            raise NatsConfigError(f"NATS option {key} must be a positive number, not {value!r}")
    for key in _COUNTS:
        value = options.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise NatsConfigError(f"NATS option {key} must be a whole number, not {value!r}")
    for key in _FLAGS:
        value = options.get(key)
        if value is not None and not isinstance(value, bool):
            raise NatsConfigError(f"NATS option {key} must be True or False, not {value!r}")
    if options.get("tls_key") and not options.get("tls_cert"):
        raise NatsConfigError("NATS option tls_key needs tls_cert (the client certificate)")
    if options.get("tls") is not None and not isinstance(options["tls"], ssl.SSLContext):
        raise NatsConfigError(f"NATS option tls must be an ssl.SSLContext, not {options['tls']!r}")
    if options.get("tls") is not None and any(options.get(key) for key in _FILES):
        raise NatsConfigError("give either tls (an SSLContext) or tls_ca/tls_cert/tls_key")

    # None means "not set", as if the option were left out.
    options = {key: value for key, value in options.items() if value is not None}
    kwargs: dict[str, Any] = {
        "servers": urls,
        "allow_reconnect": True,
        "max_reconnect_attempts": options.get("max_reconnect_attempts", -1),
        "reconnect_time_wait": options.get("reconnect_wait", DEFAULT_RECONNECT_WAIT),
        "connect_timeout": options.get("connect_timeout", DEFAULT_CONNECT_TIMEOUT),
    }
    renamed = {"credentials": "user_credentials", "nkey_seed": "nkeys_seed"}
    for key in ("name", "user", "password", "token", "credentials", "nkey_seed", "tls_hostname"):
        if options.get(key) is not None:
            kwargs[renamed.get(key, key)] = options[key]
    for key in ("ping_interval", "max_outstanding_pings", "dont_randomize"):
        if options.get(key) is not None:
            kwargs[key] = options[key]
    if options.get("tls") is not None:
        kwargs["tls"] = options["tls"]
    elif any(options.get(key) for key in _FILES):
        kwargs["tls"] = _tls_context(options)
    return kwargs


def _tls_context(options: dict[str, Any]) -> ssl.SSLContext:
    for key in _FILES:
        path = options.get(key)
        if path is not None and not os.access(path, os.R_OK):
            raise NatsConfigError(f"NATS option {key}: cannot read the file {path!r}")
    try:
        context = ssl.create_default_context(cafile=options.get("tls_ca"))
        if options.get("tls_cert"):
            context.load_cert_chain(options["tls_cert"], options.get("tls_key"))
    except (OSError, ssl.SSLError) as e:
        raise NatsConfigError(f"cannot load the NATS TLS files: {e}") from e
    return context


@dataclass(frozen=True)
class NatsMessage:
    """One message received on a subscription."""

    subject: str
    data: bytes
    reply: str


class NatsSubscription:
    """An active subscription; L{unsubscribe} ends it."""

    def __init__(self, connection: NatsConnection, subscription: Any) -> None:
        self._connection = connection
        self._subscription = subscription
        self.active = True

    def unsubscribe(self) -> Deferred[None]:
        """Stop receiving; fires once done (at once if the connection is closed)."""
        if not self.active or self._connection.is_closed:
            self.active = False
            return succeed(None)
        self.active = False
        d = self._connection._run(self._subscription.unsubscribe())
        # A connection closing meanwhile has unsubscribed everything.
        d.addErrback(lambda f: None)
        return d


class NatsConnection:
    """A connected nats-py client, driven from Twisted. Build it with L{connect_nats}."""

    log = Logger()

    def __init__(self, client: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._client = client
        self._loop = loop
        self._listeners: list[Callable[[], None]] = []
        self._closing: Deferred[None] | None = None
        self._close_waiters: list[Deferred[None]] = []
        self._closed = False
        self._outbox: list[tuple[str, bytes, str, Deferred[None]]] = []
        self._publisher: asyncio.Task[None] | None = None
        self._flush_waiters: list[Deferred[None]] | None = None

    @property
    def client(self) -> Any:
        """The nats-py client underneath."""
        return self._client

    @property
    def is_connected(self) -> bool:
        return bool(self._client.is_connected)

    @property
    def is_closed(self) -> bool:
        return self._closing is not None or bool(self._client.is_closed)

    @property
    def connected_url(self) -> str:
        url = self._client.connected_url
        return "" if url is None else f"{url.scheme}://{url.netloc}"

    def on_connected(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call C{listener} whenever the connection comes back after a loss.

        @return: a callable that removes the listener.
        """
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def publish(self, subject: str, payload: bytes, reply: str = "") -> Deferred[None]:
        """Publish C{payload} on C{subject}; fires once handed to nats-py.

        Messages go out in the order given. One asyncio task hands all that
        were published in a turn to nats-py, instead of a task each: with
        thousands of nodes on one connection, tasks were most of the cost.
        """
        done: Deferred[None] = Deferred()
        self._outbox.append((subject, payload, reply, done))
        if self._publisher is None:
            self._publisher = self._loop.create_task(self._publish_outbox())
        return done

    async def _publish_outbox(self) -> None:
        try:
            while self._outbox:
                batch, self._outbox = self._outbox, []
                for subject, payload, reply, done in batch:
                    try:
                        await self._client.publish(subject, payload, reply=reply)
                    except Exception as e:
                        done.errback(Failure(e))  # type: ignore[no-untyped-call]
                    else:
                        done.callback(None)
        finally:
            self._publisher = None

    def subscribe(
        self, subject: str, callback: Callable[[NatsMessage], object]
    ) -> Deferred[NatsSubscription]:
        """Call C{callback} with each message on C{subject}, on the reactor thread.

        An exception from C{callback} is logged; it never reaches nats-py.
        """

        async def deliver(msg: Any) -> None:
            try:
                callback(NatsMessage(msg.subject, msg.data, msg.reply or ""))
            except Exception:
                self.log.failure("a NATS subscriber of {subject} raised", subject=subject)

        d = self._run(self._client.subscribe(subject, cb=deliver))
        return d.addCallback(lambda sub: NatsSubscription(self, sub))

    def flush(self, timeout: float = 2.0) -> Deferred[None]:
        """Fires once the server has seen everything sent so far.

        Flushes asked for before the next one starts share it: thousands of
        nodes subscribing on one connection make one round trip, not
        thousands (under load, nats-py's many concurrent flushes time out
        and break its reader).
        """
        done: Deferred[None] = Deferred()
        if self._flush_waiters is None:
            self._flush_waiters = []
            self._loop.call_soon(self._start_flush, timeout)
        self._flush_waiters.append(done)
        return done

    def _start_flush(self, timeout: float) -> None:
        waiters, self._flush_waiters = self._flush_waiters or [], None
        # Everything published so far goes out before the flush's PING.
        d = self._run(self._after_outbox(timeout))
        d.addBoth(self._release_flush_waiters, waiters)

    @staticmethod
    def _release_flush_waiters(outcome: object, waiters: list[Deferred[None]]) -> None:
        for waiter in waiters:
            if isinstance(outcome, Failure):
                waiter.errback(outcome)
            else:
                waiter.callback(None)

    async def _after_outbox(self, timeout: float) -> None:
        if self._publisher is not None:
            await asyncio.shield(self._publisher)
        await self._client.flush(timeout=timeout)

    def close(self) -> Deferred[None]:
        """Close the connection and stop reconnecting; idempotent, never fails."""
        if self._closing is None:
            self._closing = self._run(self._client.close())
            self._closing.addErrback(self._log_close_failure)
            self._closing.addCallback(self._release_close_waiters)
        if self._closed:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._close_waiters.append(waiter)
        return waiter

    def _release_close_waiters(self, _: object) -> None:
        self._closed = True
        waiters, self._close_waiters = self._close_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _log_close_failure(self, failure: Failure) -> None:
        self.log.failure("closing the NATS connection failed", failure)

    def _run(self, coro: Coroutine[Any, Any, T]) -> Deferred[T]:
        return Deferred.fromFuture(self._loop.create_task(coro))

    def _reconnected(self) -> None:
        self.log.info("NATS connection back, to {url}", url=self.connected_url)
        for listener in list(self._listeners):
            try:
                listener()
            except Exception:
                self.log.failure("a NATS connection listener raised")


def connect_nats(
    servers: str | list[str] = "nats://127.0.0.1:4222",
    *,
    reactor: object | None = None,
    **options: Any,
) -> Deferred[NatsConnection]:
    """Connect to NATS; fires with a L{NatsConnection} that many nodes can share.

    Options: C{name}; C{user} and C{password}, C{token}, C{credentials} (a
    .creds file) or C{nkey_seed} (a seed file); C{tls} (an SSLContext) or
    C{tls_ca}, C{tls_cert}, C{tls_key} (files) and C{tls_hostname};
    C{reconnect_wait} (seconds between tries of one server, default 2),
    C{max_reconnect_attempts} (default -1: forever, also for the first
    connection), C{connect_timeout}, C{ping_interval},
    C{max_outstanding_pings}, C{dont_randomize} (try the servers in the
    order given rather than shuffled).

    Cancelling the Deferred stops the attempts.

    @raise NatsReactorError: the reactor cannot run nats-py.
    @raise NatsConfigError: an option is wrong.
    """
    kwargs = connection_options(servers, options)
    if reactor is None:
        from twisted.internet import reactor as installed

        reactor = installed
    loop = asyncio_loop(reactor)
    from nats.aio.client import Client

    client = Client()
    connection = NatsConnection(client, loop)
    warnings = RateLimitedLog(NatsConnection.log, reactor, burst=5, period=30.0)  # type: ignore[arg-type]

    async def error_cb(error: Exception) -> None:
        warnings.warn("NATS: {error}", error=str(error) or type(error).__name__)

    async def disconnected_cb() -> None:
        if not connection.is_closed:
            NatsConnection.log.info("NATS connection lost; reconnecting")

    async def reconnected_cb() -> None:
        connection._reconnected()

    connecting = loop.create_task(
        client.connect(
            error_cb=error_cb,
            disconnected_cb=disconnected_cb,
            reconnected_cb=reconnected_cb,
            **kwargs,
        )
    )

    def connected(_: object) -> NatsConnection:
        NatsConnection.log.info("NATS connected to {url}", url=connection.connected_url)
        return connection

    def failed(failure: Failure) -> Failure:
        # Stop what nats-py started (its reader and flusher) for good.
        loop.create_task(client.close())
        return failure

    d: Deferred[None] = Deferred.fromFuture(connecting)
    return d.addCallbacks(connected, failed)
