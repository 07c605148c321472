"""Logging bad input from outside without letting it flood the log."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger, LogLevel

# Longest text from a peer that a log line quotes.
QUOTE_LIMIT = 200


def escape(text: object, limit: int = QUOTE_LIMIT) -> str:
    """C{text} as a log line may quote it: control and other unprintable
    characters escaped, cut to C{limit} characters."""
    text = str(text)
    cut = text[:limit]
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in cut)
    return shown + ("..." if len(text) > limit else "")


@dataclass
class _Budget:
    window_start: float = float("-inf")
    in_window: int = 0
    suppressed: int = 0


class RateLimitedLog:
    """Logs at most C{burst} warnings of each kind per C{period} seconds, then counts.

    A kind is a warning's format: one kind of noise cannot use up the
    budget of another and hide it. The first warning after a kind's period
    ended, of whatever kind, is preceded by how many of that kind were held
    back. C{dropped} counts every warning, logged or not.
    """

    def __init__(
        self, log: Logger, clock: IReactorTime, *, burst: int = 10, period: float = 60.0
    ) -> None:
        self._log = log
        self._clock = clock
        self._burst = burst
        self._period = period
        # Keyed by kinds that graft_tx names (never by text from outside):
        # as many as it has.
        self._budgets: dict[str, _Budget] = {}
        self.dropped = 0

    def warn(self, format: str, key: str = "", **fields: Any) -> None:
        """Log, or count, a warning of kind C{key} (default: its format)."""
        self.emit(LogLevel.warn, format, key, **fields)

    def emit(self, level: LogLevel, format: str, key: str = "", **fields: Any) -> None:
        """Log, or count, an event at C{level} of kind C{key} (default: its format)."""
        self.dropped += 1
        now = self._clock.seconds()
        # Held-back counts are told when any warning comes after their period.
        for kind, budget in self._budgets.items():
            if budget.suppressed and now - budget.window_start >= self._period:
                self._log.warn(
                    "{suppressed} similar warnings were not logged in the last {period}s ({kind})",
                    suppressed=budget.suppressed,
                    period=self._period,
                    kind=kind,
                )
                budget.suppressed = 0
        budget = self._budgets.setdefault(key or format, _Budget())
        if now - budget.window_start >= self._period:
            budget.window_start, budget.in_window = now, 0
        if budget.in_window < self._burst:
            budget.in_window += 1
            self._log.emit(level, format, **fields)
        else:
            budget.suppressed += 1
