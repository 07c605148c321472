"""Helpers for the tests that run on the real reactor (real servers, real sockets)."""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.task import deferLater


def _reactor():  # type: ignore[no-untyped-def]
    from twisted.internet import reactor

    return reactor


async def sleep(seconds: float) -> None:
    await deferLater(_reactor(), seconds, lambda: None)


async def wait_until(
    predicate: Callable[[], bool], timeout: float = 10.0, what: str = "the condition"
) -> float:
    """Poll C{predicate} until it holds; return how long that took, in seconds.

    @raise AssertionError: it did not hold within C{timeout} seconds.
    """
    reactor = _reactor()
    start = reactor.seconds()
    while not predicate():
        if reactor.seconds() - start > timeout:
            raise AssertionError(f"{what} did not hold within {timeout}s")
        await sleep(0.02)
    return float(reactor.seconds() - start)
