"""Signals of a single-threaded guest (kernel/signals.py, kernel/syscalls/signals.py): handlers,
masks, the alternate stack, timers and siglongjmp give the native run's output byte for byte
on both engines, through many migrations too; `Machine.kill` queues a signal for the
handler or takes its default action; SIGKILL always ends."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from support.machines import bounce_enough, finish, local_mover, start, wait_until
from support.programs import native, run_native, workload

from tender_ray.kernel.machine import Machine

ENGINES = ["emulated", "native"]


@pytest.mark.parametrize("engine", ENGINES)
def test_signals_match_native(engine: str, make_machine: Callable[..., Machine]) -> None:
    machine = make_machine(quantum_us=1000, engine=engine)
    expected = native("signals")
    status, out, err, info = finish(machine, start(machine, "signals"))
    assert (status, out, err) == expected, info.exit_reason
    assert info.exit_reason == "killed by signal 10 (SIGUSR1)"  # the last, default, raise
    assert info.unsupported == {}


def test_signals_through_migrations(make_machine: Callable[..., Machine]) -> None:
    machines = [make_machine(name=f"m{i}", quantum_us=1000, engine="emulated")
                for i in range(2)]
    # The workload takes no size: a run that ended after too few moves is run again.
    _, pid, where, _ = bounce_enough(machines, lambda _scale: start(machines[0], "signals"),
                                     move=local_mover(), enough=5, scales=(1, 1, 1),
                                     pause=0.02)
    status, out, err, info = finish(machines[where], pid)
    assert (status, out, err) == native("signals"), info.exit_reason


def _ready(machine: Machine, pid: int) -> None:
    def printed() -> bool:
        p = machine.scheduler.table[pid]
        return b"ready" in p.stdout and machine.info(pid).state == "sleeping"
    wait_until(printed, what="the guest waits in pause()", machine=machine)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("handler", [True, False])
def test_kill_sigterm(engine: str, handler: bool, make_machine: Callable[..., Machine]) -> None:
    machine = make_machine(quantum_us=1000, engine=engine)
    args = ("handler",) if handler else ("wait",)
    pid = start(machine, "sigterm", *args)
    _ready(machine, pid)
    machine.kill(pid, 15)
    status, out, _, info = finish(machine, pid)
    if handler:
        assert (status, out) == (0, b"ready\nhandler: signal 15\n"), info.exit_reason
    else:
        assert status == 128 + 15
        assert info.exit_reason == "killed by signal 15 (SIGTERM)"


def test_sigkill_always_ends(make_machine: Callable[..., Machine]) -> None:
    machine = make_machine(quantum_us=1000)
    pid = start(machine, "sigterm", "handler")
    _ready(machine, pid)
    machine.kill(pid, 9)
    status, _, _, info = finish(machine, pid)
    assert status == 128 + 9 and "SIGKILL" in (info.exit_reason or "")


def test_native_default_is_the_reference() -> None:
    # The host's run of the same binary ends by SIGUSR1's default action: 128 + 10.
    assert run_native(workload("signals"))[0] == 128 + 10
