"""The engine protocol: one process's processor context, as the kernel drives it.

An engine loads and saves the engine-neutral `CpuState`, runs one quantum and says why it
stopped, and hands every system call to the kernel's handler. The scheduler, system calls and
migration know only this protocol, so a process image moves between engines.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from tender_ray.abi.cpu_state import CpuState, Stop, SyscallHandler
from tender_ray.resources.real_memory import RealMemory
from tender_ray.resources.virtual_space import VirtualSpace


class Engine(Protocol):
    """One process's processor context, owned by a kernel process."""

    def bind(self, space: VirtualSpace, handler: SyscallHandler) -> None: ...
    def load(self, state: CpuState) -> None: ...
    def save(self) -> CpuState: ...
    def run(self, quantum: int) -> Stop: ...
    # Ask a `run` in progress on another thread to end early (a freeze, a kill, a process
    # waiting for the computation); asked just before a run begins, it ends that run.
    def preempt(self) -> None: ...
    def reset(self) -> None: ...
    def close(self) -> None: ...
    # CPU seconds the last `run` spent outside the calling thread (a guest host process);
    # 0.0 for an engine that runs on the calling thread, whose own CPU time counts.
    last_run_cpu_seconds: float
    # Whether the engine marks the guest's own stores in its space's `dirty` pages (see
    # `resources.dirty_pages`); the kernel refuses write tracking where it does not.
    tracks_writes: bool

    def fs_base(self) -> int: ...
    def set_fs_base(self, value: int) -> None: ...


# Run the one instruction a state is at, over a machine's memory and a process's space, on an
# engine that can say what it did, and return how it stopped. The native engine explains the
# faults the host reports with it, so that both engines give the same reasons; `create` wires
# in the emulated CPU (the engines never import each other).
Replay = Callable[[RealMemory, VirtualSpace, CpuState], Stop]
