"""A process's address space built from Tender resources: loading a program (and its dynamic
loader), the initial stack, the program break, anonymous and file mappings.

Every area is a virtual region pasted into the process's virtual space by a virtual user space;
these functions take both from the machine's managers and give them back, so holding and pools
apply to address-space changes as much as to process creation.
"""

from __future__ import annotations

import itertools
import os
import struct
from collections.abc import Callable
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
    MAP_PRIVATE,
    MAP_SHARED,
    PROT_READ,
    PROT_WRITE,
    Errno,
)
from tender_ray.errors import BadProgramError, OutOfMemoryError
from tender_ray.migration.image import AreaImage
from tender_ray.resources.manager import ResourceManager
from tender_ray.resources.process import Process
from tender_ray.resources.program import Program, parse_program
from tender_ray.resources.real_memory import PAGE_SHIFT, PAGE_SIZE, RealMemory, page_down, page_up
from tender_ray.resources.virtual_region import NOT_PRESENT, RegionKind, VirtualRegion
from tender_ray.resources.virtual_space import VirtualSpace
from tender_ray.resources.virtual_user_space import VirtualUserSpace

AT_SYSINFO_EHDR = 33  # auxv: where the vDSO is
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
    process.space.unpaste(us)
    _release_area(m, us, hold, keep_frames=False)


def _release_area(m: Managers, us: VirtualUserSpace, hold: bool | None,
                  keep_frames: bool) -> None:
    """Give back an unpasted user space and its region; its frames held with the region
    when `keep_frames` and holding is on, else freed."""
    region = us.region
    assert region is not None
    held = m.regions.reuse if hold is None else hold and m.regions.reuse
    region.release(m.memory, hold=keep_frames and held)
    m.regions.release(region, hold)
    m.user_spaces.release(us, hold)


def release_address_space(m: Managers, process: Process, hold: bool | None = None) -> None:
    """Give back every area, frame and the virtual space itself (held for reuse unless
    `hold` is False). Held regions keep their frames for the next arrival: deleting a
    process costs nothing per page."""
    space = process.space
    if space is None:
        return
    held = m.regions.reuse if hold is None else hold and m.regions.reuse
    kept: list[list[int]] = []
    for us in space.unpaste_all():
        region = us.region
        assert region is not None
        if held:
            kept.append(region.frames)
            region.frames = []
        _release_area(m, us, hold, keep_frames=False)
    if kept:
        m.memory.hold_all(kept)  # counted in C (list.count): no Python work per page
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
    words = 1 + len(argv) + 1 + len(envp) + 1 + 2 * 20
    return strings + 8 * words + 64


def frames_needed(program: Program, argv: list[bytes] | None = None,
                  envp: list[bytes] | None = None, interpreter: Program | None = None) -> int:
    """Frames a program needs at exec: its file-backed pages (and its dynamic loader's) and the
    initial stack (BSS, heap and the rest of the stack come on first touch)."""
    stack = page_up(stack_bytes(argv or [], envp or [])) >> PAGE_SHIFT
    images = (program,) if interpreter is None else (program, interpreter)
    return sum((page_up(s.vaddr + s.filesz) - page_down(s.vaddr)) >> PAGE_SHIFT
               for image in images for s in image.segments) + stack + 1


def interpreter_base(span: int, top: int = MMAP_TOP) -> int:
    """Where the dynamic loader goes: right below the mmap top, as Linux maps it top-down
    (the process's later mappings then go below it)."""
    return page_down(top - page_up(span))


def read_interpreter(program: Program,
                     read_file: Callable[[str], bytes]) -> tuple[Program, bytes] | None:
    """The program's dynamic loader (PT_INTERP) parsed at its base, with its image; None for
    a program without one. `read_file(path)` reads it as the process sees files."""
    if not program.interpreter:
        return None
    path = program.interpreter
    try:
        image = read_file(path)
    except OSError as exc:
        raise BadProgramError(program.name, f"its dynamic loader {path} cannot be read "
                                            f"({exc.strerror or exc}); install it on the "
                                            "machine or give a static program") from exc
    probe = parse_program(image, path, base=PAGE_SIZE)  # a fixed-address image keeps base 0
    if probe.interpreter or probe.base == 0:
        raise BadProgramError(program.name, f"its dynamic loader {path} is not a "
                                            "self-relocating ET_DYN image without a loader")
    span = probe.end - min(page_down(seg.vaddr) for seg in probe.segments)
    return parse_program(image, path, base=interpreter_base(span)), image


