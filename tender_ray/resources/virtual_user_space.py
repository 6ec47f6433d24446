"""Virtual user space: a virtual region pasted into a virtual space at an address.

Pasting writes the region's present frames into the space's translation table with the user
space's permissions; pages not present are filled in on first touch by the space's fault path.
"""

from __future__ import annotations

import enum

# Permission bits are Linux's PROT_*, the same values as Unicorn's UC_PROT_*, so entries feed
# the TLB directly; named here too for the code that reads them with the user space.
from tender_ray.abi.linux import PROT_EXEC, PROT_READ, PROT_WRITE
from tender_ray.resources.real_memory import PAGE_SHIFT, PAGE_SIZE
from tender_ray.resources.virtual_region import NOT_PRESENT, VirtualRegion

__all__ = ["PROT_EXEC", "PROT_READ", "PROT_WRITE", "UserSpaceState", "VirtualUserSpace"]


class UserSpaceState(str, enum.Enum):
    FREE = "free"
    PASTED = "pasted"


class VirtualUserSpace:
    """Where (start) and how (perms) one region appears in one virtual space."""

    def __init__(self) -> None:
        self.region: VirtualRegion | None = None  # owned by the process; referenced here
        self.start = 0  # page-aligned virtual address
        self.perms = 0  # PROT_* bits
        self.state = UserSpaceState.FREE

    def setup(self, region: VirtualRegion, start: int, perms: int) -> VirtualUserSpace:
        if start % PAGE_SIZE:
            raise ValueError(f"user space start {start:#x} is not page-aligned")
        self.region, self.start, self.perms = region, start, perms
        return self

    @property
    def npages(self) -> int:
        assert self.region is not None
        return self.region.npages

    @property
    def end(self) -> int:
        return self.start + (self.npages << PAGE_SHIFT)

    def contains(self, address: int) -> bool:
        return self.start <= address < self.end

    def entries(self) -> dict[int, int]:
        """Translation entries for the present pages: virtual page -> (frame << 12 | perms)."""
        assert self.region is not None
        base = self.start >> PAGE_SHIFT
        perms = self.perms
        if self.region.frames.count(NOT_PRESENT) == len(self.region.frames):
            return {}  # a fresh region (an arriving area, a new mapping): no loop per page
        return {
            base + i: (f << PAGE_SHIFT) | perms
            for i, f in enumerate(self.region.frames)
            if f != NOT_PRESENT
        }

    def reset(self) -> None:
        self.region, self.start, self.perms = None, 0, 0
        self.state = UserSpaceState.FREE
