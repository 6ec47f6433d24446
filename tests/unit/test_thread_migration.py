"""A process with threads moves as one unit on both engines and between them: every thread is
frozen at an instruction boundary or a system-call stop (on the native engine each host
thread in a ptrace stop), each thread's registers and own state travel, and the destination
makes the threads with their ids (one CPU context each; on the native engine host threads
cloned from the new host process's first). The musl pthread workload (thread_hash: threads
that wait in a mutex and a condition variable for their turn) bounced over three machines
prints what it prints natively, with threads caught waiting in a futex at the moves, queued
again at the destination and woken there; so do Debian's `xz -T2` and `zstd -T2`, and a
process bounced between emulated and native machines. A move by pre-copy is a stop-and-copy.
Thread ids do not change; a first thread blocked in a join (a futex) and a python3 thread
blocked in a read of its standard input are moved in that state and go on there. A
checkpoint of a process with threads is refused by name; the process runs on."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from support.engines import NATIVE_OK, NATIVE_WHY
from support.machines import (
    GUEST_TIMEOUT,
    ThreadedMoves,
    assert_clean,
    bounce,
    bounce_enough,
    finish,
    local_mover,
    start,
    wait_until,
)
from support.programs import native, need, run_native

from tender_ray.errors import ProcessStateError
from tender_ray.kernel.machine import Machine
from tender_ray.migration.options import MigrationMode, MigrationOptions
from tender_ray.migration.record import MigrationRecord
from tender_ray.resources.process import RunState

MakeMachine = Callable[..., Machine]
QUANTUM = {"emulated": 200, "native": 1000}  # microseconds: several quanta per move


native_only = pytest.mark.skipif(not NATIVE_OK, reason=NATIVE_WHY)
ENGINES = [pytest.param("emulated"), pytest.param("native", marks=native_only)]


def _three(make_machine: MakeMachine, engine: str, computations: int = 1) -> list[Machine]:
    return [make_machine(name=f"t{i}", quantum_us=QUANTUM[engine], computations=computations,
                         engine=engine, pid_base=1000 * (i + 1)) for i in range(3)]


def _threads_or_ended(machine: Machine, pid: int) -> bool:
    """Whether process `pid` has made its threads (or has already ended)."""
    with machine.scheduler.lock:
        p = machine.scheduler.table.get(pid)
        return p is None or p.state is RunState.ZOMBIE or bool(p.members)


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

    def in_futex(source: Machine, pid: int) -> int | None:
        """Its threads waiting in a futex now (None: it has ended)."""
        with source.scheduler.lock:
            p = source.scheduler.table.get(pid)
            if p is None or p.state is RunState.ZOMBIE:
                return None
            return sum(t.futex is not None and not t.futex.woken for t in p.threads.values())

    def watched(source: Machine, pid: int, destination: Machine) -> MigrationRecord:
        # Until one move has caught a thread in a futex, each waits for that moment (its
        # threads take turns through a mutex and a condition variable: one comes soon); a
        # fast engine's threads are seldom caught there by chance.
        deadline = time.monotonic() + (5.0 if not sum(waiting) else 0.0)
        while not (seen := in_futex(source, pid)) and seen is not None \
                and time.monotonic() < deadline:
            time.sleep(0.0005)
        waiting.append(seen or 0)
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


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("name", sorted(DEBIAN))
def test_debian_programs_with_threads_bounced_print_as_natively(
        make_machine: MakeMachine, inputs: list[Path], name: str, engine: str) -> None:
    """Debian's `xz -T2` and `zstd -T2` (glibc's threads: clone3, futexes, the robust list
    refused) moved over three machines while they compress."""
    program, *flags = DEBIAN[name]
    need(program)
    machines = [make_machine(name=f"d{i}", quantum_us=1000, computations=2,
                             engine=engine, memory_mib=512, pid_base=1000 * (i + 1))
                for i in range(3)]
    env = {"LC_ALL": "C", "PATH": "/usr/bin:/bin"}

    def launch(scale: int) -> int:
        argv = [program, *flags, os.fspath(inputs[scale])]
        return machines[0].exec(Path(program).read_bytes(), name, argv,
                                [f"{k}={v}" for k, v in env.items()])

    for scale in range(len(inputs)):  # a run whose threads all moved with it, or the largest
        move = ThreadedMoves()
        pid = launch(scale)
        where, _ = bounce(machines, pid, move=move, pause=0.02)
        status, out, err, info = finish(machines[where], pid)
        expected = run_native(program, [*flags, os.fspath(inputs[scale])], env)
        assert (status, out, err) == expected[:3], info.exit_reason
        if move.threaded:
            break
    assert move.threaded, "no move caught the process with its threads, even the largest run"
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
        source = machines[i % 3]
        with source.scheduler.lock:
            first = source.scheduler.table[pid].threads[pid]
        # The first thread, joining a spinner, is caught waiting in a futex by each move.
        wait_until(lambda first=first: first.futex is not None and not first.futex.woken,
                   what="the joining thread waits in a futex", machine=source)
        move(source, pid, machines[(i + 1) % 3])
        assert _tids(machines[(i + 1) % 3], pid) == before
        assert not source.list_processes()
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


READER = """
import sys, threading
got = []
def read():
    got.append(sys.stdin.buffer.readline())
