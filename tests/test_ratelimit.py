"""RateLimitedLog: bad input from outside is logged, but cannot flood the log."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock
from twisted.logger import LogEvent, Logger, LogLevel, formatEvent

from graft_tx.ratelimit import RateLimitedLog, escape


class Captured:
    """A RateLimitedLog on a Clock whose Logger records its events."""

    def __init__(self, *, burst: int = 3, period: float = 60.0, start: float = 0.0) -> None:
        self.events: list[LogEvent] = []
        self.clock = Clock()
        self.clock.advance(start)
        self.log = RateLimitedLog(
            Logger(namespace="test", observer=self.events.append),
            self.clock,
            burst=burst,
            period=period,
        )

    def warn(self, n: int = 1) -> None:
        for i in range(n):
            self.log.warn("bad message {n} from {peer}", n=i, peer="p")

    def texts(self) -> list[str]:
        return [formatEvent(event) for event in self.events]

    def summaries(self) -> list[LogEvent]:
        return [event for event in self.events if "suppressed" in event]


def test_at_most_burst_warnings_per_period() -> None:
    """Of many warnings in one period only the first `burst` are logged, at warn level."""
    captured = Captured(burst=3)
    captured.warn(10)
    assert captured.texts() == [
        "bad message 0 from p",
        "bad message 1 from p",
        "bad message 2 from p",
    ]
    assert {event["log_level"] for event in captured.events} == {LogLevel.warn}
    assert captured.log.dropped == 10


def test_fields_reach_the_logger() -> None:
    """A logged warning keeps its format and named fields for observers."""
    captured = Captured()
    captured.log.warn("dropped on {subject}: {error}", subject="graft.c.heartbeat", error="bad")
    [event] = captured.events
    assert event["log_format"] == "dropped on {subject}: {error}"
    assert (event["subject"], event["error"]) == ("graft.c.heartbeat", "bad")


def test_next_period_starts_with_a_summary() -> None:
    """The first warning of the next period is preceded by how many were not logged."""
    captured = Captured(burst=3, period=60.0)
    captured.warn(10)
    captured.clock.advance(60.0)
    captured.events.clear()
    captured.log.warn("after {n}", n=1)
    assert len(captured.events) == 2
    summary, warning = captured.events
    assert summary["suppressed"] == 7
    assert summary["log_level"] == LogLevel.warn
    assert "7 similar warnings were not logged" in formatEvent(summary)
    assert "60" in formatEvent(summary)
    assert formatEvent(warning) == "after 1"
    assert captured.log.dropped == 11


def test_still_limited_until_the_period_ends() -> None:
    """Just before the period ends warnings are still counted, not logged."""
    captured = Captured(burst=2, period=60.0)
    captured.warn(2)
    captured.clock.advance(59.9)
    captured.warn(3)
    assert len(captured.events) == 2
    assert captured.summaries() == []
    captured.clock.advance(0.1)
    captured.warn(1)
    assert [event["suppressed"] for event in captured.summaries()] == [3]
    assert len(captured.events) == 4


def test_period_starts_with_its_first_warning() -> None:
    """A period runs from the first warning after a quiet time, not from when the log was made."""
    captured = Captured(burst=1, period=60.0, start=1000.0)
    captured.clock.advance(45.0)
    captured.warn(1)  # opens a period until 1105
    captured.clock.advance(30.0)
    captured.warn(1)  # 1075: still inside it
    assert len(captured.events) == 1
    captured.clock.advance(30.0)
    captured.warn(1)  # 1105: a new period
    assert [event["suppressed"] for event in captured.summaries()] == [1]


def test_no_summary_when_nothing_was_suppressed() -> None:
    """Periods in which every warning was logged are followed by no summary."""
    captured = Captured(burst=3, period=10.0)
    for _ in range(5):
        captured.warn(3)
        captured.clock.advance(10.0)
    assert captured.summaries() == []
    assert len(captured.events) == 15
    assert captured.log.dropped == 15


def test_summary_is_given_once_and_counts_reset() -> None:
    """After a summary the count starts again; a later quiet period has no summary."""
    captured = Captured(burst=1, period=10.0)
    captured.warn(4)
    captured.clock.advance(10.0)
    captured.warn(1)
    captured.clock.advance(10.0)
    captured.warn(1)
    assert [event["suppressed"] for event in captured.summaries()] == [3]
    captured.warn(6)
    captured.clock.advance(10.0)
    captured.warn(1)
    assert [event["suppressed"] for event in captured.summaries()] == [3, 6]
    assert captured.log.dropped == 13


def test_summary_survives_a_long_silence() -> None:
    """Warnings held back are reported when the next one comes, however much later."""
    captured = Captured(burst=2, period=60.0)
    captured.warn(7)
    captured.clock.advance(3600.0)
    captured.warn(1)
    assert [event["suppressed"] for event in captured.summaries()] == [5]
    assert len(captured.events) == 4


@pytest.mark.parametrize("burst", [1, 5, 10])
def test_dropped_counts_every_warning(burst: int) -> None:
    """`dropped` counts every warning, logged or held back, across periods."""
    captured = Captured(burst=burst, period=5.0)
    assert captured.log.dropped == 0
    for _ in range(4):
        captured.warn(burst + 2)
        captured.clock.advance(5.0)
    assert captured.log.dropped == 4 * (burst + 2)
    logged = [event for event in captured.events if "suppressed" not in event]
    assert len(logged) == 4 * burst


def test_defaults_are_ten_per_minute() -> None:
    """Without burst and period, ten warnings a minute are logged."""
    events: list[LogEvent] = []
    clock = Clock()
    log = RateLimitedLog(Logger(observer=events.append), clock)
    for i in range(25):
        log.warn("w{i}", i=i)
    assert len(events) == 10
    clock.advance(59.0)
    log.warn("w{i}", i="late")
    assert len(events) == 10
    clock.advance(1.0)
    log.warn("next")
    assert [formatEvent(event) for event in events[10:]] == [
        "16 similar warnings were not logged in the last 60.0s (w{i})",
        "next",
    ]


def test_each_kind_has_its_own_budget() -> None:
    """A flood of one kind of warning does not hide the first warnings of another kind."""
    captured = Captured(burst=3)
    captured.warn(100)
    captured.log.warn("a real peer {peer} refused us", peer="n1")
    captured.log.warn("a real peer {peer} refused us", peer="n2")
    assert captured.texts()[3:] == ["a real peer n1 refused us", "a real peer n2 refused us"]
    assert captured.log.dropped == 102


def test_summaries_name_their_kind() -> None:
    """After the period, the next warning of any kind comes with each kind's held-back count."""
    captured = Captured(burst=1, period=10.0)
    captured.warn(4)
    for _ in range(3):
        captured.log.warn("other {x}", x=1)
    captured.clock.advance(10.0)
    captured.log.warn("third {x}", x=2)
    assert sorted((e["kind"], e["suppressed"]) for e in captured.summaries()) == [
        ("bad message {n} from {peer}", 3),
        ("other {x}", 2),
    ]
    assert captured.texts()[-1] == "third 2"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain words", "plain words"),
        ("bell\x07 and \x1b[31mred", "bell\\x07 and \\x1b[31mred"),
        ("new\nline\r", "new\\nline\\r"),
        ("é ü", "é ü"),
        ("x" * 300, "x" * 200 + "..."),
        (12, "12"),
    ],
)
def test_escape_shows_peer_text_safely(text: object, shown: str) -> None:
    """Text from peers reaches the log with control characters escaped and a bounded length."""
    assert escape(text) == shown