def load_program(m: Managers, process: Process, program: Program, image: bytes,
                 argv: list[bytes], envp: list[bytes],
                 interpreter: tuple[Program, bytes] | None = None,
                 hwcap: tuple[int, int] = (0x178BFBFF, 0),
                 vdso: tuple[int, list[tuple[int, bytes, int]]] | None = None) -> None:
    """Give `process` a fresh virtual space holding `program`, a stack and its registers.

    `vdso` (the engine's: AT_SYSINFO_EHDR and the areas to map, each (address, contents,
    perms)) gives the process a vDSO as part of its image; without it there is none.

    `interpreter` is the program's dynamic loader, parsed at its base (see
    `interpreter_base`), with its image: it is mapped too and the process starts at its entry,
    the auxv telling it where the program lies (AT_PHDR, AT_ENTRY, AT_BASE). `hwcap` is
    AT_HWCAP/AT_HWCAP2. On failure nothing stays allocated: the caller releases the space.
    """
    if stack_bytes(argv, envp) > ARG_MAX:
        raise BadProgramError(program.name, f"arguments and environment take "
                                            f"{stack_bytes(argv, envp)} bytes, more than "
                                            f"{ARG_MAX} (E2BIG); pass less")
    loader = interpreter[0] if interpreter is not None else None
    need = frames_needed(program, argv, envp, loader)
    if need > m.memory.nframes:
        raise BadProgramError(program.name, f"too big for real memory: needs {need * 4} KiB, "
                                            f"the machine has {m.memory.size >> 10} KiB")
    if need > m.memory.free_frames:
        raise OutOfMemoryError(f"{program.name}: needs {need} free frames, "
                               f"{m.memory.free_frames} free; retry when processes end")
    process.space = m.spaces.acquire()
    process.program = program
    # The program's own segments are its text and data (text moves as the program's text in
    # a migration); the loader's are ordinary file mappings.
    _map_segments(m, process, program, image, "")
    process.brk_start = process.brk = program.end
    process.mmap_top = MMAP_TOP
    entry = program.entry
    if interpreter is not None:
        loader, loader_image = interpreter
        if loader.end > MMAP_TOP or any(process.space.overlapping(
                page_down(s.vaddr), page_up(s.vaddr + s.memsz)) for s in loader.segments):
            raise BadProgramError(loader.name, "its load base overlaps the program; parse it "
                                               "at interpreter_base(span)")
        _map_segments(m, process, loader, loader_image, "interp")
        process.mmap_top = min(page_down(s.vaddr) for s in loader.segments)
        entry = loader.entry
    process.user_spaces["stack"] = add_area(m, process, RegionKind.STACK, STACK_TOP - STACK_SIZE,
                                            STACK_SIZE >> PAGE_SHIFT, PROT_READ | PROT_WRITE)
    for i, (start, data, perms) in enumerate(vdso[1] if vdso is not None else ()):
        us = add_area(m, process, RegionKind.MMAP, start, page_up(len(data)) >> PAGE_SHIFT, perms)
        assert us.region is not None
        frames = us.region.populate(list(range(us.npages)), m.memory)
        buf = np.zeros(len(frames) * PAGE_SIZE, dtype=np.uint8)
        buf[:len(data)] = np.frombuffer(data, np.uint8)
        m.memory.frames[frames] = buf.reshape(-1, PAGE_SIZE)
        process.space.refresh(us)
        process.user_spaces[f"vdso{i}"] = us
    rsp = _initial_stack(process.space, program, argv, envp,
                         loader.base if loader is not None else 0, hwcap,
                         vdso[0] if vdso is not None else 0)
    process.registers = CpuState.initial(entry, rsp)


def _map_segments(m: Managers, process: Process, program: Program, image: bytes,
                  prefix: str) -> None:
    """Map each loadable segment: file-backed pages copied into frames, the rest on touch.
    `prefix` "" names the program's own areas (text, data, bss); any other names file
    mappings of another image (all of kind MMAP)."""
    assert process.space is not None
    for i, seg in enumerate(program.segments):
        start, end = page_down(seg.vaddr), page_up(seg.vaddr + seg.memsz)
        file_end = page_up(seg.vaddr + seg.filesz) if seg.writable else end
        if prefix:
            kind = bss_kind = RegionKind.MMAP
        else:
            kind = RegionKind.DATA if seg.writable else RegionKind.TEXT
            bss_kind = RegionKind.BSS
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
            process.user_spaces[f"{prefix or kind.value}{i}"] = us
        if end > file_end:
            process.user_spaces[f"{prefix}bss{i}"] = add_area(
                m, process, bss_kind, file_end, (end - file_end) >> PAGE_SHIFT, seg.perms)


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


MINSIGSTKSZ = 2048  # AT_MINSIGSTKSZ: a signal frame of the FXSAVE-sized state we keep


