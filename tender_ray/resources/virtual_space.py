"""Virtual space: an address translation table, virtual page -> frame and permissions.

One kernel space per machine (single virtual memory, where kernel processes live) and one space
per user process (multiple virtual memory) coexist. An entry is `frame << 12 | perms`; a page
with no entry is not present, and the fault path asks the user space covering it to give it a
frame. Changing or removing entries bumps `generation`, which tells CPUs to flush their TLBs.
"""

from __future__ import annotations

import bisect
import enum
import queue
import threading
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from tender_ray.errors import OutOfMemoryError
from tender_ray.resources.dirty_pages import DirtyPages
from tender_ray.resources.real_memory import PAGE_SHIFT, PAGE_SIZE, RealMemory
from tender_ray.resources.virtual_region import NOT_PRESENT
from tender_ray.resources.virtual_user_space import (
    PROT_READ,
    PROT_WRITE,
    UserSpaceState,
    VirtualUserSpace,
)

_dropped: queue.SimpleQueue[object] = queue.SimpleQueue()
_dropper: list[threading.Thread] = []
_dropper_lock = threading.Lock()


def _drop(objects: queue.SimpleQueue[object]) -> None:
    while True:
        objects.get()  # the last reference goes here: freeing it costs this thread only


def _drop_later(item: object) -> None:
    """Free `item` (a large table) on a thread of its own: deleting a process then costs
    nothing per page on the path that deletes it."""
    with _dropper_lock:
        if not _dropper:
            thread = threading.Thread(target=_drop, args=(_dropped,), daemon=True,
                                      name="space-reclaim")
            thread.start()
            _dropper.append(thread)
    _dropped.put(item)


class SpaceKind(str, enum.Enum):
    KERNEL = "kernel"
    USER = "user"


class BadAddress(Exception):
    """A guest address that no user space covers, or that forbids the access."""

    def __init__(self, address: int) -> None:
        super().__init__(f"bad address {address:#x}")
        self.address = address


