"""A Machine running real programs: exec/wait/reap, faults, memory, scheduling, stop."""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Callable

import pytest
from support.machines import (
    frames_free,
    holder,
    run_on_machine,
    start,
    wait_finished,
    wait_state,
    wait_until,
)
from support.programs import run_native, workload

from tender_ray.errors import (
    BadProgramError,
    MachineStoppedError,
    OutOfMemoryError,
    ProcessStateError,
    UnknownProcessError,
    UsageError,
)
from tender_ray.kernel import address_space as vm
from tender_ray.kernel.machine import Machine
from tender_ray.kernel.snapshots import ProcessInfo
from tender_ray.resources.program import parse_program

MakeMachine = Callable[..., Machine]
FOREVER = "4000000000"  # rmw_counter iterations that outlast any test


# --- one process, start to end -----------------------------------------------------------------

def test_hello_exec_wait_reap(machine: Machine) -> None:
    assert frames_free(machine)
    pid = start(machine, "hello")
    assert machine.info(pid).name == "hello"
    info = wait_finished(machine, pid)
    assert (info.state, info.exit_status, info.exit_reason) == ("zombie", 0, "exited")
    assert info.machine == machine.name and info.pid == pid
    assert info.syscalls.get("exit_group") == 1 and info.syscalls.get("writev", 0) >= 1
    assert info.unsupported == {}
    assert info.cpu_seconds > 0 and info.run_seconds >= 0
    assert frames_free(machine)  # an ended process holds no frame, even before reaping
    final, out, err = machine.reap(pid)
    assert (out, err) == (b"hello, tender\n", b"hello on stderr\n")
    assert final.exit_status == 0
    with pytest.raises(UnknownProcessError):
        machine.info(pid)
    with pytest.raises(UnknownProcessError):
        machine.reap(pid)
    stats = machine.statistics()
    assert stats.exited == 1 and stats.processes == {}
    assert stats.syscalls.get("exit_group") == 1


def test_take_output_collects_incrementally(machine: Machine) -> None:
    pid = start(machine, "hello")
    wait_finished(machine, pid)
    assert machine.take_output(pid) == (b"hello, tender\n", b"hello on stderr\n")
    assert machine.take_output(pid) == (b"", b"")
    _, out, err = machine.reap(pid)
    assert (out, err) == (b"", b"")


def test_exit_codes(machine: Machine) -> None:
    status, out, _, info = run_on_machine(machine, workload("exitcode"))
    assert status == 42 and info.exit_reason == "exited"
    assert (status, out) == run_native(workload("exitcode"))[:2]
    assert run_on_machine(machine, workload("exitcode"), ["7"])[0] == 7


def test_segv_kills_with_139_and_names_the_address(machine: Machine) -> None:
    status, out, err, info = run_on_machine(machine, workload("segv"))
    assert status == 128 + 11 == run_native(workload("segv"))[0]
    assert out == b"about to segfault\n" and err == b""
    assert "0x0" in info.exit_reason and "write" in info.exit_reason
    assert frames_free(machine)


def test_sigill_kills_with_132(machine: Machine) -> None:
    status, out, _, info = run_on_machine(machine, workload("sigill"))
    assert status == 128 + 4 == run_native(workload("sigill"))[0]
    assert "invalid instruction" in info.exit_reason
    assert out == run_native(workload("sigill"))[1]
    assert frames_free(machine)


def test_efault_returns_an_error_to_the_guest(machine: Machine) -> None:
    status, out, _, _ = run_on_machine(machine, workload("efault"))
    assert status == 0
    assert out == b"write(1, 0x10, 5) = -1 errno=14 (EFAULT ok)\n"


def test_unsupported_calls_get_enosys_and_are_counted(machine: Machine) -> None:
    status, out, _, info = run_on_machine(machine, workload("unsupported"))
    assert status == 0
    assert out == b"socket: -1 errno=38\nshmget: -1 errno=38\n"
    assert info.unsupported == {"shmget": 1, "socket": 1}
    assert info.syscalls["socket"] == 1 and info.syscalls["shmget"] == 1
    assert machine.statistics().unsupported == {"shmget": 1, "socket": 1}
    assert frames_free(machine)


def test_arguments_and_environment_reach_the_program(machine: Machine) -> None:
    path = workload("args")
    env = {"TENDER_TEST": "x=1 y"}
    status, out, err, _ = run_on_machine(machine, path, ["one", "two words", ""], env)
    assert (status, out, err) == run_native(path, ["one", "two words", ""], env)
    assert b"argv[2]=two words\n" in out and b"TENDER_TEST=x=1 y\n" in out