t = threading.Thread(target=read)
t.start()
print("ready", flush=True)
t.join()
print(got[0].decode().upper(), end="")
"""


@native_only
def test_a_thread_blocked_in_a_read_of_stdin_moves_and_reads_there(
        make_machine: MakeMachine) -> None:
    """python3's second thread waits in a read of its standard input, its first in a join
    (a futex): moved native to native three times in that state, the read issued again at
    each destination, it reads what is fed at the last one and prints as natively."""
    python = "/usr/bin/python3"
    need(python)
    machines = _three(make_machine, "native")
    env = ["LC_ALL=C", "PATH=/usr/bin:/bin"]
    pid = machines[0].exec(Path(python).read_bytes(), "python3", [python, "-c", READER], env,
                           stdin="stream")

    def all_waiting(machine: Machine) -> bool:
        with machine.scheduler.lock:
            p = machine.scheduler.table[pid]
            entries = (p, *p.members.values())
            return (b"ready\n" in bytes(p.stdout) and len(p.members) == 1
                    and all(e.state is RunState.SLEEPING for e in entries))

    move = local_mover()
    for i in range(3):
        source = machines[i % 3]
        wait_until(lambda source=source: all_waiting(source), timeout=GUEST_TIMEOUT,
                   what="both threads wait (a read, a join)", machine=source)
        move(source, pid, machines[(i + 1) % 3])
    here = machines[0]
    wait_until(lambda: all_waiting(here), timeout=GUEST_TIMEOUT,
               what="both threads wait again after the last move", machine=here)
    here.feed_stdin(pid, b"a line read after three moves\n", eof=True)
    status, out, err, info = finish(here, pid)
    expected = subprocess.run([python, "-c", READER], input=b"a line read after three moves\n",
                              capture_output=True, env=dict(e.split("=", 1) for e in env),
                              timeout=GUEST_TIMEOUT, check=False)
    assert (status, out, err) == (expected.returncode, expected.stdout, expected.stderr), \
        info.exit_reason
    for machine in machines:
        assert_clean(machine)


@native_only
def test_a_process_with_threads_moves_between_the_engines_and_prints_as_natively(
        make_machine: MakeMachine) -> None:
    """Each thread's registers travel in the engine-neutral form: a process with threads
    bounced over emulated and native machines (its threads made again as Unicorn contexts,
    then as host threads, in turn) prints what it prints natively."""
    machines = [make_machine(name=f"x{i}", quantum_us=QUANTUM[engine], engine=engine,
                             pid_base=1000 * (i + 1))
                for i, engine in enumerate(("emulated", "native", "emulated"))]
    move = ThreadedMoves()

    def launch(scale: int) -> int:
        pid = start(machines[0], "thread_hash", str(min(16, 4 * scale)))
        wait_until(lambda: _threads_or_ended(machines[0], pid),  # its threads are there
                   what="thread_hash has started its threads", machine=machines[0])
        return pid

    scale, pid, where, records = bounce_enough(machines, launch, move=move, enough=4,
                                               scales=(1, 4))
    status, out, err, info = finish(machines[where], pid)
    assert (status, out, err) == native("thread_hash", str(min(16, 4 * scale))), \
        info.exit_reason
    assert move.threaded, "no move caught the process with its threads"
    assert {r.destination for r in records} >= {"x1"}
    for machine in machines:
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
