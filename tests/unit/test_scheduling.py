"""The machine's scheduler: quanta cut short for a freeze, a kill or a newcomer; slices that
grow for busy processes and shrink for blocking ones; changes told to whoever balances; program
resources parsed once per image."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from support.machines import start, wait_finished
from support.programs import workload

from tender_ray.abi.cpu_state import CpuState, StopKind, SyscallOutcome
from tender_ray.engines.emulated.cpu import Cpu
from tender_ray.engines.native import self_check
from tender_ray.kernel.machine import Machine
from tender_ray.resources import program as program_mod
from tender_ray.resources.real_memory import PAGE_SHIFT, RealMemory
from tender_ray.resources.virtual_space import VirtualSpace

MakeMachine = Callable[..., Machine]
FOREVER = "4000000000"  # rmw_counter iterations that outlast any test
LONG = 1_000_000  # the longest quantum a machine takes, microseconds

NATIVE_OK, NATIVE_WHY = self_check()
ENGINES = [pytest.param("emulated"),
           pytest.param("native", marks=pytest.mark.skipif(not NATIVE_OK, reason=NATIVE_WHY))]


def wait_running(machine: Machine, pid: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while machine.info(pid).state != "running":
        assert time.monotonic() < deadline, f"process {pid} never ran"
        time.sleep(0.001)


def running_on_a_long_slice(make_machine: MakeMachine, engine: str) -> tuple[Machine, int]:
    """A machine of fixed one-second slices, and a busy process it is running."""
    m = make_machine(engine=engine, quantum_us=LONG, quantum_growth=1)
    pid = start(m, "rmw_counter", FOREVER)
    wait_running(m, pid)
    return m, pid


def spy_preempt(m: Machine, pid: int, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record every preemption asked of process `pid`'s CPU (which still happens)."""
    asked: list[int] = []
    cpu = m.scheduler.table[pid].cpu
    assert isinstance(cpu, Cpu)
    real = cpu.preempt

    def preempt() -> None:
        asked.append(pid)
        real()

    monkeypatch.setattr(cpu, "preempt", preempt)
    return asked


# --- preemption: Engine.preempt ------------------------------------------------------------

def test_a_preemption_asked_before_the_run_ends_it_before_any_instruction() -> None:
    """Asked between a process getting its computation and its run starting, the preemption
    is not lost: the run stops at once, where it was."""
    memory = RealMemory(8 << PAGE_SHIFT)
    space = VirtualSpace(memory)
    memory.frames[0, :5] = list(bytes.fromhex("48ffc3" "ebfb"))  # 1: inc %rbx; jmp 1b
    space.table[0x400] = 0 << PAGE_SHIFT | 5
    space.table[0x600] = 1 << PAGE_SHIFT | 3
    cpu = Cpu(memory)
    try:
        cpu.bind(space, lambda nr, args: SyscallOutcome(0))
        initial = CpuState.initial(0x400000, 0x601000)
        cpu.load(initial)
        cpu.preempt()
        stop = cpu.run(LONG)
        assert stop.kind is StopKind.QUANTUM
        assert cpu.save().rip == 0x400000 and cpu.save().gpr == initial.gpr  # nothing ran
        assert cpu.run(2000).kind is StopKind.QUANTUM  # the next run is a whole one
        assert cpu.save().gpr != initial.gpr
    finally:
        cpu.close()


@pytest.mark.parametrize("engine", ENGINES)
def test_a_freeze_does_not_wait_for_the_quantum_to_end(make_machine: MakeMachine,
                                                       engine: str) -> None:
    m, pid = running_on_a_long_slice(make_machine, engine)
    m.freeze(pid)
    # A whole quantum would have given it a second of CPU before the freeze could land.
    assert m.info(pid).state == "frozen"
    assert m.scheduler.table[pid].accounting.cpu_seconds < 0.8 * LONG / 1e6
    m.thaw(pid)
    m.kill(pid)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_kill_ends_a_running_process_within_its_quantum(make_machine: MakeMachine,
                                                          engine: str) -> None:
    m, pid = running_on_a_long_slice(make_machine, engine)
    m.kill(pid)
    info = wait_finished(m, pid)
    assert info.exit_status == 137
    assert info.cpu_seconds < 0.8 * LONG / 1e6


# --- slices that grow and shrink -------------------------------------------------------------

def test_a_busy_process_gets_longer_slices_up_to_the_growth_limit(
        make_machine: MakeMachine) -> None:
    m = make_machine(engine="emulated", quantum_us=1000, quantum_growth=8)
    pid = start(m, "rmw_counter", FOREVER)
    deadline = time.monotonic() + 30
    while m.scheduler.table[pid].quantum != 8000:
        assert time.monotonic() < deadline, m.scheduler.table[pid].quantum
        assert m.scheduler.table[pid].quantum in (0, 2000, 4000, 8000)
        time.sleep(0.001)
    time.sleep(0.1)
    assert m.scheduler.table[pid].quantum == 8000  # never past the limit
    m.kill(pid)


def test_a_process_that_blocks_goes_back_to_the_base_slice(make_machine: MakeMachine) -> None:
    m = make_machine(engine="emulated", quantum_us=1000, quantum_growth=8)
    pid = start(m, "compute_sleep", "1000")
    seen: set[int] = set()
    deadline = time.monotonic() + 30
    while not ({0} <= seen and seen & {2000, 4000, 8000}):
        assert time.monotonic() < deadline, seen
        p = m.scheduler.table.get(pid)
        if p is None or p.exit_status is not None:
            pytest.fail(f"ended before both were seen: {seen}")
        if p.shown_state.value in ("sleeping", "runnable"):
            seen.add(p.quantum)
        time.sleep(0.0005)
    m.kill(pid)