def test_every_frame_comes_back_after_many_processes(machine: Machine) -> None:
    for name, args in [("hello", []), ("segv", []), ("bigmmap", ["2"]), ("deepstack", ["5000"]),
                       ("mallocstress", ["500"])]:
        status, *_ = run_on_machine(machine, workload(name), args)
        assert status in (0, 139)
        assert frames_free(machine), name
    stats = machine.statistics()
    assert stats.exited == 5
    for mgr in stats.managers:
        assert mgr.live == 0, mgr


# --- the resource managers of a machine ------------------------------------------------------

def test_machine_reuses_processes_and_regions(make_machine: MakeMachine) -> None:
    machine = make_machine(pool_size=2)
    before = {s.resource: s for s in machine.statistics().managers}
    assert before["process"].pool == 2 and before["process"].created == 2
    for _ in range(3):
        assert run_on_machine(machine, workload("hello"))[0] == 0
    after = {s.resource: s for s in machine.statistics().managers}
    assert after["process"].created == 2  # every exec was served by the pool or held ones
    assert after["process"].reused == 3 and after["process"].live == 0
    assert after["virtual_region"].reused > 0
    assert after["virtual_space"].created == 1 and after["virtual_space"].reused == 2


def test_machine_without_reuse_creates_and_deletes(make_machine: MakeMachine) -> None:
    machine = make_machine(reuse=False, pool_size=2)
    for _ in range(2):
        assert run_on_machine(machine, workload("hello"))[0] == 0
    stats = {s.resource: s for s in machine.statistics().managers}
    for s in stats.values():
        assert s.reuse is False and s.reused == 0 and s.held == 0 and s.pool == 0, s
        assert s.created == s.deleted and s.live == 0, s
    assert stats["process"].created == 2


# --- bad requests --------------------------------------------------------------------------------

def _no_such_file(path: str) -> bytes:
    raise FileNotFoundError(2, "No such file or directory", "/nowhere/ld.so")


def test_exec_of_bytes_that_are_not_elf(machine: Machine) -> None:
    with pytest.raises(BadProgramError, match="not an ELF"):
        machine.exec(b"\x00" * 4096, "zeros", ["zeros"])
    with open("/bin/true", "rb") as f:
        dynamic = f.read()
    if b"ld-linux" in dynamic:  # a dynamically linked host binary whose loader is missing
        with pytest.raises(BadProgramError, match=r"dynamic loader /\S+ cannot be read"):
            machine.exec(dynamic, "true", ["true"], read_file=_no_such_file)
    stats = machine.statistics()
    assert stats.processes == {} and frames_free(machine)
    assert {s.resource: s.live for s in stats.managers}["process"] == 0
    assert run_on_machine(machine, workload("hello"))[0] == 0  # still serving


def _enlarged_hello(extra: int) -> bytes:
    """hello with its last PT_LOAD stretched over `extra` more bytes of file."""
    image = bytearray(workload("hello").read_bytes())
    phoff, = struct.unpack_from("<Q", image, 32)
    phentsize, phnum = struct.unpack_from("<HH", image, 54)
    last = max((phoff + i * phentsize for i in range(phnum)
                if struct.unpack_from("<I", image, phoff + i * phentsize)[0] == 1),
               key=lambda at: struct.unpack_from("<Q", image, at + 16)[0])
    offset, = struct.unpack_from("<Q", image, last + 8)
    image += bytes(extra)
    size = len(image) - offset
    struct.pack_into("<QQ", image, last + 32, size, size)  # p_filesz, p_memsz
    return bytes(image)


def test_exec_of_a_program_too_big_for_real_memory(make_machine: MakeMachine) -> None:
    machine = make_machine(memory_mib=1)
    big = _enlarged_hello(2 << 20)
    with pytest.raises(BadProgramError, match="too big for real memory"):
        machine.exec(big, "big", ["big"])
    assert frames_free(machine) and machine.statistics().processes == {}
    assert run_on_machine(machine, workload("hello"))[0] == 0


