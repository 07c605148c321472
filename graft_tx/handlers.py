"""Ready-made handlers."""

from __future__ import annotations

from twisted.internet.defer import DeferredQueue
from zope.interface import implementer

from graft_tx.cluster import State, StateChange
from graft_tx.interfaces import IStateMachineHandler


@implementer(IStateMachineHandler)
class QueueHandler:
    """graft's ChanHandler: state changes and errors land in two queues.

    The queues have no size bound, so a node is never blocked or slowed by
    a reader that falls behind (or never reads). C{state_machine}, if given,
    answers vote decisions; without it every allowed vote is granted.
    """

    def __init__(self, state_machine: IStateMachineHandler | None = None) -> None:
        if state_machine is not None and not IStateMachineHandler.providedBy(state_machine):
            raise TypeError(
                f"state_machine {state_machine!r} does not provide IStateMachineHandler"
            )
        self.state_changes: DeferredQueue[StateChange] = DeferredQueue()
        self.errors: DeferredQueue[Exception] = DeferredQueue()
        self._state_machine = state_machine

    def state_changed(self, from_state: State, to_state: State) -> None:
        self.state_changes.put(StateChange(from_state, to_state))

    def async_error(self, error: Exception) -> None:
        self.errors.put(error)

    def current_state(self) -> bytes:
        if self._state_machine is None:
            return b""
        return self._state_machine.current_state()

    def grant_vote(self, position: bytes) -> bool:
        if self._state_machine is None:
            return True
        return self._state_machine.grant_vote(position)
