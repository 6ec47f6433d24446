"""Virtual region: storage, virtualised — a run of pages of one kind, each a frame or not present.

A region knows nothing of addresses; it becomes visible to a process only when a virtual user
space pastes it into a virtual space. Pages start not present and get a zeroed frame on first
touch, so only pages a process really used ever exist (and ever travel when it migrates).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from tender_ray.resources.real_memory import RealMemory

NOT_PRESENT = -1


class RegionKind(str, enum.Enum):
    TEXT = "text"  # program text and read-only data: never written, shared by design
    DATA = "data"  # initialised data, from the program image
    BSS = "bss"  # zero-initialised data
    HEAP = "heap"  # the program break (brk)
    STACK = "stack"  # the user stack
    MMAP = "mmap"  # anonymous mappings


class RegionState(str, enum.Enum):
    FREE = "free"  # held or pooled, owns no frames
    ACTIVE = "active"  # owned by a process


@dataclass(frozen=True)
class RegionImage:
    """A region's description as it travels: kind, size and which pages are present."""

    kind: RegionKind
    npages: int
    present: tuple[int, ...]  # page indexes that hold a frame


class VirtualRegion:
    """A list of frames (or NOT_PRESENT), owned by one process at a time."""

    def __init__(self) -> None:
        self.kind = RegionKind.MMAP  # set by the owner at `setup`
        self.state = RegionState.FREE
        self.frames: list[int] = []  # owned here: frame per page, NOT_PRESENT if never touched

    def setup(self, kind: RegionKind, npages: int) -> VirtualRegion:
        self.kind = kind
        self.state = RegionState.ACTIVE
        self.frames = [NOT_PRESENT] * npages
        return self

    @property
    def npages(self) -> int:
        return len(self.frames)

    def present(self) -> list[int]:
        """Indexes of the pages that hold a frame."""
        indexes: list[int] = self.present_array().tolist()
        return indexes

    def frame_array(self) -> npt.NDArray[np.int64]:
        """The frame of every page (NOT_PRESENT where none), as an array."""
        return np.fromiter(self.frames, dtype=np.int64, count=len(self.frames))

    def present_array(self) -> npt.NDArray[np.int64]:
        """Indexes of the pages that hold a frame, as an array."""
        return np.flatnonzero(self.frame_array() != NOT_PRESENT)

    def resident(self) -> int:
        return len(self.frames) - self.frames.count(NOT_PRESENT)

    def materialize(self, index: int, memory: RealMemory) -> int:
        """The frame of page `index`, allocating a zeroed one on first touch."""
        frame = self.frames[index]
        if frame == NOT_PRESENT:
            frame = memory.allocate_one()
            self.frames[index] = frame
        return frame

    def populate(self, indexes: list[int], memory: RealMemory, zero: bool = True) -> list[int]:
        """Give every listed not-present page a frame at once; the frames of all listed pages.

        `zero=False` when the caller overwrites every listed page at once.
        """
        frames = self.frames
        missing = [i for i in indexes if frames[i] == NOT_PRESENT]
        for i, frame in zip(missing, memory.allocate(len(missing), zero), strict=True):
            frames[i] = frame
        return [frames[i] for i in indexes]

    def populate_array(self, indexes: npt.NDArray[np.int64], memory: RealMemory,
                       zero: bool = True) -> npt.NDArray[np.int64]:
        """`populate` for an array of page indexes, without a loop per page: the frames
        of the listed pages as an array."""
        if not indexes.size:
            return np.zeros(0, dtype=np.int64)
        if self.frames.count(NOT_PRESENT) == len(self.frames):  # fresh: no conversion
            frames = np.full(len(self.frames), NOT_PRESENT, dtype=np.int64)
        else:
            frames = self.frame_array()
        mine = frames[indexes]
        missing = mine == NOT_PRESENT
        count = int(missing.sum())
        if count:
            mine[missing] = memory.allocate_array(count, zero)
            frames[indexes] = mine
            self.frames = frames.tolist()
        return mine

    def resize(self, npages: int, memory: RealMemory) -> None:
        """Grow with not-present pages or shrink, freeing the frames cut off."""
        if npages >= len(self.frames):
            self.frames.extend([NOT_PRESENT] * (npages - len(self.frames)))
            return
        memory.free(f for f in self.frames[npages:] if f != NOT_PRESENT)
        del self.frames[npages:]

    def split_off(self, index: int, right: VirtualRegion) -> VirtualRegion:
        """Move pages [index:] into `right` (a fresh region); this region keeps [:index]."""
        right.setup(self.kind, 0)
        right.frames = self.frames[index:]
        del self.frames[index:]
        return right

    def image(self) -> RegionImage:
        return RegionImage(self.kind, self.npages, tuple(self.present()))

    def release(self, memory: RealMemory, hold: bool = False) -> None:
        """Give every frame back; the region object itself can then be held for reuse.

        `hold` keeps the frames for reuse (the paper's holding on delete): the frame list
        goes to the machine's held frames as it is, with no work per frame, and the next
        arrival reuses them without zeroing them (they are already the host's pages)."""
        if hold:
            memory.hold(self.frames)
        else:
            memory.free(self.frame_array())
        self.frames = []
        self.state = RegionState.FREE
