"""Address spaces built from resources (tender_ray.vm), without a Machine or a CPU."""

from __future__ import annotations

import struct
from dataclasses import dataclass

import pytest
from support.programs import workload

from tender_ray.abi import linux
from tender_ray.abi.linux import PROT_EXEC, PROT_READ, PROT_WRITE, Errno
from tender_ray.errors import BadProgramError, OutOfMemoryError
from tender_ray.kernel import address_space as vm
from tender_ray.resources.manager import ResourceManager
from tender_ray.resources.process import Process
from tender_ray.resources.program import parse_program
from tender_ray.resources.real_memory import PAGE_SIZE, RealMemory
from tender_ray.resources.virtual_region import RegionKind, VirtualRegion
from tender_ray.resources.virtual_space import BadAddress, VirtualSpace
from tender_ray.resources.virtual_user_space import VirtualUserSpace

RW = PROT_READ | PROT_WRITE
ANON = linux.MAP_PRIVATE | linux.MAP_ANONYMOUS
NFRAMES = 512
BRK_START = 0x600000


@dataclass
class Env:
    m: vm.Managers
    p: Process

    @property
    def space(self) -> VirtualSpace:
        assert self.p.space is not None
        return self.p.space

    @property
    def free(self) -> int:
        return self.m.memory.free_frames

    def areas(self) -> list[tuple[int, int, int]]:
        """(start, end, perms) of every user space, in address order."""
        return [(us.start, us.end, us.perms) for us in self.space.user_spaces]


def managers(nframes: int = NFRAMES) -> vm.Managers:
    memory = RealMemory(nframes * PAGE_SIZE)
    return vm.Managers(
        memory=memory,
        spaces=ResourceManager("virtual_space", lambda: VirtualSpace(memory), VirtualSpace.clear),
        regions=ResourceManager("virtual_region", VirtualRegion, hold_limit=1024),
        user_spaces=ResourceManager("virtual_user_space", VirtualUserSpace,
                                    VirtualUserSpace.reset, hold_limit=1024),
    )


@pytest.fixture
def env() -> Env:
    m = managers()
    p = Process()
    p.space = m.spaces.acquire()
    p.mmap_top = vm.MMAP_TOP
    p.brk_start = p.brk = BRK_START
    return Env(m, p)


def touch(env: Env, addr: int, npages: int, byte: int = 0x5A) -> None:
    for i in range(npages):
        env.space.write(addr + i * PAGE_SIZE, bytes([byte + i]) * 16)


# --- mmap ----------------------------------------------------------------------------------

def test_map_places_top_down_below_mmap_top(env: Env) -> None:
    a = vm.map_anonymous(env.m, env.p, 0, 3 * PAGE_SIZE, RW, ANON)
    assert a == vm.MMAP_TOP - 3 * PAGE_SIZE
    b = vm.map_anonymous(env.m, env.p, 0, 5000, RW, ANON)  # rounded up to two pages
    assert b == a - 2 * PAGE_SIZE
    assert env.areas() == [(b, a, RW), (a, vm.MMAP_TOP, RW)]
    assert env.free == NFRAMES  # anonymous pages appear on first touch
    touch(env, b, 2)
    assert env.free == NFRAMES - 2
    assert env.space.read(b + PAGE_SIZE, 16) == bytes([0x5B]) * 16


def test_map_fills_a_hole_left_by_unmap(env: Env) -> None:
    a = vm.map_anonymous(env.m, env.p, 0, 4 * PAGE_SIZE, RW, ANON)
    assert vm.unmap(env.m, env.p, a + PAGE_SIZE, 2 * PAGE_SIZE) == 0
    hole = vm.map_anonymous(env.m, env.p, 0, 2 * PAGE_SIZE, RW, ANON)
    assert hole == a + PAGE_SIZE
    too_big = vm.map_anonymous(env.m, env.p, 0, 3 * PAGE_SIZE, RW, ANON)
    assert too_big == a - 3 * PAGE_SIZE