def test_exec_when_memory_is_in_use_elsewhere(make_machine: MakeMachine) -> None:
    machine = make_machine(memory_mib=1)
    taken = machine.memory.allocate(machine.memory.free_frames - 2)  # another user's frames
    try:
        with pytest.raises(OutOfMemoryError):
            start(machine, "hello")
        assert machine.memory.free_frames == 2  # the failed exec kept nothing
        assert machine.statistics().processes == {}
        assert {s.resource: s.live for s in machine.statistics().managers} == {
            "process": 0, "virtual_space": 0, "virtual_region": 0, "virtual_user_space": 0}
    finally:
        machine.memory.free(taken)
    assert run_on_machine(machine, workload("hello"))[0] == 0
    assert frames_free(machine)


def test_exec_with_large_arguments_when_memory_is_tight(make_machine: MakeMachine) -> None:
    machine = make_machine(memory_mib=1)
    image = workload("hello").read_bytes()
    need = vm.frames_needed(parse_program(image, "hello"))
    taken = machine.memory.allocate(machine.memory.free_frames - need)
    try:
        with pytest.raises(OutOfMemoryError):
            machine.exec(image, "hello", ["hello", "x" * 12_000])  # 3 pages of strings
        assert machine.memory.free_frames == need
    finally:
        machine.memory.free(taken)


def test_exec_with_arguments_larger_than_the_stack(machine: Machine) -> None:
    image = workload("hello").read_bytes()
    with pytest.raises(UsageError):
        machine.exec(image, "hello", ["hello", *["y" * 100_000] * 90])  # 9 MB
    assert frames_free(machine)


def test_running_out_of_memory_at_run_time(make_machine: MakeMachine) -> None:
    """bigmmap 4 on a 1 MiB machine: mmap succeeds (pages come on touch), touching them
    cannot. The process must end with a signal status, the machine must keep serving and
    every frame must come back."""
    machine = make_machine(memory_mib=1)
    status, out, _, info = run_on_machine(machine, workload("bigmmap"), ["4"])
    assert out.startswith(b"bigmmap: 4 MiB\n")
    assert status > 128, info
    assert "memory" in info.exit_reason
    assert frames_free(machine)
    assert run_on_machine(machine, workload("hello"))[:2] == (0, b"hello, tender\n")
    assert frames_free(machine)


def test_running_out_of_memory_is_not_an_engine_failure(make_machine: MakeMachine) -> None:
    machine = make_machine(memory_mib=1)
    status, _, _, info = run_on_machine(machine, workload("bigmmap"), ["4"])
    assert "engine" not in info.exit_reason, info.exit_reason
    assert status == 128 + 9  # what the Linux OOM killer does


def test_unknown_and_unfinished_processes(machine: Machine) -> None:
    for call in (machine.info, machine.wait, machine.reap, machine.kill, machine.take_output):
        with pytest.raises(UnknownProcessError):
            call(12345)
    pid = start(machine, "rmw_counter", FOREVER)
    info = machine.wait(pid, timeout=0.05)
    assert info.state in ("running", "runnable") and info.exit_status is None
    with pytest.raises(ProcessStateError):
        machine.reap(pid)
    assert [p.pid for p in machine.list_processes()] == [pid]
    machine.kill(pid)
    wait_finished(machine, pid)


# --- killing ------------------------------------------------------------------------------------

def test_kill_of_a_running_process_returns_its_frames(make_machine: MakeMachine) -> None:
    machine = make_machine(quantum_us=1000)
    pid = start(machine, "rmw_counter", FOREVER)
    wait_state(machine, pid, "running")
    assert machine.statistics().memory.frames_used > 0
    killed = machine.kill(pid)
    assert (killed.exit_status, killed.exit_reason) == (128 + 9, "killed by signal 9 (SIGKILL)")
    info = wait_finished(machine, pid, timeout=10)
    assert info.exit_status == 137
    assert machine.kill(pid).exit_status == 137  # killing a zombie changes nothing
    machine.reap(pid)
    assert frames_free(machine)
    assert run_on_machine(machine, workload("hello"))[0] == 0