def _initial_stack(space: VirtualSpace, program: Program, argv: list[bytes],
                   envp: list[bytes], interpreter_base: int = 0,
                   hwcap: tuple[int, int] = (0x178BFBFF, 0), vdso: int = 0) -> int:
    """Write the System V initial stack (argc, argv, envp, auxv and their strings).

    The auxv is what glibc's and musl's start-up code read; AT_SYSINFO_EHDR is there only
    when the engine gave the process a vDSO (`vdso`, its address): else time calls arrive as
    system calls."""
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
            (linux.AT_PHNUM, program.phnum), (linux.AT_PAGESZ, PAGE_SIZE),
            (linux.AT_BASE, interpreter_base), (linux.AT_FLAGS, 0),
            (linux.AT_ENTRY, program.entry), (linux.AT_UID, 0), (linux.AT_EUID, 0),
            (linux.AT_GID, 0), (linux.AT_EGID, 0), (linux.AT_HWCAP, hwcap[0]),
            (linux.AT_HWCAP2, hwcap[1]), (linux.AT_CLKTCK, 100), (linux.AT_SECURE, 0),
            (linux.AT_RANDOM, random_at), (linux.AT_PLATFORM, platform_at),
            (linux.AT_EXECFN, execfn_at), (linux.AT_MINSIGSTKSZ, MINSIGSTKSZ),
            *([(AT_SYSINFO_EHDR, vdso)] if vdso else []), (linux.AT_NULL, 0)]
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


def _place(m: Managers, process: Process, addr: int, length: int, flags: int) -> int:
    """Where a new mapping of `length` (page-rounded) bytes goes: its address, or -errno.
    MAP_FIXED removes what was there (a file mapping as much as an anonymous one)."""
    space = process.space
    assert space is not None
    if addr + length > ADDRESS_LIMIT:
        return -Errno.ENOMEM
    if flags & MAP_FIXED_NOREPLACE:
        if space.overlapping(addr, addr + length):
            return -Errno.EEXIST
        return addr
    if flags & MAP_FIXED:
        unmap(m, process, addr, length)
        return addr
    if addr and addr >= 1 << 16 and not space.overlapping(addr, addr + length):
        return addr
    found = _find_gap(space, length, process.mmap_top)
    return -Errno.ENOMEM if found is None else found


def map_anonymous(m: Managers, process: Process, addr: int, length: int, prot: int,
                  flags: int) -> int:
    """mmap of anonymous memory: the address, or -errno."""
    if length <= 0 or addr % PAGE_SIZE:
        return -Errno.EINVAL
    if not flags & MAP_ANONYMOUS:
        return -Errno.ENODEV  # a file mapping goes through map_file
    length = page_up(length)
    start = _place(m, process, addr, length, flags)
    if start < 0:
        return start
    kind = RegionKind.STACK if flags & MAP_GROWSDOWN else RegionKind.MMAP
    add_area(m, process, kind, start, length >> PAGE_SHIFT, prot & 7)
    return start


def map_file(m: Managers, process: Process, addr: int, length: int, prot: int, flags: int,
             offset: int, pread: Callable[[int, int], bytes]) -> int:
    """mmap of a file: the address, or -errno. `pread(length, offset)` reads the open file
    (it may raise; then nothing changed).

    The pages are copied from the file into fresh frames at once (past the end of the file
    they read as zeros), so the mapping is an ordinary private area that migrates like any
    other. MAP_PRIVATE gives exactly that; MAP_SHARED read-only is indistinguishable from it
    (nobody here writes the file while it is mapped); MAP_SHARED writable would need writes to
    reach the file, which no program we run asks for: -ENODEV, and the caller counts it.
    """
    if length <= 0 or addr % PAGE_SIZE or offset % PAGE_SIZE or offset < 0:
        return -Errno.EINVAL
    if flags & MAP_SHARED and not flags & MAP_PRIVATE and prot & PROT_WRITE:
        return -Errno.ENODEV
    length = page_up(length)
    if length > m.memory.free_frames * PAGE_SIZE:
        return -Errno.ENOMEM
    data = pread(length, offset)[:length]  # read before MAP_FIXED removes anything
    start = _place(m, process, addr, length, flags)
    if start < 0:
        return start
    assert process.space is not None
    us = add_area(m, process, RegionKind.MMAP, start, length >> PAGE_SHIFT, prot & 7)
    assert us.region is not None
    used = page_up(len(data)) >> PAGE_SHIFT
    if used:
        try:
            frames = us.region.populate(list(range(used)), m.memory)
        except OutOfMemoryError:
            remove_area(m, process, us)
            return -Errno.ENOMEM
        buf = np.zeros((used, PAGE_SIZE), dtype=np.uint8)
        buf.reshape(-1)[: len(data)] = np.frombuffer(data, np.uint8)
        m.memory.frames[frames] = buf
        process.space.refresh(us)
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