def test_map_uses_a_free_hint_and_ignores_a_taken_one(env: Env) -> None:
    hint = 0x2000_0000
    assert vm.map_anonymous(env.m, env.p, hint, 2 * PAGE_SIZE, PROT_READ, ANON) == hint
    again = vm.map_anonymous(env.m, env.p, hint, PAGE_SIZE, RW, ANON)
    assert again != hint and again == vm.MMAP_TOP - PAGE_SIZE
    assert env.space.find(hint) is not None and env.space.find(hint).perms == PROT_READ


def test_map_fixed_replaces_what_was_there(env: Env) -> None:
    a = vm.map_anonymous(env.m, env.p, 0, 4 * PAGE_SIZE, RW, ANON)
    touch(env, a, 4)
    assert env.free == NFRAMES - 4
    r = vm.map_anonymous(env.m, env.p, a + PAGE_SIZE, 2 * PAGE_SIZE, PROT_READ,
                         ANON | linux.MAP_FIXED)
    assert r == a + PAGE_SIZE
    assert env.free == NFRAMES - 2  # the two replaced pages' frames went back
    assert env.areas() == [(a, a + PAGE_SIZE, RW), (a + PAGE_SIZE, a + 3 * PAGE_SIZE, PROT_READ),
                           (a + 3 * PAGE_SIZE, a + 4 * PAGE_SIZE, RW)]
    assert env.space.read(a + PAGE_SIZE, 16) == bytes(16)  # fresh zero pages
    assert env.space.read(a, 16) == bytes([0x5A]) * 16
    assert env.space.read(a + 3 * PAGE_SIZE, 16) == bytes([0x5D]) * 16


def test_map_fixed_noreplace(env: Env) -> None:
    a = vm.map_anonymous(env.m, env.p, 0, 2 * PAGE_SIZE, RW, ANON)
    flags = ANON | linux.MAP_FIXED_NOREPLACE
    assert vm.map_anonymous(env.m, env.p, a + PAGE_SIZE, 2 * PAGE_SIZE, RW, flags) == -Errno.EEXIST
    assert vm.map_anonymous(env.m, env.p, a - PAGE_SIZE, 2 * PAGE_SIZE, RW, flags) == -Errno.EEXIST
    assert len(env.areas()) == 1
    assert vm.map_anonymous(env.m, env.p, a + 2 * PAGE_SIZE, PAGE_SIZE, RW, flags) == \
        a + 2 * PAGE_SIZE


def test_map_rejects_bad_requests(env: Env) -> None:
    assert vm.map_anonymous(env.m, env.p, 0, PAGE_SIZE, RW, linux.MAP_PRIVATE) < 0  # a file
    assert vm.map_anonymous(env.m, env.p, 0, PAGE_SIZE, RW, linux.MAP_SHARED) < 0
    assert vm.map_anonymous(env.m, env.p, 0, 0, RW, ANON) == -Errno.EINVAL
    assert vm.map_anonymous(env.m, env.p, 0x1001, PAGE_SIZE, RW, ANON | linux.MAP_FIXED) == \
        -Errno.EINVAL
    assert vm.map_anonymous(env.m, env.p, vm.ADDRESS_LIMIT - PAGE_SIZE, 2 * PAGE_SIZE, RW,
                            ANON | linux.MAP_FIXED) == -Errno.ENOMEM
    assert vm.map_anonymous(env.m, env.p, 0, vm.MMAP_TOP, RW, ANON) == -Errno.ENOMEM  # no room
    assert env.areas() == []


def test_map_growsdown_makes_a_stack_region(env: Env) -> None:
    a = vm.map_anonymous(env.m, env.p, 0, PAGE_SIZE, RW, ANON | linux.MAP_GROWSDOWN)
    us = env.space.find(a)
    assert us is not None and us.region is not None and us.region.kind is RegionKind.STACK


# --- munmap, mprotect, madvise ---------------------------------------------------------------

