"""The frame allocator of real memory and the frames held regions keep for reuse.

Behaviour only: which frames come back, in which order, what they hold, what is counted;
never how fast (that is the migration benchmark's business).
"""

from __future__ import annotations

import numpy as np
import pytest

from tender_ray.errors import OutOfMemoryError
from tender_ray.kernel import address_space as vm
from tender_ray.resources.manager import ResourceManager
from tender_ray.resources.process import Process
from tender_ray.resources.real_memory import PAGE_SIZE, RealMemory
from tender_ray.resources.virtual_region import NOT_PRESENT, RegionKind, VirtualRegion
from tender_ray.resources.virtual_space import VirtualSpace
from tender_ray.resources.virtual_user_space import PROT_READ, PROT_WRITE, VirtualUserSpace


def test_large_requests_get_the_lowest_free_frames_in_order() -> None:
    mem = RealMemory(131072 * PAGE_SIZE)
    first = mem.allocate_array(100_000)
    assert first.tolist() == list(range(100_000))
    mem.free(first[::2])  # every other one back: 50,000 holes
    assert mem.free_frames == 131072 - 50_000
    again = mem.allocate_array(60_000)
    assert again.tolist() == [*range(0, 100_000, 2), *range(100_000, 110_000)]
    assert mem.statistics().frames_used == 110_000
    mem.free(again)
    mem.free(first[1::2])
    assert mem.free_frames == mem.nframes and mem.statistics().frames_used == 0
    assert mem.allocate(3) == [0, 1, 2]  # the lowest first, after everything came back


def test_single_frames_come_from_the_bottom_and_fill_holes() -> None:
    mem = RealMemory(16 * PAGE_SIZE)
    assert [mem.allocate_one() for _ in range(4)] == [0, 1, 2, 3]
    mem.free([1])
    assert mem.allocate_one() == 1  # the hole, before anything higher
    assert mem.allocate_one() == 4


def test_freeing_a_free_frame_is_an_error_and_changes_nothing() -> None:
    mem = RealMemory(8 * PAGE_SIZE)
    frames = mem.allocate(4)
    mem.free(frames[:2])
    with pytest.raises(ValueError, match="freed twice"):
        mem.free(frames[1:3])
    assert mem.free_frames == 6  # frame 2 was not freed by the refused call
    mem.free(frames[2:])
    assert mem.free_frames == 8


def test_free_skips_not_present_pages() -> None:
    mem = RealMemory(8 * PAGE_SIZE)
    frames = mem.allocate(2)
    mem.free([frames[0], NOT_PRESENT, frames[1]])
    assert mem.free_frames == 8


def test_held_frames_are_reused_unzeroed_by_arrivals_and_zeroed_otherwise() -> None:
    mem = RealMemory(16 * PAGE_SIZE)
    region = VirtualRegion().setup(RegionKind.HEAP, 6)
    kept = region.populate([0, 1, 2, 4], mem)
    mem.frames[kept] = 0x5A
    region.release(mem, hold=True)
    assert region.frames == [] and mem.held_frames == 4
    s = mem.statistics()
    assert (s.frames_free, s.frames_used, s.frames_held) == (16, 0, 4)  # held count as free
    # A request that overwrites its frames whole (an arriving migration) gets the held ones,
    # as they are.
    again = mem.allocate_array(3, zero=False)
    assert set(again.tolist()) <= set(kept)
    assert (mem.frames[again] == 0x5A).all()
    assert mem.held_frames == 1
    # A request for zeroed frames takes free ones first ...
    fresh = mem.allocate_array(12)
    assert not set(fresh.tolist()) & set(kept)
    # ... and the held ones once the free ones have run out, zeroed: no OutOfMemoryError
    # while held frames are left.
    last = mem.allocate_array(1)
    assert last.tolist()[0] in kept and not mem.frames[last].any()
    assert mem.free_frames == 0 and mem.held_frames == 0
    with pytest.raises(OutOfMemoryError):
        mem.allocate_one()


def test_release_held_gives_the_frames_back_to_the_free_ones() -> None:
    mem = RealMemory(8 * PAGE_SIZE)
    region = VirtualRegion().setup(RegionKind.MMAP, 3)
    region.populate([0, 2], mem)
    region.release(mem, hold=True)
    assert mem.release_held() == 2
    assert mem.held_frames == 0 and mem.free_frames == 8
    assert mem.allocate(8) == list(range(8))


def _managers(mem: RealMemory, reuse: bool) -> vm.Managers:
    return vm.Managers(
        memory=mem,
        spaces=ResourceManager("virtual_space", lambda: VirtualSpace(mem), VirtualSpace.clear,
                               reuse=reuse),
        regions=ResourceManager("virtual_region", VirtualRegion, reuse=reuse),
        user_spaces=ResourceManager("virtual_user_space", VirtualUserSpace,
                                    VirtualUserSpace.reset, reuse=reuse))


def _process_with_pages(m: vm.Managers, pages: int) -> tuple[Process, list[int]]:
    p = Process()
    p.space = m.spaces.acquire()
    us = vm.add_area(m, p, RegionKind.HEAP, 0x10000000, pages + 4, PROT_READ | PROT_WRITE)
    assert us.region is not None
    frames = us.region.populate(list(range(pages)), m.memory)
    p.space.refresh(us)
    return p, frames


@pytest.mark.parametrize("reuse", [True, False])
def test_deleting_a_process_holds_its_frames_only_with_reuse(reuse: bool) -> None:
    mem = RealMemory(64 * PAGE_SIZE)
    m = _managers(mem, reuse)
    below = mem.allocate(10)
    p, frames = _process_with_pages(m, 20)
    mem.free(below)  # the lowest free frames are now not the process's
    vm.release_address_space(m, p)
    assert p.space is None
    assert mem.free_frames == 64  # either way the frames are available again
    assert mem.held_frames == (20 if reuse else 0)
    regions = m.regions.statistics()
    assert (regions.live, regions.held) == ((0, 1) if reuse else (0, 0))
    # The next arrival's region takes frames for pages it overwrites: the held ones.
    arrival = VirtualRegion().setup(RegionKind.HEAP, 20)
    got = arrival.populate_array(np.arange(20), mem, zero=False).tolist()
    assert (sorted(got) == sorted(frames)) is reuse
    assert arrival.frames == got


def test_populate_array_fills_only_missing_pages() -> None:
    mem = RealMemory(16 * PAGE_SIZE)
    r = VirtualRegion().setup(RegionKind.DATA, 6)
    one = r.materialize(3, mem)
    got = r.populate_array(np.array([1, 3, 5]), mem)
    assert got[1] == one and len(set(got.tolist())) == 3
    assert r.present() == [1, 3, 5] and r.resident() == 3
    assert r.frames[0] == NOT_PRESENT and mem.free_frames == 13


def test_scatter_at_writes_runs_and_fragments_once_each() -> None:
    mem = RealMemory(64 * PAGE_SIZE)
    block = np.arange(40, dtype=np.uint8).repeat(PAGE_SIZE).reshape(40, PAGE_SIZE)
    runs = np.arange(10, 30)  # one run
    scattered = np.array([60, 2, 41, 7, 33, 50, 5, 44, 47, 39] * 2) + np.repeat([0, 1], 10)
    frames = np.concatenate([runs, scattered])
    mem.scatter_at(frames, 0, block[:20])
    mem.scatter_at(frames, 20, block[20:])
    assert [int(mem.frames[f, 0]) for f in frames] == list(range(40))
    with pytest.raises(ValueError):
        mem.scatter_at(frames, 30, block[:20])  # past the end of the frames
