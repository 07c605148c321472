"""Leadership hooks: real short processes on the real reactor, nodes on task.Clock."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from fakes import RecordingHandler, RecordingRpc
from realtime import wait_until
from twisted.internet.task import Clock
from twisted.logger import LogEvent, LogLevel, globalLogPublisher
from zope.interface.verify import verifyObject

from graft_tx import ClusterInfo, Heartbeat, State, StateChange, VoteResponse, new
from graft_tx.hooks import OUTPUT_LIMIT, Hook, HookCommands, HookHandler, HookRunner, command
from graft_tx.interfaces import IStateHandler
from graft_tx.node import Node

# Graft's algorithm as Go graft runs it; graft-tx features are tested on their own.
pytestmark = pytest.mark.protocol("graft")

GRAFT_VARS = (
    "GRAFT_CLUSTER",
    "GRAFT_NODE_ID",
    "GRAFT_STATE",
    "GRAFT_PREVIOUS_STATE",
    "GRAFT_TERM",
    "GRAFT_LEADER",
)


def reactor() -> Any:
    from twisted.internet import reactor

    return reactor


@contextmanager
def captured() -> Iterator[list[LogEvent]]:
    """Every log event emitted inside the block."""
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(events.append)


def sh(script: str) -> tuple[str, ...]:
    return ("/bin/sh", "-c", script)


class NodeHolder:
    """Lets a HookHandler read a node built after it."""

    node: Node | None = None

    def __call__(self) -> Node | None:
        return self.node


def make_node(
    tmp_path: Path, handler: HookHandler, holder: NodeHolder, size: int = 3, node_id: str = "n1"
) -> tuple[Clock, Node]:
    clock = Clock()
    holder.node = new(
        ClusterInfo("hm", size),
        handler,
        RecordingRpc(),
        str(tmp_path / f"{node_id}.state"),
        clock=clock,
        node_id=node_id,
    )
    return clock, holder.node


def campaign(clock: Clock, node: Node) -> None:
    """Advance the clock to the node's first election timeout (handlers are called too)."""
    while node.state is State.FOLLOWER:
        clock.advance(0.01)


def drive_through_leadership(clock: Clock, node: Node) -> None:
    """Follower -> Candidate (term 1) -> Leader (term 1) -> Follower of c (term 2).

    Each change is handed to the handler (clock.advance(0)) before the next one.
    """
    campaign(clock, node)
    assert node.state is State.CANDIDATE
    node.handle_vote_response(VoteResponse(node.current_term, True, "b"))
    assert node.state is State.LEADER
    clock.advance(0)
    node.handle_heartbeat(Heartbeat(2, "c"))
    assert node.state is State.FOLLOWER
    clock.advance(0)


def read_blocks(path: Path) -> list[dict[str, str]]:
    """Blocks of NAME=value lines separated by '---' lines."""
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line == "---":
            blocks.append(current)
            current = {}
        else:
            name, _, value = line.partition("=")
            current[name] = value
    return blocks


ENV_SCRIPT = "env | grep '^GRAFT_' >> {out}; echo --- >> {out}"


# -- command() ---------------------------------------------------------------------


def test_command_splits_like_a_shell_without_one() -> None:
    """command() honours quotes but keeps $, ;, |, > and globs as literal arguments."""
    assert command("echo 'a b' \"c d\" e") == ("echo", "a b", "c d", "e")
    assert command("echo $HOME; rm -rf * | cat > x") == (
        "echo",
        "$HOME;",
        "rm",
        "-rf",
        "*",
        "|",
        "cat",
        ">",
        "x",
    )
    assert command("  /usr/bin/logger   -t graft  ") == ("/usr/bin/logger", "-t", "graft")


def test_command_with_shell_uses_bin_sh() -> None:
    """command(shell=True) runs the unchanged line with /bin/sh -c."""
    line = "echo $GRAFT_STATE | logger -t graft && true"
    assert command(line, shell=True) == ("/bin/sh", "-c", line)