def test_unmap_in_the_middle_leaves_two_pieces_and_frees_frames(env: Env) -> None:
    a = vm.map_anonymous(env.m, env.p, 0, 3 * PAGE_SIZE, RW, ANON)
    touch(env, a, 3)
    assert env.free == NFRAMES - 3
    g = env.space.generation
    assert vm.unmap(env.m, env.p, a + PAGE_SIZE, PAGE_SIZE) == 0
    assert env.areas() == [(a, a + PAGE_SIZE, RW), (a + 2 * PAGE_SIZE, a + 3 * PAGE_SIZE, RW)]
    assert env.free == NFRAMES - 2
    assert env.space.generation > g
    with pytest.raises(BadAddress):
        env.space.read(a + PAGE_SIZE, 1)
    assert env.space.read(a, 16) == bytes([0x5A]) * 16
    assert env.space.read(a + 2 * PAGE_SIZE, 16) == bytes([0x5C]) * 16
    # Unmapping across both pieces and the hole between them removes both.
    assert vm.unmap(env.m, env.p, a, 3 * PAGE_SIZE) == 0
    assert env.areas() == [] and env.free == NFRAMES
    assert vm.unmap(env.m, env.p, a, PAGE_SIZE) == 0  # nothing there: fine
    assert vm.unmap(env.m, env.p, a + 1, PAGE_SIZE) == -Errno.EINVAL


def test_unmap_rounds_the_length_up(env: Env) -> None:
    a = vm.map_anonymous(env.m, env.p, 0, 3 * PAGE_SIZE, RW, ANON)
    assert vm.unmap(env.m, env.p, a, PAGE_SIZE + 1) == 0
    assert env.areas() == [(a + 2 * PAGE_SIZE, a + 3 * PAGE_SIZE, RW)]


def test_protect_a_sub_range(env: Env) -> None:
    a = vm.map_anonymous(env.m, env.p, 0, 4 * PAGE_SIZE, RW, ANON)
    touch(env, a, 4)
    g = env.space.generation
    assert vm.protect(env.m, env.p, a + PAGE_SIZE, 2 * PAGE_SIZE, PROT_READ) == 0
    assert env.space.generation > g
    assert env.areas() == [(a, a + PAGE_SIZE, RW), (a + PAGE_SIZE, a + 3 * PAGE_SIZE, PROT_READ),
                           (a + 3 * PAGE_SIZE, a + 4 * PAGE_SIZE, RW)]
    with pytest.raises(BadAddress):
        env.space.write(a + 2 * PAGE_SIZE, b"x")
    assert env.space.read(a + 2 * PAGE_SIZE, 16) == bytes([0x5C]) * 16  # contents kept
    env.space.write(a + 3 * PAGE_SIZE, b"y")
    env.space.write(a, b"y")
    assert env.free == NFRAMES - 4  # protecting moves no frame
    assert vm.protect(env.m, env.p, a + PAGE_SIZE, 2 * PAGE_SIZE, RW) == 0
    env.space.write(a + 2 * PAGE_SIZE, b"z")
    assert vm.protect(env.m, env.p, a, PAGE_SIZE, 0) == 0
    with pytest.raises(BadAddress):
        env.space.read(a, 1)


def test_protect_of_an_unmapped_range_fails(env: Env) -> None:
    a = vm.map_anonymous(env.m, env.p, 0, 2 * PAGE_SIZE, RW, ANON)
    assert vm.protect(env.m, env.p, a + PAGE_SIZE, 2 * PAGE_SIZE, PROT_READ) == -Errno.ENOMEM
    assert vm.protect(env.m, env.p, a + 1, PAGE_SIZE, PROT_READ) == -Errno.EINVAL
    env.space.write(a + PAGE_SIZE, b"still writable")


def test_protect_of_zero_length_changes_nothing(env: Env) -> None:
    a = vm.map_anonymous(env.m, env.p, 0, 4 * PAGE_SIZE, RW, ANON)
    assert vm.protect(env.m, env.p, a + PAGE_SIZE, 0, PROT_READ) == 0
    assert env.areas() == [(a, a + 4 * PAGE_SIZE, RW)]


