"""The memory system calls: the program break, anonymous and file mappings, unmapping,
remapping, residency (mincore), protections, advice and memory barriers, over the process's
address space (kernel/address_space.py); and a stack growing down when a touch lands just
below it, as Linux grows the main stack and MAP_GROWSDOWN mappings."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from tender_ray.abi import linux
from tender_ray.abi.cpu_state import SyscallArgs, SyscallOutcome
from tender_ray.abi.linux import Errno
from tender_ray.kernel import address_space as vm
from tender_ray.kernel.syscalls.base import Handler, reattach
from tender_ray.kernel.syscalls.processes import RLIMIT_STACK, limit
from tender_ray.resources.process import Process
from tender_ray.resources.virtual_region import NOT_PRESENT, RegionKind

if TYPE_CHECKING:
    from tender_ray.kernel.syscalls.dispatch import SystemCalls

FAMILY = "memory"


def _pread_all(pread: Callable[[int, int], bytes], length: int, offset: int) -> bytes:
    """`length` bytes of a file from `offset` (fewer at its end), in 1 MiB reads."""
    parts, done = [], 0
    while done < length:
        part = pread(min(length - done, 1 << 20), offset + done)
        if not part:
            break
        parts.append(part)
        done += len(part)
    return b"".join(parts)


def brk(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return SyscallOutcome(vm.set_break(sc.managers, p, a[0]))


def mmap(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    addr, length, prot, flags = a[0], a[1], a[2], a[3]
    if flags & linux.MAP_ANONYMOUS:
        return SyscallOutcome(vm.map_anonymous(sc.managers, p, addr, length, prot, flags))
    reattach(sc, p)  # one that arrived since it opened the file
    try:  # a file: its pages are copied in at once (address_space.map_file says why)
        file = p.files.get(a[4] & 0xFFFFFFFF)
        shared_write = (flags & 3) == linux.MAP_SHARED and prot & linux.PROT_WRITE
        if not file.readable or (shared_write and not file.writable):
            return SyscallOutcome(-Errno.EACCES)  # as Linux: the descriptor forbids it
        result = vm.map_file(sc.managers, p, addr, length, prot, flags, a[5],
                             lambda n, off: _pread_all(file.pread, n, off))
    except OSError as e:
        return SyscallOutcome(-(e.errno or int(Errno.EIO)))
    if result == -Errno.ENODEV:
        p.accounting.unsupported["mmap(MAP_SHARED|PROT_WRITE of a file)"] += 1
    return SyscallOutcome(result)


def munmap(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return SyscallOutcome(vm.unmap(sc.managers, p, a[0], a[1]))


def mprotect(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return SyscallOutcome(vm.protect(sc.managers, p, a[0], a[1], a[2]))


def mremap(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return SyscallOutcome(vm.remap(sc.managers, p, a[0], a[1], a[2], a[3], a[4]))


def mincore(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    pages = vm.residency(p, a[0], a[1])
    if isinstance(pages, int):
        return SyscallOutcome(pages)
    assert p.space is not None
    p.space.write(a[2], pages)
    return SyscallOutcome(0)


# membarrier commands: one thread has nothing to order against, so each is done at once.
MEMBARRIER_CMD_QUERY = 0
MEMBARRIER_COMMANDS = 0x1 | 0x2 | 0x4 | 0x8 | 0x10 | 0x20 | 0x40  # GLOBAL .. SYNC_CORE


def membarrier(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    cmd, flags = a[0] & 0xFFFFFFFF, a[1]
    if flags:
        return SyscallOutcome(-Errno.EINVAL)
    if cmd == MEMBARRIER_CMD_QUERY:
        return SyscallOutcome(MEMBARRIER_COMMANDS)
    if cmd & (cmd - 1) or not cmd & MEMBARRIER_COMMANDS:
        return SyscallOutcome(-Errno.EINVAL)  # one command at a time, a known one
    return SyscallOutcome(0)


def madvise(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    if a[2] in (linux.MADV_DONTNEED, linux.MADV_FREE):
        return SyscallOutcome(vm.discard(sc.managers, p, a[0], a[1]))
    return SyscallOutcome(0)  # advice only: ignoring it is correct


STACK_GUARD_GAP = 256 * vm.PAGE_SIZE  # Linux's stack_guard_gap: kept free below a stack


def grow_stack(p: Process, address: int) -> bool:
    """A touch of `address`, which no area maps: when the nearest area above it is a stack
    (the main stack, a MAP_GROWSDOWN mapping) it grows down to the touched page, as Linux
    grows it — to RLIMIT_STACK at most, and never closer than the guard gap to an accessible
    area below that is not a stack itself. Whether it grew (then the faulting instruction
    runs again)."""
    space = p.space
    if space is None:
        return False
    above = [us for us in space.user_spaces if us.start > address]
    if not above:
        return False
    us = min(above, key=lambda u: u.start)
    if us.region is None or us.region.kind is not RegionKind.STACK:
        return False
    start = address - address % vm.PAGE_SIZE
    if us.end - start > limit(p, RLIMIT_STACK)[0]:
        return False
    for u in space.user_spaces:
        if u.end <= start - STACK_GUARD_GAP or u.start >= us.start:
            continue
        stack = u.region is not None and u.region.kind is RegionKind.STACK
        if u.end > start or (u.perms & 7 and not stack):
            return False
    region = us.region
    space.unpaste(us)  # its entries again at the new start, the new pages not yet present
    region.frames[:0] = [NOT_PRESENT] * ((us.start - start) // vm.PAGE_SIZE)
    us.start = start
    space.paste(us)
    return True


HANDLERS: dict[str, Handler] = {
    "brk": brk, "mmap": mmap, "munmap": munmap, "mprotect": mprotect, "madvise": madvise,
    "mremap": mremap, "mincore": mincore, "membarrier": membarrier,
}
