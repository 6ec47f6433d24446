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
from typing import TYPE_CHECKING, Any

from tender_ray.abi.cpu_state import CpuState, RegisterEdit
from tender_ray.resources.file_view import FileView
from tender_ray.resources.open_file import standard_files
from tender_ray.resources.program import Program
from tender_ray.resources.thread import Thread
from tender_ray.resources.virtual_space import VirtualSpace
from tender_ray.resources.virtual_user_space import VirtualUserSpace

if TYPE_CHECKING:  # for the types only: a resource depends on neither at run time
    from tender_ray.engines.base import Engine
    from tender_ray.migration.record import MigrationRecord


class ProcessState(str, enum.Enum):
    """How a process is shown to the world (snapshots, metrics, balancers, views): the six names
    its tools read. The scheduler's own, finer states (`RunState`) fold into these."""

    KERNEL = "kernel"  # a kernel process: pooled, held, or being transformed by a migration
    RUNNABLE = "runnable"  # waiting for a computation
    RUNNING = "running"  # holds a computation
    SLEEPING = "sleeping"  # waiting for a deadline
    FROZEN = "frozen"  # stopped at an instruction boundary while it migrates
    ZOMBIE = "zombie"  # exited; its status waits to be collected


class RunState(str, enum.Enum):
    """Where a process is in its life. Only the scheduler (`kernel/scheduler.py`) moves a
    process from one to another, along the moves its table allows."""

    KERNEL = "kernel"  # a kernel process, not (yet) in the table
    RUNNABLE = "runnable"  # in the run queue
    RUNNING = "running"  # a computation holds it
    # A computation still holds it, the quantum ending soon; where it goes then:
    FALLING_ASLEEP = "falling_asleep"  # it asked to sleep: into the sleepers
    FREEZING = "freezing"  # a migration asked for it: FROZEN
    EXITING = "exiting"  # it ended (exit, a kill, a fault): ZOMBIE
    SLEEPING = "sleeping"  # among the sleepers until `wake_at`; holds no computation
    FROZEN = "frozen"  # stopped at an instruction boundary; the migration that froze it owns it
    ZOMBIE = "zombie"  # ended and released; the entry waits to be reaped

    @property
    def on_cpu(self) -> bool:
        """Whether a computation holds the process (its CPU is not ours to touch)."""
        return self in _ON_CPU

    @property
    def migrating(self) -> bool:
        """Whether a migration owns the process (one at a time)."""
        return self is RunState.FREEZING or self is RunState.FROZEN

    @property
    def shown(self) -> ProcessState:
        return _SHOWN[self]


_ON_CPU = frozenset({RunState.RUNNING, RunState.FALLING_ASLEEP, RunState.FREEZING,
                     RunState.EXITING})
# The states still on a computation look as they did before their quantum ends.
_SHOWN = {RunState.KERNEL: ProcessState.KERNEL, RunState.RUNNABLE: ProcessState.RUNNABLE,
          RunState.RUNNING: ProcessState.RUNNING, RunState.FALLING_ASLEEP: ProcessState.SLEEPING,
          RunState.FREEZING: ProcessState.RUNNING, RunState.EXITING: ProcessState.RUNNING,
          RunState.SLEEPING: ProcessState.SLEEPING, RunState.FROZEN: ProcessState.FROZEN,
          RunState.ZOMBIE: ProcessState.ZOMBIE}


@dataclass
class Accounting:
    """What a process has cost so far; it travels with the process."""

    cpu_seconds: float = 0.0  # thread CPU time spent running it
    quanta: int = 0
    syscalls: Counter[str] = field(default_factory=Counter)
    unsupported: Counter[str] = field(default_factory=Counter)
    # The calls of its threads that have ended, kept apart: the sum of `syscalls` numbers
    # this run entry's own calls, which a re-issued wait is recognised by (`restart_call`).
    ended_threads: Counter[str] = field(default_factory=Counter)

    def all_syscalls(self) -> Counter[str]:
        """Every call it made, its ended threads' included (what reports count). (An image
        written before `ended_threads` existed has none.)"""
        ended: Counter[str] | None = self.__dict__.get("ended_threads")
        # One copy in C first: its computation may add a call while another thread reads
        # (`Machine.info`), and Counter's `+` iterates in Python.
        mine: Counter[str] = Counter(dict.copy(self.syscalls))
        return mine + ended if ended is not None else mine


