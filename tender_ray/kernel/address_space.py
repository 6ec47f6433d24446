"""A process's address space built from Tender resources: loading a program, the initial stack,
the program break and anonymous mappings.

Every area is a virtual region pasted into the process's virtual space by a virtual user space;
these functions take both from the machine's managers and give them back, so holding and pools
apply to address-space changes as much as to process creation.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from tender_ray.abi import linux
from tender_ray.abi.cpu_state import CpuState
from tender_ray.abi.linux import (
    MAP_ANONYMOUS,
    MAP_FIXED,
    MAP_FIXED_NOREPLACE,
    MAP_GROWSDOWN,
    PROT_READ,
    PROT_WRITE,
    Errno,
)
from tender_ray.errors import BadProgramError, OutOfMemoryError
from tender_ray.migration.image import AreaImage
from tender_ray.resources.manager import ResourceManager
from tender_ray.resources.process import Process
from tender_ray.resources.program import Program
from tender_ray.resources.real_memory import PAGE_SHIFT, PAGE_SIZE, RealMemory, page_down, page_up
from tender_ray.resources.virtual_region import NOT_PRESENT, RegionKind, VirtualRegion
from tender_ray.resources.virtual_space import VirtualSpace
from tender_ray.resources.virtual_user_space import VirtualUserSpace

STACK_TOP = 0x7FFF_FFFF_F000
STACK_SIZE = 8 << 20  # like the default RLIMIT_STACK; pages appear on first touch
MMAP_TOP = STACK_TOP - STACK_SIZE - (1 << 30)  # a gap below the stack, as Linux leaves
ADDRESS_LIMIT = 1 << 47


@dataclass
class Managers:
    """The resource managers an address space draws on (the machine owns them)."""

    memory: RealMemory
    spaces: ResourceManager[VirtualSpace]
    regions: ResourceManager[VirtualRegion]
    user_spaces: ResourceManager[VirtualUserSpace]


# --- user spaces ----------------------------------------------------------------------------

def add_area(m: Managers, process: Process, kind: RegionKind, start: int, npages: int,
             perms: int) -> VirtualUserSpace:
    """A new region of `npages` not-present pages, pasted at `start`."""
    assert process.space is not None
    region = m.regions.acquire().setup(kind, npages)
    us = m.user_spaces.acquire().setup(region, start, perms)
    process.space.paste(us)
    return us


def remove_area(m: Managers, process: Process, us: VirtualUserSpace,
                hold: bool | None = None) -> None:
    assert process.space is not None and us.region is not None
    region = us.region
    process.space.unpaste(us)
    region.release(m.memory)
    m.regions.release(region, hold)
    m.user_spaces.release(us, hold)


def release_address_space(m: Managers, process: Process, hold: bool | None = None) -> None:
    """Give back every area, frame and the virtual space itself (held for reuse unless
    `hold` is False)."""
    space = process.space
    if space is None:
        return
    for us in list(space.user_spaces):
        remove_area(m, process, us, hold)
    process.user_spaces.clear()
    space.clear()
    m.spaces.release(space, hold)
    process.space = None


def _split(m: Managers, process: Process, us: VirtualUserSpace, at: int) -> VirtualUserSpace:
    """Cut a pasted user space at address `at`; the new right-hand piece."""
    assert process.space is not None and us.region is not None
    index = (at - us.start) >> PAGE_SHIFT
    right_region = us.region.split_off(index, m.regions.acquire())
    right = m.user_spaces.acquire().setup(right_region, at, us.perms)
    process.space.refresh(us)
    process.space.paste(right)
    return right


def _isolate(m: Managers, process: Process, start: int, end: int) -> list[VirtualUserSpace]:
    """The user spaces exactly covering [start, end), splitting those that stick out."""
    assert process.space is not None
    pieces = []
    for us in process.space.overlapping(start, end):
        if us.start < start:
            us = _split(m, process, us, start)
        if us.end > end:
            _split(m, process, us, end)
        pieces.append(us)
    return pieces


# --- loading --------------------------------------------------------------------------------

ARG_MAX = STACK_SIZE // 4  # like Linux: arguments and environment take at most 1/4 stack


def stack_bytes(argv: list[bytes], envp: list[bytes]) -> int:
    """Bytes the initial stack takes: strings, pointers, auxv, random bytes, alignment."""
    strings = sum(len(s) + 1 for s in (*argv, *envp)) + len(argv[0] if argv else b"") + 8
    words = 1 + len(argv) + 1 + len(envp) + 1 + 2 * 18
    return strings + 8 * words + 64


def frames_needed(program: Program, argv: list[bytes] | None = None,
                  envp: list[bytes] | None = None) -> int:
    """Frames a program needs at exec: its file-backed pages and the initial stack (BSS,
    heap and the rest of the stack come on first touch)."""
    stack = page_up(stack_bytes(argv or [], envp or [])) >> PAGE_SHIFT
    return sum((page_up(s.vaddr + s.filesz) - page_down(s.vaddr)) >> PAGE_SHIFT
               for s in program.segments) + stack + 1


def load_program(m: Managers, process: Process, program: Program, image: bytes,
                 argv: list[bytes], envp: list[bytes]) -> None:
    """Give `process` a fresh virtual space holding `program`, a stack and its registers.

    On failure nothing stays allocated: the caller releases the address space.
    """
    if stack_bytes(argv, envp) > ARG_MAX:
        raise BadProgramError(program.name, f"arguments and environment take "
                                            f"{stack_bytes(argv, envp)} bytes, more than "
                                            f"{ARG_MAX} (E2BIG); pass less")
    need = frames_needed(program, argv, envp)
    if need > m.memory.nframes:
        raise BadProgramError(program.name, f"too big for real memory: needs {need * 4} KiB, "
                                            f"the machine has {m.memory.size >> 10} KiB")
    if need > m.memory.free_frames:
        raise OutOfMemoryError(f"{program.name}: needs {need} free frames, "
                               f"{m.memory.free_frames} free; retry when processes end")
    process.space = m.spaces.acquire()
    process.program = program
    for i, seg in enumerate(program.segments):
        start, end = page_down(seg.vaddr), page_up(seg.vaddr + seg.memsz)
        file_end = page_up(seg.vaddr + seg.filesz) if seg.writable else end
        kind = RegionKind.DATA if seg.writable else RegionKind.TEXT
        if file_end > start:
            us = add_area(m, process, kind, start, (file_end - start) >> PAGE_SHIFT, seg.perms)
            assert us.region is not None
            frames = us.region.populate(list(range(us.npages)), m.memory)
            buf = np.zeros((len(frames), PAGE_SIZE), dtype=np.uint8)
            flat = buf.reshape(-1)
            off = seg.vaddr - start
            flat[off: off + seg.filesz] = np.frombuffer(image, np.uint8, seg.filesz, seg.offset)
            m.memory.frames[frames] = buf
            process.space.refresh(us)
            process.user_spaces[f"{kind.value}{i}"] = us
        if end > file_end:
            process.user_spaces[f"bss{i}"] = add_area(
                m, process, RegionKind.BSS, file_end, (end - file_end) >> PAGE_SHIFT, seg.perms)
    process.brk_start = process.brk = program.end
    process.mmap_top = MMAP_TOP
    process.user_spaces["stack"] = add_area(m, process, RegionKind.STACK, STACK_TOP - STACK_SIZE,
                                            STACK_SIZE >> PAGE_SHIFT, PROT_READ | PROT_WRITE)
    rsp = _initial_stack(process.space, program, argv, envp)
    process.registers = CpuState.initial(program.entry, rsp)


def text_pages(program: Program, image: bytes,
               areas: tuple[AreaImage, ...]) -> npt.NDArray[np.uint8]:
    """The present pages of the given text areas, read from the program image (the plate).

    Used when a migration moves every resource: the text is reloaded from the program file
    instead of copied from memory.
    """
    out = []
    for area in areas:
        segment = next((s for s in program.segments if page_down(s.vaddr) == area.start), None)
        if segment is None:
            raise BadProgramError(program.name, f"no segment at {area.start:#x} to reload")
        buf = np.zeros((area.npages, PAGE_SIZE), dtype=np.uint8)
        flat = buf.reshape(-1)
        off = segment.vaddr - area.start
        flat[off: off + segment.filesz] = np.frombuffer(image, np.uint8, segment.filesz,
                                                        segment.offset)
        out.append(buf[list(area.present)])
    if not out:
        return np.empty((0, PAGE_SIZE), dtype=np.uint8)
    return np.concatenate(out)


def _initial_stack(space: VirtualSpace, program: Program, argv: list[bytes],
                   envp: list[bytes]) -> int:
    """Write the System V initial stack (argc, argv, envp, auxv and their strings)."""
    strings = bytearray()
    offsets = []
    for s in [*argv, *envp, b"x86_64", argv[0] if argv else b""]:
        offsets.append(len(strings))
        strings += s + b"\0"
    random_bytes = os.urandom(16)
    top = STACK_TOP - 16
    strings_at = (top - len(strings)) & ~15
    random_at = strings_at - 16
    addrs = [strings_at + o for o in offsets]
    argv_addrs = addrs[: len(argv)]
    envp_addrs = addrs[len(argv): len(argv) + len(envp)]
    platform_at, execfn_at = addrs[-2], addrs[-1]
    auxv = [(linux.AT_PHDR, program.phdr), (linux.AT_PHENT, program.phent),
            (linux.AT_PHNUM, program.phnum), (linux.AT_PAGESZ, PAGE_SIZE), (linux.AT_BASE, 0),
            (linux.AT_FLAGS, 0), (linux.AT_ENTRY, program.entry), (linux.AT_UID, 0),
            (linux.AT_EUID, 0), (linux.AT_GID, 0), (linux.AT_EGID, 0),
            (linux.AT_HWCAP, 0x178BFBFF), (linux.AT_CLKTCK, 100), (linux.AT_SECURE, 0),
            (linux.AT_RANDOM, random_at), (linux.AT_PLATFORM, platform_at),
            (linux.AT_EXECFN, execfn_at), (linux.AT_NULL, 0)]
    words = [len(argv), *argv_addrs, 0, *envp_addrs, 0]
    for key, value in auxv:
        words += [key, value]
    rsp = (random_at - 8 * len(words)) & ~15
    space.write(rsp, struct.pack(f"<{len(words)}Q", *words))
    space.write(random_at, random_bytes)
    space.write(strings_at, bytes(strings))
    return rsp


# --- the program break and anonymous mappings -----------------------------------------------


def set_break(m: Managers, process: Process, new: int) -> int:
    """brk: move the program break; the break (unchanged when the request fails)."""
    space = process.space
    assert space is not None
    if new == 0 or new < process.brk_start:
        return process.brk
    old_end, new_end = page_up(process.brk), page_up(new)
    try:
        if new_end > old_end:
            if space.overlapping(old_end, new_end):
                return process.brk
            last = space.find(old_end - 1) if old_end > process.brk_start else None
            if last is not None and last.region is not None and \
                    last.region.kind is RegionKind.HEAP and last.end == old_end:
                last.region.resize(last.npages + ((new_end - old_end) >> PAGE_SHIFT), m.memory)
            else:
                add_area(m, process, RegionKind.HEAP, old_end, (new_end - old_end) >> PAGE_SHIFT,
                         PROT_READ | PROT_WRITE)
        elif new_end < old_end:
            unmap(m, process, new_end, old_end - new_end)
    except OutOfMemoryError:
        return process.brk
    process.brk = new
    return new


def _find_gap(space: VirtualSpace, length: int, top: int) -> int | None:
    """Highest free range of `length` bytes ending at or below `top`."""
    end = top
    for us in reversed(space.user_spaces):
        if us.start >= end:
            continue
        if us.end <= end - length:
            return end - length
        end = min(end, us.start)
    return end - length if end - length >= 1 << 16 else None


def map_anonymous(m: Managers, process: Process, addr: int, length: int, prot: int,
                  flags: int) -> int:
    """mmap of anonymous memory: the address, or -errno."""
    space = process.space
    assert space is not None
    if length <= 0 or addr % PAGE_SIZE:
        return -Errno.EINVAL
    if not flags & MAP_ANONYMOUS:
        return -Errno.ENODEV  # a Tender process has no files to map
    length = page_up(length)
    if addr + length > ADDRESS_LIMIT:
        return -Errno.ENOMEM
    if flags & MAP_FIXED_NOREPLACE:
        if space.overlapping(addr, addr + length):
            return -Errno.EEXIST
        start = addr
    elif flags & MAP_FIXED:
        unmap(m, process, addr, length)
        start = addr
    elif addr and addr >= 1 << 16 and not space.overlapping(addr, addr + length):
        start = addr
    else:
        found = _find_gap(space, length, process.mmap_top)
        if found is None:
            return -Errno.ENOMEM
        start = found
    kind = RegionKind.STACK if flags & MAP_GROWSDOWN else RegionKind.MMAP
    add_area(m, process, kind, start, length >> PAGE_SHIFT, prot & 7)
    return start


def unmap(m: Managers, process: Process, addr: int, length: int) -> int:
    if addr % PAGE_SIZE or length <= 0:
        return -Errno.EINVAL
    end = page_up(addr + length)
    for us in _isolate(m, process, addr, end):
        remove_area(m, process, us)
    return 0


def protect(m: Managers, process: Process, addr: int, length: int, prot: int) -> int:
    assert process.space is not None
    if addr % PAGE_SIZE:
        return -Errno.EINVAL
    if length == 0:
        return 0
    end = page_up(addr + length)
    pieces = _isolate(m, process, addr, end)
    covered = sum(us.end - us.start for us in pieces)
    if covered != end - addr:
        return -Errno.ENOMEM  # part of the range is not mapped
    for us in pieces:
        us.perms = prot & 7
        process.space.refresh(us)
    return 0


def discard(m: Managers, process: Process, addr: int, length: int) -> int:
    """madvise(DONTNEED/FREE): drop the frames of the range; it reads as zeros afterwards."""
    space = process.space
    assert space is not None
    if addr % PAGE_SIZE:
        return -Errno.EINVAL
    end = page_up(addr + length)
    for us in space.overlapping(addr, end):
        region = us.region
        if region is None or region.kind is RegionKind.TEXT:
            continue
        first = max(addr, us.start) - us.start >> PAGE_SHIFT
        last = min(end, us.end) - us.start >> PAGE_SHIFT
        dropped = [f for f in region.frames[first:last] if f != NOT_PRESENT]
        if dropped:
            region.frames[first:last] = [NOT_PRESENT] * (last - first)
            m.memory.free(dropped)
            space.refresh(us)
    return 0
