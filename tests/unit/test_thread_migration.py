"""A process with threads moves as one unit on the emulated engine: every thread is frozen at
an instruction boundary or a system-call stop, each thread's registers and own state travel,
and the destination makes the threads with their ids (one CPU context each). The musl pthread
workload (thread_hash: threads that wait in a mutex and a condition variable for their turn)
bounced over three machines prints what it prints natively, with threads caught waiting in a
futex at the moves, queued again at the destination and woken there; so does a move by
pre-copy. Thread ids do not change. A native machine refuses such an arriving process by name
(the native engine cannot make its threads yet), and a checkpoint of a process with threads is
refused by name; the process runs on."""

from __future__ import annotations

import os
import random
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from support.engines import NATIVE_OK, NATIVE_WHY
from support.machines import (
    assert_clean,
    bounce,
    bounce_enough,
    finish,
    local_mover,
    start,
    wait_until,
)
from support.programs import native, need, run_native

from tender_ray.errors import MigrationError, ProcessStateError
from tender_ray.kernel.machine import Machine
from tender_ray.migration.options import MigrationMode, MigrationOptions
from tender_ray.migration.record import MigrationRecord

MakeMachine = Callable[..., Machine]
QUANTUM = {"emulated": 200, "native": 1000}  # microseconds: several quanta per move
ARRIVAL_REFUSED = "engine cannot make for an arriving process yet"


native_only = pytest.mark.skipif(not NATIVE_OK, reason=NATIVE_WHY)
# The native engine refuses such a move by name (tests/unit/test_threads.py): it runs on.
ENGINES = [pytest.param("emulated")]


def _three(make_machine: MakeMachine, engine: str, computations: int = 1) -> list[Machine]:
    return [make_machine(name=f"t{i}", quantum_us=QUANTUM[engine], computations=computations,
                         engine=engine, pid_base=1000 * (i + 1)) for i in range(3)]


def _tids(machine: Machine, pid: int) -> set[int]:
    with machine.scheduler.lock:
        return set(machine.scheduler.table[pid].threads)


@pytest.mark.parametrize("computations", [1, 2])
@pytest.mark.parametrize("engine", ENGINES)
def test_a_process_with_threads_bounced_over_three_machines_prints_as_natively(
        make_machine: MakeMachine, engine: str, computations: int) -> None:
    machines = _three(make_machine, engine, computations)
    waiting: list[int] = []  # threads seen waiting in a futex just before each move
    move = local_mover()

    def watched(source: Machine, pid: int, destination: Machine) -> MigrationRecord:
        with source.scheduler.lock:
            p = source.scheduler.table[pid]
            waiting.append(sum(t.futex is not None and not t.futex.woken
                               for t in p.threads.values()))
        return move(source, pid, destination)

    def launch(scale: int) -> int:
        return start(machines[0], "thread_hash", str(min(16, 4 * scale)))

    scale, pid, where, records = bounce_enough(machines, launch, move=watched, enough=6,
                                               scales=(1, 4))
    status, out, err, info = finish(machines[where], pid)
    assert (status, out, err) == native("thread_hash", str(min(16, 4 * scale))), \
        info.exit_reason
    assert records and {r.destination for r in records} >= {"t1"}
    assert sum(waiting) > 0, "no move caught a thread waiting in a futex"
    for machine in machines:
        assert len(machine.syscalls.futexes) == 0  # nobody is left waiting
        assert_clean(machine)


