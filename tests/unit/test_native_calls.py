"""Mediated system calls made cheap: guest memory copied a run of consecutive frames at a time
(page boundaries, frames that do not follow each other, pages not yet present, bad pointers),
the two ways a supervisor can take a call (ptrace stop, seccomp user notification) both
serving a real program, and one processor context serving many processes in turn."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from support.machines import start, wait_finished
from support.programs import run_native, workload

from tender_ray.engines.native import check as native_check
from tender_ray.kernel.machine import Machine
from tender_ray.resources.real_memory import PAGE_SIZE, RealMemory
from tender_ray.resources.virtual_space import BadAddress, VirtualSpace
from tender_ray.resources.virtual_user_space import PROT_READ, PROT_WRITE


def _space_with_frames(frames: list[int], base_vpn: int = 0x60) -> tuple[RealMemory,
                                                                          VirtualSpace]:
    """A bare space whose pages base_vpn, base_vpn + 1, ... sit in `frames`, in that order."""
    mem = RealMemory(64 * PAGE_SIZE)
    space = VirtualSpace(mem)
    for i, frame in enumerate(frames):
        space.map_page(base_vpn + i, frame, PROT_READ | PROT_WRITE)
    return mem, space


def test_runs_merge_consecutive_frames_and_split_where_they_jump() -> None:
    _, space = _space_with_frames([10, 11, 12, 30, 31, 5])
    start = 0x60000 + 100
    size = 6 * PAGE_SIZE - 200
    runs = space.runs(start, size)
    # Three runs: frames 10-12, 30-31, 5; byte offsets into real memory, in range order.
    assert runs == [(10 * PAGE_SIZE + 100, 0, 3 * PAGE_SIZE - 100),
                    (30 * PAGE_SIZE, 3 * PAGE_SIZE - 100, 2 * PAGE_SIZE),
                    (5 * PAGE_SIZE, 5 * PAGE_SIZE - 100, PAGE_SIZE - 100)]
    assert sum(n for _, _, n in runs) == size
    assert space.runs(0x61FFF, 2) == [(11 * PAGE_SIZE + PAGE_SIZE - 1, 0, 2)]
    assert space.runs(0x62FFF, 2) == [(12 * PAGE_SIZE + PAGE_SIZE - 1, 0, 1),
                                      (30 * PAGE_SIZE, 1, 1)]
    assert space.runs(0x60000, 0) == []


def test_copies_over_non_contiguous_frames_land_in_the_right_frames() -> None:
    mem, space = _space_with_frames([10, 11, 12, 30, 31, 5])
    rng = np.random.default_rng(7)
    data = rng.integers(0, 256, 6 * PAGE_SIZE - 3, dtype=np.uint8).tobytes()
    space.write(0x60003, data)
    assert space.read(0x60003, len(data)) == data
    # Each page's bytes really are in the frame the table names (checked page by page).
    for i, frame in enumerate([10, 11, 12, 30, 31, 5]):
        lo = max(0, i * PAGE_SIZE - 3)
        hi = min(len(data), (i + 1) * PAGE_SIZE - 3)
        first = 3 if i == 0 else 0
        assert mem.frames[frame, first: first + hi - lo].tobytes() == data[lo:hi]
    # Unaligned pieces across every kind of boundary read back the same.
    for at in (0, 1, PAGE_SIZE - 1, 3 * PAGE_SIZE - 5, 5 * PAGE_SIZE - 1):
        for size in (1, 2, 7, PAGE_SIZE, PAGE_SIZE + 1, 2 * PAGE_SIZE + 9):
            if at + size <= len(data):
                assert space.read(0x60003 + at, size) == data[at: at + size]


def test_a_copy_that_runs_off_the_mapped_pages_touches_nothing() -> None:
    _, space = _space_with_frames([10, 11, 40])
    space.write(0x60000, b"\x22" * 3 * PAGE_SIZE)
    with pytest.raises(BadAddress) as err:
        space.write(0x62F00, b"\xEE" * 0x200)  # page 0x63 is not mapped
    assert err.value.address == 0x63000
    assert space.read(0x60000, 3 * PAGE_SIZE) == b"\x22" * 3 * PAGE_SIZE
    space.map_page(0x63, 20, PROT_READ)  # present but read-only: a write is refused
    with pytest.raises(BadAddress):
        space.write(0x62FFF, b"ab")
    assert space.read(0x62FFF, 2) == b"\x22\x00"


def test_both_supervisors_serve_every_call_of_a_real_program() -> None:
    """A ptrace stop and a seccomp user notification each answer every getppid of the loop
    (the figures are the benchmark's; here only that each way works)."""
    from tender_ray.engines.native import stopcost

    available, why = native_check.self_check()
    if not available:
        pytest.skip(f"the native engine cannot run here: {why}")
    cost = stopcost.measure(workload("callcost"), calls=200, repeat=1)
    assert cost.served["ptrace"] == 200
    assert cost.served.get("user_notif") == 200 or "user notification" in cost.notes


def test_one_context_runs_many_processes_that_touch_the_same_pages(
        make_machine: Callable[..., Machine]) -> None:
    """Each process faults on the same stack pages once: faults count as repeated (a page
    that cannot be mapped) only within one process, however many ran on the context before."""
    available, why = native_check.self_check()
    if not available:
        pytest.skip(f"the native engine cannot run here: {why}")
    m = make_machine(name="reuse", engine="native", computations=1)
    expected = run_native(workload("callcost"), ["getppid", "100"])
    for _ in range(8):
        pid = start(m, "callcost", "getppid", "100")
        wait_finished(m, pid)
        info, out, _err = m.reap(pid)
        assert (info.exit_status, out) == expected[:2], info.exit_reason
