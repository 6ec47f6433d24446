"""Computation: the unit of processor allocation. A process runs only while it holds one.

Each computation is a host thread that takes runnable processes from the machine's run queue and
runs them for a quantum at a time; a sleeping process holds none. Utilisation is the fraction of
wall time a computation spent running a process.
"""

from __future__ import annotations

import enum
import threading
import time
from dataclasses import dataclass


class ComputationState(str, enum.Enum):
    IDLE = "idle"
    RUNNING = "running"
    STOPPED = "stopped"


@dataclass(frozen=True)
class ComputationStatistics:
    index: int
    state: str
    pid: int | None
    busy_seconds: float
    quanta: int


class Computation:
    """One processor slot of a machine. Fields are owned by its thread, read by anyone."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.state = ComputationState.IDLE
        self.pid: int | None = None  # the process holding this computation
        self.busy_seconds = 0.0
        self.quanta = 0
        self.thread: threading.Thread | None = None
        self.started_at = time.monotonic()
        self.run_started = 0.0  # monotonic time the current quantum began (while RUNNING)

    def statistics(self) -> ComputationStatistics:
        return ComputationStatistics(self.index, self.state.value, self.pid,
                                     self.busy_seconds, self.quanta)
