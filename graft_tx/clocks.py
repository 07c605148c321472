"""The steady clock that leases and election decisions are measured on."""

from __future__ import annotations

import time
from collections.abc import Callable


def steady_clock() -> Callable[[], float]:
    """A clock that never steps and counts the time a suspended host slept.

    C{time.monotonic} stops while a Linux host is suspended, so a leader
    resumed from a suspend would believe its lease still held;
    C{CLOCK_BOOTTIME} counts that time. Elsewhere, C{time.monotonic}.
    """
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    if boottime is None:
        return time.monotonic
    clock_id: int = boottime

    def boot_seconds() -> float:
        return time.clock_gettime(clock_id)

    return boot_seconds