@pytest.mark.parametrize("shell", [False, True])
@pytest.mark.parametrize("text", ["", "   ", "\t\n"])
def test_command_refuses_empty(text: str, shell: bool) -> None:
    """An empty or blank command line is refused with ValueError."""
    with pytest.raises(ValueError, match="empty"):
        command(text, shell=shell)


def test_command_refuses_unterminated_quote() -> None:
    """An unterminated quote is refused with ValueError."""
    with pytest.raises(ValueError, match="quotation"):
        command("echo 'oops")


def test_runner_needs_a_positive_timeout() -> None:
    """HookRunner refuses a timeout that is not positive."""
    with pytest.raises(ValueError, match="timeout"):
        HookRunner(reactor(), 0)
    with pytest.raises(ValueError, match="timeout"):
        HookRunner(reactor(), -1)


def test_hook_commands_truthiness() -> None:
    """HookCommands is false without commands and true with any one of them."""
    assert not HookCommands()
    assert HookCommands(on_change=("true",))
    assert HookCommands(on_follower=("true",))


# -- HookRunner on real processes ----------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_hooks_run_one_at_a_time_in_order(tmp_path: Path) -> None:
    """Hooks queued together run in order, each starting only after the one before ended."""
    out = tmp_path / "order"
    runner = HookRunner(reactor(), 10)
    try:
        for n in range(4):
            script = (
                f"echo start {n} $(date +%s.%N) >> {out}; sleep 0.15; "
                f"echo end {n} $(date +%s.%N) >> {out}"
            )
            runner.run(Hook(f"hook-{n}", sh(script)))
        await wait_until(lambda: len(runner.completed) == 4, 10, "four hooks")
    finally:
        await runner.stop()
    assert runner.completed == [(f"hook-{n}", 0) for n in range(4)]
    records = [line.split() for line in out.read_text().splitlines()]
    expected = [[kind, str(n)] for n in range(4) for kind in ("start", "end")]
    assert [record[:2] for record in records] == expected
    times = [float(record[2]) for record in records]
    assert times == sorted(times)
    for n in range(1, 4):
        start, previous_end = times[2 * n], times[2 * n - 1]
        assert start >= previous_end, f"hook {n} started before hook {n - 1} ended"


@pytest_twisted.ensureDeferred
async def test_hook_runs_without_a_shell(tmp_path: Path) -> None:
    """Without shell=True a $VARIABLE reaches the program literally; with it, it is expanded."""
    runner = HookRunner(reactor(), 5)
    with captured() as events:
        try:
            env = {"GRAFT_STATE": "Leader"}
            runner.run(Hook("plain", command("/bin/echo $GRAFT_STATE; ok"), env))
            runner.run(Hook("shell", command("echo $GRAFT_STATE", shell=True), env))
            await wait_until(lambda: len(runner.completed) == 2, 5, "two hooks")
        finally:
            await runner.stop()
    done = {
        e["hook"]: e["output"] for e in events if e.get("log_format", "").endswith("done: {output}")
    }
    assert done == {"plain": "$GRAFT_STATE; ok", "shell": "Leader"}


@pytest_twisted.ensureDeferred
async def test_failing_hook_is_logged_and_next_runs(tmp_path: Path) -> None:
    """A hook exiting 3 is logged as a warning with its output, and the next hook still runs."""
    out = tmp_path / "next"
    runner = HookRunner(reactor(), 5)
    with captured() as events:
        try:
            runner.run(Hook("on-leader", sh("echo boom >&2; exit 3")))
            runner.run(Hook("on-change", ("/bin/sh", "-c", f"echo ran > {out}")))
            await wait_until(lambda: len(runner.completed) == 2, 5, "two hooks")
        finally:
            await runner.stop()
    assert runner.completed == [("on-leader", 3), ("on-change", 0)]
    assert out.read_text() == "ran\n"
    warnings = [e for e in events if e.get("log_level") == LogLevel.warn and "hook" in e]
    assert len(warnings) == 1
    warning = warnings[0]
    assert warning["hook"] == "on-leader"
    assert warning["output"] == "boom"
    assert "exit code 3" in warning["reason"]
    assert "exit 3" in warning["command"]


