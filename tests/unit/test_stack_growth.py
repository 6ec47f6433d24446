"""A stack grows down when touched just below it (kernel/syscalls/memory.py `grow_stack`, from
the machine's fault path): the musl workload `growsdown` grows a MAP_GROWSDOWN mapping page by
page and by a jump, reads its size in /proc/self/maps, and is refused (SIGSEGV, caught) past
RLIMIT_STACK and inside the guard gap above an accessible mapping — the same as natively, on
both engines and while it migrates (the grown area travels as any other)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from support.engines import ENGINES
from support.machines import bounce, finish, local_mover, start
from support.programs import native

from tender_ray.kernel.machine import Machine

MakeMachine = Callable[..., Machine]


@pytest.mark.parametrize("engine", ENGINES)
def test_as_natively(make_machine: MakeMachine, engine: str) -> None:
    machine = make_machine(quantum_us=1000, engine=engine)
    status, out, err, info = finish(machine, start(machine, "growsdown"))
    assert (status, out, err) == native("growsdown"), info.exit_reason
    assert info.unsupported == {}


@pytest.mark.parametrize("engine", ENGINES)
def test_through_migrations(make_machine: MakeMachine, engine: str) -> None:
    machines = [make_machine(name=f"m{i}", quantum_us=1000, engine=engine) for i in range(2)]
    pid = start(machines[0], "growsdown")
    # Moves while it grows its stacks; a few dozen are enough (each copies the deep stack).
    where, records = bounce(machines, pid, move=local_mover(), pause=0.005, max_moves=30)
    assert records, "it ended before it moved"
    status, out, err, info = finish(machines[where], pid)
    assert (status, out, err) == native("growsdown"), info.exit_reason