def test_kill_of_a_sleeping_and_of_a_runnable_process(make_machine: MakeMachine) -> None:
    # Long quanta: while `busy` holds the computation, the others cannot change state.
    machine = make_machine(quantum_us=300_000)
    sleeper = start(machine, "compute_sleep", "1000")
    busy = start(machine, "rmw_counter", FOREVER)
    wait_until(lambda: machine.info(sleeper).state == "sleeping" and holder(machine) == busy,
               10.0, "the sleeper sleeps while busy runs", machine=machine)
    used = machine.statistics().memory.frames_used
    info = machine.kill(sleeper, 15)
    assert (info.state, info.exit_status) == ("zombie", 128 + 15)
    assert info.resident_pages == 0  # not running: finished at once ...
    assert machine.statistics().memory.frames_used < used  # ... its frames back already
    waiting = start(machine, "rmw_counter", FOREVER)
    wait_until(lambda: {machine.info(pid).state for pid in (busy, waiting)} ==
               {"running", "runnable"} and holder(machine) in (busy, waiting),
               10.0, "one rmw_counter waits while the other runs", machine=machine)
    runnable = busy if holder(machine) == waiting else waiting
    info = machine.kill(runnable)
    assert (info.state, info.exit_status, info.resident_pages) == ("zombie", 137, 0)
    machine.kill(busy if runnable == waiting else waiting)
    for pid in (sleeper, busy, waiting):
        wait_finished(machine, pid, timeout=10)
        machine.reap(pid)
    assert frames_free(machine)
    assert machine.statistics().exited == 3
    assert run_on_machine(machine, workload("hello"))[0] == 0


def test_sleeping_processes_hold_no_computation(make_machine: MakeMachine) -> None:
    """While a process sleeps, the computation runs another one."""
    machine = make_machine(quantum_us=300_000)
    sleeper = start(machine, "timecheck")
    busy = start(machine, "rmw_counter", FOREVER)
    wait_until(lambda: machine.info(sleeper).state == "sleeping" and holder(machine) == busy,
               10.0, "the sleeper sleeps while busy runs", machine=machine)
    machine.kill(busy)
    assert wait_finished(machine, sleeper).exit_status == 0
    _, out, _ = machine.reap(sleeper)
    assert out.count(b": ok\n") == 3, out  # it slept its 20 ms, then ran on
    wait_finished(machine, busy)


def test_wait_returns_only_after_the_process_is_released(make_machine: MakeMachine) -> None:
    """After wait() returns, reap() must be safe: the process must not still hold a
    computation. With a long quantum, kill() of a running process leaves a window of up to
    a whole quantum in which wait() has returned, reap() would succeed and hand the process
    (and its CPU, still running) back to the pool, and the computation later releases the
    address space of whatever the pooled entry has become (the kernel space, or the next
    process: seen as an IndexError in VirtualRegion.populate during a later exec)."""
    machine = make_machine(quantum_us=300_000)
    pid = start(machine, "rmw_counter", FOREVER)
    wait_state(machine, pid, "running")
    machine.kill(pid)
    info = machine.wait(pid, timeout=5)
    assert info.state == "zombie"
    try:
        holders = [c.pid for c in machine.statistics().computations]
        assert pid not in holders, "wait() returned while a computation still runs the process"
        assert frames_free(machine)
    finally:
        wait_finished(machine, pid)  # let the quantum end before the machine stops


