"""The signals real programs meet besides their own (kernel/signals.py, kernel/syscalls/):
SIGPIPE from a write to a pipe nobody reads, a CPU fault handed to the
program's handler with si_addr, a sleep cut short by a handler (-EINTR and the time left),
and threads, which run, while new processes are -ENOSYS. Each guest's output is the native
run's on both engines."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from support.machines import finish, run_on_machine, start
from support.programs import native, need, run_native

from tender_ray.abi.linux import SEGV_MAPERR, Signal
from tender_ray.kernel import signals
from tender_ray.kernel.machine import Machine
from tender_ray.resources.process import Process

ENGINES = ["emulated", "native"]


def _run(machine: Machine, name: str, *args: str) -> tuple[int, bytes, bytes, str]:
    status, out, err, info = finish(machine, start(machine, name, *args))
    assert info.unsupported == {} or name == "threads", info.unsupported
    return status, out, err, info.exit_reason or ""


# --- SIGPIPE --------------------------------------------------------------------------------

@pytest.mark.parametrize("engine", ENGINES)
def test_sigpipe_matches_native(engine: str, make_machine: Callable[..., Machine]) -> None:
    machine = make_machine(quantum_us=1000, engine=engine)
    status, out, err, reason = _run(machine, "sigpipe")
    assert (status, out, err) == native("sigpipe"), reason
    # Ignored, handled (si_code SI_USER, from itself) or blocked (then pending): -EPIPE.
    assert b"handle: handler saw signal 13 code 0 from itself 1\n" in out
    assert b"block: pending 1\n" in out
    # The default action ends it at the write, as natively (the shell's 128 + 13).
    assert out.endswith(b"default: writing\n") and status == 128 + Signal.SIGPIPE
    assert reason == "killed by signal 13 (SIGPIPE)"


@pytest.mark.parametrize("engine", ENGINES)
def test_an_ignored_sigpipe_lets_the_program_go_on(engine: str,
                                                   make_machine: Callable[..., Machine]) -> None:
    machine = make_machine(quantum_us=1000, engine=engine)
    status, out, err, reason = _run(machine, "sigpipe", "ignore", "handle")
    assert (status, out, err) == native("sigpipe", "ignore", "handle") and status == 0, reason
    assert out.count(b"write -1 errno=32") == 2 and out.count(b"writev -1 errno=32") == 2


# --- faults to a handler --------------------------------------------------------------------

@pytest.mark.parametrize("engine", ENGINES)
def test_a_fault_goes_to_the_handler(engine: str, make_machine: Callable[..., Machine]) -> None:
    machine = make_machine(quantum_us=1000, engine=engine)
    status, out, err, reason = _run(machine, "segv_handler")
    assert (status, out, err) == native("segv_handler"), reason
    assert status == 3 and reason == "exited"  # the handler's _exit(3)
    assert b"read: signal 11 code 1 at 0x10000\n" in out
    assert b"write: signal 11 code 1 at 0x7e0000001000\n" in out
    assert b"again: signal 11 code 1 at 0x11000\n" in out  # siglongjmp gave the mask back
    assert b"divide: signal 8 code 1\nud2: signal 4 code 2\n" in out
    # A handler that maps the page and returns: the faulting store runs again.
    assert b"retry: fault at 0x30000, then 41 42\n" in out


@pytest.mark.parametrize("engine", ENGINES)
def test_a_stack_overflow_is_caught_on_the_alternate_stack(
        engine: str, make_machine: Callable[..., Machine]) -> None:
    machine = make_machine(quantum_us=1000, engine=engine)
    status, out, err, reason = _run(machine, "segv_handler", "overflow")
    assert (status, out, err) == native("segv_handler", "overflow") and status == 0, reason
    assert out == b"overflow: signal 11 code 1 on the alternate stack 1, deeper than 1000: 1\n"


@pytest.mark.parametrize("engine", ENGINES)
def test_without_a_handler_a_fault_still_kills(engine: str,
                                               make_machine: Callable[..., Machine]) -> None:
    machine = make_machine(quantum_us=1000, engine=engine)
    status, out, err, reason = _run(machine, "segv_handler", "default")
    assert (status, out, err) == native("segv_handler", "default") and status == 139
    assert reason == "write to unmapped address 0x10000 at 0x10000"


@pytest.mark.parametrize("engine", ENGINES)
def test_si_addr_inside_a_page(engine: str, make_machine: Callable[..., Machine]) -> None:
    machine = make_machine(quantum_us=1000, engine=engine)
    status, out, _, reason = _run(machine, "segv_handler", "offset")
    assert status == 0, reason
    if engine == "native":  # the host's CPU says the byte
        assert out == native("segv_handler", "offset")[1] == \
            b"offset: signal 11 code 1 at 0x10010\n"
    else:  # Unicorn's TLB fill is told only the page: si_addr is the page's start
        assert out == b"offset: signal 11 code 1 at 0x10000\n"


def _process_with_handler(sig: int) -> Process:
    p = Process()
    state = signals.of(p)
    state.actions[sig - 1] = signals.SigAction(handler=0x401000, flags=signals.SA_SIGINFO)
    return p


def test_a_fault_is_taken_only_by_a_handler_it_can_reach() -> None:
    p = _process_with_handler(Signal.SIGSEGV)
    state = signals.of(p)
    signals.queue(p, signals.SigInfo(Signal.SIGINT, signals.SI_USER))  # caught by default
    state.actions[Signal.SIGINT - 1] = signals.SigAction(handler=0x401000)
    assert signals.take_fault(p, Signal.SIGSEGV, SEGV_MAPERR, 0)
    assert state.deliverable() == Signal.SIGSEGV  # before the lower, older SIGINT
    assert state.pending[Signal.SIGSEGV] == signals.SigInfo(Signal.SIGSEGV, SEGV_MAPERR,
                                                            addr=0, fault=True)
    state.blocked = signals.bit(Signal.SIGSEGV)  # a fault in its own handler: Linux kills
    assert not signals.take_fault(p, Signal.SIGSEGV, SEGV_MAPERR, 0)
    state.blocked = 0
    state.actions[Signal.SIGSEGV - 1] = signals.SigAction(handler=signals.SIG_IGN)
    assert not signals.take_fault(p, Signal.SIGSEGV, SEGV_MAPERR, 0)
    assert not signals.take_fault(_process_with_handler(Signal.SIGUSR1), Signal.SIGUSR1, 1, 0)


# --- EINTR ----------------------------------------------------------------------------------

@pytest.mark.parametrize("engine", ENGINES)
def test_a_handled_signal_cuts_a_sleep_short(engine: str,
                                             make_machine: Callable[..., Machine]) -> None:
    machine = make_machine(quantum_us=1000, engine=engine)
    status, out, err, reason = _run(machine, "eintr")
    assert (status, out, err) == native("eintr"), reason
    assert out.startswith(b"nanosleep: -1 errno=4 (Interrupted system call) alarms 1\n"
                          b"nanosleep: time left between 4 and 4.9 s: 1\n")


# --- threads and new processes ----------------------------------------------------------------

# (More of threads in tests/unit/test_threads.py.)
@pytest.mark.parametrize("engine", ENGINES)
def test_a_thread_runs_as_natively(engine: str, make_machine: Callable[..., Machine]) -> None:
    machine = make_machine(quantum_us=1000, engine=engine)
    assert native("threads", "create") == (0, b"creating a thread\njoined: 42\n", b"")
    status, out, err, info = finish(machine, start(machine, "threads", "create"))
    assert (status, out, err) == native("threads", "create"), info.exit_reason
    assert info.unsupported == {}


@pytest.mark.parametrize("engine", ENGINES)
def test_a_debian_program_that_starts_a_thread_runs_as_natively(
        engine: str, make_machine: Callable[..., Machine]) -> None:
    # glibc's pthread_create tries clone3 first; xz -T2 starts a worker for its first block.
    need("/usr/bin/xz", "/etc/hostname")
    machine = make_machine(quantum_us=1000, engine=engine)
    args = ["-T2", "-c", "/etc/hostname"]
    status, out, err, info = run_on_machine(machine, "/usr/bin/xz", args)
    assert (status, out, err) == run_native("/usr/bin/xz", args), info.exit_reason
    assert info.syscalls["clone3"] == 1


@pytest.mark.parametrize("engine", ENGINES)
def test_posix_spawn_makes_a_process_and_the_program_goes_on(
        engine: str, make_machine: Callable[..., Machine]) -> None:
    machine = make_machine(quantum_us=1000, engine=engine)
    # musl's posix_spawn clones with CLONE_VM|CLONE_VFORK: a process (its own pid), not a thread.
    status, out, _, info = finish(machine, start(machine, "threads", "spawn"))
    assert (status, out) == (0, native("threads", "spawn")[1]), info.exit_reason
    assert out == b"posix_spawn: child exited 0\nstill running\n"
    assert info.unsupported == {}
