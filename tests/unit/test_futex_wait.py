"""A futex wait in a process with one thread ends as on Linux — a mismatch at once, a timeout
by its time, an untimed wait by a signal — rather than ending the process; a process waiting
that way for SIGTERM migrates while it waits and dies of SIGTERM's default action."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from support.machines import finish, local_mover, start, wait_until
from support.programs import native

from tender_ray.kernel.machine import Machine

ENGINES = ["emulated", "native"]


@pytest.mark.parametrize("engine", ENGINES)
def test_futex_waits_end_as_natively(engine: str, make_machine: Callable[..., Machine]) -> None:
    machine = make_machine(quantum_us=1000, engine=engine)
    status, out, err, info = finish(machine, start(machine, "futexwait"))
    assert (status, out, err) == native("futexwait"), info.exit_reason
    assert b"untimed wait (SA_RESTART): ended by the signal, word 1" in out


@pytest.mark.parametrize("engine", ENGINES)
def test_a_process_waiting_in_a_futex_moves_and_takes_sigterm(
        engine: str, make_machine: Callable[..., Machine]) -> None:
    source, target = (make_machine(name=n, quantum_us=1000, engine=engine) for n in ("a", "b"))
    pid = start(source, "futexwait", "wait")

    def waiting(machine: Machine) -> Callable[[], bool]:
        return lambda: (b"ready" in machine.scheduler.table[pid].stdout
                        and machine.info(pid).state == "sleeping")

    wait_until(waiting(source), what="the guest waits in its futex", machine=source)
    local_mover()(source, pid, target)
    wait_until(waiting(target), what="the guest waits again after its move", machine=target)
    target.kill(pid, 15)
    status, out, _, info = finish(target, pid)
    assert (status, out) == (128 + 15, b"ready\n"), info.exit_reason
    assert info.exit_reason == "killed by signal 15 (SIGTERM)"
