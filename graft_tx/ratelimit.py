"""Logging bad input from outside without letting it flood the log."""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger


class RateLimitedLog:
    """Logs at most C{burst} warnings per C{period} seconds, then counts.

    When a new period starts after some were held back, the next warning
    says how many were. C{dropped} counts every warning, logged or not.
    """

    def __init__(
        self, log: Logger, clock: IReactorTime, *, burst: int = 10, period: float = 60.0
    ) -> None:
        self._log = log
        self._clock = clock
        self._burst = burst
        self._period = period
        self._window_start = float("-inf")
        self._in_window = 0
        self._suppressed = 0
        self.dropped = 0

    def warn(self, format: str, **fields: Any) -> None:
        self.dropped += 1
        now = self._clock.seconds()
        if now - self._window_start >= self._period:
            if self._suppressed:
                self._log.warn(
                    "{suppressed} similar warnings were not logged in the last {period}s",
                    suppressed=self._suppressed,
                    period=self._period,
                )
            self._window_start, self._in_window, self._suppressed = now, 0, 0
        if self._in_window < self._burst:
            self._in_window += 1
            self._log.warn(format, **fields)
        else:
            self._suppressed += 1