def test_fixed_slices_with_growth_one(make_machine: MakeMachine) -> None:
    m = make_machine(engine="emulated", quantum_us=1000, quantum_growth=1)
    pid = start(m, "rmw_counter", FOREVER)
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:
        assert m.scheduler.table[pid].quantum in (0, 1000)
        time.sleep(0.001)
    assert m.statistics().computations[0].quanta > 20
    m.kill(pid)


def test_a_newcomer_cuts_short_a_slice_that_ran_past_the_base(make_machine: MakeMachine,
                                                              monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    m = make_machine(engine="emulated", quantum_us=LONG, quantum_growth=1)
    busy = start(m, "rmw_counter", FOREVER)
    wait_running(m, busy)
    asked = spy_preempt(m, busy, monkeypatch)
    # Its slice began a moment ago: a newcomer waits for it (no preemption yet) ...
    m.computations[0].run_started = time.monotonic()
    first = start(m, "hello")
    assert asked == []
    # ... but a slice that has run longer than the base quantum is cut short for one.
    m.computations[0].run_started = time.monotonic() - 2 * LONG / 1e6
    second = start(m, "hello")
    assert asked == [busy]
    for pid in (first, second):
        assert wait_finished(m, pid).exit_status == 0
    m.kill(busy)


def test_no_preemption_when_a_computation_is_free(make_machine: MakeMachine,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    m = make_machine(engine="emulated", quantum_us=LONG, computations=2)
    busy = start(m, "rmw_counter", FOREVER)
    wait_running(m, busy)
    asked = spy_preempt(m, busy, monkeypatch)
    m.computations[0].run_started = m.computations[1].run_started = 0.0
    pid = start(m, "hello")
    assert wait_finished(m, pid).exit_status == 0
    assert asked == []
    m.kill(busy)
    wait_finished(m, busy)


def test_a_sleeper_due_while_every_computation_is_busy_cuts_a_long_slice(
        make_machine: MakeMachine, monkeypatch: pytest.MonkeyPatch) -> None:
    """The machine's clock wakes a sleeper whose time is up although no computation is free:
    it cuts short the slice that has run past the base quantum."""
    m = make_machine(engine="emulated", quantum_us=LONG, quantum_growth=1)
    sleeper = start(m, "compute_sleep", "1000")
    busy = start(m, "rmw_counter", FOREVER)
    deadline = time.monotonic() + 30
    table = m.scheduler.table
    while not (table[busy].state.on_cpu and table[sleeper].state.value == "sleeping"):
        assert time.monotonic() < deadline, "never saw the sleeper asleep beside the busy one"
        time.sleep(0.0002)
    asked = spy_preempt(m, busy, monkeypatch)
    with m.scheduler.cond:  # as if its slice had run far past the base quantum
        m.computations[0].run_started = time.monotonic() - 10 * LONG / 1e6
        m.scheduler.cond.notify_all()
    while not asked:
        assert time.monotonic() < deadline, "the clock never cut the slice short"
        time.sleep(0.001)
    # The woken sleeper runs next: it went to the front of the run queue.
    while m.computations[0].pid != sleeper:
        assert time.monotonic() < deadline, "the sleeper did not run next"
        time.sleep(0.0002)
    m.kill(busy)
    m.kill(sleeper)


def test_exact_quanta_have_no_clock(make_machine: MakeMachine) -> None:
    m = make_machine(engine="emulated", quantum_instructions=100_000)
    assert m.scheduler.clock is None
    pid = start(m, "hello")
    assert wait_finished(m, pid).exit_status == 0


# --- changes told to the balancer -----------------------------------------------------------

def test_the_machine_tells_of_starts_ends_and_cordons(make_machine: MakeMachine) -> None:
    m = make_machine(engine="emulated", quantum_us=1000)
    told: list[float] = []
    m.on_change = lambda: told.append(time.monotonic())
    pid = start(m, "hello")
    assert len(told) >= 1  # started
    wait_finished(m, pid)
    assert len(told) >= 2  # ended
    before = len(told)
    m.cordon()
    m.uncordon()
    assert len(told) == before + 2


def test_a_failing_listener_changes_nothing(make_machine: MakeMachine) -> None:
    m = make_machine(engine="emulated", quantum_us=1000)

    def broken() -> None:
        raise RuntimeError("the balancer went away")

    m.on_change = broken
    pid = start(m, "hello")
    assert wait_finished(m, pid).exit_status == 0


# --- program resources -----------------------------------------------------------------------

def test_an_image_is_parsed_once_and_each_process_keeps_its_name(
        make_machine: MakeMachine, monkeypatch: pytest.MonkeyPatch) -> None:
    m = make_machine(engine="emulated", quantum_us=1000)
    parsed: list[str] = []
    real = program_mod.parse_program

    def counting(image: bytes, name: str) -> object:
        parsed.append(name)
        return real(image, name)

    monkeypatch.setattr(program_mod, "parse_program", counting)
    image = workload("hello").read_bytes()
    pids = [m.exec(image, f"hello-{i}", ["hello"]) for i in range(3)]
    assert parsed == ["hello-0"]
    assert [m.info(pid).name for pid in pids] == ["hello-0", "hello-1", "hello-2"]
    for pid in pids:
        assert wait_finished(m, pid).exit_status == 0
    bad = b"\x7fELF" + bytes(60)
    with pytest.raises(Exception, match="ELF"):
        m.exec(bad, "bad", ["bad"])
    with pytest.raises(Exception, match="ELF"):  # a bad image is never held as a program
        m.exec(bad, "bad", ["bad"])
    assert parsed == ["hello-0", "bad", "bad"]