def test_discard_zeroes_and_frees(env: Env) -> None:
    a = vm.map_anonymous(env.m, env.p, 0, 4 * PAGE_SIZE, RW, ANON)
    touch(env, a, 4)
    assert env.free == NFRAMES - 4
    g = env.space.generation
    assert vm.discard(env.m, env.p, a + PAGE_SIZE, 2 * PAGE_SIZE) == 0
    assert env.free == NFRAMES - 2
    assert env.space.generation > g
    assert env.space.read(a + PAGE_SIZE, 2 * PAGE_SIZE) == bytes(2 * PAGE_SIZE)
    assert env.space.read(a, 16) == bytes([0x5A]) * 16
    assert env.space.read(a + 3 * PAGE_SIZE, 16) == bytes([0x5D]) * 16
    assert len(env.areas()) == 1  # the mapping itself stays whole
    assert vm.discard(env.m, env.p, a + 1, PAGE_SIZE) == -Errno.EINVAL


# --- brk ---------------------------------------------------------------------------------------

def test_set_break_grows_and_shrinks(env: Env) -> None:
    assert vm.set_break(env.m, env.p, 0) == BRK_START  # query
    assert vm.set_break(env.m, env.p, BRK_START - PAGE_SIZE) == BRK_START  # below start: refused
    new = BRK_START + 3 * PAGE_SIZE + 10
    assert vm.set_break(env.m, env.p, new) == new
    assert env.p.brk == new
    assert env.areas() == [(BRK_START, BRK_START + 4 * PAGE_SIZE, RW)]
    heap = env.space.find(BRK_START)
    assert heap is not None and heap.region is not None and heap.region.kind is RegionKind.HEAP
    touch(env, BRK_START, 4)
    assert env.free == NFRAMES - 4
    # Growing again extends the same heap region.
    assert vm.set_break(env.m, env.p, BRK_START + 6 * PAGE_SIZE) == BRK_START + 6 * PAGE_SIZE
    assert env.areas() == [(BRK_START, BRK_START + 6 * PAGE_SIZE, RW)]
    assert env.space.read(BRK_START + 3 * PAGE_SIZE, 16) == bytes([0x5D]) * 16
    # Shrinking frees the pages cut off; growing back gives zero pages.
    assert vm.set_break(env.m, env.p, BRK_START + PAGE_SIZE) == BRK_START + PAGE_SIZE
    assert env.areas() == [(BRK_START, BRK_START + PAGE_SIZE, RW)]
    assert env.free == NFRAMES - 1
    with pytest.raises(BadAddress):
        env.space.read(BRK_START + PAGE_SIZE, 1)
    assert vm.set_break(env.m, env.p, BRK_START + 2 * PAGE_SIZE) == BRK_START + 2 * PAGE_SIZE
    assert env.space.read(BRK_START + PAGE_SIZE, 16) == bytes(16)
    assert vm.set_break(env.m, env.p, BRK_START) == BRK_START
    assert env.areas() == [] and env.free == NFRAMES


def test_set_break_refuses_to_grow_into_a_mapping(env: Env) -> None:
    blocker = BRK_START + 2 * PAGE_SIZE
    assert vm.map_anonymous(env.m, env.p, blocker, PAGE_SIZE, RW,
                            ANON | linux.MAP_FIXED_NOREPLACE) == blocker
    assert vm.set_break(env.m, env.p, BRK_START + PAGE_SIZE) == BRK_START + PAGE_SIZE
    assert vm.set_break(env.m, env.p, BRK_START + 4 * PAGE_SIZE) == BRK_START + PAGE_SIZE
    assert env.p.brk == BRK_START + PAGE_SIZE


# --- whole address spaces ----------------------------------------------------------------------

