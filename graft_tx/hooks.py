"""Leadership hooks: commands run when a node's state changes.

Hooks of one node run one at a time, in the order of the events, each with
a timeout. A hook that fails, cannot start or outlives its timeout is
logged (and killed); it never stops the node. Each hook gets the event in
its environment: GRAFT_CLUSTER, GRAFT_NODE_ID, GRAFT_STATE,
GRAFT_PREVIOUS_STATE, GRAFT_TERM and GRAFT_LEADER.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import (
    IDelayedCall,
    IProcessTransport,
    IReactorProcess,
    IReactorTime,
)
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from graft_tx.cluster import State, StateChangeDetail
from graft_tx.interfaces import IDetailedStateHandler, IStateHandler
from graft_tx.node import Node

OUTPUT_LIMIT = 4096


@dataclass(frozen=True)
class Hook:
    """One command to run, as an argument vector."""

    name: str
    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)


def command(text: str, *, shell: bool = False) -> tuple[str, ...]:
    """The argument vector of a hook command line.

    Without C{shell} the line is split like a shell would, but run directly,
    so no shell interprets it; with C{shell} it is run by C{/bin/sh -c}.

    @raise ValueError: the line is empty or its quotes do not match.
    """
    if shell:
        if not text.strip():
            raise ValueError("a hook command must not be empty")
        return ("/bin/sh", "-c", text)
    argv = tuple(shlex.split(text))
    if not argv:
        raise ValueError("a hook command must not be empty")
    return argv


class _HookProcess(ProcessProtocol):
    def __init__(self, runner: HookRunner, hook: Hook) -> None:
        self._runner = runner
        self._hook = hook
        self._output = bytearray()
        self.ended: Deferred[None] = Deferred()

    def outReceived(self, data: bytes) -> None:
        if len(self._output) < OUTPUT_LIMIT:
            self._output += data[: OUTPUT_LIMIT - len(self._output)]

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        self._runner._ended(self._hook, reason, bytes(self._output))
        self.ended.callback(None)


class HookRunner:
    """Runs hooks one at a time, in order, each killed after C{timeout} seconds."""

    log = Logger()

    def __init__(self, reactor: IReactorProcess, timeout: float) -> None:
        if timeout <= 0:
            raise ValueError(f"the hook timeout must be positive, not {timeout!r}")
        self._reactor = reactor
        self._timeout = timeout
        self._queue: deque[Hook] = deque()
        self._running: _HookProcess | None = None
        self._transport: IProcessTransport | None = None
        self._timer: IDelayedCall | None = None
        self._stopped = False
        self.completed: list[tuple[str, int | None]] = []

    def run(self, hook: Hook) -> None:
        """Queue C{hook}; it starts once those queued before it have ended."""
        if self._stopped:
            return
        self._queue.append(hook)
        if self._running is None:
            self._start_next()

    def stop(self) -> Deferred[None]:
        """Drop queued hooks and kill the running one; fires once it has ended."""
        self._stopped = True
        self._queue.clear()
        if self._running is None:
            return succeed(None)
        ended = self._running.ended
        self._kill()
        return ended

    def _start_next(self) -> None:
        while self._queue and self._running is None:
            hook = self._queue.popleft()
            executable = shutil.which(hook.argv[0]) or hook.argv[0]
            process = _HookProcess(self, hook)
            env = {**os.environ, **hook.env}
            try:
                self._transport = self._reactor.spawnProcess(
                    process, executable, list(hook.argv), env=env
                )
            except OSError as e:
                self.log.error(
                    "hook {hook} ({command}) could not start: {error}",
                    hook=hook.name,
                    command=shlex.join(hook.argv),
                    error=str(e),
                )
                self.completed.append((hook.name, None))
                continue
            self._running = process
            clock: IReactorTime = self._reactor  # type: ignore[assignment]
            self._timer = clock.callLater(self._timeout, self._timed_out, hook)

    def _timed_out(self, hook: Hook) -> None:
        self._timer = None
        self.log.error(
            "hook {hook} ({command}) ran over {timeout}s; killed",
            hook=hook.name,
            command=shlex.join(hook.argv),
            timeout=self._timeout,
        )
        self._kill()

    def _kill(self) -> None:
        if self._transport is not None:
            # It may have ended meanwhile.
            with contextlib.suppress(ProcessExitedAlready):
                self._transport.signalProcess("KILL")

    def _ended(self, hook: Hook, reason: Failure, output: bytes) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        code = getattr(reason.value, "exitCode", None)
        self.completed.append((hook.name, code))
        text = output.decode("utf-8", "replace").strip()
        if code == 0:
            self.log.info("hook {hook} done: {output}", hook=hook.name, output=text)
        elif not self._stopped:
            self.log.warn(
                "hook {hook} ({command}) failed ({reason}): {output}",
                hook=hook.name,
                command=shlex.join(hook.argv),
                reason=reason.getErrorMessage(),
                output=text,
            )
        self._running = None
        self._transport = None
        self._start_next()


@dataclass(frozen=True)
class HookCommands:
    """The commands of C{--on-leader}, C{--on-follower} and C{--on-change}."""

    on_leader: tuple[str, ...] | None = None
    on_follower: tuple[str, ...] | None = None
    on_change: tuple[str, ...] | None = None

    def __bool__(self) -> bool:
        return any((self.on_leader, self.on_follower, self.on_change))


@implementer(IDetailedStateHandler)
class HookHandler:
    """Logs each state change as one structured event and runs the hooks.

    C{on_leader} runs on becoming leader, C{on_follower} on ceasing to be
    leader, C{on_change} on every change, in that order for one event.
    """

    log = Logger()

    def __init__(
        self,
        node: Callable[[], Node | None],
        commands: HookCommands,
        runner: HookRunner | None,
        forward: Sequence[IStateHandler] = (),
    ) -> None:
        self._node = node
        self._commands = commands
        self._runner = runner
        self._forward = tuple(forward)

    def state_changed(self, from_state: State, to_state: State) -> None:
        node = self._node()
        term, leader = (node.current_term, node.leader) if node else (0, "")
        self.state_changed_detail(StateChangeDetail(from_state, to_state, term, leader))

    def state_changed_detail(self, change: StateChangeDetail) -> None:
        node = self._node()
        cluster = node.cluster_info.name if node else ""
        node_id = node.id if node else ""
        from_state, to_state = change.from_state, change.to_state
        self.log.info(
            "node {node_id} of {cluster}: {previous} -> {state}, term {term}, leader {leader}",
            event="state_changed",
            node_id=node_id,
            cluster=cluster,
            previous=str(from_state),
            state=str(to_state),
            term=change.term,
            leader=change.leader,
        )
        env = {
            "GRAFT_CLUSTER": cluster,
            "GRAFT_NODE_ID": node_id,
            "GRAFT_STATE": str(to_state),
            "GRAFT_PREVIOUS_STATE": str(from_state),
            "GRAFT_TERM": str(change.term),
            "GRAFT_LEADER": change.leader,
        }
        if self._runner is not None:
            wanted = (
                ("on-leader", self._commands.on_leader, to_state is State.LEADER),
                ("on-follower", self._commands.on_follower, from_state is State.LEADER),
                ("on-change", self._commands.on_change, True),
            )
            for name, argv, applies in wanted:
                if argv and applies:
                    self._runner.run(Hook(name, argv, env))
        for handler in self._forward:
            handler.state_changed(from_state, to_state)

    def async_error(self, error: Exception) -> None:
        self.log.error("node error: {error}", event="async_error", error=str(error))
        for handler in self._forward:
            handler.async_error(error)
