"""Write tracking (`kernel.tracking`, `resources.dirty_pages`): a take holds exactly the pages
changed since the last one.

`dirtyphases` writes a known set of pages of its page-aligned array in each phase and says
which; it waits for a line on stdin before each phase, so a test takes the set between two
phases by waiting for the phase's line, never for time. Inside the array the set must be
exactly what the program (or, in phase 2, the kernel's read()) wrote; outside it only pages
of the program's stack, data and bss (its stdio buffer, the stack the go-ahead is read into)
may appear. Every run ends with the program's native output and status.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Callable

import numpy as np
import pytest
from support.machines import POLL, finish, start, wait_ready
from support.programs import NATIVE_TIMEOUT, native, workload

from tender_ray.engines import resolve as resolve_engine
from tender_ray.errors import MigrationError, ProcessStateError, WriteTrackingError
from tender_ray.kernel.machine import Machine
from tender_ray.migration.protocol import migrate_local
from tender_ray.resources.dirty_pages import DirtyPages, WrittenPages
from tender_ray.resources.real_memory import PAGE_SHIFT
from tender_ray.resources.virtual_region import RegionKind

MakeMachine = Callable[..., Machine]
ROUNDS = "300000"  # phase 4's read-modify-write rounds: many 1 ms quanta on the emulated CPU
BASE = 0x40A000 >> PAGE_SHIFT  # the array's first page (a static, non-PIE program)
PHASE_INPUT = [b"go\n", b"go\n", b"go\n0123456789abcdef", b"go\n", b"go\n", b"go\n"]
PHASE_LINES = [b"phase 0 wrote", b"phase 1 wrote", b"phase 2 read", b"phase 3 wrote",
               b"phase 4 wrote", b"phase 5 writes"]
PROGRAMS = [("bigmmap", ["8"]), ("segv_handler", []), ("hashwalk", ["1"])]
WRITTEN = [set(range(0, 64, 3)), set(range(1, 64, 5)), {7}, {2}, {1, 9, 17, 33}]
# Allowed outside the array: what the program's own code and the kernel touch for it there.
OWN_KINDS = {RegionKind.STACK, RegionKind.DATA, RegionKind.BSS}


def native_run(*extra: str) -> tuple[int, bytes]:
    result = subprocess.run([str(workload("dirtyphases")), ROUNDS, *extra],
                            input=b"".join(PHASE_INPUT), capture_output=True, env={},
                            timeout=NATIVE_TIMEOUT, check=False)
    return 128 - result.returncode if result.returncode < 0 else result.returncode, result.stdout


@pytest.fixture(params=["emulated", "native"])
def engine(request: pytest.FixtureRequest) -> str:
    name = str(request.param)
    if resolve_engine(name)[0] != name:
        pytest.skip(f"the {name} engine does not run here")
    return name


def machine_of(make_machine: MakeMachine, engine: str, **config: object) -> Machine:
    config.setdefault("quantum_us", 1000)
    config.setdefault("quantum_growth", 1)  # every slice 1 ms: phase 4 is preempted often
    return make_machine(engine=engine, **config)


def start_tracked(m: Machine, *extra: str) -> tuple[int, bytes]:
    pid = m.exec(workload("dirtyphases").read_bytes(), "dirtyphases",
                 [str(workload("dirtyphases")), ROUNDS, *extra], [], stdin="stream")
    out = wait_ready(m, pid, line=b"pages 64\n")
    m.start_tracking(pid)
    return pid, out


def in_array(taken: WrittenPages) -> set[int]:
    return {vpn - BASE for vpn in taken.pages.tolist() if BASE <= vpn < BASE + 64}


def check_outside(m: Machine, pid: int, taken: WrittenPages) -> None:
    """Pages outside the array: only the program's stack, data and bss."""
    p = m.scheduler.get(pid)
    assert p.space is not None
    for vpn in taken.pages.tolist():
        if BASE <= vpn < BASE + 64:
            continue
        us = p.space.find(vpn << PAGE_SHIFT)
        assert us is not None and us.region is not None, f"page {vpn:#x} is mapped nowhere"
        assert us.region.kind in OWN_KINDS, f"page {vpn:#x} of a {us.region.kind} area"


