"""Process migration, the paper's three steps, driven by the source machine.

1. *create*: the destination makes a kernel process (from its pool when reuse is on);
2. *transform*: (I) give it the destination virtual space, (II) create the text regions and
   copy the text memory-to-memory through DSM, create the other regions, (III) copy data, BSS,
   heap, stack and mappings through DSM and set the registers;
3. *delete*: the source deletes its process, holding the resources for reuse.

Until the destination confirms (commit), the source keeps everything; any failure releases what
the destination made and resumes the process where it was. Only pages that were ever touched
travel, batched into page blocks. The transport is pluggable: the object store (DSM) or files
on a shared plate (the NFS-like path the paper compares against).
"""

from __future__ import annotations

import contextlib
import enum
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from .cpu import CpuState
from .errors import MachineError, MigrationError, TenderError
from .resources.process import Accounting
from .resources.program import Program
from .resources.real_memory import PAGE_SIZE
from .resources.virtual_region import RegionKind

PHASES = ("create", "transform_space", "transform_program", "transform_start", "delete")
# Also timed, around the paper's phases: stopping the process, putting its pages into the
# transport, the round trips of the create and transform calls (the phases themselves are the
# destination's own work), and the destination's confirmation.
EXTRA_PHASES = ("freeze", "create_call", "export", "transform_call", "commit")
BLOCK_PAGES = 8192  # 32 MiB per page block: few objects, bounded memory spikes


class Transfer(str, enum.Enum):
    DSM = "dsm"  # page blocks through the object store, memory to memory
    PLATE = "plate"  # page blocks as files on a shared plate directory


class Resources(str, enum.Enum):
    NEEDED = "needed"  # move only what must move: text pages from memory, not program/plate
    ALL = "all"  # move the program image and plate contents too; reload text from the plate


@dataclass(frozen=True)
class MigrationOptions:
    transfer: Transfer = Transfer.DSM
    reuse: bool = True
    resources: Resources = Resources.NEEDED
    timeout: float = 120.0  # seconds for the whole transform call


# --- the process image that travels -----------------------------------------------------

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
    migrations: tuple[dict[str, Any], ...]


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

    @property
    def handles(self) -> tuple[Any, ...]:
        """Every transport handle the image holds (to discard once it has been read)."""
        extra = () if self.program_image is None else (self.program_image,)
        return (*self.text_blocks, *self.data_blocks, *extra)

    @property
    def pages_sent(self) -> int:
        """Pages whose contents travel (text pages do not when the text is reloaded)."""
        text = sum(len(a.present) for a in self.text_areas) if self.text_blocks else 0
        return text + sum(len(a.present) for a in self.other_areas)

    @property
    def pages(self) -> int:
        return sum(len(a.present) for a in (*self.text_areas, *self.other_areas))


@dataclass
class MigrationRecord:
    """What one migration did, as `--stats` and reports list it."""

    pid: int
    source: str
    destination: str
    transfer: str
    reuse: bool
    resources: str
    seconds: float = 0.0
    bytes: int = 0
    pages: int = 0
    phases: dict[str, float] = field(default_factory=dict)
    result: str = "ok"
    error: str = ""
    started_at: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"pid": self.pid, "from": self.source, "to": self.destination,
                "seconds": self.seconds, "bytes": self.bytes, "pages": self.pages,
                "phases": dict(self.phases), "transfer": self.transfer, "reuse": self.reuse,
                "resources": self.resources, "result": self.result, "error": self.error,
                "started_at": self.started_at}


def log_migration(record: MigrationRecord) -> None:
    """[metrics #5] Log a finished migration, one line per phase (pid, source, destination,
    phase, seconds, transfer), then one line for the whole of it."""
    from . import logs

    log = logs.get("migration").bind(
        migration=f"{record.source}:{record.pid}:{record.started_at:.6f}", pid=record.pid,
        source=record.source, destination=record.destination, transfer=record.transfer,
        reuse=record.reuse, resources=record.resources)
    for phase, seconds in record.phases.items():
        log.info("migration phase", phase=phase, seconds=round(seconds, 6))
    done = log.info if record.result == "ok" else log.warning
    done("migration " + record.result, seconds=round(record.seconds, 6), bytes=record.bytes,
         pages=record.pages, **({"error": record.error} if record.error else {}))


# --- transports --------------------------------------------------------------------------

class Transport(Protocol):
    """Moves page blocks between machines."""

    def put(self, block: npt.NDArray[np.uint8]) -> Any: ...
    def get(self, handle: Any) -> npt.NDArray[np.uint8]: ...
    def discard(self, handles: tuple[Any, ...]) -> None: ...


class LocalTransport:
    """Blocks passed by reference: for machines in one process (tests, the same-host case)."""

    def put(self, block: npt.NDArray[np.uint8]) -> Any:
        return block

    def get(self, handle: Any) -> npt.NDArray[np.uint8]:
        return handle

    def discard(self, handles: tuple[Any, ...]) -> None:
        pass