class Process:
    """A process table entry, owned by the machine whose table (or incoming table) holds it.

    "lock" below is that machine's lock (its scheduler's); "its computation" is the
    computation holding the process, which alone runs its CPU and serves its system calls.
    """

    def __init__(self) -> None:
        # Set before the entry joins a table, read-only after.
        self.pid = 0
        self.name = ""
        self.plate_name = ""  # where the program image lies on the machine's plate
        self.created_at = 0.0  # time.time() of creation (exec), kept across migrations
        # The scheduler's, under the lock.
        self.state = RunState.KERNEL
        # The time.monotonic() deadline of a sleep it asked for (FALLING_ASLEEP, SLEEPING).
        # Kept apart from the state because a sleep and a freeze or an exit overlap: a
        # process that sleeps while FREEZING freezes asleep, and is shown "sleeping".
        self.wake_at: float | None = None
        self.sleep_left: float | None = None  # remaining sleep while FROZEN (or arriving)
        self.quantum = 0  # its next timed quantum (0: the machine's base); not migrated
        # The address space: its computation's while it runs, the migration's while FROZEN,
        # the lock's otherwise.
        self.space: VirtualSpace | None = None  # the kernel space, or its own user space
        self.user_spaces: dict[str, VirtualUserSpace] = {}  # the fixed ones: text0.., data..
        self.program: Program | None = None
        self.registers: CpuState | None = None  # saved state while not running
        # Register changes the kernel asked for while the process ran (a system call to be
        # re-issued, a signal frame): its computation applies them as soon as the CPU has
        # stopped, before anyone else sees the registers (`Scheduler.between_runs`).
        self.register_edits: list[RegisterEdit] = []
        # Its last stop was only for such an edit (rt_sigreturn): it runs on in the same
        # quantum (its computation's).
        self.runs_on = False
        # The engine context: kept by the entry across the pool; run only by its computation,
        # though any thread may ask it to `preempt`.
        self.cpu: Engine | None = None
        # Kernel-side state that moves with the process: its computation's while it runs
        # (system calls change it), the migration's while FROZEN.
        self.brk_start = 0
        self.brk = 0
        self.mmap_top = 0  # next anonymous mappings go below this address
        # The CPU features its code may have chosen paths by (engines/features.py): set at
        # exec from the engine it started on; a destination lacking one is refused.
        self.cpu_features: frozenset[str] = frozenset()
        self.tid_address = 0
        # Its threads' records by tid (resources/thread.py), the first one's made on first
        # use: its computation's while it runs. A wait in a futex is issued again at a
        # destination, so nothing here has to travel.
        self.threads: dict[int, Thread] = {}
        # The run entries of its other threads (`ThreadEntry`), by tid: empty for a process
        # with one thread. Under the lock.
        self.members: dict[int, ThreadEntry] = {}
        # Set when its first thread called exit while others ran: it waits, and ends with
        # this status when the last of them ends (under the lock).
        self.thread_exit: int | None = None
        self.accounting = Accounting()  # cpu_seconds and quanta under the lock
        # Under the lock.
        self.stdout = bytearray()  # output not yet collected by the owner
        self.stderr = bytearray()
        self.stdout_taken = 0  # bytes collected before `stdout` (the offset of its start)
        self.stderr_taken = 0
        # Stream offsets (stdout, stderr) up to which a checkpoint covers the output: beyond
        # them it is held from the owner, since a restart would write it again. None: no
        # checkpoint yet (held all the same when the machine checkpoints periodically).
        self.output_commit: tuple[int, int] | None = None
        self.exit_status: int | None = None  # set once (the first reason wins), when EXITING
        self.exit_reason = ""
        self.ended_at: float | None = None
        self.migrations: list[MigrationRecord] = []  # how it came here, oldest first
        # Open files and the view they are opened through: its computation's while it runs
        # (system calls change them), the migration's while FROZEN; they travel.
        self.files = standard_files()
        # The kernel's signal state (kernel/signals.py's SignalState; made on first use):
        # its computation's while it runs, the migration's while FROZEN.
        self.signals: Any = None
        self.view: FileView | None = None  # None: the host tree from the machine's cwd
        # Its place in a process tree (kernel/process_tree.py's TreeNode: parent, children's
        # zombie records): None for a process exec started that has made no child.
        self.tree: Any = None

    @property
    def context(self) -> Engine:
        """The engine context (every entry of a machine's table has one)."""
        assert self.cpu is not None, f"process {self.pid} has no engine context"
        return self.cpu

    @property
    def cpu_seconds(self) -> float:
        """Its CPU time, every thread's: its first's (where the ended ones' went too) and
        those running now (each entry counts its own)."""
        return self.accounting.cpu_seconds + sum(t.accounting.cpu_seconds
                                                 for t in self.members.values())

    @property
    def shown_state(self) -> ProcessState:
        """The state as snapshots show it: a process that asked to sleep is "sleeping" from
        then on, even while its computation still holds it. A process with several threads
        is running while any of them runs (runnable while any waits for a computation)."""
        own = self._own_shown_state()
        if self.members and own in (ProcessState.SLEEPING, ProcessState.RUNNABLE):
            states = {t._own_shown_state() for t in self.members.values()} | {own}
            for shown in (ProcessState.RUNNING, ProcessState.RUNNABLE):
                if shown in states:
                    return shown
        return own

    def _own_shown_state(self) -> ProcessState:
        if self.state.on_cpu and self.wake_at is not None:
            return ProcessState.SLEEPING
        return self.state.shown

    def reset(self) -> None:
        """Back to an empty kernel process for the pool (its resources were released)."""
        cpu = self.cpu
        self.__init__()  # type: ignore[misc]
        self.cpu = cpu  # the engine context is the expensive part: keep it with the entry