DEBIAN = {"xz": ("/usr/bin/xz", "-T2", "-c"), "zstd": ("/usr/bin/zstd", "-T2", "-c")}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Numbered lines from a fixed seed, in growing sizes (about 0.6, 2.4 and 9.6 MB): input
    to compress, larger when a run ended before enough moves."""
    rng = random.Random(19)
    made = []
    for lines in (20_000, 80_000, 320_000):
        path = tmp_path_factory.mktemp("threads") / f"lines{lines}.txt"
        path.write_bytes("".join(f"{rng.randrange(10**6)} {'x' * rng.randrange(1, 40)} "
                                 f"{rng.randrange(10**4)}\n" for _ in range(lines)).encode())
        made.append(path)
    return made


@pytest.mark.parametrize("name", sorted(DEBIAN))
def test_debian_programs_with_threads_bounced_print_as_natively(
        make_machine: MakeMachine, inputs: list[Path], name: str) -> None:
    """Debian's `xz -T2` and `zstd -T2` (glibc's threads: clone3, futexes, the robust list
    refused) moved over three machines while they compress."""
    program, *flags = DEBIAN[name]
    need(program)
    machines = [make_machine(name=f"d{i}", quantum_us=1000, computations=2,
                             engine="emulated", memory_mib=512, pid_base=1000 * (i + 1))
                for i in range(3)]
    env = {"LC_ALL": "C", "PATH": "/usr/bin:/bin"}

    def launch(scale: int) -> int:
        argv = [program, *flags, os.fspath(inputs[scale])]
        return machines[0].exec(Path(program).read_bytes(), name, argv,
                                [f"{k}={v}" for k, v in env.items()])

    move = local_mover()
    threaded = [0]  # moves made while the process had more than one thread

    def watched(source: Machine, pid: int, destination: Machine) -> MigrationRecord:
        with source.scheduler.lock:
            threaded[0] += bool(source.scheduler.table[pid].members)
        return move(source, pid, destination)

    for scale in range(len(inputs)):  # a run whose threads all moved with it, or the largest
        threaded[0] = 0
        pid = launch(scale)
        where, _ = bounce(machines, pid, move=watched, pause=0.02)
        status, out, err, info = finish(machines[where], pid)
        expected = run_native(program, [*flags, os.fspath(inputs[scale])], env)
        assert (status, out, err) == expected[:3], info.exit_reason
        if threaded[0]:
            break
    assert threaded[0], "no move caught the process with its threads, even the largest run"
    assert info.syscalls.get("clone3", 0) + info.syscalls.get("clone", 0) >= 1
    for machine in machines:
        assert_clean(machine)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_process_with_threads_asked_for_precopy_moves_by_stop_and_copy(
        make_machine: MakeMachine, engine: str) -> None:
    """Pre-copy's rounds take the written pages off the process's one CPU, which a second
    thread's CPU could go on writing through unseen: a threaded process asked to move by
    pre-copy moves by stop-and-copy, every thread and its output as they were."""
    machines = _three(make_machine, engine)
    pid = start(machines[0], "thread_hash", "spin")
    wait_until(lambda: machines[0].scheduler.table[pid].stdout == b"ready\n",
               what="both spinning threads have begun", machine=machines[0])
    before = _tids(machines[0], pid)
    precopy = local_mover(MigrationOptions(mode=MigrationMode.PRECOPY))
    for i in range(3):
        record = precopy(machines[i % 3], pid, machines[(i + 1) % 3])
        assert record.ok and record.mode == "stop" and record.rounds == 0, record
        assert _tids(machines[(i + 1) % 3], pid) == before
    here = machines[0]
    here.kill(pid, signal.SIGTERM)
    status, out, _, info = finish(here, pid)
    assert (status, out) == (128 + 15, b"ready\n"), info.exit_reason
    for machine in machines:
        assert_clean(machine)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_thread_blocked_in_a_join_moves_and_the_ids_stay(make_machine: MakeMachine,
                                                           engine: str) -> None:
    machines = _three(make_machine, engine)
    pid = start(machines[0], "thread_hash", "spin")
    wait_until(lambda: machines[0].scheduler.table[pid].stdout == b"ready\n",
               what="both spinning threads have begun", machine=machines[0])
    before = _tids(machines[0], pid)
    assert len(before) == 3
    move = local_mover()
    for i in range(6):  # twice round the three machines
        move(machines[i % 3], pid, machines[(i + 1) % 3])
        assert _tids(machines[(i + 1) % 3], pid) == before
        assert not machines[i % 3].list_processes()
    here = machines[0]
    with here.scheduler.lock:
        first = here.scheduler.table[pid].threads[pid]
    # The first thread, joining a spinner, waits in a futex again here.
    wait_until(lambda: first.futex is not None, what="the joining thread waits here again",
               machine=here)
    here.kill(pid, signal.SIGTERM)
    status, out, _, info = finish(here, pid)
    assert (status, out) == (128 + 15, b"ready\n"), info.exit_reason
    for machine in machines:
        assert_clean(machine)


@native_only
def test_a_native_machine_refuses_an_arriving_process_with_threads_by_name(
        make_machine: MakeMachine) -> None:
    here = make_machine(name="e0", quantum_us=200, engine="emulated")
    there = make_machine(name="n0", quantum_us=1000, engine="native", pid_base=2000)
    pid = start(here, "thread_hash", "spin")
    wait_until(lambda: here.scheduler.table[pid].stdout == b"ready\n",
               what="both spinning threads have begun", machine=here)
    with pytest.raises(MigrationError, match=ARRIVAL_REFUSED):
        local_mover()(here, pid, there)
    assert there.list_processes() == []
    assert here.info(pid).state in ("running", "runnable", "sleeping")  # it runs on
    elsewhere = make_machine(name="e1", quantum_us=200, engine="emulated", pid_base=3000)
    local_mover()(here, pid, elsewhere)  # and it still moves to an engine that can
    elsewhere.kill(pid, signal.SIGKILL)
    status, out, _, info = finish(elsewhere, pid)
    assert (status, out) == (128 + 9, b"ready\n"), info.exit_reason
    for machine in (here, there, elsewhere):
        assert_clean(machine)


def test_a_checkpoint_of_a_process_with_threads_is_refused_and_it_runs_on(
        make_machine: MakeMachine, tmp_path: object) -> None:
    machine = make_machine(quantum_us=200, engine="emulated")
    pid = start(machine, "thread_hash", "spin")
    wait_until(lambda: machine.scheduler.table[pid].stdout == b"ready\n",
               what="both spinning threads have begun", machine=machine)
    with pytest.raises(ProcessStateError, match="cannot be checkpointed yet"):
        machine.checkpoint(pid)
    assert machine.info(pid).state in ("running", "runnable", "sleeping")
    machine.kill(pid, signal.SIGKILL)
    status, _, _, info = finish(machine, pid)
    assert status == 128 + 9, info.exit_reason
    assert_clean(machine)
