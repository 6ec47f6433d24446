"""Engines: what runs a Tender process's instructions.

`emulated/` is the Unicorn CPU: portable, exactly preemptible. `native/` (Linux x86-64) runs
the process as a host process traced by its machine, every system call served by the machine,
at about native speed. Every engine offers the same small interface (`base.Engine`), so the
kernel and migration do not know which one runs a process, and a process image moves between
them. Engines may import `abi/`, `resources/` and `errors`; the two engines never import each
other, and only `create` and `resolve` (below) load one, on first use.
"""

from __future__ import annotations

from tender_ray.abi.cpu_state import CpuState, Stop
from tender_ray.engines.base import Engine
from tender_ray.resources.real_memory import RealMemory
from tender_ray.resources.virtual_space import VirtualSpace

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
    from tender_ray.engines.native import self_check

    ok, why = self_check()
    if ok:
        return "native", ""
    return "emulated", f"native engine unavailable: {why}; using the emulated CPU"


def create(name: str, memory: RealMemory, *, exact: bool = False) -> Engine:
    """A new processor context of engine `name` (already resolved) over `memory`.

    The native engine needs `memory` to be shared (RealMemory(..., shared=True)).
    """
    if name == "native" and not exact:
        from tender_ray.engines.native import NativeCpu

        return NativeCpu(memory, replay=_replay_emulated)
    from tender_ray.engines.emulated import Cpu

    return Cpu(memory, exact=exact)


def vdso_areas(name: str) -> tuple[int, list[tuple[int, bytes, int]]] | None:
    """The vDSO a new process of engine `name` gets in its image: (its address for
    AT_SYSINFO_EHDR, the areas to map as (address, contents, perms)); None for no vDSO (the
    emulated CPU: its clock reads are system calls whatever it maps)."""
    if name != "native":
        return None
    from tender_ray.engines.native import vdso

    return vdso.areas()


def _replay_emulated(memory: RealMemory, space: VirtualSpace, state: CpuState) -> Stop:
    """How the emulated CPU stops on the one instruction at `state` (how the native engine
    explains a fault: `base.Replay`). Loads the emulated engine at the first fault only."""
    from tender_ray.engines.emulated import replay

    return replay(memory, space, state)


__all__ = ["ENGINES", "Engine", "create", "resolve", "vdso_areas"]
