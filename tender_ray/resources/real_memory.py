"""Real memory: one machine's physical page frames and their allocator.

All frames live in one page-aligned anonymous mapping viewed as a numpy array of 4 KiB rows,
so the CPU can map the whole of it once as its physical memory and DSM can copy page blocks
with one numpy call. With `shared=True` (the native engine) the mapping is a shared memory file
(memfd) that guest host processes map too: their pages are the machine's frames. A frame may
be mapped by several regions (text shared by processes of one program): it is counted per
mapper and given back by the last one.
"""

from __future__ import annotations

import ctypes
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


def _runs(frames: Sequence[int] | npt.NDArray[np.int64]) -> list[tuple[int, int]]:
    """(first frame, length) of each run of consecutive frame numbers, in order."""
    if len(frames) == 0:
        return []
    f = frames if isinstance(frames, np.ndarray) else np.asarray(frames, dtype=np.int64)
    cuts = np.flatnonzero(np.diff(f) != 1) + 1
    starts = np.concatenate(([0], cuts))
    ends = np.concatenate((cuts, [len(f)]))
    return [(int(f[a]), int(b - a)) for a, b in zip(starts, ends, strict=True)]


@dataclass(frozen=True)
class RealMemoryStatistics:
    frames_total: int
    frames_free: int  # ready to allocate: never used, given back, or held (see `hold`)
    frames_used: int
    frames_held: int = 0  # of the free ones: kept by deleted regions, reused first


FrameList = Sequence[int] | npt.NDArray[np.int64]


