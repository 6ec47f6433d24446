"""The space a pre-copy builds at its destination while the process still runs at its source:
the live rounds' pages staged in frames of this machine by virtual page, then, from the live
image's layout, the arriving process's virtual space (transform I), its other regions with
the staged frames in their frame lists and their translations (transform III made
iterative), so that the freeze's transform only patches it: areas whose layout changed are
rebuilt, stale pages dropped, and the pages written since copied in.

Whatever was staged and not taken by a committed process is freed with the migration: loose
staged frames here, the built space with its kernel process (`release_incoming`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import numpy as np
import numpy.typing as npt

from tender_ray.errors import MigrationError
from tender_ray.kernel import address_space as vm
from tender_ray.migration.image import AreaImage, ProcessImage
from tender_ray.migration.options import MigrationOptions
from tender_ray.resources.process import Process
from tender_ray.resources.real_memory import PAGE_SHIFT, RealMemory
from tender_ray.resources.virtual_region import NOT_PRESENT, VirtualRegion
from tender_ray.resources.virtual_user_space import VirtualUserSpace

AddArea = Callable[[Process, AreaImage], VirtualUserSpace]
Filled = list[tuple[VirtualUserSpace, npt.NDArray[np.int64], npt.NDArray[np.int64]]]


class StagedPages:
    """Frames holding a pre-copy's pages at the destination, by virtual page number (sorted
    arrays: a round or the final transform looks up thousands of pages at once)."""

    def __init__(self) -> None:
        self.vpns = np.zeros(0, dtype=np.int64)
        self.frames = np.zeros(0, dtype=np.int64)
        # The live image came: the arriving space is built, the pages inside its areas are
        # its regions' (no longer here), and the freeze's image patches it.
        self.prepared = False

    def __len__(self) -> int:
        return int(self.vpns.size)

    def find(self, vpns: npt.NDArray[np.int64]
             ) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.int64]]:
        """Which of `vpns` are staged, and the positions of those in the arrays."""
        at = np.searchsorted(self.vpns, vpns)
        found = at < self.vpns.size
        found[found] = self.vpns[at[found]] == vpns[found]
        return found, at[found]

    def add(self, vpns: npt.NDArray[np.int64], frames: npt.NDArray[np.int64]) -> None:
        """Stage pages not staged yet, in these frames."""
        order = np.argsort(np.concatenate([self.vpns, vpns]), kind="stable")
        self.vpns = np.concatenate([self.vpns, vpns])[order]
        self.frames = np.concatenate([self.frames, frames])[order]

    def remove(self, at: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """The frames at positions `at`, no longer staged here."""
        frames = self.frames[at]
        keep = np.ones(self.vpns.size, dtype=bool)
        keep[at] = False
        self.vpns, self.frames = self.vpns[keep], self.frames[keep]
        return frames

    def take_range(self, lo: int, hi: int
                   ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """The staged pages in [lo, hi) and their frames, no longer staged here."""
        a, b = (int(i) for i in np.searchsorted(self.vpns, (lo, hi)))
        vpns, frames = self.vpns[a:b], self.frames[a:b]
        if a < b:
            self.vpns = np.concatenate([self.vpns[:a], self.vpns[b:]])
            self.frames = np.concatenate([self.frames[:a], self.frames[b:]])
        return vpns, frames

    def clear(self) -> npt.NDArray[np.int64]:
        """Every staged frame, none staged any more."""
        frames = self.frames
        self.vpns = self.frames = np.zeros(0, dtype=np.int64)
        return frames


def prepare(managers: vm.Managers, p: Process, image: ProcessImage,
            options: MigrationOptions, staged: StagedPages,
            add_area: AddArea) -> dict[str, float]:
    """The live image of a pre-copy: build kernel process `p`'s space and other areas with
    the staged pages in them (the freeze's image patches it); the seconds per sub-step."""
    if staged.prepared:
        raise MigrationError(f"process {image.pid}: its pre-copy's live image came twice; "
                             "start a new migration")
    t = time.perf_counter()
    p.space = managers.spaces.acquire(reuse=options.reuse)
    staged.prepared = True  # from here the space holds frames: released with `p`
    phases = {"transform_space": time.perf_counter() - t}
    t = time.perf_counter()
    for area in image.other_areas:
        place_staged(p, add_area(p, area), staged)
    phases["transform_start"] = time.perf_counter() - t
    return phases


def place_staged(p: Process, us: VirtualUserSpace, staged: StagedPages) -> VirtualUserSpace:
    """Give the fresh area `us` the staged pages it covers, their frames as they are (no
    copy), and their translations; those pages are no longer staged."""
    region = us.region
    assert region is not None and p.space is not None
    base = us.start >> PAGE_SHIFT
    vpns, frames = staged.take_range(base, base + region.npages)
    if vpns.size:
        indexes = vpns - base
        listed = np.full(region.npages, NOT_PRESENT, dtype=np.int64)
        listed[indexes] = frames
        region.frames = listed.tolist()
        p.space.add_entries(us, indexes, frames)
    return us


def keep_prepared(managers: vm.Managers, p: Process, areas: tuple[AreaImage, ...],
                  staged: StagedPages) -> dict[int, VirtualUserSpace]:
    """The built areas the freeze's image keeps as they are (by its area's position); one
    whose layout changed since the live image (moved, resized, other permissions) is
    removed and its pages are staged again, for the area that now covers them."""
    assert p.space is not None
    keys = {id(us): key for key, us in p.user_spaces.items()}
    wanted = {(a.key, a.kind, a.start, a.npages, a.perms): i for i, a in enumerate(areas)}
    kept: dict[int, VirtualUserSpace] = {}
    for us in list(p.space.user_spaces):
        region = us.region
        assert region is not None
        key = keys.get(id(us), "")
        i = wanted.pop((key, region.kind, us.start, region.npages, us.perms), None)
        if i is not None:
            kept[i] = us
            continue
        frames = region.frame_array()
        present = np.flatnonzero(frames != NOT_PRESENT)
        staged.add((us.start >> PAGE_SHIFT) + present, frames[present])
        region.frames = [NOT_PRESENT] * region.npages  # staged again: not freed with it
        if key:
            del p.user_spaces[key]
        vm.remove_area(managers, p, us)
    return kept


def drop_stale(memory: RealMemory, p: Process, stale: npt.NDArray[np.int64],
               staged: StagedPages) -> None:
    """Free the staged copies of pages gone since they were sent (`stale`, sorted), loose
    or in the built areas, which then do not map them."""
    if not stale.size:
        return
    found, at = staged.find(stale)
    if found.any():
        memory.free(staged.remove(at))
    space = p.space
    assert space is not None
    table = space.table
    for us in space.user_spaces:
        region = us.region
        assert region is not None
        base = us.start >> PAGE_SHIFT
        lo, hi = np.searchsorted(stale, (base, base + region.npages))
        listed = region.frames
        gone: list[int] = []
        for i in (stale[lo:hi] - base).tolist():
            frame = listed[i]
            if frame != NOT_PRESENT:
                listed[i] = NOT_PRESENT
                table.pop(base + i, None)
                gone.append(frame)
        memory.free(gone)
    space.generation += 1


def patch_areas(memory: RealMemory, p: Process, user_spaces: list[VirtualUserSpace],
                areas: tuple[AreaImage, ...], blocks: Iterator[npt.NDArray[np.uint8]],
                copy_in: Callable[[Iterator[npt.NDArray[np.uint8]], Filled], None]) -> None:
    """The freeze's pages of a pre-copy into the built areas: each goes into its page's
    staged frame (sent again: written since) or a fresh one (not staged), one copy each."""
    assert p.space is not None
    filled: Filled = []
    for us, area in zip(user_spaces, areas, strict=True):
        region = us.region
        assert region is not None
        if not area.present:
            continue
        indexes = np.fromiter(area.present, dtype=np.int64, count=len(area.present))
        frames = _frames_at(region, indexes)
        fresh = frames == NOT_PRESENT
        if fresh.any():
            frames[fresh] = memory.allocate_array(int(fresh.sum()), zero=False)
            listed = region.frames
            for i, frame in zip(indexes[fresh].tolist(), frames[fresh].tolist(), strict=True):
                listed[i] = frame
            p.space.add_entries(us, indexes[fresh], frames[fresh])
        filled.append((us, indexes, frames))
    copy_in(blocks, filled)


def _frames_at(region: VirtualRegion, indexes: npt.NDArray[np.int64]
               ) -> npt.NDArray[np.int64]:
    """The frames of the region's pages `indexes`: a few looked up one by one, a large share
    by one pass over its frame list."""
    if indexes.size * 8 > region.npages:
        return region.frame_array()[indexes]
    listed = region.frames
    return np.fromiter((listed[i] for i in indexes.tolist()), dtype=np.int64,
                       count=indexes.size)
