"""Engines: what runs a Tender process's instructions.

`emulated` is the Unicorn CPU in `cpu.py`: portable, exactly preemptible. Every engine offers
the same small interface (the `Engine` protocol), so the machine, the scheduler and migration
do not know which one runs a process.
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
    def reset(self) -> None: ...
    def close(self) -> None: ...
    def fs_base(self) -> int: ...
    def set_fs_base(self, value: int) -> None: ...


ENGINES = ("emulated",)


def resolve(name: str) -> tuple[str, str]:
    """The engine to use for a requested name ('auto' picks the best that works here), and a
    one-line notice when the request could not be honoured (empty otherwise)."""
    if name in ("auto", "emulated"):
        return "emulated", ""
    return "emulated", f"engine {name!r} is not available here; using the emulated CPU"


def create(name: str, memory: RealMemory, *, exact: bool = False) -> Engine:
    """A new processor context of engine `name` (already resolved) over `memory`."""
    return Cpu(memory, exact=exact)