def quanta_run(m: Machine) -> int:
    return sum(c.quanta for c in m.statistics().computations)


def run_phase(m: Machine, pid: int, phase: int) -> bytes:
    m.feed_stdin(pid, PHASE_INPUT[phase])
    return wait_ready(m, pid, line=PHASE_LINES[phase])


def test_dirty_pages_take_marks_drops_and_starts_a_new_interval() -> None:
    d = DirtyPages([5])
    d.mark_range(0x3FFF, 2)  # one byte on page 3, one on page 4
    d.mark(9)
    d.drop([9, 12])
    first = d.take()
    assert first.pages.tolist() == [3, 4, 5] and first.dropped.tolist() == [9, 12]
    assert first.epoch == 0 and d.epoch == 1
    d.drop([7])
    d.mark(7)  # gone and present again: written, not dropped
    second = d.take()
    assert second.pages.tolist() == [7] and second.dropped.size == 0
    assert d.take().pages.size == 0


@pytest.mark.parametrize("protection", ["read-only", "none"])
def test_phases_are_exact_under_preemption_and_the_guests_own_fault_stays_its_own(
        make_machine: MakeMachine, engine: str, protection: str) -> None:
    m = machine_of(make_machine, engine)
    extra = ("none",) if protection == "none" else ()
    pid, out = start_tracked(m, *extra)
    for phase in range(5):
        out += run_phase(m, pid, phase)
        taken = m.take_written(pid)
        assert in_array(taken) == WRITTEN[phase], f"phase {phase}"
        check_outside(m, pid, taken)
        if phase == 3:  # pages 56-63 were unmapped: those present drop out
            dropped = {vpn - BASE for vpn in taken.dropped.tolist()}
            assert {56, 57, 60, 61, 63} <= dropped <= set(range(56, 64))
        else:
            assert taken.dropped.size == 0, f"phase {phase}"
    m.feed_stdin(pid, PHASE_INPUT[5])
    status, rest, _, info = finish(m, pid)
    assert (status, out + rest) == native_run(*extra)
    assert status == 128 + 11, info.exit_reason  # a write to its own protected page


def test_takes_while_the_program_runs_miss_no_store(make_machine: MakeMachine,
                                                   engine: str) -> None:
    """Takes made while phase 4 runs (1 ms quanta, each take cutting one short): together
    they hold exactly its four pages, and its read-modify-write counters stay exact."""
    m = machine_of(make_machine, engine)
    pid, out = start_tracked(m)
    for phase in range(4):
        out += run_phase(m, pid, phase)
    m.take_written(pid)
    m.feed_stdin(pid, PHASE_INPUT[4])
    seen: set[int] = set()
    takes = 0
    while PHASE_LINES[4] not in out:
        taken = m.take_written(pid)
        takes += 1
        assert in_array(taken) <= WRITTEN[4]
        seen |= in_array(taken)
        out += m.take_output(pid)[0]
    seen |= in_array(m.take_written(pid))
    assert seen == WRITTEN[4], f"after {takes} takes"
    m.feed_stdin(pid, PHASE_INPUT[5])
    status, rest, _, _ = finish(m, pid)
    assert (status, out + rest) == native_run()


@pytest.mark.parametrize("destination_engine", ["emulated", "native"])
def test_tracking_goes_on_after_a_migration_from_every_present_page(
        make_machine: MakeMachine, engine: str, destination_engine: str) -> None:
    if resolve_engine(destination_engine)[0] != destination_engine:
        pytest.skip(f"the {destination_engine} engine does not run here")
    source = machine_of(make_machine, engine)
    destination = machine_of(make_machine, destination_engine, name="m1", pid_base=2000)
    pid, out = start_tracked(source)
    for phase in range(2):
        out += run_phase(source, pid, phase)
    source.take_written(pid)
    migrate_local(source, pid, destination)
    p = destination.scheduler.get(pid)
    assert p.space is not None
    present = set(p.space.table)
    first = destination.take_written(pid)  # the destination starts from everything dirty
    assert set(first.pages.tolist()) == present
    for phase in range(2, 5):
        out += run_phase(destination, pid, phase)
        taken = destination.take_written(pid)
        assert in_array(taken) == WRITTEN[phase], f"phase {phase}"
        check_outside(destination, pid, taken)
    destination.migrate_space(pid)  # same machine, a new space: the set carries on
    assert destination.is_tracked(pid)
    destination.feed_stdin(pid, PHASE_INPUT[5])
    status, rest, _, _ = finish(destination, pid)
    assert (status, out + rest) == native_run()


