"""--event-log: graft_tx's own log events as JSON lines, and reading them back."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from twisted.application.service import MultiService
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.python import usage

from graft_tx import ClusterInfo, GraftService, QueueHandler
from graft_tx.eventlog import RECORD_SEPARATOR, EventLogError, EventLogService, read_events
from graft_tx.statefile import PersistentState, StateFile
from graft_tx.tap import Options, makeService
from graft_tx.testing import MemoryNetwork

ours = Logger(namespace="graft_tx.node.Node")
theirs = Logger(namespace="twisted.web.server.Site")
lookalike = Logger(namespace="graft_txt.other")


def test_writes_only_graft_tx_events_with_their_fields_and_times(tmp_path: Path) -> None:
    """Events of graft_tx's namespaces are written with their fields and log_time; others not."""
    path = tmp_path / "events"
    service = EventLogService(str(path))
    service.startService()
    try:
        ours.info("node {node} leads", event="state_changed", node="n1", term=7)
        theirs.info("a web request")
        lookalike.info("not ours either")
    finally:
        service.stopService()
    events = list(read_events(path))
    assert [(e["event"], e["node"], e["term"]) for e in events] == [("state_changed", "n1", 7)]
    assert isinstance(events[0]["log_time"], float)


def test_nothing_is_written_after_stopping(tmp_path: Path) -> None:
    """stopService removes the observer and closes the file."""
    path = tmp_path / "events"
    service = EventLogService(str(path))
    service.startService()
    ours.info("before", event="one")
    service.stopService()
    ours.info("after", event="two")
    assert [e["event"] for e in read_events(path)] == ["one"]


def test_appends_across_restarts(tmp_path: Path) -> None:
    """A restarted node appends to the same log: earlier events are kept."""
    path = tmp_path / "events"
    for name in ("first", "second"):
        service = EventLogService(str(path))
        service.startService()
        ours.info(name, event=name)
        service.stopService()
    assert [e["event"] for e in read_events(path)] == ["first", "second"]


def test_a_torn_last_record_and_garbage_are_skipped(tmp_path: Path) -> None:
    """A record cut short by SIGKILL, or one that is not JSON, is skipped; the rest is read."""
    path = tmp_path / "events"
    path.write_text(
        RECORD_SEPARATOR + '{"event": "a", "log_time": 1.0}\n'
        + RECORD_SEPARATOR + "not json\n"
        + RECORD_SEPARATOR + "[1, 2]\n"
        + RECORD_SEPARATOR + '{"event": "b", "log_time": 2.0}\n'
        + RECORD_SEPARATOR + '{"event": "c", "log_ti'
    )  # fmt: skip
    assert [e["event"] for e in read_events(path)] == ["a", "b"]


def test_a_missing_log_reads_as_empty(tmp_path: Path) -> None:
    """A node that never started has no log: no events, no error."""
    assert list(read_events(tmp_path / "absent")) == []


def test_option_refuses_a_missing_directory(tmp_path: Path) -> None:
    """--event-log in a directory that does not exist is a one-line usage error."""
    options = Options()
    with pytest.raises(usage.UsageError, match=r"--event-log: the directory .* does not exist"):
        options.parseOptions(
            ["--cluster", "c", "--listen", "tcp:7001", "--peer", "tcp:host=127.0.0.1:port=7002",
             "--state-file", str(tmp_path / "s"), "--event-log", str(tmp_path / "no" / "e")]
        )  # fmt: skip


def test_make_service_starts_the_event_log_first(tmp_path: Path) -> None:
    """The event log is the first child, so it stops last and records the others stopping."""
    options = Options()
    options.parseOptions(
        ["--cluster", "c", "--listen", "tcp:7001", "--peer", "tcp:host=127.0.0.1:port=7002",
         "--state-file", str(tmp_path / "s"), "--event-log", str(tmp_path / "e")]
    )  # fmt: skip
    top = makeService(options)
    assert isinstance(top, MultiService)
    first = next(iter(top))
    assert isinstance(first, EventLogService)
    assert first.path == str(tmp_path / "e")


def test_a_started_node_says_so_in_the_event_log(tmp_path: Path) -> None:
    """GraftService logs node_started with its id, cluster and stored term, so tools can
    tell when a node came up even before its transport connects."""
    clock = Clock()
    network = MemoryNetwork(clock)
    path = tmp_path / "events"
    events = EventLogService(str(path))
    events.startService()
    try:
        StateFile(str(tmp_path / "state")).save(PersistentState(4, ""))
        graft = GraftService(
            ClusterInfo("c", 3), QueueHandler(), network.rpc(), str(tmp_path / "state"),
            clock=clock, node_id="n1",
        )  # fmt: skip
        graft.startService()
        graft.stopService()
    finally:
        events.stopService()
    started = [e for e in read_events(path) if e.get("event") == "node_started"]
    assert [(e["node"], e["cluster"], e["term"]) for e in started] == [("n1", "c", 4)]


@pytest.mark.parametrize("dangling", [False, True], ids=["to a file", "dangling"])
def test_a_symlinked_log_is_refused_and_its_target_untouched(
    tmp_path: Path, dangling: bool
) -> None:
    """startService refuses a symlink at the event log's path; its target is neither written
    nor created."""
    target = tmp_path / "root-only"
    if not dangling:
        target.write_bytes(b"precious")
    path = tmp_path / "events"
    os.symlink(target, path)
    service = EventLogService(str(path))
    with pytest.raises(EventLogError, match="symbolic link") as caught:
        service.startService()
    assert str(path) in str(caught.value)
    assert not service.running
    ours.info("not written", event="one")
    if dangling:
        assert not os.path.lexists(target)
    else:
        assert target.read_bytes() == b"precious"


def test_a_new_log_is_private_whatever_the_umask(tmp_path: Path) -> None:
    """With umask 0, the event log is created 0600."""
    path = tmp_path / "events"
    previous = os.umask(0)
    try:
        service = EventLogService(str(path))
        service.startService()
        service.stopService()
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_option_refuses_a_symlinked_log(tmp_path: Path) -> None:
    """--event-log naming a symbolic link is a one-line usage error saying so."""
    os.symlink(tmp_path / "elsewhere", tmp_path / "e")
    with pytest.raises(usage.UsageError, match=r"--event-log: .* is a symbolic link") as caught:
        Options().parseOptions(
            ["--cluster", "c", "--listen", "tcp:7001", "--peer", "tcp:host=127.0.0.1:port=7002",
             "--state-file", str(tmp_path / "s"), "--event-log", str(tmp_path / "e")]
        )  # fmt: skip
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("reader", [False, True])
def test_a_fifo_at_the_log_path_is_refused_without_hanging(tmp_path: Path, reader: bool) -> None:
    """A FIFO planted at the event log's path is refused at once, with or without a
    reader on its other end, instead of blocking the start."""
    path = tmp_path / "events"
    os.mkfifo(path)
    held = os.open(path, os.O_RDONLY | os.O_NONBLOCK) if reader else None
    try:
        service = EventLogService(str(path))
        with pytest.raises(EventLogError, match="events"):
            service.startService()
        assert not service.running
    finally:
        if held is not None:
            os.close(held)
