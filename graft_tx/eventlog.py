"""C{--event-log}: the node's own log events as JSON lines, for tools to read.

Each line is one of Twisted's JSON log events (C{eventAsJSON}), carrying
C{log_time} (wall-clock seconds) and the event's named fields, such as
C{event="state_changed"} or C{event="leader_known"}. Benchmarks and the
chaos suite read these to learn when each node changed its mind, to the
millisecond, without polling.

The file is created readable and writable by its owner only (0600), and
never opened through a symbolic link, so that a link planted at its path
cannot make the node append to another file.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from constantly import NamedConstant  # type: ignore[import-untyped]
from twisted.application.service import Service
from twisted.logger import (
    FilteringLogObserver,
    ILogFilterPredicate,
    ILogObserver,
    LogEvent,
    PredicateResult,
    globalLogPublisher,
    jsonFileLogObserver,
)
from zope.interface import implementer

from graft_tx.errors import GraftError

NAMESPACE = "graft_tx"
# Twisted's JSON log files put this before each record.
RECORD_SEPARATOR = "\x1e"
FILE_MODE = 0o600
_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


class EventLogError(GraftError):
    """The event log cannot be opened, or its path is a symbolic link."""


def open_event_log(path: str) -> IO[str]:
    """C{path} opened for appending text, created 0600, never through a symbolic link.

    @raise EventLogError: it cannot be opened, or it is a symbolic link.
    """
    try:
        # Non-blocking: a FIFO planted at the path fails here (no reader)
        # instead of hanging the start.
        fd = os.open(path, _FLAGS | os.O_NONBLOCK, FILE_MODE)
    except OSError as e:
        if os.path.islink(path):
            raise EventLogError(
                f"cannot open event log {path!r}: it is a symbolic link, and graft_tx does not "
                "follow links for its event log (give the real file's path)"
            ) from e
        raise EventLogError(f"cannot open event log {path!r}: {e.strerror}") from e
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise EventLogError(f"cannot open event log {path!r}: it is not a regular file")
    os.set_blocking(fd, True)
    # Line-buffered: each event reaches the file before the next one, so a
    # SIGKILL loses at most the line being written.
    return os.fdopen(fd, "a", buffering=1, encoding="utf-8")


@implementer(ILogFilterPredicate)
class _Ours:
    def __call__(self, event: LogEvent) -> NamedConstant:
        namespace = str(event.get("log_namespace", ""))
        ours = namespace == NAMESPACE or namespace.startswith(NAMESPACE + ".")
        return PredicateResult.yes if ours else PredicateResult.no


class EventLogService(Service):
    """Appends graft_tx's log events to a file while the service runs."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._file: IO[str] | None = None
        self._observer: ILogObserver | None = None

    def startService(self) -> None:
        self._file = open_event_log(self.path)
        self._observer = FilteringLogObserver(jsonFileLogObserver(self._file), [_Ours()])
        globalLogPublisher.addObserver(self._observer)
        super().startService()  # type: ignore[no-untyped-call]

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]
        if self._observer is not None:
            globalLogPublisher.removeObserver(self._observer)
            self._observer = None
        if self._file is not None:
            self._file.close()
            self._file = None


def read_events(path: str | Path) -> Iterator[dict[str, Any]]:
    """The complete events in an event log; a torn last record is skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return
    for record in text.split(RECORD_SEPARATOR):
        if not record.endswith("\n"):
            continue
        try:
            event = json.loads(record)
        except ValueError:
            continue
        if isinstance(event, dict):
            yield event