class ThreadEntry(Process):
    """The run entry of a thread after a process's first: what the scheduler runs, alone
    of its own — its state, registers, engine context, sleep, quantum, exit and the counts of
    its calls — while everything else (the pid, the virtual space, the files, the signal
    state, the output, whatever a process gains later) is its process's, read and written
    through this entry. It is in no process table: `leader` is the process, which lists it
    in `members`."""

    leader: Process
    tid: int
    thread: Thread
    OWN = frozenset({"state", "wake_at", "sleep_left", "quantum", "registers",
                     "register_edits", "cpu", "exit_status", "exit_reason", "accounting",
                     "leader", "tid", "thread", "runs_on"})

    def __init__(self, leader: Process, thread: Thread) -> None:
        # (Process.__init__ is not run: the shared fields are the leader's.)
        object.__setattr__(self, "leader", leader)
        self.tid = thread.tid
        self.thread = thread
        self.state = RunState.KERNEL
        self.wake_at = None
        self.sleep_left = None
        self.quantum = 0
        self.registers = None
        self.register_edits = []
        self.runs_on = False
        self.cpu = None
        self.exit_status = None
        self.exit_reason = ""
        self.accounting = Accounting()

    def __getattr__(self, name: str) -> Any:
        return getattr(object.__getattribute__(self, "leader"), name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ThreadEntry.OWN:
            object.__setattr__(self, name, value)
        else:
            setattr(self.leader, name, value)

    def reset(self) -> None:
        raise TypeError("a thread's entry is not pooled")
