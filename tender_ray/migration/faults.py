"""Fault injection: where a machine should fail during an incoming migration, so tests and drills
can prove the rollback."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from tender_ray.errors import MachineError


class FaultInjected(MachineError):
    """A machine was told to fail at a phase (fault-injection for tests and drills)."""


@dataclass
class FaultPlan:
    """Where a machine should die during an incoming migration (testing the rollback)."""

    phase: str = ""
    action: Callable[[], None] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def check(self, phase: str) -> None:
        with self.lock:
            if self.phase != phase:
                return
            self.phase = ""
            action = self.action
        if action is not None:
            action()
        raise FaultInjected(f"fault injected at phase {phase}")
