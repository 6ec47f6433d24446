"""What a guest's host process has mapped from the machine's memory file, as runs of pages,
and what it should have mapped: its virtual space's present pages.

The virtual space is the source of truth and the host mappings a cache of it (like a TLB);
comparing the two tells the tracer which mappings to change. Pure bookkeeping, no ptrace.
"""

from __future__ import annotations

import bisect

import numpy as np

from tender_ray.resources.real_memory import PAGE_SHIFT
from tender_ray.resources.virtual_region import NOT_PRESENT
from tender_ray.resources.virtual_space import VirtualSpace
from tender_ray.resources.virtual_user_space import PROT_WRITE

Run = tuple[int, int, int, int]  # (first virtual page, pages, first frame, protection)


class HostMap:
    """Which runs of pages are mapped from the memory file in one guest, sorted by address."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._runs: dict[int, Run] = {}

    def clear(self) -> None:
        self._starts.clear()
        self._runs.clear()

    def __len__(self) -> int:
        return len(self._starts)

    def covers(self, vpn: int) -> bool:
        i = bisect.bisect(self._starts, vpn) - 1
        if i < 0:
            return False
        v, n, _, _ = self._runs[self._starts[i]]
        return v <= vpn < v + n

    def within(self, lo: int, hi: int) -> list[Run]:
        """The runs overlapping [lo, hi), clipped to it."""
        i = max(bisect.bisect(self._starts, lo) - 1, 0)
        out: list[Run] = []
        for start in self._starts[i:]:
            if start >= hi:
                break
            v, n, f, prot = self._runs[start]
            a, b = max(v, lo), min(v + n, hi)
            if a < b:
                out.append((a, b - a, f + (a - v), prot))
        return out

    def remove(self, lo: int, hi: int) -> None:
        """Forget [lo, hi), keeping the parts of runs that stick out."""
        i = max(bisect.bisect(self._starts, lo) - 1, 0)
        doomed = []
        for start in self._starts[i:]:
            if start >= hi:
                break
            v, n, _, _ = self._runs[start]
            if v + n > lo:
                doomed.append(start)
        for start in doomed:
            v, n, f, prot = self._runs.pop(start)
            del self._starts[bisect.bisect_left(self._starts, start)]
            if v < lo:
                self._insert((v, lo - v, f, prot))
            if v + n > hi:
                self._insert((hi, v + n - hi, f + (hi - v), prot))

    def add(self, run: Run) -> None:
        self.remove(run[0], run[0] + run[1])
        self._insert(run)

    def _insert(self, run: Run) -> None:
        bisect.insort(self._starts, run[0])
        self._runs[run[0]] = run


def _frame_runs(first_vpn: int, frames: list[int], prot: int) -> list[Run]:
    """Runs of present pages with consecutive frames in a slice of a region's frame list."""
    out: list[Run] = []
    if len(frames) > 64:
        f = np.asarray(frames, dtype=np.int64)
        present = f != NOT_PRESENT
        if not present.any():
            return out
        # A page continues a run when it and the one before are present with frames k, k+1.
        cont = np.zeros(len(f), dtype=bool)
        cont[1:] = present[1:] & present[:-1] & (f[1:] == f[:-1] + 1)
        starts = np.flatnonzero(present & ~cont)
        breaks = np.flatnonzero(~cont)
        ends = np.append(breaks, len(f))[np.searchsorted(breaks, starts, side="right")]
        return [(first_vpn + s, e - s, int(f[s]), prot)
                for s, e in zip(starts.tolist(), ends.tolist(), strict=True)]
    run_start = -1
    for i, frame in enumerate(frames):
        if frame == NOT_PRESENT:
            if run_start >= 0:
                out.append((first_vpn + run_start, i - run_start, frames[run_start], prot))
                run_start = -1
        elif run_start < 0:
            run_start = i
        elif frame != frames[i - 1] + 1:
            out.append((first_vpn + run_start, i - run_start, frames[run_start], prot))
            run_start = i
    if run_start >= 0:
        out.append((first_vpn + run_start, len(frames) - run_start, frames[run_start], prot))
    return out


def _split_clean(runs: list[Run], written: set[int]) -> list[Run]:
    """Writable runs split where pages change between written (writable) and not yet written
    in the current interval (mapped without write permission: their first store faults)."""
    out: list[Run] = []
    for v, n, f, prot in runs:
        start, was = 0, v in written
        for i in range(1, n + 1):
            now = i < n and (v + i) in written
            if i == n or now != was:
                out.append((v + start, i - start, f + start, prot if was else prot & ~PROT_WRITE))
                start, was = i, now
    return out


def desired_runs(space: VirtualSpace, lo: int, hi: int) -> list[Run]:
    """What the guest's host mappings in pages [lo, hi) must be: its present pages, in runs;
    while its writes are tracked, the pages not yet written in the interval read-only."""
    out: list[Run] = []
    dirty = space.dirty
    for us in space.overlapping(lo << PAGE_SHIFT, hi << PAGE_SHIFT):
        region = us.region
        prot = us.perms & 7
        if region is None or not prot:
            continue  # PROT_NONE pages stay unmapped: touching them faults either way
        base = us.start >> PAGE_SHIFT
        a, b = max(lo, base), min(hi, base + region.npages)
        if a < b:
            runs = _frame_runs(a, region.frames[a - base: b - base], prot)
            out += _split_clean(runs, dirty.pages) if dirty and prot & PROT_WRITE else runs
    return out


def subtract(ranges: list[tuple[int, int]],
             holes: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(start, length) ranges minus the holes, adjacent pieces merged."""
    out: list[tuple[int, int]] = []
    holes = sorted(holes)
    for start, length in sorted(ranges):
        pieces = [(start, start + length)]
        for h_start, h_len in holes:
            h_end = h_start + h_len
            next_pieces = []
            for a, b in pieces:
                if h_end <= a or h_start >= b:
                    next_pieces.append((a, b))
                    continue
                if a < h_start:
                    next_pieces.append((a, h_start))
                if h_end < b:
                    next_pieces.append((h_end, b))
            pieces = next_pieces
        for a, b in pieces:
            if out and out[-1][0] + out[-1][1] == a:
                out[-1] = (out[-1][0], b - out[-1][0])
            else:
                out.append((a, b - a))
    return out
