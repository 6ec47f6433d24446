"""Keeping a guest's host mappings what its virtual space says: after the machine served a
memory call, at a full resynchronisation, and when a touched page must come in.

Real memory is a shared memory file passed to every guest as `MEMORY_FD` (100); a present
page is mapped from it at its frame's offset. Host mappings change only through system calls
injected at the trampoline page, which is moved if the process maps over it. A page that is
not present stays unmapped, and its SIGSEGV brings in a window of pages (a whole small area,
or a window that grows with sequential touches), since one fault costs a few ptrace stops.
"""

from __future__ import annotations

import itertools
import os
from typing import Final

from tender_ray.abi.linux import (
    MAP_ANONYMOUS,
    MAP_FIXED,
    MAP_FIXED_NOREPLACE,
    MAP_POPULATE,
    MAP_PRIVATE,
    MAP_SHARED,
    PROT_EXEC,
    PROT_READ,
    PROT_WRITE,
    SYS_BRK,
    SYS_MMAP,
    SYS_MREMAP,
    SYS_MUNMAP,
    Errno,
)
from tender_ray.engines.native import host_threads
from tender_ray.engines.native.host_map import desired_runs, subtract
from tender_ray.engines.native.registers import signed
from tender_ray.engines.native.tracer import (
    MEMORY_FD,
    TASK_SIZE,
    TRAMPOLINE_CODE,
    VPN_LIMIT,
    Host,
    Tracer,
)
from tender_ray.engines.native.vdso import HOST_VDSO_BASE, HOST_VDSO_END
from tender_ray.errors import EngineError, OutOfMemoryError
from tender_ray.resources.real_memory import PAGE_SHIFT, PAGE_SIZE
from tender_ray.resources.virtual_space import VirtualSpace
from tender_ray.resources.virtual_user_space import VirtualUserSpace

# Fault-around: a touched page that is not present brings a window of its neighbours, which
# grows while the touches are sequential (up or down) and starts small otherwise; an area of
# at most WINDOW_SMALL pages (2 MiB: a malloc'd block, say) comes in whole.
WINDOW_MIN: Final = 16
WINDOW_GROWTH: Final = 4
WINDOW_MAX: Final = 1024
WINDOW_SMALL: Final = 512