@pytest_twisted.ensureDeferred
async def test_missing_executable_is_logged_and_runner_continues(
    tmp_path: Path, logged_errors: list[LogEvent]
) -> None:
    """A hook whose program does not exist is logged as an error; the next hook runs."""
    out = tmp_path / "next"
    runner = HookRunner(reactor(), 5)
    try:
        runner.run(Hook("on-leader", ("/nonexistent/graft-hook", "arg")))
        runner.run(Hook("on-follower", ("no-such-graft-hook-program",)))
        runner.run(Hook("on-change", sh(f"echo ran > {out}")))
        await wait_until(lambda: len(runner.completed) == 3, 5, "three hooks")
    finally:
        await runner.stop()
    assert runner.completed == [("on-leader", None), ("on-follower", None), ("on-change", 0)]
    assert out.read_text() == "ran\n"
    assert [e["hook"] for e in logged_errors] == ["on-leader", "on-follower"]
    assert "/nonexistent/graft-hook arg" in logged_errors[0]["command"]
    assert "could not start" in logged_errors[0]["log_format"]


@pytest_twisted.ensureDeferred
async def test_hanging_hook_is_killed_after_timeout(
    tmp_path: Path, logged_errors: list[LogEvent]
) -> None:
    """A hook outliving its timeout is killed and logged as an error; the next hook runs."""
    out = tmp_path / "next"
    runner = HookRunner(reactor(), 0.5)
    started = time.monotonic()
    try:
        runner.run(Hook("on-leader", ("sleep", "30")))
        runner.run(Hook("on-change", sh(f"echo ran > {out}")))
        assert runner._transport is not None
        pid = runner._transport.pid
        await wait_until(lambda: len(runner.completed) == 2, 10, "two hooks")
    finally:
        await runner.stop()
    took = time.monotonic() - started
    assert 0.45 <= took < 5, took
    assert runner.completed == [("on-leader", None), ("on-change", 0)]
    assert out.read_text() == "ran\n"
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert len(logged_errors) == 1
    error = logged_errors[0]
    assert error["hook"] == "on-leader"
    assert error["timeout"] == 0.5
    assert "sleep 30" in error["command"]
    assert "killed" in error["log_format"]


@pytest_twisted.ensureDeferred
async def test_stop_kills_running_hook_and_drops_queued(tmp_path: Path) -> None:
    """stop() kills the running hook, drops queued ones, fires once it ended, refuses new ones."""
    out = tmp_path / "never"
    runner = HookRunner(reactor(), 30)
    started = time.monotonic()
    try:
        runner.run(Hook("on-leader", ("sleep", "30")))
        runner.run(Hook("on-change", sh(f"echo ran > {out}")))
        assert runner._transport is not None
        pid = runner._transport.pid
        await runner.stop()
        assert time.monotonic() - started < 5
        assert runner.completed == [("on-leader", None)]
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        runner.run(Hook("late", sh(f"echo ran > {out}")))
        assert runner._transport is None
        await runner.stop()
    finally:
        await runner.stop()
    assert runner.completed == [("on-leader", None)]
    assert not out.exists()


@pytest_twisted.ensureDeferred
async def test_stop_when_idle_fires_at_once() -> None:
    """stop() on a runner with nothing running has already fired."""
    fired: list[object] = []
    HookRunner(reactor(), 1).stop().addCallback(fired.append)
    assert fired == [None]


@pytest_twisted.ensureDeferred
async def test_hook_output_is_bounded(tmp_path: Path) -> None:
    """Only the first OUTPUT_LIMIT bytes of a chatty hook are kept for the log."""
    runner = HookRunner(reactor(), 5)
    with captured() as events:
        try:
            runner.run(Hook("chatty", sh("head -c 100000 /dev/zero | tr '\\0' x")))
            await wait_until(lambda: len(runner.completed) == 1, 5, "the hook")
        finally:
            await runner.stop()
    (done,) = [e for e in events if e.get("hook") == "chatty"]
    assert done["output"] == "x" * OUTPUT_LIMIT