def test_release_address_space_returns_every_frame(env: Env) -> None:
    a = vm.map_anonymous(env.m, env.p, 0, 8 * PAGE_SIZE, RW, ANON)
    touch(env, a, 8)
    vm.set_break(env.m, env.p, BRK_START + 5 * PAGE_SIZE)
    touch(env, BRK_START, 5)
    vm.protect(env.m, env.p, a + 2 * PAGE_SIZE, PAGE_SIZE, PROT_READ)  # forces splits
    vm.unmap(env.m, env.p, a + 5 * PAGE_SIZE, PAGE_SIZE)
    assert env.free == NFRAMES - 12
    space = env.space
    vm.release_address_space(env.m, env.p)
    assert env.p.space is None
    assert env.m.memory.free_frames == env.m.memory.nframes
    assert space.user_spaces == [] and space.table == {}
    for mgr in (env.m.spaces, env.m.regions, env.m.user_spaces):
        s = mgr.statistics()
        assert s.live == 0, s
    assert env.m.spaces.statistics().held == 1
    assert env.m.regions.statistics().held == env.m.regions.statistics().created


def test_load_program_builds_text_data_stack_and_initial_stack() -> None:
    m = managers(1024)
    image = workload("hello").read_bytes()
    program = parse_program(image, "hello")
    p = Process()
    argv, envp = [b"hello", b"arg one"], [b"A=1", b"TENDER_TEST=x"]
    vm.load_program(m, p, program, image, argv, envp)
    space = p.space
    assert space is not None and p.registers is not None
    assert p.registers.rip == program.entry
    assert p.brk == p.brk_start == program.end
    # Every file-backed byte is in memory with the segment's permissions.
    for seg in program.segments:
        us = space.find(seg.vaddr)
        assert us is not None and us.perms == seg.perms
        assert space.read(seg.vaddr, seg.filesz) == image[seg.offset: seg.offset + seg.filesz]
        if seg.memsz > seg.filesz:  # BSS reads as zeros
            assert space.read(seg.vaddr + seg.filesz, seg.memsz - seg.filesz) == \
                bytes(seg.memsz - seg.filesz)
    assert space.find(program.entry).perms & PROT_EXEC
    assert set(p.user_spaces) >= {"stack"}
    stack = p.user_spaces["stack"]
    assert (stack.start, stack.end) == (vm.STACK_TOP - vm.STACK_SIZE, vm.STACK_TOP)
    # The System V initial stack.
    rsp = p.registers.reg("rsp")
    assert rsp % 16 == 0 and stack.start < rsp < stack.end

    def word(i: int) -> int:
        return struct.unpack("<Q", space.read(rsp + 8 * i, 8))[0]

    assert word(0) == 2
    assert [space.read_cstring(word(1 + i)) for i in range(2)] == argv and word(3) == 0
    assert [space.read_cstring(word(4 + i)) for i in range(2)] == envp and word(6) == 0
    auxv, i = {}, 7
    while word(i) != linux.AT_NULL:
        auxv[word(i)] = word(i + 1)
        i += 2
    assert auxv[linux.AT_PHDR] == program.phdr
    assert auxv[linux.AT_PHNUM] == program.phnum and auxv[linux.AT_PHENT] == program.phent
    assert auxv[linux.AT_PAGESZ] == PAGE_SIZE and auxv[linux.AT_ENTRY] == program.entry
    assert space.read(auxv[linux.AT_PHDR], 4) == image[64:68]  # the headers really are there
    assert len(space.read(auxv[linux.AT_RANDOM], 16)) == 16
    assert space.read_cstring(auxv[linux.AT_EXECFN]) == b"hello"
    used = m.memory.nframes - m.memory.free_frames
    assert used >= vm.frames_needed(program) - 2
    vm.release_address_space(m, p)
    assert m.memory.free_frames == m.memory.nframes


def test_load_program_refuses_what_cannot_fit() -> None:
    image = workload("hello").read_bytes()
    program = parse_program(image, "hello")
    need = vm.frames_needed(program)
    small = managers(need - 1)
    with pytest.raises(BadProgramError, match="too big"):
        vm.load_program(small, Process(), program, image, [b"hello"], [])
    busy = managers(need + 8)
    taken = busy.memory.allocate(10)
    p = Process()
    with pytest.raises(OutOfMemoryError):
        vm.load_program(busy, p, program, image, [b"hello"], [])
    assert p.space is None and busy.memory.free_frames == need - 2
    busy.memory.free(taken)