class VirtualSpace:
    """A translation table plus the user spaces pasted into it, sorted by address."""

    def __init__(self, memory: RealMemory) -> None:
        self.memory = memory  # the machine's; not owned
        self.kind = SpaceKind.USER
        self.table: dict[int, int] = {}  # owned here: vpn -> frame << 12 | perms
        self.user_spaces: list[VirtualUserSpace] = []  # owned here, sorted by start
        self._starts: list[int] = []  # the user spaces' starts, for bisect
        self.generation = 0  # bumped when an entry is removed or loses permissions
        self.dirty: DirtyPages | None = None  # pages written, while they are tracked

    # --- pasting -------------------------------------------------------------------------

    def paste(self, us: VirtualUserSpace) -> None:
        """Paste a user space: its present pages become visible at its address."""
        if self.overlapping(us.start, us.end):
            raise ValueError(f"user space {us.start:#x}-{us.end:#x} overlaps another")
        i = bisect.bisect(self._starts, us.start)
        self._starts.insert(i, us.start)
        self.user_spaces.insert(i, us)
        self._own_if_writable(us)
        entries = us.entries()
        if self.dirty is not None:  # new frames are new contents (a split re-pastes old ones)
            table = self.table
            self.dirty.mark_many(v for v, e in entries.items()
                                 if table.get(v, -1) >> PAGE_SHIFT != e >> PAGE_SHIFT)
        self.table.update(entries)
        us.state = UserSpaceState.PASTED

    def unpaste(self, us: VirtualUserSpace) -> None:
        """Remove a user space and every entry it made; its region is untouched."""
        i = self.user_spaces.index(us)
        del self.user_spaces[i]
        del self._starts[i]
        table = self.table
        gone = [vpn for vpn in range(us.start >> PAGE_SHIFT, us.end >> PAGE_SHIFT)
                if table.pop(vpn, None) is not None]
        if self.dirty is not None:
            self.dirty.drop(gone)
        us.state = UserSpaceState.FREE
        self.generation += 1

    def unpaste_all(self) -> list[VirtualUserSpace]:
        """Remove every user space and entry at once (the process is going away); the user
        spaces, whose regions are untouched. No work per page: the table is replaced whole,
        and the old one is freed off the caller's path."""
        gone = self.user_spaces
        self.user_spaces = []
        self._starts = []
        old, self.table = self.table, {}
        self.dirty = None  # the process is going away: so does the tracking of its writes
        _drop_later(old)
        for us in gone:
            us.state = UserSpaceState.FREE
        self.generation += 1
        return gone

    def add_entries(self, us: VirtualUserSpace, indexes: npt.NDArray[np.int64],
                    frames: npt.NDArray[np.int64]) -> None:
        """Entries for pages `indexes` of the pasted user space `us`, which got `frames`
        (pages that had none: nothing is replaced, so no TLB needs flushing)."""
        base = us.start >> PAGE_SHIFT
        entries = (frames << PAGE_SHIFT) | us.perms
        vpns = (indexes + base).tolist()
        self.table.update(zip(vpns, entries.tolist(), strict=True))
        if self.dirty is not None:
            self.dirty.mark_many(vpns)

    def refresh(self, us: VirtualUserSpace) -> None:
        """Rewrite the entries of a pasted user space after its perms or size changed."""
        table = self.table
        old = {vpn: table.pop(vpn) for vpn in range(us.start >> PAGE_SHIFT, us.end >> PAGE_SHIFT)
               if vpn in table}
        self._own_if_writable(us)
        entries = us.entries()
        table.update(entries)
        self.generation += 1
        if self.dirty is not None:  # new frames (a file's pages, a move) are new contents
            self.dirty.mark_many(v for v, e in entries.items()
                                 if old.get(v, -1) >> PAGE_SHIFT != e >> PAGE_SHIFT)
            self.dirty.drop(old.keys() - entries.keys())

    def _own_if_writable(self, us: VirtualUserSpace) -> None:
        """Copy on write, at the moment a user space may be written (pasted or made
        writable): frames it shares with another process (text, see `RealMemory.share`) are
        replaced by private copies first, so a write never reaches the other process."""
        region = us.region
        if not us.perms & PROT_WRITE or region is None or not self.memory.shared_frames:
            return
        if region.frames.count(NOT_PRESENT) == len(region.frames):
            return
        frames = region.frame_array()
        if self.memory.any_shared(frames):
            region.frames = self.memory.private_copy(frames).tolist()

    def find(self, address: int) -> VirtualUserSpace | None:
        i = bisect.bisect(self._starts, address) - 1
        if i >= 0 and self.user_spaces[i].contains(address):
            return self.user_spaces[i]
        return None

    def overlapping(self, start: int, end: int) -> list[VirtualUserSpace]:
        i = max(bisect.bisect(self._starts, start) - 1, 0)
        found = []
        for us in self.user_spaces[i:]:
            if us.start >= end:
                break
            if us.end > start:
                found.append(us)
        return found

    def clear(self) -> None:
        """Forget every entry and user space (the owner releases their regions)."""
        self.dirty = None
        self.table.clear()
        self.user_spaces.clear()
        self._starts.clear()
        self.generation += 1

    # --- entries as engines read them ----------------------------------------------------

    def entry(self, vpn: int) -> int | None:
        """The entry of page `vpn` (frame << 12 | perms); None while the page is not present."""
        return self.table.get(vpn)

    def changed(self, entries: Mapping[int, int]) -> list[int]:
        """The pages of `entries` (vpn -> entry: the translations a TLB was handed) whose entry
        here is no longer the same, or gone."""
        table = self.table
        # A subset test on item views runs in C: the usual answer (none) costs no Python loop.
        if entries.items() <= table.items():
            return []
        return [vpn for vpn, entry in entries.items() if table.get(vpn) != entry]

    def map_page(self, vpn: int, frame: int, perms: int) -> None:
        """Make page `vpn` present at `frame` with `perms` outside any user space (a bare space,
        as an engine's self-test builds). Replacing a different entry bumps `generation`."""
        entry = (frame << PAGE_SHIFT) | perms
        old = self.table.get(vpn)
        self.table[vpn] = entry
        if old is not None and old != entry:
            self.generation += 1
        if self.dirty is not None and old != entry:
            self.dirty.mark(vpn)

    # --- the fault path ------------------------------------------------------------------

    def fault(self, vpn: int) -> int | None:
        """Make page `vpn` present if a user space covers it; its new entry, else None."""
        us = self.find(vpn << PAGE_SHIFT)
        if us is None or us.region is None:
            return None
        frame = us.region.materialize(vpn - (us.start >> PAGE_SHIFT), self.memory)
        entry = (frame << PAGE_SHIFT) | us.perms
        self.table[vpn] = entry
        return entry

    def populate(self, us: VirtualUserSpace, lo: int, hi: int) -> None:
        """Make pages [lo, hi) of the pasted user space `us` present: zeroed frames for those
        that are not, and entries for all (the fault path for a window of pages at once, for an
        engine whose faults are dear). OutOfMemoryError leaves everything as it was."""
        assert us.region is not None
        region = us.region
        base = us.start >> PAGE_SHIFT
        a, b = lo - base, hi - base
        frames = region.frames
        window = frames[a:b]
        if window.count(NOT_PRESENT) == len(window):
            frames[a:b] = self.memory.allocate(b - a)  # the usual case: all new, one run
        elif NOT_PRESENT in window:
            region.populate([i for i in range(a, b) if frames[i] == NOT_PRESENT], self.memory)
        perms = us.perms
        self.table.update(zip(range(lo, hi), [(f << PAGE_SHIFT) | perms for f in frames[a:b]],
                              strict=True))

    def _frame_for(self, vpn: int, write: bool) -> int:
        entry = self.table.get(vpn)
        if entry is None:
            try:
                entry = self.fault(vpn)
            except OutOfMemoryError:
                entry = None
            if entry is None:
                raise BadAddress(vpn << PAGE_SHIFT)
        need = PROT_WRITE if write else PROT_READ
        if not entry & need:
            raise BadAddress(vpn << PAGE_SHIFT)
        return entry >> PAGE_SHIFT

    def runs(self, address: int, size: int, write: bool = False
             ) -> list[tuple[int, int, int]]:
        """The guest range [address, address + size) as runs of consecutive frames: (byte
        offset in real memory, offset in the range, length) each, in order, so that a copy is
        one slice per run rather than one per page. Pages not present are made present (the
        fault path); BadAddress if a page is not covered or forbids the access."""
        if address < 0 or size < 0 or address + size > 1 << 47:
            raise BadAddress(address)
        out: list[tuple[int, int, int]] = []
        if size == 0:
            return out
        first, last = address >> PAGE_SHIFT, (address + size - 1) >> PAGE_SHIFT
        run_start = self._frame_for(first, write) << PAGE_SHIFT | address & (PAGE_SIZE - 1)
        run_pos = 0
        expected = (run_start & ~(PAGE_SIZE - 1)) + PAGE_SIZE
        for vpn in range(first + 1, last + 1):
            at = self._frame_for(vpn, write) << PAGE_SHIFT
            if at != expected:  # the next page's frame does not follow: a new run
                pos = (vpn << PAGE_SHIFT) - address
                out.append((run_start, run_pos, pos - run_pos))
                run_start, run_pos = at, pos
            expected = at + PAGE_SIZE
        out.append((run_start, run_pos, size - run_pos))
        return out

    # --- guest memory access for system calls --------------------------------------------

    def read(self, address: int, size: int) -> bytes:
        flat = self.memory.frames.reshape(-1)
        pieces = self.runs(address, size, write=False)
        if len(pieces) == 1:
            at = pieces[0][0]
            return flat[at: at + size].tobytes()
        out = np.empty(size, np.uint8)
        for at, pos, n in pieces:
            out[pos: pos + n] = flat[at: at + n]
        return out.tobytes()

    def write(self, address: int, data: bytes) -> None:
        # The whole range is checked first (`runs`), so a bad pointer writes nothing.
        flat = self.memory.frames.reshape(-1)
        source = np.frombuffer(data, np.uint8)
        for at, pos, n in self.runs(address, len(source), write=True):
            flat[at: at + n] = source[pos: pos + n]
        if self.dirty is not None:  # the kernel wrote for the guest (read(), a signal frame)
            self.dirty.mark_range(address, len(source))

    def read_cstring(self, address: int, limit: int = 1 << 16) -> bytes:
        """The NUL-terminated string at `address`, at most `limit` bytes (else BadAddress)."""
        out = bytearray()
        while len(out) <= limit:
            a = address + len(out)
            n = min(PAGE_SIZE - (a & (PAGE_SIZE - 1)), limit + 1 - len(out))
            chunk = self.read(a, n)
            end = chunk.find(b"\0")
            if end >= 0:
                return bytes(out + chunk[:end])
            out += chunk
        raise BadAddress(address)

    def resident_pages(self) -> int:
        return len(self.table)
