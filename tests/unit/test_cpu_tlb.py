"""TLB policy of the emulated CPU: selective flushes stay correct, growth pauses stay exact."""

from __future__ import annotations

import numpy as np
import pytest

import tender_ray.engines.emulated.cpu as cpu_mod
from tender_ray.abi.cpu_state import CpuState, Stop, StopKind, SyscallOutcome
from tender_ray.abi.linux import Signal
from tender_ray.engines.emulated.cpu import Cpu
from tender_ray.resources.real_memory import PAGE_SHIFT, RealMemory
from tender_ray.resources.virtual_space import VirtualSpace

CODE, DATA = 0x400000, 0x600000
# mov $DATA,%rax; <access 1>; mov $10,%eax; syscall;
# mov $DATA,%rax; <access 2>; mov $60,%eax; syscall
LOAD, STORE = "488b18", "c60001"  # mov (%rax),%rbx / movb $1,(%rax)


def _run_with_table_change(first: str, second: str, change: str) -> tuple[Stop, CpuState]:
    code = bytes.fromhex("48c7c000006000" + first + "b80a000000" "0f05"
                         "48c7c000006000" + second + "b83c000000" "0f05")
    memory = RealMemory(8 << PAGE_SHIFT)
    space = VirtualSpace(memory)
    memory.frames[0, : len(code)] = list(code)
    memory.frames[2, :8] = list((0x1122334455667788).to_bytes(8, "little"))
    space.table[CODE >> PAGE_SHIFT] = 0 << PAGE_SHIFT | 5
    space.table[DATA >> PAGE_SHIFT] = 1 << PAGE_SHIFT | 3

    def handler(nr: int, _args: tuple[int, int, int, int, int, int]) -> SyscallOutcome:
        if nr != 10:
            return SyscallOutcome(0, stop=True)
        vpn = DATA >> PAGE_SHIFT
        if change == "read-only":
            space.table[vpn] = 1 << PAGE_SHIFT | 1
        elif change == "remap":
            space.table[vpn] = 2 << PAGE_SHIFT | 3
        elif change == "unmap":
            del space.table[vpn]
        space.generation += 1  # as unpaste/refresh do; no stop is asked for
        return SyscallOutcome(0)

    cpu = Cpu(memory)
    try:
        cpu.bind(space, handler)
        cpu.load(CpuState.initial(CODE, DATA + 0x1000))
        stop = cpu.run(200_000)
        return stop, cpu.save()
    finally:
        cpu.close()


def test_narrowed_page_faults_right_after_the_syscall() -> None:
    stop, _ = _run_with_table_change(STORE, STORE, "read-only")
    assert (stop.kind, stop.signal) == (StopKind.FAULT, Signal.SIGSEGV)


def test_remapped_page_is_seen_right_after_the_syscall() -> None:
    stop, state = _run_with_table_change(LOAD, LOAD, "remap")
    assert stop.kind is StopKind.SYSCALL
    assert state.reg("rbx") == 0x1122334455667788


def test_unmapped_page_faults_right_after_the_syscall() -> None:
    stop, _ = _run_with_table_change(LOAD, LOAD, "unmap")
    assert (stop.kind, stop.address) == (StopKind.FAULT, DATA)


@pytest.mark.parametrize("quantum", [100, 5000, 1_000_000])
def test_tlb_growth_pauses_keep_read_modify_write_exact(quantum: int) -> None:
    """incq on 8192 pages, 40 sweeps, from a fresh 256-entry TLB: the quantum pauses to let the
    TLB grow must not re-run an instruction, whatever the quantum."""
    pages, sweeps = 8192, 40
    code = bytes.fromhex(
        "48c7c2" + sweeps.to_bytes(4, "little").hex() + "48c7c300000010"
        "48c7c1" + pages.to_bytes(4, "little").hex() + "48ff03" "4881c300100000"
        "48ffc9" "75f1" "48ffca" "75de" "0f05")
    memory = RealMemory((pages + 4) << PAGE_SHIFT)
    space = VirtualSpace(memory)
    memory.frames[0, : len(code)] = list(code)
    space.table[CODE >> PAGE_SHIFT] = 0 << PAGE_SHIFT | 5
    for i in range(pages):
        space.table[0x10000 + i] = (i + 1) << PAGE_SHIFT | 3
    done: list[int] = []

    def handler(nr: int, _args: tuple[int, int, int, int, int, int]) -> SyscallOutcome:
        done.append(nr)
        return SyscallOutcome(0, stop=True)

    cpu = Cpu(memory)
    before = cpu_mod.engine_counters()
    try:
        cpu.bind(space, handler)
        cpu.load(CpuState.initial(CODE, 0))
        for _ in range(100_000):
            if done:
                break
            assert cpu.run(quantum).kind is not StopKind.FAULT
        assert done
        grown = cpu.tlb_entries()
    finally:
        cpu.close()
    counts = np.frombuffer(memory.frames[1 : pages + 1, :8].tobytes(), dtype=np.uint64)
    assert (counts == sweeps).all()
    after = cpu_mod.engine_counters()
    assert after["grow_stops"] > before["grow_stops"]
    assert grown >= pages  # the TLB reached the working set
    assert after["fills"] - before["fills"] < 4 * pages  # not a miss per access


def test_a_new_space_runs_its_own_code_from_a_frame_this_cpu_ran_before() -> None:
    """An exec (or any new binding) may put other code in a frame, at the same address, that
    this CPU already translated: the machine wrote it, not QEMU, so only the binding can tell
    QEMU its translations are gone. Without that the old code runs."""
    memory = RealMemory(4 << PAGE_SHIFT)
    cpu = Cpu(memory)

    def run(imm: int) -> CpuState:
        # mov $imm,%ebx; mov $60,%eax; syscall — in frame 0 at CODE, in a space of its own
        code = bytes.fromhex("bb" + imm.to_bytes(4, "little").hex() + "b83c000000" "0f05")
        memory.frames[0, : len(code)] = list(code)
        space = VirtualSpace(memory)
        space.table[CODE >> PAGE_SHIFT] = 0 << PAGE_SHIFT | 5
        cpu.bind(space, lambda _nr, _args: SyscallOutcome(0, stop=True))
        cpu.load(CpuState.initial(CODE, DATA))
        stop = cpu.run(200_000)
        assert stop.kind is StopKind.SYSCALL
        return cpu.save()

    try:
        assert run(1).reg("rbx") == 1
        assert run(2).reg("rbx") == 2
    finally:
        cpu.close()