@pytest.mark.parametrize(("name", "args"), PROGRAMS)
def test_programs_taken_every_few_quanta_see_nothing_of_it(
        make_machine: MakeMachine, engine: str, name: str, args: list[str]) -> None:
    """Tracked from its first quantum and taken while it runs (mprotect read-only and back,
    munmap, its own SIGSEGV handlers, a heap walk): the program prints what it prints
    natively, and every take holds only pages of its own areas."""
    m = machine_of(make_machine, engine)
    pid = start(m, name, *args)
    with contextlib.suppress(ProcessStateError):  # it may end before tracking starts
        m.start_tracking(pid)
    while True:
        # Some quanta between two takes: each take makes every page it held fault again.
        quanta = quanta_run(m)
        while quanta_run(m) < quanta + 16 and m.info(pid).state != "zombie":
            time.sleep(POLL)
        try:  # frozen while its areas are compared with the take
            m.freeze(pid)
        except ProcessStateError:
            break  # it has ended
        try:
            taken = m.take_written(pid)
            p = m.scheduler.get(pid)
            assert p.space is not None
            for vpn in taken.pages.tolist():
                assert p.space.find(vpn << PAGE_SHIFT) is not None, f"page {vpn:#x} of no area"
        finally:
            m.thaw(pid)
    status, out, err, _ = finish(m, pid)
    assert (status, out, err) == native(name, *args)


def test_stop_and_errors_are_named(make_machine: MakeMachine, engine: str) -> None:
    m = machine_of(make_machine, engine)
    pid, out = start_tracked(m)
    with pytest.raises(WriteTrackingError, match="tracked already"):
        m.start_tracking(pid)
    m.stop_tracking(pid)
    assert not m.is_tracked(pid)
    with pytest.raises(WriteTrackingError, match="not tracked"):
        m.take_written(pid)
    for phase, feed in enumerate(PHASE_INPUT):
        m.feed_stdin(pid, feed)
        if phase < 5:
            out += wait_ready(m, pid, line=PHASE_LINES[phase])
    status, rest, _, _ = finish(m, pid)
    assert (status, out + rest) == native_run()


def test_an_engine_that_cannot_track_is_refused_by_name(make_machine: MakeMachine,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """An engine without write tracking: starting refuses by name, and a tracked process is
    not moved to it (it goes on, tracked, where it was)."""
    m = machine_of(make_machine, "emulated")
    other = machine_of(make_machine, "emulated", name="m1", pid_base=2000)
    pid = start(other, "standby")
    wait_ready(other, pid)
    tracked, out = start_tracked(m)
    # From here on no emulated CPU can track (the one of `tracked` was armed before).
    monkeypatch.setattr(type(other.scheduler.get(pid).context), "tracks_writes", False)
    with pytest.raises(WriteTrackingError, match="cannot track its writes"):
        other.start_tracking(pid)
    with pytest.raises(MigrationError, match="writes tracked"):
        migrate_local(m, tracked, other)
    monkeypatch.undo()
    other.kill(pid)
    finish(other, pid)
    out += run_phase(m, tracked, 0)
    assert in_array(m.take_written(tracked)) == WRITTEN[0]
    for phase in range(1, 5):
        out += run_phase(m, tracked, phase)
    m.feed_stdin(tracked, PHASE_INPUT[5])
    status, rest, _, _ = finish(m, tracked)
    assert (status, out + rest) == native_run()


def test_a_written_pages_take_lists_addresses() -> None:
    taken = WrittenPages(np.array([1, 3], np.int64), np.array([], np.int64), 0)
    assert taken.addresses() == [0x1000, 0x3000]
