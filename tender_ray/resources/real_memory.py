"""Real memory: one machine's physical page frames and their allocator.

All frames live in one page-aligned anonymous mapping viewed as a numpy array of 4 KiB rows,
so the CPU can map the whole of it once as its physical memory and DSM can copy page blocks
with one numpy call. With `shared=True` (the native engine) the mapping is a shared memory file
(memfd) that guest host processes map too: their pages are the machine's frames.
"""

from __future__ import annotations

import ctypes
import heapq
import mmap
import os
import threading
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from tender_ray.errors import OutOfMemoryError

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT


def page_down(address: int) -> int:
    return address & ~(PAGE_SIZE - 1)


def page_up(address: int) -> int:
    return (address + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


def _runs(frames: Sequence[int]) -> list[tuple[int, int]]:
    """(first frame, length) of each run of consecutive frame numbers, in order."""
    if len(frames) == 0:
        return []
    f = np.asarray(frames, dtype=np.int64)
    cuts = np.flatnonzero(np.diff(f) != 1) + 1
    starts = np.concatenate(([0], cuts))
    ends = np.concatenate((cuts, [len(f)]))
    return [(int(f[a]), int(b - a)) for a, b in zip(starts, ends, strict=True)]


@dataclass(frozen=True)
class RealMemoryStatistics:
    frames_total: int
    frames_free: int
    frames_used: int


class RealMemory:
    """The frames of one machine. Frame numbers index `frames`; physical address = frame * 4 KiB."""

    def __init__(self, size_bytes: int, *, shared: bool = False) -> None:
        if size_bytes < PAGE_SIZE or size_bytes % PAGE_SIZE:
            raise ValueError(
                f"real memory size must be a positive multiple of 4096, got {size_bytes}")
        self.size = size_bytes
        self.nframes = size_bytes // PAGE_SIZE
        # [native engine] With `shared`, the frames are a memfd (file offset = physical address)
        # mapped MAP_SHARED, which guest host processes map at their virtual addresses; `fd` is
        # -1 otherwise. Frames are zeroed by `allocate` writing zeros (MADV_DONTNEED would not
        # zero a shared mapping).
        self.shared = shared
        self.fd = -1
        if shared:
            self.fd = os.memfd_create("tender-real-memory", os.MFD_CLOEXEC)
            weakref.finalize(self, os.close, self.fd)
            os.ftruncate(self.fd, size_bytes)
            self._mmap = mmap.mmap(self.fd, size_bytes, flags=mmap.MAP_SHARED)
        else:
            # Anonymous private mapping: page-aligned, zero-filled and committed lazily.
            self._mmap = mmap.mmap(-1, size_bytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.frames: npt.NDArray[np.uint8] = np.frombuffer(self._mmap, dtype=np.uint8).reshape(
            self.nframes, PAGE_SIZE
        )
        self.address = ctypes.addressof(ctypes.c_char.from_buffer(self._mmap))
        self._lock = threading.Lock()
        # Owned by the allocator: the free frame numbers as a min-heap, lowest handed out first
        # (address-ordered, so freed runs coalesce and regions get consecutive frames, which the
        # native engine maps as one run and DSM sends as one view).
        self._free: list[int] = list(range(self.nframes))
        # Frames never handed out are still the host's zero pages: no need to zero them (and
        # touching them here would commit memory the process itself may commit later).
        self._pristine = np.ones(self.nframes, dtype=bool)

    @property
    def free_frames(self) -> int:
        return len(self._free)

    def allocate(self, count: int, zero: bool = True) -> list[int]:
        """`count` frames (zeroed unless the caller overwrites them whole), or
        OutOfMemoryError with nothing allocated."""
        with self._lock:
            if count > len(self._free):
                raise OutOfMemoryError(
                    f"real memory exhausted: {count} frames asked, {len(self._free)} free "
                    f"of {self.nframes} ({self.size >> 20} MiB); give the machine more memory"
                )
            free = self._free
            taken = [heapq.heappop(free) for _ in range(count)]  # ascending
            if not taken:
                return taken
            if count <= 8:
                dirty = [f for f in taken if not self._pristine[f]]
                self._pristine[taken] = False
            else:
                index = np.asarray(taken, dtype=np.int64)
                dirty = index[~self._pristine[index]].tolist()
                self._pristine[index] = False
        if dirty and zero:
            if len(dirty) <= 8:
                self.frames[dirty] = 0
            else:
                for first, n in _runs(dirty):
                    self.frames[first: first + n] = 0
        return taken

    def allocate_one(self) -> int:
        with self._lock:
            if not self._free:
                raise OutOfMemoryError(
                    f"real memory exhausted: all {self.nframes} frames "
                    f"({self.size >> 20} MiB) are in use; give the machine more memory"
                )
            frame = heapq.heappop(self._free)
            pristine = bool(self._pristine[frame])
            self._pristine[frame] = False
        if not pristine:
            self.frames[frame] = 0
        return frame

    def free(self, frames: Iterable[int]) -> None:
        returned = list(frames)
        with self._lock:
            free = self._free
            if 8 * len(returned) > len(free):
                free.extend(returned)
                heapq.heapify(free)
            else:
                for frame in returned:
                    heapq.heappush(free, frame)

    def read(self, frames: Sequence[int]) -> npt.NDArray[np.uint8]:
        """A copy of the given frames as one (n, 4096) block."""
        return self.frames[list(frames)]

    def gather(self, frames: Sequence[int], max_pages: int,
               max_views: int = 64) -> list[npt.NDArray[np.uint8]]:
        """The given frames' contents as a few (n, 4096) blocks of at most `max_pages` rows.

        Runs of consecutive frames come back as views of real memory (no copy: the caller
        must not let the frames change while it uses them); a list too fragmented for that
        is copied into dense blocks instead.
        """
        runs = _runs(frames)
        if len(runs) <= max_views:
            return [self.frames[a + i: a + min(n, i + max_pages)]
                    for a, n in runs for i in range(0, n, max_pages)]
        return [self.frames[list(frames[i: i + max_pages])]
                for i in range(0, len(frames), max_pages)]

    def scatter(self, frames: Sequence[int], blocks: Iterable[npt.NDArray[np.uint8]]) -> None:
        """Write the rows of `blocks`, in order, into `frames` (slice copies for runs)."""
        done = 0
        for block in blocks:
            n = block.shape[0]
            part = frames[done: done + n]
            if len(part) != n:
                raise ValueError(f"{done + n} pages for {len(frames)} frames")
            pos = 0
            for a, k in _runs(part):
                self.frames[a: a + k] = block[pos: pos + k]
                pos += k
            done += n
        if done != len(frames):
            raise ValueError(f"{done} pages for {len(frames)} frames")

    def write(self, frames: Sequence[int], block: npt.NDArray[np.uint8]) -> None:
        self.frames[list(frames)] = block

    def statistics(self) -> RealMemoryStatistics:
        free = len(self._free)
        return RealMemoryStatistics(self.nframes, free, self.nframes - free)