def _as_frames(frames: Iterable[int] | npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    if isinstance(frames, np.ndarray):
        return frames.astype(np.int64, copy=False).reshape(-1)
    if not isinstance(frames, (list, tuple)):
        frames = list(frames)
    return np.fromiter(frames, dtype=np.int64, count=len(frames))


class RealMemory:
    """The frames of one machine. Frame numbers index `frames`; physical address = frame * 4 KiB.

    The allocator is a bitmap of free frames searched from the lowest one that may be free,
    so a request gets the lowest free frames in ascending order (regions get runs of
    consecutive frames, which the native engine maps as one mapping and DSM sends as one
    view) and allocating or freeing n frames is a few numpy calls whatever n is.
    """

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
        # Owned by the allocator (under `_lock`): which frames are free, how many, and the
        # lowest frame that may be free (every one below it is taken).
        self._free_mask = np.ones(self.nframes, dtype=bool)
        self._nfree = self.nframes
        self._low = 0
        # Frames kept by deleted regions that were held for reuse (`hold`): still written
        # with the old contents, reused first by requests that overwrite them whole (an
        # arriving migration), handed out zeroed once the free frames run out. Each entry
        # is one region's frame list as it was, not-present pages (negative) included:
        # holding costs nothing per frame.
        self._held: list[tuple[list[FrameList], int]] = []  # (lists, frames in them)
        self._nheld = 0
        # Frames never handed out are still the host's zero pages: no need to zero them (and
        # touching them here would commit memory the process itself may commit later).
        self._pristine = np.ones(self.nframes, dtype=bool)
        # Frames mapped by more than one region (text shared by processes of one program,
        # `share`): the mappers beyond the first, per frame. Freeing or holding such a frame
        # drops one mapper; only the last one gives the frame back, so a process that ends
        # or moves away never frees text another still maps.
        self._sharers = np.zeros(self.nframes, dtype=np.int32)
        self._nshared = 0  # frames with sharers: 0 keeps free and hold at their cost

    @property
    def free_frames(self) -> int:
        """Frames a request can get: the free ones and the held ones."""
        return self._nfree + self._nheld

    @property
    def held_frames(self) -> int:
        return self._nheld

    @property
    def shared_frames(self) -> int:
        """Frames mapped by more than one region (see `share`)."""
        return self._nshared

    def _exhausted(self, count: int) -> OutOfMemoryError:
        return OutOfMemoryError(
            f"real memory exhausted: {count} frames asked, {self.free_frames} free "
            f"of {self.nframes} ({self.size >> 20} MiB); give the machine more memory")

    def _take_free(self, count: int) -> npt.NDArray[np.int64]:  # lock held; count <= _nfree
        """The `count` lowest free frames, ascending, marked taken."""
        mask = self._free_mask
        pos = self._low
        if count == 1 and mask[pos]:
            taken = np.array([pos], dtype=np.int64)
        else:
            parts: list[npt.NDArray[np.int64]] = []
            need = count
            window = max(1024, 2 * count)
            while need:
                found = np.flatnonzero(mask[pos: pos + window])[:need]
                if found.size:
                    parts.append(found + pos)
                    need -= found.size
                pos += window
                window *= 2
            taken = parts[0] if len(parts) == 1 else np.concatenate(parts)
        mask[taken] = False
        self._nfree -= count
        self._low = int(taken[-1]) + 1
        return taken

    def _take_held(self, count: int) -> npt.NDArray[np.int64]:  # lock held; count <= _nheld
        """Up to `count` held frames (the most recently held first), in their regions' order.
        Fewer only if a hold's count was an estimate that came out high (then corrected)."""
        parts: list[npt.NDArray[np.int64]] = []
        need = count
        while need and self._held:
            lists, estimate = self._held.pop()
            chunk = np.concatenate([_as_frames(f) for f in lists])
            chunk = chunk[chunk >= 0]
            self._nheld += chunk.size - estimate  # now known exactly
            if chunk.size > need:
                self._held.append(([chunk[need:]], chunk.size - need))
                chunk = chunk[:need]
            parts.append(chunk)
            need -= chunk.size
            self._nheld -= chunk.size
        if not parts:
            return np.zeros(0, dtype=np.int64)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def allocate_array(self, count: int, zero: bool = True) -> npt.NDArray[np.int64]:
        """`count` frames as an array (zeroed unless the caller overwrites them whole), or
        OutOfMemoryError with nothing allocated.

        A request that overwrites its frames (`zero=False`) takes held frames first (no
        zeroing, and their host pages are already there); one that wants zeroed frames
        takes free ones first, and held ones only when those run out.
        """
        if count <= 0:
            return np.zeros(0, dtype=np.int64)
        with self._lock:
            if count > self._nfree + self._nheld:
                raise self._exhausted(count)
            parts: list[npt.NDArray[np.int64]] = []
            need = count
            for _ in range(2):  # a second pass only if a held estimate came out high
                for held in ((False, True) if zero else (True, False)):
                    take = min(need, self._nheld if held else self._nfree)
                    if take:
                        got = self._take_held(take) if held else self._take_free(take)
                        parts.append(got)
                        need -= got.size
                if not need:
                    break
            taken = parts[0] if len(parts) == 1 else np.concatenate(parts)
            if need:  # fewer frames than counted: give back what was taken
                self._release(taken)
                raise self._exhausted(count)
            if zero:
                dirty = taken[~self._pristine[taken]]
            self._pristine[taken] = False
        if zero and dirty.size:
            self._zero(dirty)
        return taken

    def _zero(self, frames: npt.NDArray[np.int64]) -> None:
        if frames.size <= 8:
            self.frames[frames] = 0
            return
        runs = _runs(frames)
        if len(runs) <= 64:
            for first, n in runs:
                self.frames[first: first + n] = 0
        else:
            self.frames[frames] = 0

    def allocate(self, count: int, zero: bool = True) -> list[int]:
        """`count` frames (zeroed unless the caller overwrites them whole), or
        OutOfMemoryError with nothing allocated."""
        taken: list[int] = self.allocate_array(count, zero).tolist()
        return taken

    def allocate_one(self) -> int:
        """One zeroed frame (the fault path: the lowest free frame, no numpy call when it
        is where the last one was taken)."""
        with self._lock:
            frame = self._low
            fast = self._nfree > 0 and bool(self._free_mask[frame])
            if fast:
                self._free_mask[frame] = False
                self._nfree -= 1
                self._low = frame + 1
                pristine = bool(self._pristine[frame])
                self._pristine[frame] = False
        if not fast:
            if not self._nfree + self._nheld:
                raise OutOfMemoryError(
                    f"real memory exhausted: all {self.nframes} frames "
                    f"({self.size >> 20} MiB) are in use; give the machine more memory")
            return int(self.allocate_array(1)[0])
        if not pristine:
            self.frames[frame] = 0
        return frame

    def free(self, frames: Iterable[int] | npt.NDArray[np.int64]) -> None:
        """Give frames back (negative entries, not-present pages, are skipped)."""
        returned = _as_frames(frames)
        if returned.size and returned.min() < 0:
            returned = returned[returned >= 0]
        if not returned.size:
            return
        with self._lock:
            if self._free_mask[returned].any():
                twice = returned[self._free_mask[returned]][:4].tolist()
                raise ValueError(f"frames {twice} freed twice; they were free already")
            self._release(self._unshare(returned))

    # --- frames shared by several regions ------------------------------------------------

    def share(self, frames: npt.NDArray[np.int64]) -> None:
        """One more region maps `frames` (allocated ones, each listed once): each is given
        back only when every region that maps it has freed or held it."""
        if not frames.size:
            return
        with self._lock:
            if self._free_mask[frames].any():
                raise ValueError(f"frames {frames[self._free_mask[frames]][:4].tolist()} "
                                 "are free; only allocated frames can be shared")
            self._nshared += int((self._sharers[frames] == 0).sum())
            self._sharers[frames] += 1

    def any_shared(self, frames: npt.NDArray[np.int64]) -> bool:
        """Whether any of `frames` (negative entries skipped) is mapped by another region."""
        if not self._nshared or not frames.size:
            return False
        with self._lock:
            return bool((self._sharers[frames[frames >= 0]] > 0).any())

    def _unshare(self, frames: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:  # lock held
        """Drop one mapper of each of `frames` (all >= 0); the frames nobody maps any more."""
        if not self._nshared or not frames.size:
            return frames
        mapped = self._sharers[frames] > 0
        if not mapped.any():
            return frames
        kept = frames[mapped]
        self._sharers[kept] -= 1
        self._nshared -= int((self._sharers[kept] == 0).sum())
        return frames[~mapped]

    def private_copy(self, frames: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """Copy on write: `frames` (negative entries kept as they are) with every frame
        another region also maps replaced by a fresh copy of it, and that mapper dropped.
        The caller's region then owns all the frames it lists."""
        out = frames.copy()
        if not self.any_shared(frames):
            return out
        with self._lock:
            valid = np.flatnonzero(frames >= 0)
            mine = valid[self._sharers[frames[valid]] > 0]
        copies = self.allocate_array(mine.size, zero=False)
        self.frames[copies] = self.frames[frames[mine]]
        with self._lock:
            self._release(self._unshare(frames[mine]))  # nothing: others still map them
        out[mine] = copies
        return out

    def _release(self, frames: npt.NDArray[np.int64]) -> None:  # lock held
        if frames.size:
            self._free_mask[frames] = True
            self._nfree += frames.size
            self._low = min(self._low, int(frames.min()))

    def hold(self, frames: list[int], count: int | None = None) -> None:
        """Keep a deleted region's frames for reuse (see `hold_all`)."""
        self.hold_all([frames], count)

    def hold_all(self, lists: list[list[int]], count: int | None = None) -> None:
        """Keep deleted regions' frames for reuse: their lists as they are (negative entries,
        not-present pages, skipped when they are reused), no work per frame when the caller
        knows how many frames they hold (`count`; counted here otherwise). They count as
        free: the next requests reuse them (see `allocate_array`)."""
        kept: list[FrameList] = list(lists)
        if self._nshared:
            # A shared frame is not this region's to reuse: drop its mapper instead.
            with self._lock:
                kept = [self._hold_unshared(f) for f in lists]
            count = None
        if count is None:
            count = sum(len(f) - (f.count(-1) if isinstance(f, list)
                                  else int((np.asarray(f) < 0).sum())) for f in kept)
        if count:
            with self._lock:
                self._held.append((kept, count))
                self._nheld += count

    def _hold_unshared(self, frames: FrameList) -> FrameList:  # lock held
        """`frames` with each frame another region maps dropped (one mapper less) and shown
        as not present, so that holding it never lets its contents be overwritten."""
        index = _as_frames(frames)
        valid = np.flatnonzero(index >= 0)
        mine = valid[self._sharers[index[valid]] > 0]
        if not mine.size:
            return frames
        left = self._unshare(index[mine])
        assert not left.size  # every one was shared
        index = index.copy()
        index[mine] = -1
        return index

    def release_held(self) -> int:
        """Give every held frame back to the free frames (reuse switched off); how many."""
        with self._lock:
            held = self._take_held(self._nheld) if self._nheld else np.zeros(0, np.int64)
            self._release(held)
        return int(held.size)

    def read(self, frames: Sequence[int]) -> npt.NDArray[np.uint8]:
        """A copy of the given frames as one (n, 4096) block."""
        return self.frames[list(frames)]

    def gather(self, frames: FrameList, max_pages: int,
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
        index = _as_frames(frames)
        return [self.frames[index[i: i + max_pages]]
                for i in range(0, len(index), max_pages)]

    def scatter(self, frames: FrameList, blocks: Iterable[npt.NDArray[np.uint8]]) -> None:
        """Write the rows of `blocks`, in order, into `frames`: one copy per page (slices
        for runs of consecutive frames, one indexed copy for a fragmented list)."""
        index = _as_frames(frames)
        done = 0
        for block in blocks:
            n = block.shape[0]
            self.scatter_at(index, done, block)
            done += n
        if done != len(index):
            raise ValueError(f"{done} pages for {len(index)} frames")

    def scatter_at(self, frames: npt.NDArray[np.int64], offset: int,
                   block: npt.NDArray[np.uint8]) -> None:
        """Write the rows of `block` into frames[offset:offset + rows]."""
        n = block.shape[0]
        part = frames[offset: offset + n]
        if len(part) != n:
            raise ValueError(f"{offset + n} pages for {len(frames)} frames")
        if not n:
            return
        first = int(part[0])
        if int(part[-1]) - first == n - 1 and (n < 3 or bool((np.diff(part) == 1).all())):
            self.frames[first: first + n] = block
            return
        runs = _runs(part)
        if len(runs) > 16:
            self.frames[part] = block
            return
        pos = 0
        for a, k in runs:
            self.frames[a: a + k] = block[pos: pos + k]
            pos += k

    def write(self, frames: Sequence[int], block: npt.NDArray[np.uint8]) -> None:
        self.frames[list(frames)] = block

    def statistics(self) -> RealMemoryStatistics:
        with self._lock:
            free, held = self._nfree + self._nheld, self._nheld
        return RealMemoryStatistics(self.nframes, free, self.nframes - free, held)
