"""Threads as programs make them. A thread is a run entry of its machine with a CPU context
of its own (on the native engine a host thread of the guest's host process; on the emulated
one a Unicorn context, the threads of a process taking turns): the pthread workload
(thread_hash: N threads hash parts of a buffer and hand their digests over through a mutex
and a condition variable in part order, then are joined; or its first thread exits and the
last one ends the process) prints what it prints natively, whose output is one for any
number of threads, on both engines; on the native engine two threads of one process hold two
computations at once; the balancer draining a native machine moves a process with threads,
its thread ids kept (more moves in tests/unit/test_thread_migration.py); Debian's `xz -T2`,
`zstd -T2`, `sort --parallel=2` and python3's threading print what they print natively.
The futex operations (futexops) answer as Linux answers them on both engines."""

from __future__ import annotations

import random
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from support.balancing import LocalClient
from support.engines import NATIVE_OK, NATIVE_WHY
from support.machines import assert_clean, finish, run_on_machine, start, wait_until
from support.programs import native, need, run_native

from tender_ray.balancing.loop import BalancingLoop
from tender_ray.balancing.policies import BalancerParams, Policy
from tender_ray.kernel.machine import Machine
from tender_ray.migration.options import MigrationOptions
from tender_ray.resources.process import Process, ThreadEntry
from tender_ray.resources.thread import Thread

MakeMachine = Callable[..., Machine]
native_only = pytest.mark.skipif(not NATIVE_OK, reason=NATIVE_WHY)


def test_the_output_is_the_same_for_any_number_of_threads() -> None:
    reference = native("thread_hash", "1")
    status, out, err = reference
    assert (status, err) == (0, b"")
    lines = out.splitlines()
    assert len(lines) == 16 + 3 and lines[-1] == b"joined: all"
    for threads in ("2", "4", "16"):
        assert native("thread_hash", threads) == reference, threads


def test_a_bad_thread_count_is_a_usage_error() -> None:
    assert native("thread_hash", "0")[0] == 2
    assert native("thread_hash", "0")[1].startswith(b"usage: thread_hash N (1..16 threads)")


ENGINE_RUNS = [pytest.param("native", 2, 1000, marks=native_only),
               pytest.param("native", 1, 200, marks=native_only),
               pytest.param("emulated", 2, 1000), pytest.param("emulated", 1, 200)]


@pytest.mark.parametrize(("engine", "computations", "quantum_us"), ENGINE_RUNS)
def test_threads_run_as_natively(make_machine: MakeMachine, engine: str, computations: int,
                                 quantum_us: int) -> None:
    machine = make_machine(quantum_us=quantum_us, computations=computations, engine=engine)
    for threads in ("1", "2", "4", "16"):
        status, out, err, info = finish(machine, start(machine, "thread_hash", threads))
        assert (status, out, err) == native("thread_hash", threads), info.exit_reason
        assert info.syscalls["clone"] == int(threads)
    for args in (("threads", "create"), ("thread_hash", "main-exits")):
        status, out, err, info = finish(machine, start(machine, *args))
        assert (status, out, err) == native(*args), info.exit_reason
    assert len(machine.syscalls.futexes) == 0  # nobody is left waiting
    assert_clean(machine)


@pytest.mark.parametrize("engine", [pytest.param("emulated"),
                                    pytest.param("native", marks=native_only)])
def test_futex_operations_answer_as_natively(make_machine: MakeMachine, engine: str) -> None:
    machine = make_machine(quantum_us=1000, engine=engine)
    status, out, err, info = finish(machine, start(machine, "futexops"))
    assert (status, out, err) == native("futexops"), info.exit_reason
    assert b"second word now 31\n" in out  # the wake-op changed the word as Linux does
    assert len(machine.syscalls.futexes) == 0


def _spinning(machine: Machine) -> int:
    """A process whose two threads spin (thread_hash spin), once it says both have begun."""
    pid = start(machine, "thread_hash", "spin")
    wait_until(lambda: machine.scheduler.table[pid].stdout == b"ready\n",
               what="both spinning threads have begun", machine=machine)
    return pid


@native_only
def test_two_threads_of_one_process_hold_two_computations_at_once(
        make_machine: MakeMachine) -> None:
    machine = make_machine(quantum_us=1000, computations=2, engine="native")
    pid = _spinning(machine)
    wait_until(lambda: [c.pid for c in machine.statistics().computations] == [pid, pid],
               what="both computations run threads of the process", machine=machine)
    machine.kill(pid, signal.SIGKILL)  # every thread ends with it
    status, out, _, info = finish(machine, pid)
    assert (status, out) == (128 + 9, b"ready\n"), info.exit_reason
    assert_clean(machine)


