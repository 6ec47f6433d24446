"""Loading position-independent and dynamically linked programs (the program at its base, its
dynamic loader below the mmap top, the auxv they read) and file mappings, without a CPU."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from support.programs import workload
from test_vm import managers

from tender_ray.abi import linux
from tender_ray.abi.linux import MAP_FIXED, MAP_PRIVATE, MAP_SHARED, PROT_READ, PROT_WRITE, Errno
from tender_ray.errors import BadProgramError
from tender_ray.kernel import address_space as vm
from tender_ray.resources.process import Process
from tender_ray.resources.program import PIE_BASE, parse_program
from tender_ray.resources.real_memory import PAGE_SIZE, page_down
from tender_ray.resources.virtual_region import RegionKind

PIE = Path("/usr/bin/sha256sum")


def _pie() -> bytes:
    if not PIE.exists():
        pytest.skip(f"{PIE} is not installed here")
    return PIE.read_bytes()


def _read_host(path: str) -> bytes:
    return Path(path).read_bytes()


def _auxv(p: Process) -> tuple[dict[int, int], list[int]]:
    space = p.space
    assert space is not None and p.registers is not None
    rsp = p.registers.reg("rsp")

    def word(i: int) -> int:
        return int(struct.unpack("<Q", space.read(rsp + 8 * i, 8))[0])

    i = 1 + word(0) + 1
    while word(i):
        i += 1
    i += 1
    auxv, keys = {}, []
    while word(i) != linux.AT_NULL:
        auxv[word(i)] = word(i + 1)
        keys.append(word(i))
        i += 2
    return auxv, keys


def test_a_dynamic_pie_loads_at_its_base_with_its_loader_below_the_mmap_top() -> None:
    image = _pie()
    program = parse_program(image, "sha256sum")
    interpreter = vm.read_interpreter(program, _read_host)
    assert interpreter is not None
    loader, loader_image = interpreter
    assert loader.name == program.interpreter and not loader.interpreter
    m = managers(4096)
    p = Process()
    vm.load_program(m, p, program, image, [b"sha256sum", b"f"], [b"A=1"], interpreter,
                    hwcap=(0x1234, 2))
    space = p.space
    assert space is not None and p.registers is not None
    # The process starts in the loader; the program is at the PIE base, the loader's top
    # just under the mmap top, later mappings below the loader.
    assert p.registers.rip == loader.entry != program.entry
    assert min(s.vaddr for s in program.segments) == PIE_BASE
    assert loader.end <= vm.MMAP_TOP and vm.MMAP_TOP - loader.end < PAGE_SIZE
    assert p.mmap_top == loader.base
    assert p.brk_start == program.end
    for image_of, prog in ((image, program), (loader_image, loader)):
        for seg in prog.segments:
            us = space.find(seg.vaddr)
            assert us is not None and us.perms == seg.perms and us.region is not None
            assert space.read(seg.vaddr, seg.filesz) == image_of[seg.offset:
                                                                 seg.offset + seg.filesz]
            want = (RegionKind.MMAP,) if prog is loader else (RegionKind.TEXT, RegionKind.DATA)
            assert us.region.kind in want
    auxv, keys = _auxv(p)
    assert auxv[linux.AT_PHDR] == program.phdr and auxv[linux.AT_PHDR] > PIE_BASE
    assert space.read(auxv[linux.AT_PHDR], 4) == image[64:68]  # PT_PHDR, really mapped
    assert auxv[linux.AT_PHENT] == 56 and auxv[linux.AT_PHNUM] == program.phnum
    assert auxv[linux.AT_ENTRY] == program.entry and auxv[linux.AT_BASE] == loader.base
    assert (auxv[linux.AT_HWCAP], auxv[linux.AT_HWCAP2]) == (0x1234, 2)
    assert auxv[linux.AT_PAGESZ] == PAGE_SIZE and auxv[linux.AT_CLKTCK] == 100
    assert auxv[linux.AT_FLAGS] == auxv[linux.AT_SECURE] == auxv[linux.AT_UID] == 0
    assert auxv[linux.AT_MINSIGSTKSZ] >= 2048
    assert space.read_cstring(auxv[linux.AT_PLATFORM]) == b"x86_64"
    assert space.read_cstring(auxv[linux.AT_EXECFN]) == b"sha256sum"
    assert len(space.read(auxv[linux.AT_RANDOM], 16)) == 16
    assert 33 not in keys  # no AT_SYSINFO_EHDR: no vDSO
    assert len(keys) == len(set(keys))
    used = m.memory.nframes - m.memory.free_frames
    assert used >= vm.frames_needed(program, interpreter=loader) - 2
    vm.release_address_space(m, p)
    assert m.memory.free_frames == m.memory.nframes


def test_a_static_program_keeps_its_addresses_and_no_loader() -> None:
    image = workload("hello").read_bytes()
    program = parse_program(image, "hello", base=PIE_BASE)  # ET_EXEC ignores a base
    assert program.base == 0 and not program.interpreter
    assert program == parse_program(image, "hello")
    assert vm.read_interpreter(program, _read_host) is None
    p = Process()
    vm.load_program(managers(), p, program, image, [b"hello"], [])
    auxv, _ = _auxv(p)
    assert auxv[linux.AT_BASE] == 0 and p.mmap_top == vm.MMAP_TOP


def test_a_loader_that_cannot_be_read_or_is_not_position_independent_is_refused() -> None:
    program = parse_program(_pie(), "sha256sum")

    def missing(path: str) -> bytes:
        raise FileNotFoundError(2, "No such file or directory", path)

    with pytest.raises(BadProgramError, match=r"dynamic loader /\S+ cannot be read.*install"):
        vm.read_interpreter(program, missing)
    fixed = workload("hello").read_bytes()
    with pytest.raises(BadProgramError, match="not a self-relocating ET_DYN"):
        vm.read_interpreter(program, lambda path: fixed)
    with pytest.raises(BadProgramError, match="not a self-relocating ET_DYN"):
        vm.read_interpreter(program, lambda path: PIE.read_bytes())  # needs a loader itself


# --- file mappings -----------------------------------------------------------------------------

FILE = bytes(range(256)) * 40  # 10,240 bytes: two whole pages and a part


def _file_pread(length: int, offset: int) -> bytes:
    return FILE[offset: offset + length]


def _loaded() -> tuple[vm.Managers, Process]:
    image = workload("hello").read_bytes()
    m, p = managers(), Process()
    vm.load_program(m, p, parse_program(image, "hello"), image, [b"hello"], [])
    return m, p


def test_a_private_file_mapping_is_the_file_then_zeros() -> None:
    m, p = _loaded()
    assert p.space is not None
    addr = vm.map_file(m, p, 0, 5 * PAGE_SIZE, PROT_READ, MAP_PRIVATE, PAGE_SIZE, _file_pread)
    assert addr > 0 and addr % PAGE_SIZE == 0 and addr + 5 * PAGE_SIZE <= p.mmap_top
    tail = FILE[PAGE_SIZE:]
    assert p.space.read(addr, len(tail)) == tail
    assert p.space.read(addr + len(tail), 5 * PAGE_SIZE - len(tail)) == \
        bytes(5 * PAGE_SIZE - len(tail))
    us = p.space.find(addr)
    assert us is not None and us.perms == PROT_READ and us.region is not None
    assert us.region.kind is RegionKind.MMAP
    # A read-only shared mapping is the same copy.
    shared = vm.map_file(m, p, 0, len(FILE), PROT_READ, MAP_SHARED, 0, _file_pread)
    assert p.space.read(shared, len(FILE)) == FILE


def test_the_loader_way_map_whole_then_fixed_segments_over_it_then_mprotect() -> None:
    m, p = _loaded()
    space = p.space
    assert space is not None
    base = vm.map_file(m, p, 0, 3 * PAGE_SIZE, PROT_READ, MAP_PRIVATE, 0, _file_pread)
    assert base > 0
    # A writable segment MAP_FIXED over the middle page from a later file offset...
    second = vm.map_file(m, p, base + PAGE_SIZE, PAGE_SIZE, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_FIXED, 2 * PAGE_SIZE, _file_pread)
    assert second == base + PAGE_SIZE
    assert space.read(base, PAGE_SIZE) == FILE[:PAGE_SIZE]
    assert space.read(second, PAGE_SIZE) == (FILE[2 * PAGE_SIZE:] + bytes(PAGE_SIZE))[
        :PAGE_SIZE]
    assert space.read(base + 2 * PAGE_SIZE, len(FILE) - 2 * PAGE_SIZE) == FILE[2 * PAGE_SIZE:]
    pieces = space.overlapping(base, base + 3 * PAGE_SIZE)
    assert [(us.start - base, us.perms) for us in pieces] == [
        (0, PROT_READ), (PAGE_SIZE, PROT_READ | PROT_WRITE), (2 * PAGE_SIZE, PROT_READ)]
    space.write(second, b"private")  # a private copy: the file is untouched
    assert FILE[2 * PAGE_SIZE: 2 * PAGE_SIZE + 7] != b"private"
    # ... then RELRO made read-only again, and an anonymous MAP_FIXED over the last page.
    assert vm.protect(m, p, second, PAGE_SIZE, PROT_READ) == 0
    found = space.find(second)
    assert found is not None and found.perms == PROT_READ
    assert space.read(second, 7) == b"private"
    anon = vm.map_anonymous(m, p, base + 2 * PAGE_SIZE, PAGE_SIZE, PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_FIXED | linux.MAP_ANONYMOUS)
    assert anon == base + 2 * PAGE_SIZE and space.read(anon, 16) == bytes(16)
    assert vm.unmap(m, p, base, 3 * PAGE_SIZE) == 0
    assert not space.overlapping(base, base + 3 * PAGE_SIZE)


def test_file_mappings_that_cannot_be_made_say_why_and_change_nothing() -> None:
    m, p = _loaded()
    assert p.space is not None
    before = [(us.start, us.end) for us in p.space.user_spaces]
    assert vm.map_file(m, p, 0, PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, 0,
                       _file_pread) == -Errno.ENODEV
    assert vm.map_file(m, p, 0, PAGE_SIZE, PROT_READ, MAP_PRIVATE, 100,
                       _file_pread) == -Errno.EINVAL
    assert vm.map_file(m, p, 0, 0, PROT_READ, MAP_PRIVATE, 0, _file_pread) == -Errno.EINVAL
    stack = p.user_spaces["stack"]

    def failing(length: int, offset: int) -> bytes:
        raise OSError(5, "I/O error")

    # A failing read leaves even a MAP_FIXED target in place.
    with pytest.raises(OSError):
        vm.map_file(m, p, stack.start, PAGE_SIZE, PROT_READ, MAP_PRIVATE | MAP_FIXED, 0,
                    failing)
    assert [(us.start, us.end) for us in p.space.user_spaces] == before
    assert page_down(stack.start) == stack.start