class HostMappings:
    """The host-mapping side of one native engine (tracer thread only, but `forget_window`).

    The engine passes the host process and the virtual space of the moment: both change as
    processes come and go.
    """

    def __init__(self, tracer: Tracer, stats: dict[str, int]) -> None:
        self._tracer = tracer
        self._stats = stats  # the engine's counters: "injected" is bumped here
        self._window: tuple[int, int, int] = (-1, -1, 0)  # last fault-around (lo, hi, size)

    def forget_window(self) -> None:
        """A new process: its first touch starts a window afresh."""
        self._window = (-1, -1, 0)

    def after_call(self, host: Host, space: VirtualSpace, nr: int, args: tuple[int, ...],
                   result: int | None) -> None:
        """Make the host mappings match the virtual space where a memory call changed it."""
        res = signed(result) if result is not None else -Errno.EINVAL
        if nr == SYS_MMAP:
            if -4096 < res < 0:
                return
            lo, hi = res >> PAGE_SHIFT, (res + args[1] + PAGE_SIZE - 1) >> PAGE_SHIFT
        elif nr == SYS_BRK:
            # Growing adds only pages that are not present; shrinking leaves a hole up to the
            # next area, which must not stay mapped.
            lo = (max(res, 0) + PAGE_SIZE - 1) >> PAGE_SHIFT
            above = [us.start for us in space.overlapping(lo << PAGE_SHIFT, TASK_SIZE)
                     if us.start >= lo << PAGE_SHIFT]
            hi = (above[0] >> PAGE_SHIFT) if above else VPN_LIMIT
        elif nr == SYS_MREMAP:
            if -4096 < res < 0:
                return  # refused: nothing changed
            # The pages left behind (the old range), then where they went (the new one).
            self.sync(host, space, args[0] >> PAGE_SHIFT,
                      min((args[0] + args[1] + PAGE_SIZE - 1) >> PAGE_SHIFT, VPN_LIMIT))
            lo, hi = res >> PAGE_SHIFT, (res + args[2] + PAGE_SIZE - 1) >> PAGE_SHIFT
        else:
            addr, length = args[0], args[1]
            if addr % PAGE_SIZE or length > TASK_SIZE:
                return
            lo, hi = addr >> PAGE_SHIFT, min((addr + length + PAGE_SIZE - 1) >> PAGE_SHIFT,
                                              VPN_LIMIT)
        self.sync(host, space, max(lo, 0), min(hi, VPN_LIMIT))

    def sync(self, host: Host, space: VirtualSpace, lo: int, hi: int,
             force: bool = False) -> None:
        """Make the host mappings of pages [lo, hi) what the virtual space says (`force`:
        remap even the runs that look right)."""
        if lo >= hi:
            return
        tramp = host.trampoline >> PAGE_SHIFT
        if lo <= tramp < hi and space.find(tramp << PAGE_SHIFT) is not None:
            self._move_trampoline(host, space)
        desired = desired_runs(space, lo, hi)
        current = host.maps.within(lo, hi)
        if not force and desired == current:
            return
        if force:
            stale, new = current, desired
        else:
            want, have = set(desired), set(current)
            stale = [c for c in current if c not in want]
            new = [d for d in desired if d not in have]
        tracer = self._tracer
        # Unmap what is stale and will not be mapped over (MAP_FIXED replaces the rest).
        for v, n in subtract([(v, n) for v, n, _, _ in stale], [(v, n) for v, n, _, _ in new]):
            self._stats["injected"] += 1
            res = tracer.inject(host, SYS_MUNMAP, v << PAGE_SHIFT, n << PAGE_SHIFT)
            if res < 0:
                raise EngineError(f"munmap of {v << PAGE_SHIFT:#x} failed: {os.strerror(-res)}")
            host.maps.remove(v, v + n)
        for run in new:
            v, n, f, prot = run
            flags = MAP_SHARED | MAP_FIXED | (MAP_POPULATE if n <= WINDOW_MAX else 0)
            self._stats["injected"] += 1
            res = tracer.inject(host, SYS_MMAP, v << PAGE_SHIFT, n << PAGE_SHIFT, prot, flags,
                                MEMORY_FD, f << PAGE_SHIFT)
            if res != v << PAGE_SHIFT:
                raise EngineError(f"mapping {n} pages at {v << PAGE_SHIFT:#x} failed: "
                                  f"{os.strerror(-res) if res < 0 else hex(res)}")
            host.maps.add(run)

    def write_fault(self, host: Host, space: VirtualSpace, address: int) -> bool:
        """A store hit a page mapped read-only only because its writes are tracked and it was
        not yet written in the interval: mark it and map it writable (True: the guest goes
        on). False for any other protection fault: a page the guest itself did not make
        writable, which is the guest's own SIGSEGV."""
        dirty = space.dirty
        if dirty is None or address >= TASK_SIZE:
            return False
        vpn = address >> PAGE_SHIFT
        entry = space.entry(vpn)
        if entry is None or not entry & PROT_WRITE:
            return False
        if any(prot & PROT_WRITE for _, _, _, prot in host.maps.within(vpn, vpn + 1)):
            return False  # mapped writable already: not a fault of the tracking
        dirty.pages.add(vpn)
        dirty.marks += 1
        self.sync(host, space, vpn, vpn + 1)
        return True

    def _move_trampoline(self, host: Host, space: VirtualSpace) -> None:
        """The process maps over the trampoline page: put the trampoline somewhere free."""
        old = host.trampoline & ~(PAGE_SIZE - 1)
        candidates = itertools.chain(range(0x10_0000, 0x1_0000, -PAGE_SIZE),
                                     range(0x7FF0_0000_0000, 0x7FF0_0100_0000, PAGE_SIZE))
        for page in candidates:
            if page != old and space.find(page) is None and not host.maps.covers(
                    page >> PAGE_SHIFT) and not HOST_VDSO_BASE <= page < HOST_VDSO_END:
                break
        else:
            raise EngineError("no free page for the system call trampoline")
        res = self._tracer.inject(host, SYS_MMAP, page, PAGE_SIZE, PROT_READ | PROT_EXEC,
                                  MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0)
        if res != page:
            raise EngineError(f"cannot map a new trampoline page at {page:#x}")
        for at in range(0, len(TRAMPOLINE_CODE), 8):
            host.poke(page + at, int.from_bytes(TRAMPOLINE_CODE[at:at + 8], "little"))
        host.trampoline = page
        host_threads.share_trampoline(host)
        self._tracer.inject(host, SYS_MUNMAP, old, PAGE_SIZE)

    def bring_in(self, host: Host, space: VirtualSpace, us: VirtualUserSpace,
                 vpn: int) -> None:
        """Serve a touch of page `vpn` of user space `us`, not mapped in the host: make its
        window of pages present in the virtual space (only the page itself when memory is
        short) and map them. OutOfMemoryError when not even the page has a frame."""
        lo, hi = self._window_for(vpn, us.start >> PAGE_SHIFT, us.end >> PAGE_SHIFT)
        try:
            space.populate(us, lo, hi)
        except OutOfMemoryError:
            lo, hi = vpn, vpn + 1
            space.populate(us, lo, hi)
        self.sync(host, space, lo, hi, force=host.maps.covers(vpn))

    def _window_for(self, vpn: int, first: int, end: int) -> tuple[int, int]:
        """The pages to bring in for a touch of page `vpn` of the area [first, end)."""
        if end - first <= WINDOW_SMALL:
            return first, end  # a small area (a malloc'd block, say) comes in at once
        last_lo, last_hi, size = self._window
        if last_hi <= vpn < last_hi + WINDOW_MIN:
            size = min(size * WINDOW_GROWTH, WINDOW_MAX)
            lo, hi = vpn, vpn + size
        elif last_lo - WINDOW_MIN <= vpn < last_lo:
            size = min(size * WINDOW_GROWTH, WINDOW_MAX)
            lo, hi = vpn - size + 1, vpn + 1
        else:
            size = WINDOW_MIN
            lo = vpn & ~(WINDOW_MIN - 1)
            hi = lo + WINDOW_MIN
        lo, hi = max(lo, first), min(hi, end)
        self._window = (lo, hi, size)
        return lo, hi