MREMAP_MAYMOVE, MREMAP_FIXED, MREMAP_DONTUNMAP = 1, 2, 4


def remap(m: Managers, process: Process, old: int, old_size: int, new_size: int, flags: int,
          new_addr: int) -> int:
    """mremap: shrink, grow in place, or move (MREMAP_MAYMOVE, MREMAP_FIXED) one mapping,
    its contents with it; the new address, or -errno (nothing changed then)."""
    space = process.space
    assert space is not None
    if old % PAGE_SIZE or flags & ~(MREMAP_MAYMOVE | MREMAP_FIXED) or new_size == 0 or (
            flags & MREMAP_FIXED and (not flags & MREMAP_MAYMOVE or new_addr % PAGE_SIZE)):
        return -Errno.EINVAL  # MREMAP_DONTUNMAP too: not offered
    old_size, new_size = page_up(old_size), page_up(new_size)
    pieces = space.overlapping(old, old + max(old_size, PAGE_SIZE))
    if not pieces or pieces[0].start > old or pieces[-1].end < old + old_size or any(
            a.end != b.start or a.perms != b.perms for a, b in itertools.pairwise(pieces)):
        return -Errno.EFAULT  # not one mapping, as Linux requires
    if old_size == 0:
        return -Errno.EINVAL  # a duplicate of a shared mapping: none here are shared
    first = pieces[0]
    assert first.region is not None
    kind, perms = first.region.kind, first.perms
    if flags & MREMAP_FIXED:
        if new_addr < old + old_size and old < new_addr + new_size:
            return -Errno.EINVAL  # the ranges overlap
        unmap(m, process, new_addr, new_size)
        return _move(m, process, old, old_size, new_size, new_addr, kind, perms)
    if new_size <= old_size:
        if new_size < old_size:
            unmap(m, process, old + new_size, old_size - new_size)
        return old
    if not space.overlapping(old + old_size, old + new_size) and \
            old + new_size <= ADDRESS_LIMIT:
        add_area(m, process, kind, old + old_size, (new_size - old_size) >> PAGE_SHIFT, perms)
        return old
    if not flags & MREMAP_MAYMOVE:
        return -Errno.ENOMEM
    found = _find_gap(space, new_size, process.mmap_top)
    if found is None:
        return -Errno.ENOMEM
    return _move(m, process, old, old_size, new_size, found, kind, perms)


def _move(m: Managers, process: Process, old: int, old_size: int, new_size: int, new: int,
          kind: RegionKind, perms: int) -> int:
    """A new area at `new` with the contents of [old, old + old_size), which is unmapped."""
    space = process.space
    assert space is not None
    target = add_area(m, process, kind, new, new_size >> PAGE_SHIFT, perms)
    assert target.region is not None
    pairs = []  # (source frame, target page index) of every present page that moves
    for us in space.overlapping(old, old + old_size):
        if us is target or us.region is None:
            continue
        lo, hi = max(us.start, old), min(us.end, old + old_size)
        for page in range((lo - us.start) >> PAGE_SHIFT, (hi - us.start) >> PAGE_SHIFT):
            frame = us.region.frames[page]
            if frame != NOT_PRESENT:
                pairs.append((frame, (us.start + (page << PAGE_SHIFT) - old) >> PAGE_SHIFT))
    try:
        frames = target.region.populate([i for _, i in pairs], m.memory, zero=False)
    except OutOfMemoryError:
        remove_area(m, process, target)
        return -Errno.ENOMEM
    if pairs:
        m.memory.frames[frames] = m.memory.frames[[f for f, _ in pairs]]
    space.refresh(target)
    unmap(m, process, old, old_size)
    return new


def residency(process: Process, addr: int, length: int) -> bytes | int:
    """mincore: one byte per page of [addr, addr + length), 1 where the page has a frame; or
    -errno (ENOMEM where part of the range is not mapped)."""
    space = process.space
    assert space is not None
    if addr % PAGE_SIZE:
        return -Errno.EINVAL
    end = page_up(addr + length)
    out = bytearray((end - addr) >> PAGE_SHIFT)
    covered = addr
    for us in space.overlapping(addr, end):
        if us.start > covered or us.region is None:
            return -Errno.ENOMEM
        lo, hi = max(us.start, addr), min(us.end, end)
        for page in range((lo - us.start) >> PAGE_SHIFT, (hi - us.start) >> PAGE_SHIFT):
            if us.region.frames[page] != NOT_PRESENT:
                out[((us.start - addr) >> PAGE_SHIFT) + page] = 1
        covered = hi
    return bytes(out) if covered >= end else -Errno.ENOMEM