# -- HookHandler ----------------------------------------------------------------------


def test_hook_handler_provides_istatehandler() -> None:
    """HookHandler provides IStateHandler."""
    handler = HookHandler(lambda: None, HookCommands(), None)
    assert verifyObject(IStateHandler, handler)


@pytest_twisted.ensureDeferred
async def test_environment_describes_each_change(tmp_path: Path) -> None:
    """Each on-change hook gets the cluster, node id, new and previous state, term and leader."""
    out = tmp_path / "env"
    runner = HookRunner(reactor(), 5)
    holder = NodeHolder()
    handler = HookHandler(holder, HookCommands(on_change=sh(ENV_SCRIPT.format(out=out))), runner)
    clock, node = make_node(tmp_path, handler, holder)
    try:
        drive_through_leadership(clock, node)
        await wait_until(lambda: len(runner.completed) == 3, 10, "three hooks")
    finally:
        await runner.stop()
        await node.close()
    common = {"GRAFT_CLUSTER": "hm", "GRAFT_NODE_ID": "n1"}
    assert read_blocks(out) == [
        {
            **common,
            "GRAFT_STATE": "Candidate",
            "GRAFT_PREVIOUS_STATE": "Follower",
            "GRAFT_TERM": "1",
            "GRAFT_LEADER": "",
        },
        {
            **common,
            "GRAFT_STATE": "Leader",
            "GRAFT_PREVIOUS_STATE": "Candidate",
            "GRAFT_TERM": "1",
            "GRAFT_LEADER": "n1",
        },
        {
            **common,
            "GRAFT_STATE": "Follower",
            "GRAFT_PREVIOUS_STATE": "Leader",
            "GRAFT_TERM": "2",
            "GRAFT_LEADER": "c",
        },
    ]


@pytest_twisted.ensureDeferred
async def test_environment_of_changes_delivered_together(tmp_path: Path) -> None:
    """Two changes handed over in one turn each get their own term and leader.

    A one-node cluster campaigns and wins at once: the Candidate hook must not
    report the leader that only the later Leader change produced.
    """
    out = tmp_path / "env"
    runner = HookRunner(reactor(), 5)
    holder = NodeHolder()
    handler = HookHandler(holder, HookCommands(on_change=sh(ENV_SCRIPT.format(out=out))), runner)
    clock, node = make_node(tmp_path, handler, holder, size=1, node_id="solo")
    try:
        campaign(clock, node)
        assert node.state is State.LEADER
        await wait_until(lambda: len(runner.completed) == 2, 10, "two hooks")
    finally:
        await runner.stop()
        await node.close()
    blocks = read_blocks(out)
    assert [(b["GRAFT_PREVIOUS_STATE"], b["GRAFT_STATE"]) for b in blocks] == [
        ("Follower", "Candidate"),
        ("Candidate", "Leader"),
    ]
    assert [b["GRAFT_TERM"] for b in blocks] == ["1", "1"]
    assert blocks[1]["GRAFT_LEADER"] == "solo"
    assert blocks[0]["GRAFT_LEADER"] == "", "a candidate has no leader yet"


@pytest_twisted.ensureDeferred
async def test_which_hooks_run_for_each_change(tmp_path: Path) -> None:
    """on-leader runs on becoming leader, on-follower on leaving it, on-change on every change."""
    out = tmp_path / "calls"
    runner = HookRunner(reactor(), 5)
    holder = NodeHolder()

    def hook(name: str) -> tuple[str, ...]:
        return sh(f'echo "{name} $GRAFT_PREVIOUS_STATE $GRAFT_STATE" >> {out}')

    commands = HookCommands(
        on_leader=hook("on-leader"), on_follower=hook("on-follower"), on_change=hook("on-change")
    )
    handler = HookHandler(holder, commands, runner)
    clock, node = make_node(tmp_path, handler, holder)
    try:
        drive_through_leadership(clock, node)
        await wait_until(lambda: len(runner.completed) == 5, 10, "five hooks")
    finally:
        await runner.stop()
        await node.close()
    assert out.read_text().splitlines() == [
        "on-change Follower Candidate",
        "on-leader Candidate Leader",
        "on-change Candidate Leader",
        "on-follower Leader Follower",
        "on-change Leader Follower",
    ]
    assert [name for name, _ in runner.completed] == [
        "on-change",
        "on-leader",
        "on-change",
        "on-follower",
        "on-change",
    ]


