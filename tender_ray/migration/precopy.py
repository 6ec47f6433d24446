"""Pre-copy migration: the paper's step III made iterative. While the process runs at its
source, its writes are tracked and its pages go to the destination in live rounds, the first
with every page, each later one with the pages written since the one before, until the
written set is small, stops shrinking, or the rounds run out. Then, still running, its areas'
layout goes in a live image, from which the destination builds the arriving space around the
staged pages; then it is frozen and only the rest (and its registers) travel, in one call
that patches that space and commits, so the time it does not run is that last part, not the
whole copy nor a walk of every page. The lease, the commit-once protocol and the source's
resumption on failure are the stop-and-copy ones (`protocol.run_migration`): until the commit
the process runs at (or is resumed at) its source, and the destination frees what the rounds
staged and the space it built.

"auto" picks the mode per process from what is known of it: a small one moves by
stop-and-copy (its freeze is short anyway), as does one on an engine whose write tracking
costs a fault per first write to a page (native), or one whose last pre-copy measured it
writing at more than half the speed of the copy (the rounds would not converge).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from tender_ray.migration.options import MigrationMode, MigrationOptions
from tender_ray.migration.transports import Transport
from tender_ray.resources.dirty_pages import WrittenPages
from tender_ray.resources.real_memory import PAGE_SIZE

# "auto": below this resident size a stop-and-copy freeze is a few milliseconds anyway.
AUTO_STOP_BYTES = 32 << 20
# "auto": a process that wrote faster than this share of the copy speed goes by stop-and-copy.
AUTO_DIRTY_SHARE = 0.5
# Engines whose write tracking costs a trap per first write to a page in a round (the native
# engine's write-protected frames): a writing process runs far slower while it is tracked.
COSTLY_TRACKING = frozenset({"native"})
MAX_ROUNDS = 8  # live rounds at most, the first (every page) included
SMALL_PAGES = 256  # a written set this small (1 MiB) goes with the freeze
SHRINK = 0.75  # a later round must cut the written set to this share of the one before


@dataclass(frozen=True)
class PrecopyFacts:
    """What "auto" decides by, as the source knows it."""

    resident_pages: int
    engine: str
    dirty_rate: float = 0.0  # bytes/s its last pre-copy measured (0: never pre-copied)
    copy_rate: float = 0.0  # bytes/s that pre-copy's first round copied at


def choose_mode(mode: MigrationMode, facts: PrecopyFacts | None) -> MigrationMode:
    """STOP or PRECOPY for a migration asked for in `mode` (AUTO decides by `facts`)."""
    if mode is not MigrationMode.AUTO:
        return mode
    assert facts is not None
    if facts.resident_pages * PAGE_SIZE < AUTO_STOP_BYTES or facts.engine in COSTLY_TRACKING:
        return MigrationMode.STOP
    if facts.copy_rate > 0 and facts.dirty_rate >= AUTO_DIRTY_SHARE * facts.copy_rate:
        return MigrationMode.STOP
    return MigrationMode.PRECOPY


class PrecopySource(Protocol):
    """The source machine's calls for the live rounds (the kernel's `Machine`)."""

    def precopy_round(self, pid: int, transport: Transport, most: int | None,
                      fewest: int = 0) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64],
                                                tuple[Any, ...] | None]: ...


class PrecopyPeer(Protocol):
    """The destination's call for one live round (an actor handle or a local Machine)."""

    def precopy(self, mid: str, vpns: npt.NDArray[np.int64],
                handles: tuple[Any, ...], options: MigrationOptions) -> int: ...


@dataclass(frozen=True)
class FreezeSet:
    """What the freeze's image must say about the pages, as the live rounds left them."""

    send: npt.NDArray[np.int64]  # pages to send if present (written since, or not sent yet)
    stale: npt.NDArray[np.int64]  # pages the destination staged that are gone since


@dataclass
class LiveRounds:
    """What the live rounds of one pre-copy did, and what the destination's copy lacks."""

    round_bytes: list[int] = field(default_factory=list)
    # Pages staged at the destination and gone since (unmapped, discarded), not sent again:
    # their staged copy must not be mapped (sorted virtual page numbers).
    stale: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    # Pages written that a round took but did not send (the set was small or did not
    # shrink): they go with the freeze.
    pending: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    dirty_rate: float = 0.0  # bytes/s written during the last round (4 KiB a page)
    copy_rate: float = 0.0  # bytes/s of the first round (every page)
    seconds: float = 0.0
    # Content-addressed text the destination was asked about before the freeze: (program
    # digest, text digest) -> whether it holds that text.
    text_known: dict[tuple[str, str], bool] = field(default_factory=dict)

    @property
    def rounds(self) -> int:
        return len(self.round_bytes)

    def gone(self, pages: npt.NDArray[np.int64]) -> None:
        """Pages no longer present at the source: a copy staged earlier is stale."""
        if pages.size:
            self.stale = np.union1d(self.stale, pages)

    def sent(self, pages: npt.NDArray[np.int64]) -> None:
        """Pages a round staged as they are now: their staged copy is valid again."""
        if pages.size and self.stale.size:
            self.stale = np.setdiff1d(self.stale, pages, assume_unique=True)

    def at_freeze(self, written: WrittenPages) -> FreezeSet:
        """The pages the freeze's image sends (if still present) and those it names stale,
        once the frozen process's last writes (`written`) are known. A page that became
        present zero-filled after the first round and was never written is in neither: the
        destination leaves it not present, which reads as the same zeros."""
        return FreezeSet(np.union1d(self.pending, written.pages),
                         np.union1d(self.stale, written.dropped))


def live_rounds(source: PrecopySource, pid: int, peer: PrecopyPeer, transport: Transport,
                mid: str, options: MigrationOptions) -> LiveRounds:
    """Copy process `pid`'s pages to `peer` while it runs: every page, then rounds of the
    pages written meanwhile while they shrink and are not small, at most MAX_ROUNDS in all.
    Its writes must be tracked already (`precopy_begin`); they still are when this returns,
    and the last round's writes are taken at the freeze. Raises whatever a round raised
    (the process runs on at its source; the caller cancels the tracking and aborts)."""
    live = LiveRounds()
    start = time.perf_counter()
    previous = 0
    last_take = start
    first = True
    while live.rounds < MAX_ROUNDS:
        t = time.perf_counter()
        gone, vpns, handles = source.precopy_round(
            pid, transport, None if first else int(previous * SHRINK), SMALL_PAGES)
        if not first:
            live.dirty_rate = vpns.size * PAGE_SIZE / max(t - last_take, 1e-6)
        live.gone(gone)
        if handles is None:  # small, or not shrinking: they go with the freeze instead
            live.pending = vpns
            break
        last_take = t
        try:
            peer.precopy(mid, vpns, handles, options)
        finally:
            transport.discard(handles)
        live.sent(vpns)
        live.round_bytes.append(int(vpns.size) * PAGE_SIZE)
        if first:
            live.copy_rate = vpns.size * PAGE_SIZE / max(time.perf_counter() - t, 1e-6)
        previous, first = int(vpns.size), False
    live.seconds = time.perf_counter() - start
    return live
