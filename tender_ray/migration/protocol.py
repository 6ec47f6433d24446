"""The migration protocol, the paper's three steps driven by the source machine.

1. *create*: the destination makes a kernel process (from its pool when reuse is on);
2. *transform*: (I) give it the destination virtual space, (II) create the text regions and
   copy the text memory-to-memory through DSM, create the other regions, (III) copy data, BSS,
   heap, stack and mappings through DSM and set the registers;
3. *delete*: the source deletes its process, holding the resources for reuse.

Until the destination confirms (commit), the source keeps everything; any failure releases what
the destination made and resumes the process where it was. Only pages that were ever touched
travel, batched into page blocks. `run_migration` knows the two machines only as the `Source`
and `Peer` protocols, which the kernel's machine and the Ray layer's handles implement.
"""

from __future__ import annotations

import contextlib
import time
from typing import Protocol

from tender_ray.errors import MachineError, MigrationError, TenderError
from tender_ray.migration.image import ProcessImage
from tender_ray.migration.options import MigrationOptions, Resources
from tender_ray.migration.record import MigrationRecord
from tender_ray.migration.transports import LocalTransport, Transport
from tender_ray.resources.real_memory import PAGE_SIZE


class Source(Protocol):
    """The source machine's side of a migration (the kernel's `Machine`)."""

    @property
    def name(self) -> str: ...

    def freeze(self, pid: int, timeout: float = 30.0) -> int: ...
    def thaw(self, pid: int) -> None: ...
    def program_size(self, pid: int) -> int: ...
    def export_image(self, pid: int, transport: Transport,
                     options: MigrationOptions) -> ProcessImage: ...
    def delete_migrated(self, pid: int, moved_bytes: int, reuse: bool) -> None: ...
    def note_migration(self, record: MigrationRecord) -> None: ...


class Destination(Protocol):
    """The destination machine's side of a migration, as a machine in this process offers it
    (the kernel's `Machine`); `Peer` is the same reached from the source."""

    @property
    def name(self) -> str: ...

    def create_incoming(self, pid: int, frames: int, reuse: bool) -> float: ...
    def transform(self, image: ProcessImage, transport: Transport,
                  options: MigrationOptions) -> dict[str, float]: ...
    def commit(self, pid: int) -> None: ...
    def abort(self, pid: int) -> None: ...
    def record_migration(self, pid: int, record: MigrationRecord) -> None: ...


class Peer(Protocol):
    """The destination machine's migration calls (an actor handle or a local Machine)."""

    name: str

    def create(self, pid: int, frames: int, reuse: bool) -> float: ...
    def transform(self, image: ProcessImage, options: MigrationOptions) -> dict[str, float]: ...
    def commit(self, pid: int) -> None: ...
    def abort(self, pid: int) -> None: ...


def run_migration(source: Source, pid: int, peer: Peer, transport: Transport,
                  options: MigrationOptions) -> MigrationRecord:
    """Migrate process `pid` of machine `source` to `peer`; the record of what happened.

    On any failure before the destination commits, the process resumes on the source and the
    error is raised (MigrationError for a refused request, MachineError for a broken peer).
    """
    started_at = time.time()
    if peer.name == source.name:
        raise MigrationError(f"process {pid} is already on machine {source.name}; a move "
                             "inside one machine is a virtual-space migration (local=True)")

    def finished(seconds: float, result: str = "ok", error: str = "") -> MigrationRecord:
        return MigrationRecord(
            pid=pid, source=source.name, destination=peer.name,
            transfer=options.transfer.value, reuse=options.reuse,
            resources=options.resources.value, seconds=seconds, bytes=nbytes, pages=pages,
            phases=phases, phase_starts=starts, result=result, error=error,
            started_at=started_at)

    phases: dict[str, float] = {}
    starts: dict[str, float] = {}  # seconds after `start`, as each phase begins
    nbytes = pages = 0
    start = time.perf_counter()
    starts["freeze"] = 0.0
    frames = source.freeze(pid)
    phases["freeze"] = time.perf_counter() - start
    image: ProcessImage | None = None
    created = committed = False
    try:
        t = time.perf_counter()
        try:
            phases["create"] = peer.create(pid, frames, options.reuse)
        except MachineError:
            created = True  # it may have made the kernel process before breaking: abort
            raise
        created = True
        phases["create_call"] = time.perf_counter() - t - phases["create"]
        # The destination's create runs inside the call; where in it the source cannot see,
        # so it is placed at the call's start and the call's round trip after it.
        starts["create"] = t - start
        starts["create_call"] = t - start + phases["create"]
        t = time.perf_counter()
        starts["export"] = t - start
        image = source.export_image(pid, transport, options)
        phases["export"] = time.perf_counter() - t
        pages = image.pages_sent
        nbytes = image.pages_sent * PAGE_SIZE + (
            source.program_size(pid) if options.resources is Resources.ALL else 0)
        t = time.perf_counter()
        transformed = peer.transform(image, options)
        phases.update(transformed)
        # What the transform call cost beyond the destination's own work: the round trip.
        phases["transform_call"] = time.perf_counter() - t - sum(transformed.values())
        # Transform I-III run on the destination inside the call, one after another: each
        # starts at the call's start plus the destination phases before it (in the order the
        # destination reports them, I, II, III); the round trip follows them.
        offset = t - start
        for name, seconds in transformed.items():
            starts[name] = offset
            offset += seconds
        starts["transform_call"] = offset
        t = time.perf_counter()
        starts["commit"] = t - start
        peer.commit(pid)
        phases["commit"] = time.perf_counter() - t
        committed = True
    except BaseException as exc:
        if not committed:
            if created:  # a refused create made nothing: another migration's may be there
                with contextlib.suppress(TenderError, OSError):
                    peer.abort(pid)  # a dead peer has nothing left to release
            source.thaw(pid)
        if image is not None:
            transport.discard(image.handles)
        source.note_migration(finished(time.perf_counter() - start, "failed", str(exc)))
        raise
    t = time.perf_counter()
    starts["delete"] = t - start
    source.delete_migrated(pid, nbytes, options.reuse)
    phases["delete"] = time.perf_counter() - t
    record = finished(time.perf_counter() - start)
    transport.discard(image.handles)
    source.note_migration(record)
    return record


class LocalPeer:
    """A destination machine in the same process: migrations without Ray (tests, tools)."""

    def __init__(self, machine: Destination, transport: Transport) -> None:
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


def migrate_local(source: Source, pid: int, destination: Destination,
                  options: MigrationOptions | None = None,
                  transport: Transport | None = None) -> MigrationRecord:
    """Migrate between two machines of this process; the record, also kept by the process."""
    options = options or MigrationOptions()
    if transport is None:
        transport = LocalTransport()
    record = run_migration(source, pid, LocalPeer(destination, transport), transport, options)
    destination.record_migration(pid, record)
    return record
