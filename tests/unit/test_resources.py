"""The Tender resources on their own: managers, real memory, regions, spaces, programs."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from support.programs import workload

from tender_ray.errors import BadProgramError, OutOfMemoryError
from tender_ray.resources.manager import ResourceManager
from tender_ray.resources.program import PIE_BASE, parse_program
from tender_ray.resources.real_memory import PAGE_SIZE, RealMemory
from tender_ray.resources.virtual_region import NOT_PRESENT, RegionKind, VirtualRegion
from tender_ray.resources.virtual_space import BadAddress, VirtualSpace
from tender_ray.resources.virtual_user_space import (
    PROT_EXEC,
    PROT_READ,
    PROT_WRITE,
    UserSpaceState,
    VirtualUserSpace,
)

RW = PROT_READ | PROT_WRITE


# --- ResourceManager -------------------------------------------------------------------------

class Thing:
    """A resource with a serial number and a record of what was done to it."""

    serial = 0

    def __init__(self) -> None:
        Thing.serial += 1
        self.id = Thing.serial
        self.resets = 0
        self.destroyed = False


def manager(**kwargs: object) -> tuple[ResourceManager[Thing], list[Thing]]:
    destroyed: list[Thing] = []

    def reset(t: Thing) -> None:
        t.resets += 1

    def destroy(t: Thing) -> None:
        t.destroyed = True
        destroyed.append(t)

    return ResourceManager("thing", Thing, reset, destroy, **kwargs), destroyed  # type: ignore[arg-type]


def counts(m: ResourceManager[Thing]) -> tuple[int, int, int, int, int, int]:
    s = m.statistics()
    return s.created, s.deleted, s.reused, s.live, s.held, s.pool


def test_manager_precreates_its_pool() -> None:
    m, _ = manager(reuse=True, pool_size=3)
    assert counts(m) == (3, 0, 0, 0, 0, 3)
    s = m.statistics()
    assert s.resource == "thing" and s.reuse is True


def test_manager_without_reuse_precreates_nothing() -> None:
    m, _ = manager(reuse=False, pool_size=3)
    assert counts(m) == (0, 0, 0, 0, 0, 0)


def test_acquire_takes_held_before_pooled_before_new() -> None:
    m, _ = manager(reuse=True, pool_size=1)
    (pooled,) = list(m._pool)
    first = m.acquire()  # nothing held yet: the pooled one
    assert first is pooled
    assert counts(m) == (1, 0, 1, 1, 0, 0)
    second = m.acquire()  # pool empty: a new one
    assert second is not first
    assert counts(m) == (2, 0, 1, 2, 0, 0)
    m.release(first)
    assert first.resets == 1 and not first.destroyed
    assert counts(m) == (2, 0, 1, 1, 1, 0)
    m.precreate(1)  # now there is one held and one pooled
    assert counts(m) == (3, 0, 1, 1, 1, 1)
    again = m.acquire()
    assert again is first  # held wins over pooled
    assert counts(m) == (3, 0, 2, 2, 0, 1)
    third = m.acquire()
    assert third is not first and third is not second  # then the pooled one
    assert counts(m) == (3, 0, 3, 3, 0, 0)


def test_release_holds_up_to_the_hold_limit_then_destroys() -> None:
    m, destroyed = manager(reuse=True, pool_size=0, hold_limit=2)
    items = [m.acquire() for _ in range(4)]
    assert counts(m) == (4, 0, 0, 4, 0, 0)
    for t in items:
        m.release(t)
    assert counts(m) == (4, 2, 0, 0, 2, 0)
    assert destroyed == items[2:]  # the first two were held, the rest destroyed
    assert all(t.resets == 1 for t in items)


def test_reuse_off_destroys_on_release_and_never_reuses() -> None:
    m, destroyed = manager(reuse=False)
    a = m.acquire()
    m.release(a)
    b = m.acquire()
    assert b is not a
    assert destroyed == [a]
    assert counts(m) == (2, 1, 0, 1, 0, 0)


def test_switching_reuse_off_destroys_pool_and_held_and_on_refills() -> None:
    m, destroyed = manager(reuse=True, pool_size=2)
    t = m.acquire()
    m.release(t)
    assert counts(m) == (2, 0, 1, 0, 1, 1)
    m.set_reuse(False)
    assert m.reuse is False
    assert counts(m) == (2, 2, 1, 0, 0, 0)
    assert len(destroyed) == 2 and t in destroyed
    m.set_reuse(True)
    assert counts(m) == (4, 2, 1, 0, 0, 2)


def test_per_request_reuse_and_hold_overrides() -> None:
    m, destroyed = manager(reuse=True, pool_size=1)
    fresh = m.acquire(reuse=False)  # forced new although one is pooled
    assert counts(m) == (2, 0, 0, 1, 0, 1)
    m.release(fresh, hold=False)  # destroyed although reuse is on, and not reset
    assert destroyed == [fresh] and fresh.resets == 0
    assert counts(m) == (2, 1, 0, 0, 0, 1)
    off, _ = manager(reuse=False)
    t = off.acquire(reuse=True)  # a request cannot turn reuse on
    off.release(t, hold=True)
    assert counts(off) == (1, 1, 0, 0, 0, 0)


def test_refill_tops_the_pool_up() -> None:
    m, _ = manager(reuse=True, pool_size=2)
    a, b = m.acquire(), m.acquire()
    assert m.statistics().pool == 0
    m.refill()
    assert counts(m) == (4, 0, 2, 2, 0, 2)
    m.refill()
    assert m.statistics().created == 4  # already full
    off, _ = manager(reuse=False, pool_size=2)
    off.refill()
    assert counts(off) == (0, 0, 0, 0, 0, 0)
    assert a is not b


def test_failed_create_is_not_counted() -> None:
    calls = 0

    def create() -> Thing:
        nonlocal calls
        calls += 1
        raise RuntimeError("no")

    m: ResourceManager[Thing] = ResourceManager("broken", create, reuse=False)
    with pytest.raises(RuntimeError):
        m.acquire()
    assert calls == 1
    s = m.statistics()
    assert (s.created, s.live) == (0, 0)


def test_close_destroys_everything_pooled_and_held() -> None:
    m, destroyed = manager(reuse=True, pool_size=3)
    (pooled, *_) = list(m._pool)
    t = m.acquire()
    u = m.acquire()
    m.release(t)
    assert counts(m) == (3, 0, 2, 1, 1, 1)
    m.close()
    assert counts(m) == (3, 2, 2, 1, 0, 0)
    assert {x.id for x in destroyed} == {t.id, pooled.id}
    assert not u.destroyed  # a live one is its holder's business


# --- RealMemory ------------------------------------------------------------------------------

def test_real_memory_rejects_bad_sizes() -> None:
    for size in (0, 100, PAGE_SIZE + 1):
        with pytest.raises(ValueError):
            RealMemory(size)


def test_allocate_gives_zeroed_frames_even_after_reuse() -> None:
    mem = RealMemory(8 * PAGE_SIZE)
    frames = mem.allocate(3)
    assert len(set(frames)) == 3 and all(0 <= f < 8 for f in frames)
    assert mem.free_frames == 5
    mem.frames[frames] = 0xAB
    mem.free(frames)
    again = mem.allocate(3)
    assert sorted(again) == sorted(frames)  # the same frames came back ...
    assert not mem.frames[again].any()  # ... zeroed
    one = mem.allocate_one()
    mem.frames[one] = 7
    mem.free([one])
    assert mem.allocate_one() == one
    assert not mem.frames[one].any()


def test_out_of_memory_leaves_nothing_allocated() -> None:
    mem = RealMemory(4 * PAGE_SIZE)
    taken = mem.allocate(3)
    with pytest.raises(OutOfMemoryError, match="exhausted"):
        mem.allocate(2)
    assert mem.free_frames == 1
    last = mem.allocate_one()
    assert last not in taken
    with pytest.raises(OutOfMemoryError):
        mem.allocate_one()
    assert mem.free_frames == 0
    assert mem.allocate(0) == []


def test_free_returns_frames_and_statistics_count_them() -> None:
    mem = RealMemory(16 * PAGE_SIZE)
    s = mem.statistics()
    assert (s.frames_total, s.frames_free, s.frames_used) == (16, 16, 0)
    frames = mem.allocate(10)
    s = mem.statistics()
    assert (s.frames_free, s.frames_used) == (6, 10)
    mem.free(frames[:4])
    assert mem.statistics().frames_free == 10
    mem.free(frames[4:])
    assert mem.statistics() == type(s)(16, 16, 0)


def test_real_memory_read_and_write_blocks() -> None:
    mem = RealMemory(8 * PAGE_SIZE)
    frames = mem.allocate(2)
    block = np.arange(2 * PAGE_SIZE, dtype=np.uint32).astype(np.uint8).reshape(2, PAGE_SIZE)
    mem.write(frames, block)
    assert np.array_equal(mem.read(frames), block)
    copy = mem.read(frames)
    copy[:] = 0
    assert np.array_equal(mem.read(frames), block)  # read gives a copy


def test_allocate_without_zeroing_keeps_old_contents() -> None:
    mem = RealMemory(4 * PAGE_SIZE)
    frames = mem.allocate(2)
    mem.frames[frames] = 0x77
    mem.free(frames)
    again = mem.allocate(2, zero=False)  # the caller promises to overwrite them whole
    assert sorted(again) == sorted(frames)
    assert (mem.frames[again] == 0x77).all()


def test_gather_gives_views_of_runs_and_scatter_writes_back() -> None:
    mem = RealMemory(16 * PAGE_SIZE)
    for f in range(16):
        mem.frames[f] = f
    frames = [3, 4, 5, 9, 10, 1]
    blocks = mem.gather(frames, max_pages=2)
    assert [b.shape for b in blocks] == [(2, PAGE_SIZE), (1, PAGE_SIZE), (2, PAGE_SIZE),
                                         (1, PAGE_SIZE)]
    assert all(np.shares_memory(b, mem.frames) for b in blocks)  # runs: no copy
    rows = np.concatenate(blocks)
    assert [int(r[0]) for r in rows] == frames and all((r == r[0]).all() for r in rows)
    dense = mem.gather(frames, max_pages=4, max_views=1)  # too fragmented: copied
    assert [b.shape[0] for b in dense] == [4, 2]
    assert not any(np.shares_memory(b, mem.frames) for b in dense)
    assert np.array_equal(np.concatenate(dense), rows)
    assert mem.gather([], max_pages=4) == []
    copies = [b.copy() for b in blocks]
    targets = [15, 14, 13, 2, 0, 6]
    mem.scatter(targets, copies)
    assert [int(mem.frames[t, 0]) for t in targets] == frames
    assert int(mem.frames[7, 0]) == 7  # nothing else written
    with pytest.raises(ValueError):
        mem.scatter(targets[:-1], copies)
    with pytest.raises(ValueError):
        mem.scatter([*targets, 11], copies)


# --- VirtualRegion ---------------------------------------------------------------------------

def test_region_pages_materialize_on_first_touch() -> None:
    mem = RealMemory(16 * PAGE_SIZE)
    r = VirtualRegion().setup(RegionKind.MMAP, 4)
    assert r.frames == [NOT_PRESENT] * 4 and r.resident() == 0 and mem.free_frames == 16
    f = r.materialize(2, mem)
    assert r.present() == [2] and mem.free_frames == 15
    assert r.materialize(2, mem) == f  # second touch: same frame, nothing allocated
    assert mem.free_frames == 15
    assert r.image().present == (2,) and r.image().npages == 4


def test_region_populate_fills_only_missing_pages() -> None:
    mem = RealMemory(16 * PAGE_SIZE)
    r = VirtualRegion().setup(RegionKind.DATA, 5)
    f1 = r.materialize(1, mem)
    frames = r.populate([0, 1, 2], mem)
    assert frames[1] == f1
    assert len(set(frames)) == 3
    assert r.present() == [0, 1, 2]
    assert mem.free_frames == 13


def test_region_resize_grows_not_present_and_shrink_frees() -> None:
    mem = RealMemory(16 * PAGE_SIZE)
    r = VirtualRegion().setup(RegionKind.HEAP, 2)
    r.populate([0, 1], mem)
    r.resize(6, mem)
    assert r.npages == 6 and r.present() == [0, 1]
    r.populate([4, 5], mem)
    assert mem.free_frames == 12
    r.resize(1, mem)
    assert r.npages == 1 and r.present() == [0]
    assert mem.free_frames == 15


def test_region_split_off_moves_the_tail() -> None:
    mem = RealMemory(16 * PAGE_SIZE)
    r = VirtualRegion().setup(RegionKind.STACK, 5)
    frames = r.populate([0, 3, 4], mem)
    right = r.split_off(3, VirtualRegion())
    assert r.npages == 3 and r.frames == [frames[0], NOT_PRESENT, NOT_PRESENT]
    assert right.npages == 2 and right.frames == frames[1:]
    assert right.kind is RegionKind.STACK
    assert mem.free_frames == 13  # nothing allocated or freed by a split
    r.release(mem)
    right.release(mem)
    assert mem.free_frames == 16 and r.npages == 0


# --- VirtualSpace ----------------------------------------------------------------------------

def pasted(space: VirtualSpace, start: int, npages: int, perms: int = RW,
           kind: RegionKind = RegionKind.MMAP) -> VirtualUserSpace:
    us = VirtualUserSpace().setup(VirtualRegion().setup(kind, npages), start, perms)
    space.paste(us)
    return us


def test_paste_find_overlapping_and_unpaste() -> None:
    mem = RealMemory(32 * PAGE_SIZE)
    space = VirtualSpace(mem)
    a = pasted(space, 0x10000, 2)
    c = pasted(space, 0x30000, 1)
    b = pasted(space, 0x20000, 4)  # pasted out of order: kept sorted
    assert space.user_spaces == [a, b, c]
    assert a.state is UserSpaceState.PASTED
    assert space.find(0x10000) is a and space.find(0x11FFF) is a
    assert space.find(0x12000) is None and space.find(0xFFFF) is None
    assert space.find(0x23FFF) is b and space.find(0x30FFF) is c and space.find(0x31000) is None
    assert space.overlapping(0x11000, 0x21000) == [a, b]
    assert space.overlapping(0x12000, 0x20000) == []
    assert space.overlapping(0, 1 << 47) == [a, b, c]
    with pytest.raises(ValueError):
        pasted(space, 0x23000, 2)  # overlaps b's last page
    with pytest.raises(ValueError):
        VirtualUserSpace().setup(VirtualRegion().setup(RegionKind.MMAP, 1), 0x1234, RW)
    space.write(0x20000, b"x")
    assert space.resident_pages() == 1
    space.unpaste(b)
    assert space.user_spaces == [a, c] and b.state is UserSpaceState.FREE
    assert space.find(0x20000) is None and space.resident_pages() == 0
    assert b.region is not None and b.region.resident() == 1  # the region is untouched


def test_paste_makes_present_pages_visible() -> None:
    mem = RealMemory(32 * PAGE_SIZE)
    space = VirtualSpace(mem)
    region = VirtualRegion().setup(RegionKind.DATA, 3)
    frames = region.populate([0, 2], mem)
    mem.frames[frames[1], :4] = list(b"abcd")
    us = VirtualUserSpace().setup(region, 0x400000, PROT_READ)
    space.paste(us)
    assert space.table == {0x400: frames[0] << 12 | PROT_READ, 0x402: frames[1] << 12 | PROT_READ}
    assert space.read(0x402000, 4) == b"abcd"


def test_fault_path_materializes_only_covered_pages() -> None:
    mem = RealMemory(32 * PAGE_SIZE)
    space = VirtualSpace(mem)
    us = pasted(space, 0x50000, 4, RW | PROT_EXEC)
    assert space.table == {}
    entry = space.fault(0x52)
    assert entry is not None and entry & 0xFFF == RW | PROT_EXEC
    assert us.region is not None and us.region.present() == [2]
    assert space.table[0x52] == entry and entry >> 12 == us.region.frames[2]
    assert space.fault(0x54) is None and space.fault(0x4F) is None
    assert mem.free_frames == 31


def test_read_write_across_page_boundaries() -> None:
    mem = RealMemory(32 * PAGE_SIZE)
    space = VirtualSpace(mem)
    pasted(space, 0x60000, 3)
    data = bytes(range(256)) * 40  # 10240 bytes: spans three pages
    space.write(0x60000 + 100, data)
    assert space.read(0x60000 + 100, len(data)) == data
    assert space.read(0x60000, 100) == bytes(100)
    assert space.resident_pages() == 3
    # The bytes really are in the frames the table names.
    frame = space.table[0x61] >> 12
    off = PAGE_SIZE - 100
    assert mem.frames[frame, :16].tobytes() == data[off: off + 16]
    space.write(0x60FFD, b"hello\0world")  # a string across a page boundary
    assert space.read_cstring(0x60FFD) == b"hello"
    space.write(0x62FF0, b"Z" * 16)
    with pytest.raises(BadAddress):
        space.read_cstring(0x62FF8)  # no terminator before the area ends


def test_read_cstring_respects_its_limit() -> None:
    mem = RealMemory(8 * PAGE_SIZE)
    space = VirtualSpace(mem)
    pasted(space, 0x60000, 2)
    space.write(0x60FFD, b"hello\0")  # 5 characters, across a page boundary
    assert space.read_cstring(0x60FFD, limit=5) == b"hello"
    with pytest.raises(BadAddress):
        space.read_cstring(0x60FFD, limit=4)


def test_write_with_a_bad_pointer_writes_nothing() -> None:
    mem = RealMemory(32 * PAGE_SIZE)
    space = VirtualSpace(mem)
    pasted(space, 0x70000, 2)
    space.write(0x70000, b"\x11" * 2 * PAGE_SIZE)
    with pytest.raises(BadAddress) as err:
        space.write(0x71F00, b"\xEE" * 0x200)  # the last 0x100 bytes fall off the area
    assert err.value.address == 0x72000
    assert space.read(0x70000, 2 * PAGE_SIZE) == b"\x11" * 2 * PAGE_SIZE
    with pytest.raises(BadAddress):
        space.read(0x71F00, 0x200)
    for bad in (-1, 1 << 47, (1 << 47) - 4):
        with pytest.raises(BadAddress):
            space.read(bad, 8)
    assert space.read(0x70000, 0) == b""


def test_permissions_are_checked() -> None:
    mem = RealMemory(32 * PAGE_SIZE)
    space = VirtualSpace(mem)
    ro = pasted(space, 0x80000, 1, PROT_READ)
    none = pasted(space, 0x90000, 1, 0)
    xo = pasted(space, 0xA0000, 1, PROT_EXEC)
    assert space.read(0x80000, 8) == bytes(8)
    with pytest.raises(BadAddress):
        space.write(0x80000, b"x")
    with pytest.raises(BadAddress):
        space.read(0x90000, 1)
    with pytest.raises(BadAddress):
        space.read(0xA0000, 1)
    ro.perms = RW
    space.refresh(ro)
    space.write(0x80000, b"now")
    assert space.read(0x80000, 3) == b"now"
    assert none.perms == 0 and xo.perms == PROT_EXEC


def test_generation_bumps_when_entries_go_or_change() -> None:
    mem = RealMemory(32 * PAGE_SIZE)
    space = VirtualSpace(mem)
    g = space.generation
    a = pasted(space, 0x10000, 1)
    space.write(0x10000, b"x")
    assert space.generation == g  # adding entries needs no TLB flush
    a.perms = PROT_READ
    space.refresh(a)
    assert space.generation == g + 1
    assert space.table[0x10] & 0xFFF == PROT_READ
    space.unpaste(a)
    assert space.generation == g + 2
    space.clear()
    assert space.generation == g + 3


# --- Program ---------------------------------------------------------------------------------

def test_parse_hello_matches_the_elf_headers() -> None:
    image = workload("hello").read_bytes()
    prog = parse_program(image, "hello")
    # An independent reading of the ELF64 header and program headers.
    entry, phoff = struct.unpack_from("<QQ", image, 24)
    phentsize, phnum = struct.unpack_from("<HH", image, 54)
    loads, phdr = [], 0
    for i in range(phnum):
        p_type, p_flags, p_offset, p_vaddr, _, p_filesz, p_memsz, _ = struct.unpack_from(
            "<IIQQQQQQ", image, phoff + i * phentsize)
        if p_type == 1 and p_memsz:
            loads.append((p_vaddr, p_memsz, p_filesz, p_offset, p_flags))
        if p_type == 6:
            phdr = p_vaddr
    assert prog.entry == entry
    assert (prog.phent, prog.phnum) == (phentsize, phnum) == (56, phnum)
    assert prog.phdr == (phdr or 0x400000 + phoff)
    assert prog.size == len(image)
    assert len(prog.segments) == len(loads)
    for seg, (vaddr, memsz, filesz, offset, flags) in zip(prog.segments, sorted(loads),
                                                          strict=True):
        assert (seg.vaddr, seg.memsz, seg.filesz, seg.offset) == (vaddr, memsz, filesz, offset)
        perms = (PROT_READ if flags & 4 else 0) | (PROT_WRITE if flags & 2 else 0) | (
            PROT_EXEC if flags & 1 else 0)
        assert seg.perms == perms
    assert any(s.perms & PROT_EXEC and s.vaddr <= entry < s.vaddr + s.memsz
               for s in prog.segments)
    assert prog.end % PAGE_SIZE == 0 and prog.end >= max(v + m for v, m, *_ in loads)
    assert parse_program(image, "again").digest == prog.digest and len(prog.digest) == 64


def test_parse_rejects_a_file_without_elf_magic() -> None:
    with pytest.raises(BadProgramError, match="not an ELF") as err:
        parse_program(b"#!/bin/sh\necho hi\n", "script.sh")
    assert err.value.path == "script.sh"
    with pytest.raises(BadProgramError, match="not an ELF"):
        parse_program(b"", "empty")


def _patched(offset: int, value: bytes) -> bytes:
    image = bytearray(workload("hello").read_bytes())
    image[offset: offset + len(value)] = value
    return bytes(image)


def test_parse_rejects_a_non_x86_64_machine() -> None:
    aarch64 = _patched(18, (183).to_bytes(2, "little"))  # e_machine = EM_AARCH64
    with pytest.raises(BadProgramError, match="not x86-64") as err:
        parse_program(aarch64, "arm")
    assert "EM_AARCH64" in err.value.reason
    i386 = _patched(18, (3).to_bytes(2, "little"))  # e_machine = EM_386
    with pytest.raises(BadProgramError, match="EM_386"):
        parse_program(i386, "i386")


def test_parse_rejects_a_32_bit_elf() -> None:
    elf32 = _patched(4, b"\x01")  # EI_CLASS = ELFCLASS32
    with pytest.raises(BadProgramError, match=r"32-bit|malformed"):
        parse_program(elf32, "elf32")


def test_parse_accepts_a_dynamically_linked_pie_at_its_base() -> None:
    path = "/usr/bin/sha256sum"
    try:
        with open(path, "rb") as f:
            image = f.read()
    except OSError:
        pytest.skip(f"{path} is not installed here")
    linked = parse_program(image, path, base=0x10000)
    placed = parse_program(image, path)
    assert placed.interpreter.startswith("/") and "ld-linux" in placed.interpreter
    assert placed.base == PIE_BASE and linked.base == 0x10000
    # Every address moves by the base and nothing else changes.
    assert placed.entry - placed.base == linked.entry - linked.base
    assert placed.phdr - placed.base == linked.phdr - linked.base
    assert [s.vaddr - placed.base for s in placed.segments] == \
        [s.vaddr - linked.base for s in linked.segments]
    assert min(s.vaddr for s in placed.segments) >= PIE_BASE


def test_parse_rejects_a_relocatable_object() -> None:
    obj = _patched(16, (1).to_bytes(2, "little"))  # e_type = ET_REL
    with pytest.raises(BadProgramError, match="ET_REL is not an executable"):
        parse_program(obj, "obj")


def test_parse_rejects_truncated_files() -> None:
    image = workload("hello").read_bytes()
    for size in (4, 64, 200, 2000, 8000):
        with pytest.raises(BadProgramError) as err:
            parse_program(image[:size], f"cut{size}")
        assert err.value.reason.startswith(("malformed ELF", "truncated"))
    with pytest.raises(BadProgramError, match="truncated"):
        parse_program(image[:8000], "cut")
