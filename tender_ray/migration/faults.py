"""Fault injection: one fault a machine fires at a named point of a migration, on either side
(raise, die, lose the answer, stall), so tests and drills can prove that every single fault
leaves exactly one live copy of the process. Armed only from the machine's configuration."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tender_ray.errors import MachineError, NoReplyError


class FaultInjected(MachineError):
    """A machine was told to fail at a phase (fault-injection for tests and drills)."""


class ReplyDropped(NoReplyError):
    """A drill lost the answer of a call that took effect: the caller sees no reply."""


@dataclass
class FaultPlan:
    """Where and how a machine should fail during a migration (testing the protocol)."""

    phase: str = ""  # the point it fires at; "" once fired (or none armed)
    action: Callable[[], None] | None = None  # set for an "exit" fault: the machine dies
    side: str = "destination"  # "destination" or "source" (config.FaultSide values)
    kind: str = "raise"  # config.FaultAction value: raise, exit, drop, delay
    delay_s: float = 0.0  # how long a "delay" fault stalls
    lock: threading.Lock = field(default_factory=threading.Lock)

    def check(self, phase: str, side: str = "destination") -> None:
        """Fire the fault if it is armed at `phase` on `side`: raise FaultInjected (or, for a
        "drop", ReplyDropped: call it where the step has taken effect), die, or stall."""
        with self.lock:
            if self.phase != phase or self.side != side:
                return
            self.phase = ""
            kind, action = self.kind, self.action
        if kind == "delay":
            time.sleep(self.delay_s)
            return
        if action is not None:  # an "exit" plan (the machine dies here)
            action()
        if kind == "drop":
            raise ReplyDropped(f"fault injected at phase {phase}: the answer is dropped")
        raise FaultInjected(f"fault injected at phase {phase}")
