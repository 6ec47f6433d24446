"""Process: the process table entry — id, state, virtual space, user spaces, program, registers.

A kernel process is a process table entry that lives in the machine's kernel space and has no
user spaces; migration creates one on the destination (cheap, and taken from a pool when reuse
is on) and transforms it into the migrating process. Kernel-side state that is part of the
process and moves with it (program break, sleep deadline, pending output, counters) is here too.
"""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass, field

from ..cpu import CpuState
from .program import Program
from .virtual_space import VirtualSpace
from .virtual_user_space import VirtualUserSpace


class ProcessState(str, enum.Enum):
    KERNEL = "kernel"  # a kernel process: pooled, held, or being transformed by a migration
    RUNNABLE = "runnable"  # waiting for a computation
    RUNNING = "running"  # holds a computation
    SLEEPING = "sleeping"  # waiting for a deadline; holds no computation
    FROZEN = "frozen"  # stopped at an instruction boundary while it migrates
    ZOMBIE = "zombie"  # exited; its status waits to be collected


@dataclass
class Accounting:
    """What a process has cost so far; it travels with the process."""

    cpu_seconds: float = 0.0  # thread CPU time spent running it
    quanta: int = 0
    syscalls: Counter[str] = field(default_factory=Counter)
    unsupported: Counter[str] = field(default_factory=Counter)


class Process:
    """A process table entry. Fields are owned by the machine whose table holds the entry."""

    def __init__(self) -> None:
        self.pid = 0
        self.name = ""
        self.state = ProcessState.KERNEL
        self.space: VirtualSpace | None = None  # the kernel space, or its own user space
        self.user_spaces: dict[str, VirtualUserSpace] = {}  # the fixed ones: text0.., data..
        self.program: Program | None = None
        self.plate_name = ""  # where the program image lies on the machine's plate
        self.registers: CpuState | None = None  # saved state while not running
        self.cpu: object | None = None  # the engine context (a Cpu), owned while active
        # Kernel-side state (moves with the process).
        self.brk_start = 0
        self.brk = 0
        self.mmap_top = 0  # next anonymous mappings go below this address
        self.tid_address = 0
        self.wake_at: float | None = None  # time.monotonic() deadline while SLEEPING
        self.sleep_left: float | None = None  # remaining sleep while FROZEN asleep
        self.stdout = bytearray()  # output not yet collected by the owner
        self.stderr = bytearray()
        self.stdout_taken = 0  # bytes collected before `stdout` (the offset of its start)
        self.stderr_taken = 0
        self.exit_status: int | None = None
        self.exit_reason = ""
        self.accounting = Accounting()
        self.created_at = 0.0  # time.time() of creation (exec), kept across migrations
        self.ended_at: float | None = None
        self.migrations: list[dict[str, object]] = []
        self.quantum = 0  # its next timed quantum (0: the machine's base); not migrated
        self.freeze_requested = False
        self.on_cpu = False  # a computation is running it (its state may change under us)
        self.migrating = False  # a migration owns the process (one at a time)

    def reset(self) -> None:
        """Back to an empty kernel process for the pool (its resources were released)."""
        cpu = self.cpu
        self.__init__()  # type: ignore[misc]
        self.cpu = cpu  # the engine context is the expensive part: keep it with the entry

    @property
    def alive(self) -> bool:
        return self.state is not ProcessState.ZOMBIE and self.state is not ProcessState.KERNEL