@native_only
def test_the_balancer_draining_a_native_machine_moves_a_process_with_threads(
        make_machine: MakeMachine) -> None:
    world = {name: make_machine(name=name, quantum_us=1000, engine="native",
                                pid_base=1000 * (i + 1))
             for i, name in enumerate(("m0", "m1"))}
    here, there = world["m0"], world["m1"]
    pid = _spinning(here)
    with here.scheduler.lock:
        tids = set(here.scheduler.table[pid].threads)
    assert len(tids) == 3
    loop = BalancingLoop(BalancerParams(policy=Policy.NONE), MigrationOptions(), 1.0)
    for machine in world.values():
        loop.add_machine(LocalClient(machine, world))
    here.cordon()
    loop.round()
    state = loop.state()
    assert state.failures == () and len(state.migrations) == 1, state
    assert here.list_processes() == []
    with there.scheduler.lock:
        assert set(there.scheduler.table[pid].threads) == tids  # the same thread ids
    # Its two spinners run again there, each a host thread of the new host process.
    wait_until(lambda: there.info(pid).state in ("running", "runnable"),
               what="the moved process runs", machine=there)
    there.kill(pid, signal.SIGTERM)
    status, out, _, info = finish(there, pid)
    assert (status, out) == (128 + 15, b"ready\n"), info.exit_reason
    for machine in world.values():
        assert_clean(machine)


@pytest.fixture(scope="module")
def lines(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 6 MB of numbered lines from a fixed seed: input to compress and sort."""
    rng = random.Random(19)
    path = tmp_path_factory.mktemp("threads") / "lines.txt"
    path.write_bytes("".join(f"{rng.randrange(10**6)} {'x' * rng.randrange(1, 40)} "
                             f"{rng.randrange(10**4)}\n" for _ in range(200_000)).encode())
    return path


PYTHON = """
import hashlib, queue, threading
q = queue.Queue()
def work(i):
    q.put((i, hashlib.sha256(str(i).encode() * 100000).hexdigest()[:16]))
ts = [threading.Thread(target=work, args=(i,)) for i in range(4)]
[t.start() for t in ts]; [t.join() for t in ts]
print(sorted(q.get() for _ in range(4)))
lock, n = threading.Lock(), [0]
def count():
    for _ in range(20000):
        with lock:
            n[0] += 1
ts = [threading.Thread(target=count) for _ in range(3)]; [t.start() for t in ts]
[t.join() for t in ts]
print(n[0])
"""
DEBIAN: dict[str, tuple[str, ...]] = {
    "xz": ("/usr/bin/xz", "-T2", "-c", "LINES"),
    "zstd": ("/usr/bin/zstd", "-T2", "-c", "LINES"),
    "sort": ("/usr/bin/sort", "--parallel=2", "-S", "64M", "LINES"),
    "python-threading": ("/usr/bin/python3", "-c", PYTHON),
}


@native_only
@pytest.mark.parametrize("name", sorted(DEBIAN))
def test_debian_programs_with_threads_as_natively(make_machine: MakeMachine, lines: Path,
                                                  name: str) -> None:
    argv = DEBIAN[name]
    need(argv[0])
    machine = make_machine(quantum_us=1000, computations=2, engine="native", memory_mib=512)
    env = {"LC_ALL": "C", "PATH": "/usr/bin:/bin"}
    args = [str(lines) if a == "LINES" else a for a in argv[1:]]
    expected = run_native(argv[0], args, env)
    status, out, err, info = run_on_machine(machine, argv[0], args, env)
    assert (status, out, err) == expected[:3], info.exit_reason
    assert info.syscalls.get("clone3", 0) + info.syscalls.get("clone", 0) >= 1  # threads ran
    assert_clean(machine)



def test_a_process_cpu_time_counts_every_thread() -> None:
    """What `info`, `--stats` and getrusage(RUSAGE_SELF) report: the first thread's time (the
    ended threads' added to it) and that of each thread still running."""
    p = Process()
    p.pid = 1000
    p.accounting.cpu_seconds = 1.5
    for tid, seconds in ((1001, 0.25), (1002, 2.0)):
        entry = ThreadEntry(p, Thread(tid))
        entry.accounting.cpu_seconds = seconds
        p.members[tid] = entry
    assert p.cpu_seconds == 3.75
    assert p.members[1001].accounting.cpu_seconds == 0.25  # RUSAGE_THREAD: its own
