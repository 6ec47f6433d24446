"""signalfd and pidfd (kernel/syscalls/signals.py): the musl workload `sigfd` blocks two
signals, reads them back through a signalfd after sending them to itself with kill and with
pidfd_send_signal through a pidfd of its own, and prints what it read and what poll and epoll
said — the same as natively, on both engines and while it moves (the mask travels; the signals
are the process's pending ones)."""

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
    status, out, err, info = finish(machine, start(machine, "sigfd", "5"))
    assert (status, out, err) == native("sigfd", "5"), info.exit_reason
    assert info.unsupported == {}


@pytest.mark.parametrize("engine", ENGINES)
def test_through_migrations(make_machine: MakeMachine, engine: str) -> None:
    machines = [make_machine(name=f"m{i}", quantum_us=1000, engine=engine) for i in range(3)]
    pid = start(machines[0], "sigfd", "60")
    where, records = bounce(machines, pid, move=local_mover(), pause=0.005)
    assert records, "it ended before it moved"
    status, out, err, info = finish(machines[where], pid)
    assert (status, out, err) == native("sigfd", "60"), info.exit_reason
