"""Dirty pages: which pages of one virtual space changed since the last look (the ground of
pre-copy migration and incremental checkpoints).

A tracked space holds one `DirtyPages`. Three kinds of writer mark it: the engine, for the
guest's own stores (the emulated CPU on a write TLB fill, the native engine on a write fault
of a page it mapped read-only); the space itself, for the kernel's writes on the guest's
behalf (`VirtualSpace.write`: read() into a buffer, a signal frame) and for pages that become
present with contents (a mapped file, an mremap's new place, an arriving image); and the
space again for pages that stop being present (munmap, brk shrinking, madvise(DONTNEED)),
which drop out of the set and are reported as dropped. A page that becomes present
zero-filled (a first touch, an engine's fault-around) is not marked until it is written: it
reads as zeros, as a page that is not present does.
`take` hands out both sets and starts the next interval; `epoch` moves with it, which tells
the engine to write-protect every page again before the guest runs on.

Whoever calls `take` makes sure the process is off its CPU (the kernel's `tracking` does),
so nothing marks the set while it is swapped; no lock is needed on the marking path.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from tender_ray.resources.real_memory import PAGE_SHIFT


@dataclass(frozen=True)
class WrittenPages:
    """One take: the pages written (or newly present) in the interval, and those gone in it
    and not present again (a page both made and gone in the interval may be among them);
    both sorted virtual page numbers."""

    pages: npt.NDArray[np.int64]
    dropped: npt.NDArray[np.int64]
    epoch: int  # the interval's number: 0 is the one from `start` to the first take

    def addresses(self) -> list[int]:
        """The written pages as guest addresses."""
        return [vpn << PAGE_SHIFT for vpn in self.pages.tolist()]


def _sorted(vpns: Iterable[int]) -> npt.NDArray[np.int64]:
    out = np.fromiter(vpns, dtype=np.int64)
    out.sort()
    return out


class DirtyPages:
    """The pages of one virtual space whose contents changed since the last take.

    Starts with `initial` (a process that arrived tracked starts with every present page:
    its destination has seen none of them written).
    """

    def __init__(self, initial: Iterable[int] = ()) -> None:
        self.pages: set[int] = set(initial)  # written or newly present since the last take
        self.last: set[int] = set()  # the pages of the last take (an engine re-protects them)
        self.dropped: set[int] = set()  # no longer present (may hold re-present ones)
        self.epoch = 0  # bumped by every take: engines re-protect when it moves
        self.marks = 0  # pages marked by engines (write faults taken), for the benchmarks

    def mark(self, vpn: int) -> None:
        self.pages.add(vpn)

    def mark_range(self, address: int, size: int) -> None:
        """The kernel wrote [address, address + size) for the guest."""
        if size > 0:
            first, last = address >> PAGE_SHIFT, (address + size - 1) >> PAGE_SHIFT
            if first == last:
                self.pages.add(first)
            else:
                self.pages.update(range(first, last + 1))

    def mark_many(self, vpns: Iterable[int]) -> None:
        self.pages.update(vpns)

    def drop(self, vpns: Iterable[int]) -> None:
        """Pages that were present are gone (unmapped, discarded)."""
        gone = set(vpns)
        self.pages -= gone
        self.dropped |= gone

    def take(self) -> WrittenPages:
        """The interval's pages, and a new interval begins (the engine re-protects)."""
        pages, dropped = self.pages, self.dropped - self.pages
        self.pages, self.dropped, self.last = set(), set(), pages
        taken = WrittenPages(_sorted(pages), _sorted(dropped), self.epoch)
        self.epoch += 1
        return taken
