"""Engines: what runs a Tender process's instructions.

`emulated` is the Unicorn CPU in `cpu.py`: portable, exactly preemptible. `native` (Linux
x86-64, `native.py`) runs the process as a host process traced by its machine, every system
call served by the machine, at about native speed. Every engine offers the same small interface
(the `Engine` protocol), so the machine, the scheduler and migration do not know which one runs
a process, and a process image moves between them.
"""

from __future__ import annotations

from typing import Protocol

from .cpu import Cpu, CpuState, Stop, SyscallHandler
from .resources.real_memory import RealMemory
from .resources.virtual_space import VirtualSpace


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

    def fs_base(self) -> int: ...
    def set_fs_base(self, value: int) -> None: ...


ENGINES = ("native", "emulated")


def resolve(name: str, *, exact: bool = False) -> tuple[str, str]:
    """The engine to use for a requested name ('auto' picks the best that works here), and a
    one-line notice when the request could not be honoured (empty otherwise).

    'auto' and 'native' are native where the start-up self-check (a traced probe, bounded by a
    timeout) passes; exact (instruction-counted) quanta exist only on the emulated CPU.
    """
    if name == "emulated":
        return "emulated", ""
    if name not in ("auto", "native"):
        return "emulated", f"engine {name!r} is unknown; using the emulated CPU"
    if exact:
        return "emulated", ("" if name == "auto" else
                            "exact quanta need the emulated CPU; using it instead of native")
    from .native import self_check

    ok, why = self_check()
    if ok:
        return "native", ""
    return "emulated", f"native engine unavailable: {why}; using the emulated CPU"


def create(name: str, memory: RealMemory, *, exact: bool = False) -> Engine:
    """A new processor context of engine `name` (already resolved) over `memory`.

    The native engine needs `memory` to be shared (RealMemory(..., shared=True)).
    """
    if name == "native" and not exact:
        from .native import NativeCpu

        return NativeCpu(memory)
    return Cpu(memory, exact=exact)