def test_kill_of_a_process_entering_sleep_finishes_it_once(make_machine: MakeMachine,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The computation thread can lose the processor right after nanosleep's handler (a GIL
    switch, host load); the delay below makes that moment last. The process is SLEEPING but
    still on its computation: kill() must leave finishing it to the computation. (Finishing it
    here too would count it twice and hand the machine's kernel space to the virtual-space
    manager, from which the next exec would take it as a user space.)"""
    original = Machine.sleep_process
    entered = threading.Event()

    def descheduled_after_sleep(self: Machine, p: object, seconds: float) -> None:
        original(self, p, seconds)  # type: ignore[arg-type]
        entered.set()
        time.sleep(0.3)

    monkeypatch.setattr(Machine, "sleep_process", descheduled_after_sleep)
    machine = make_machine()
    pid = start(machine, "timecheck")
    assert entered.wait(10)
    assert machine.info(pid).state == "sleeping"
    machine.kill(pid)
    wait_finished(machine, pid)
    stats = machine.statistics()
    spaces = {s.resource: s for s in stats.managers}["virtual_space"]
    assert machine.kernel_space not in machine.managers.spaces._held
    assert spaces.held <= spaces.created, spaces
    assert stats.exited == 1
    assert stats.syscalls["nanosleep"] == 1


# --- scheduling ----------------------------------------------------------------------------------

def _run_concurrently(machine: Machine, name: str, args: list[str],
                      count: int) -> list[tuple[int, bytes, bytes, ProcessInfo]]:
    pids = [start(machine, name, *args) for _ in range(count)]
    results = []
    for pid in pids:
        wait_finished(machine, pid)
        info, out, err = machine.reap(pid)
        assert info.exit_status is not None
        results.append((info.exit_status, out, err, info))
    return results


def test_processes_are_time_sliced_on_one_computation(make_machine: MakeMachine) -> None:
    # emulated: natively these sieves end within a few quanta, so nothing would be sliced
    machine = make_machine(quantum_us=1000, quantum_growth=1, engine="emulated")
    native = run_native(workload("sieve"), ["2000000"])
    results = _run_concurrently(machine, "sieve", ["2000000"], 4)
    for status, out, err, _ in results:
        assert (status, out, err) == native
    quanta = machine.statistics().computations[0].quanta
    assert quanta > 4 * 10
    # Round robin: even the first process shared the computation with the others, so it
    # took several times its own CPU time to finish (run to completion would give ~1x).
    ratios = [info.run_seconds / info.cpu_seconds for *_, info in results]
    assert min(ratios) > 2.0, ratios
    assert frames_free(machine)


def test_two_computations_share_the_work(make_machine: MakeMachine) -> None:
    machine = make_machine(computations=2, quantum_us=1000)
    native = run_native(workload("sieve"), ["1000000"])
    results = _run_concurrently(machine, "sieve", ["1000000"], 4)
    for status, out, err, _ in results:
        assert (status, out, err) == native
    stats = machine.statistics()
    assert len(stats.computations) == 2
    assert all(c.quanta > 0 and c.busy_seconds > 0 for c in stats.computations), \
        stats.computations
    assert all(c.state == "idle" and c.pid is None for c in stats.computations)
    assert frames_free(machine)


def test_compute_and_sleep_interleaved(make_machine: MakeMachine) -> None:
    machine = make_machine(quantum_us=1000)
    native = run_native(workload("compute_sleep"), ["4"])
    for status, out, err, _ in _run_concurrently(machine, "compute_sleep", ["4"], 3):
        assert (status, out, err) == native


def test_statistics_answer_while_a_long_process_runs(machine: Machine) -> None:
    pid = start(machine, "rmw_counter", FOREVER)
    wait_state(machine, pid, "running")
    last_quanta = -1
    # The process never ends and keeps its computation busy: each answer below came while it
    # ran (how fast it came depends on the host, so it is not timed).
    for _ in range(20):
        stats = machine.statistics()
        assert stats.state == "running" and stats.name == machine.name
        assert sum(stats.processes.values()) == 1
        assert set(stats.processes) <= {"running", "runnable"}
        assert stats.runnable == 1 and stats.load == 1.0
        (comp,) = stats.computations
        assert comp.pid in (pid, None) and comp.quanta >= last_quanta
        last_quanta = comp.quanta
        assert stats.memory.frames_used > 0
        assert 0.0 <= stats.utilisation <= 1.0 + 1e-6
        time.sleep(0.01)
    assert last_quanta > 0
    machine.kill(pid)
    wait_finished(machine, pid)


# --- stopping the machine ------------------------------------------------------------------------

def test_stop_while_processes_run(make_machine: MakeMachine) -> None:
    machine = make_machine(quantum_us=5000)
    pids = [start(machine, "rmw_counter", FOREVER) for _ in range(3)]
    pids.append(start(machine, "compute_sleep", "1000"))
    wait_state(machine, pids[0], "running")
    results: dict[int, object] = {}

    def waiter(pid: int) -> None:
        try:
            results[pid] = machine.wait(pid)
        except Exception as exc:  # what the waiter sees is the point of the test
            results[pid] = exc

    threads = [threading.Thread(target=waiter, args=(pid,), daemon=True) for pid in pids]
    for t in threads:
        t.start()
    time.sleep(0.05)
    began = time.monotonic()
    machine.stop()
    assert time.monotonic() - began < 10
    for t in threads:
        t.join(10)
        assert not t.is_alive(), "a wait() hung after stop()"
    for pid in pids:
        r = results[pid]
        assert isinstance(r, MachineStoppedError) or (
            isinstance(r, ProcessInfo) and r.state == "zombie"), r
    stats = machine.statistics()
    assert stats.state == "stopped"
    assert all(c.state == "stopped" for c in stats.computations)
    assert frames_free(machine)
    with pytest.raises(MachineStoppedError):
        start(machine, "hello")
    machine.stop()  # a second stop is harmless