class PlateTransport:
    """Blocks as files on a plate directory every machine can reach (NFS-like sharing)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def put(self, block: npt.NDArray[np.uint8]) -> Any:
        path = self.directory / f"block-{uuid.uuid4().hex}.pages"
        with open(path, "wb") as f:
            f.write(np.ascontiguousarray(block).data)
            f.flush()
            os.fsync(f.fileno())  # written through, as a file server would have it
        return (str(path), block.shape[0])

    def get(self, handle: Any) -> npt.NDArray[np.uint8]:
        path, rows = handle
        data = np.fromfile(path, dtype=np.uint8)
        return data.reshape(rows, -1) if rows else data

    def discard(self, handles: tuple[Any, ...]) -> None:
        for handle in handles:
            if isinstance(handle, tuple):
                Path(handle[0]).unlink(missing_ok=True)


# --- the destination, as the source sees it -------------------------------------------------

class Peer(Protocol):
    """The destination machine's migration calls (an actor handle or a local Machine)."""

    name: str

    def create(self, pid: int, frames: int, reuse: bool) -> float: ...
    def transform(self, image: ProcessImage, options: MigrationOptions) -> dict[str, float]: ...
    def commit(self, pid: int) -> None: ...
    def abort(self, pid: int) -> None: ...


class FaultInjected(MachineError):
    """A machine was told to fail at a phase (fault-injection for tests and drills)."""


@dataclass
class FaultPlan:
    """Where a machine should die during an incoming migration (testing the rollback)."""

    phase: str = ""
    action: Callable[[], None] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def check(self, phase: str) -> None:
        with self.lock:
            if self.phase != phase:
                return
            self.phase = ""
            action = self.action
        if action is not None:
            action()
        raise FaultInjected(f"fault injected at phase {phase}")


def run_migration(source: Any, pid: int, peer: Peer, transport: Transport,
                  options: MigrationOptions) -> MigrationRecord:
    """Migrate process `pid` of machine `source` to `peer`; the record of what happened.

    On any failure before the destination commits, the process resumes on the source and the
    error is raised (MigrationError for a refused request, MachineError for a broken peer).
    """
    record = MigrationRecord(pid=pid, source=source.name, destination=peer.name,
                             transfer=options.transfer.value, reuse=options.reuse,
                             resources=options.resources.value, started_at=time.time())
    if peer.name == source.name:
        raise MigrationError(f"process {pid} is already on machine {source.name}; a move "
                             "inside one machine is a virtual-space migration (local=True)")
    start = time.perf_counter()
    frames = source.freeze(pid)
    record.phases["freeze"] = time.perf_counter() - start
    image: ProcessImage | None = None
    created = committed = False
    try:
        t = time.perf_counter()
        try:
            record.phases["create"] = peer.create(pid, frames, options.reuse)
        except MachineError:
            created = True  # it may have made the kernel process before breaking: abort
            raise
        created = True
        record.phases["create_call"] = time.perf_counter() - t - record.phases["create"]
        t = time.perf_counter()
        image = source.export_image(pid, transport, options)
        record.phases["export"] = time.perf_counter() - t
        record.pages = image.pages_sent
        record.bytes = image.pages_sent * PAGE_SIZE + (
            source.program_size(pid) if options.resources is Resources.ALL else 0)
        t = time.perf_counter()
        phases = peer.transform(image, options)
        record.phases.update(phases)
        # What the transform call cost beyond the destination's own work: the round trip.
        record.phases["transform_call"] = time.perf_counter() - t - sum(phases.values())
        t = time.perf_counter()
        peer.commit(pid)
        record.phases["commit"] = time.perf_counter() - t
        committed = True
    except BaseException as exc:
        if not committed:
            if created:  # a refused create made nothing: another migration's may be there
                with contextlib.suppress(TenderError, OSError):
                    peer.abort(pid)  # a dead peer has nothing left to release
            source.thaw(pid)
        if image is not None:
            transport.discard(image.handles)
        record.result = "failed"
        record.error = str(exc)
        record.seconds = time.perf_counter() - start
        source.note_migration(record)
        raise
    t = time.perf_counter()
    source.delete_migrated(pid, record, options.reuse)
    record.phases["delete"] = time.perf_counter() - t
    record.seconds = time.perf_counter() - start
    transport.discard(image.handles)
    source.note_migration(record)
    return record


class LocalPeer:
    """A destination Machine in the same process: migrations without Ray (tests, tools)."""

    def __init__(self, machine: Any, transport: Transport) -> None:
        self.machine = machine
        self.name: str = machine.name
        self.transport = transport

    def create(self, pid: int, frames: int, reuse: bool) -> float:
        return float(self.machine.create_incoming(pid, frames, reuse))

    def transform(self, image: ProcessImage, options: MigrationOptions) -> dict[str, float]:
        return self.machine.transform(image, self.transport, options)

    def commit(self, pid: int) -> None:
        self.machine.commit(pid)

    def abort(self, pid: int) -> None:
        self.machine.abort(pid)


def migrate_local(source: Any, pid: int, destination: Any,
                  options: MigrationOptions | None = None,
                  transport: Transport | None = None) -> MigrationRecord:
    """Migrate between two Machines of this process; the record, also kept by the process."""
    options = options or MigrationOptions()
    if transport is None:
        transport = LocalTransport()
    record = run_migration(source, pid, LocalPeer(destination, transport), transport, options)
    destination.record_migration(pid, record.as_dict())
    return record