@pytest_twisted.ensureDeferred
async def test_candidate_losing_runs_no_follower_hook(tmp_path: Path) -> None:
    """A candidate falling back to follower was never leader: only on-change runs."""
    out = tmp_path / "calls"
    runner = HookRunner(reactor(), 5)
    holder = NodeHolder()
    commands = HookCommands(
        on_leader=sh(f"echo on-leader >> {out}"),
        on_follower=sh(f"echo on-follower >> {out}"),
        on_change=sh(f'echo "on-change $GRAFT_STATE" >> {out}'),
    )
    clock, node = make_node(tmp_path, HookHandler(holder, commands, runner), holder)
    try:
        campaign(clock, node)
        node.handle_heartbeat(Heartbeat(node.current_term, "b"))
        assert node.state is State.FOLLOWER
        clock.advance(0)
        await wait_until(lambda: len(runner.completed) == 2, 10, "two hooks")
    finally:
        await runner.stop()
        await node.close()
    assert out.read_text().splitlines() == ["on-change Candidate", "on-change Follower"]


def test_state_change_is_one_structured_event(tmp_path: Path) -> None:
    """Each state change is logged once, with cluster, node_id, previous, state, term, leader."""
    holder = NodeHolder()
    forward = RecordingHandler()
    handler = HookHandler(holder, HookCommands(), None, forward=[forward])
    clock, node = make_node(tmp_path, handler, holder)
    with captured() as events:
        try:
            drive_through_leadership(clock, node)
        finally:
            node.close()
    changes = [e for e in events if e.get("event") == "state_changed"]
    fields = [
        (e["cluster"], e["node_id"], e["previous"], e["state"], e["term"], e["leader"])
        for e in changes
    ]
    assert fields == [
        ("hm", "n1", "Follower", "Candidate", 1, ""),
        ("hm", "n1", "Candidate", "Leader", 1, "n1"),
        ("hm", "n1", "Leader", "Follower", 2, "c"),
    ]
    for event in changes:
        assert event["log_level"] == LogLevel.info
        assert event["log_namespace"] == "graft_tx.hooks.HookHandler"
        assert "{state}" in event["log_format"]
    assert forward.changes == [
        StateChange(State.FOLLOWER, State.CANDIDATE),
        StateChange(State.CANDIDATE, State.LEADER),
        StateChange(State.LEADER, State.FOLLOWER),
    ]


def test_async_error_is_logged_and_forwarded(logged_errors: list[LogEvent]) -> None:
    """A node error is logged as one error event and handed to the forwarded handlers."""
    forward = RecordingHandler()
    handler = HookHandler(lambda: None, HookCommands(), None, forward=[forward])
    error = RuntimeError("disk full")
    handler.async_error(error)
    assert forward.errors == [error]
    assert len(logged_errors) == 1
    assert logged_errors[0]["event"] == "async_error"
    assert logged_errors[0]["error"] == "disk full"


def test_handler_without_node_or_runner(tmp_path: Path) -> None:
    """With no node yet and no runner, a change is still logged, with empty details."""
    handler = HookHandler(lambda: None, HookCommands(on_change=("true",)), None)
    with captured() as events:
        handler.state_changed(State.FOLLOWER, State.CANDIDATE)
    (event,) = [e for e in events if e.get("event") == "state_changed"]
    assert (event["cluster"], event["node_id"], event["term"], event["leader"]) == ("", "", 0, "")
    assert (event["previous"], event["state"]) == ("Follower", "Candidate")
