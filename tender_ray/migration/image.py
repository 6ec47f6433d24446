"""The process image that travels in a migration: each area (a user space and its region) with
the pages that have contents, the kernel-side state that moves with the process, the registers,
and the page blocks as transport handles."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from tender_ray.abi.cpu_state import CpuState
from tender_ray.migration.record import MigrationRecord
from tender_ray.resources.open_file import FilesImage
from tender_ray.resources.process import Accounting
from tender_ray.resources.program import Program
from tender_ray.resources.virtual_region import RegionKind

BLOCK_PAGES = 8192  # 32 MiB per page block: few objects, bounded memory spikes


@dataclass(frozen=True)
class AreaImage:
    """One user space and its region: where, how, and which of its pages travel."""

    key: str  # the process's name for it ("text1", "stack"), or "" for anonymous areas
    kind: RegionKind
    start: int
    npages: int
    perms: int
    present: tuple[int, ...]  # page indexes with contents, in block order


@dataclass(frozen=True)
class KernelState:
    """The process's kernel-side state, which moves with it."""

    name: str
    brk_start: int
    brk: int
    mmap_top: int
    tid_address: int
    sleep_left: float | None  # remaining sleep when it was frozen asleep
    stdout: bytes
    stderr: bytes
    stdout_taken: int
    stderr_taken: int
    accounting: Accounting
    created_at: float
    migrations: tuple[MigrationRecord, ...]
    # Descriptors, offsets, pipes, the stdin buffer and the view (resources/open_file.py).
    files: FilesImage = field(default_factory=FilesImage)
    cpu_features: frozenset[str] = frozenset()  # Process.cpu_features
    # kernel.signals.SignalState (actions, mask, pending, alternate stack, the timer's time
    # left), kept opaque here: the kernel, above, fills and reads it. None: all default.
    signals: Any = None
    # Process.output_commit: how far into stdout and stderr its last checkpoint reaches (the
    # owner gets no more than that until the next one), None before its first checkpoint.
    output_commit: tuple[int, int] | None = None
    # Its writes were tracked (`kernel.tracking`): tracking goes on at the destination, every
    # present page in its first interval.
    write_tracked: bool = False


@dataclass(frozen=True)
class ThreadImage:
    """One thread of a process as it travels: its id (kept: glibc holds it in the thread's
    TCB and in the owner words of the mutexes it holds), its registers (the canonical
    format, XSAVE included), its clear-child-tid address, its own sleep and call counts, and
    its place in a futex: the word it waits on (`futex_at`, its address: where a requeue
    put it, which its registers may not name), the wake bits, whether a wake already chose
    it (its re-issued call then answers 0) and the number of the call that waited."""

    tid: int
    registers: CpuState | None  # None for the first thread (`ProcessImage.registers`)
    clear_child_tid: int = 0
    sleep_left: float | None = None
    accounting: Accounting | None = None  # None for the first thread (in `KernelState`)
    futex_at: int | None = None
    futex_bitset: int = 0xFFFF_FFFF
    futex_woken: bool = False
    futex_call: int = 0


@dataclass(frozen=True)
class PrecopyPart:
    """How a pre-copy's image relates to the pages its live rounds staged at the destination.

    A live image (`live`) goes after the live rounds, while the process still runs: it brings
    only the layout of the other areas (no page, and registers and kernel state that are not
    used), and the destination builds the arriving space from the staged pages — regions,
    frame lists and translations — so the freeze does not. The freeze's image then patches
    that space: its other areas' `present` name only the pages in `data_blocks` (written
    since, or not sent yet), and `stale` the staged pages whose copy is no longer valid (gone
    since they were sent); every other staged page inside an area is the process's page."""

    live: bool
    # The freeze's image: the destination commits once it is transformed, in the same call
    # (its source handed the process over before sending it).
    commit: bool = False
    stale: npt.NDArray[np.int64] = field(
        default_factory=lambda: np.zeros(0, dtype=np.int64))  # sorted virtual page numbers


@dataclass(frozen=True)
class ProcessImage:
    """Everything the destination needs, with page contents as transport handles."""

    pid: int
    program: Program
    registers: CpuState
    kernel: KernelState
    text_areas: tuple[AreaImage, ...]
    other_areas: tuple[AreaImage, ...]
    text_blocks: tuple[Any, ...]  # transport handles of (n, 4096) uint8 blocks
    data_blocks: tuple[Any, ...]
    program_image: Any = None  # with resources=all: a handle of the program file's bytes
    # Content-addressed text: the text areas' digest (`text_digest`), and whether the
    # destination said it holds that text, so no text page travels (`text_blocks` empty):
    # it maps the frames it already has read-only into the process.
    text_digest: str = ""
    text_shared: bool = False
    # Pre-copy (`migration.precopy`); None for stop-and-copy.
    precopy: PrecopyPart | None = None
    # Its threads, the first one included, when it has more than one (empty otherwise).
    threads: tuple[ThreadImage, ...] = ()

    @property
    def text_pages_sent(self) -> int:
        """Text pages whose contents travel (none when reloaded from the plate or shared)."""
        return sum(len(a.present) for a in self.text_areas) if self.text_blocks else 0

    @property
    def handles(self) -> tuple[Any, ...]:
        """Every transport handle the image holds (to discard once it has been read)."""
        extra = () if self.program_image is None else (self.program_image,)
        return (*self.text_blocks, *self.data_blocks, *extra)

    @property
    def pages_sent(self) -> int:
        """Pages whose contents travel (text pages do not when the text is reloaded)."""
        return self.text_pages_sent + sum(len(a.present) for a in self.other_areas)

    @property
    def pages(self) -> int:
        return sum(len(a.present) for a in (*self.text_areas, *self.other_areas))


def text_digest(program_digest: str, areas: Sequence[AreaImage],
                frames: npt.NDArray[np.uint8]) -> str:
    """The digest that names a process's text: its program, where each text area lies with
    its permissions and present pages, and the contents of those pages (`frames`, the pages
    in area order). Two processes with equal digests map byte-identical text at the same
    addresses, whatever happened to it since it was loaded."""
    h = hashlib.blake2b(digest_size=20)
    h.update(program_digest.encode())
    for a in areas:  # in address order on both sides
        h.update(f"|{a.start:x},{a.npages},{a.perms},{len(a.present)}".encode())
        h.update(np.asarray(a.present, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(frames).data)
    return h.hexdigest()
