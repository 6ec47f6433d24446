"""The source machine's side of a migration: freezing a process, exporting its image, deleting
it once it lives elsewhere, and the same-machine move between virtual spaces.

`MigrationSource` is a part of `Machine` (mixed in): it works on the machine state declared
below, which `Machine.__init__` sets, under the machine's lock (`scheduler.lock`).
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from tender_ray.config import MachineConfig
from tender_ray.errors import MigrationError, ProcessStateError
from tender_ray.kernel import address_space as vm
from tender_ray.kernel import signals
from tender_ray.kernel.scheduler import Scheduler
from tender_ray.kernel.syscalls import SystemCalls
from tender_ray.migration.faults import FaultPlan
from tender_ray.migration.image import (
    BLOCK_PAGES,
    AreaImage,
    KernelState,
    ProcessImage,
    text_digest,
)
from tender_ray.migration.options import MigrationOptions, Resources
from tender_ray.migration.record import MigrationRecord, log_migration
from tender_ray.migration.transports import Transport, block_pages, put_blocks
from tender_ray.resources.manager import ResourceManager
from tender_ray.resources.open_file import FilesImage
from tender_ray.resources.plate import Plate
from tender_ray.resources.process import Process, RunState
from tender_ray.resources.real_memory import RealMemory
from tender_ray.resources.virtual_region import NOT_PRESENT, RegionKind
from tender_ray.resources.virtual_space import VirtualSpace
from tender_ray.resources.virtual_user_space import PROT_WRITE


def _joined(parts: list[npt.NDArray[np.int64]]) -> npt.NDArray[np.int64]:
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


class MigrationSource:
    """The calls a migration makes of the machine it leaves (`migration.protocol.Source`)."""

    # The machine's state this side works on (set by `Machine.__init__`).
    name: str
    config: MachineConfig
    memory: RealMemory
    plate: Plate
    managers: vm.Managers
    processes: ResourceManager[Process]
    kernel_space: VirtualSpace
    scheduler: Scheduler
    syscalls: SystemCalls
    migration_totals: Counter[str]  # lock; "out_ok", "in_ok", "out_failed"...
    migration_bytes: int  # lock; bytes of processes that left
    migration_phase_seconds: dict[str, float]  # lock; summed over the migrations driven here
    migration_records: deque[MigrationRecord]  # lock; the last ones driven here
    faults: FaultPlan  # where to fail on purpose (drills and tests)
    # Frozen processes whose commit has gone out, by pid: the migration's id. Only that
    # migration's outcome may thaw (not committed) or delete (committed) them; lock.
    handed_over: dict[int, str]

    def freeze(self, pid: int, timeout: float = 30.0) -> int:
        """Stop a process at an instruction boundary for a migration; its resident pages.

        Only one migration may own a process: a second request gets ProcessStateError.
        """
        with self.scheduler.lock:
            self.scheduler.check_running()
            p = self.scheduler.get(pid)
            self.scheduler.freeze(p, timeout)
            assert p.space is not None
            return p.space.resident_pages()

    def thaw(self, pid: int, mid: str = "") -> None:
        """Resume a frozen process where it was (a migration failed or was refused). One
        handed over to a destination thaws only for its own migration `mid`, which knows
        the destination did not commit it."""
        with self.scheduler.lock:
            owner = self.handed_over.get(pid)
            if owner is not None and owner != mid:
                raise ProcessStateError(
                    f"process {pid} is handed over by migration {owner}: only that "
                    "migration's outcome may resume it here")
            self.handed_over.pop(pid, None)
            self.scheduler.thaw(self.scheduler.get(pid))

    def hand_over(self, pid: int, mid: str) -> None:
        """Mark the frozen process as handed over by migration `mid`, before its commit goes
        out: from now on nothing but that migration's outcome resumes or deletes it."""
        with self.scheduler.lock:
            p = self.scheduler.get(pid)
            if p.state is not RunState.FROZEN:
                raise ProcessStateError(f"process {pid} is not frozen; it cannot be handed "
                                        "over")
            self.handed_over[pid] = mid

    def fault_point(self, phase: str) -> None:
        """Fire this machine's source-side fault if it is armed at `phase` (drills)."""
        self.faults.check(phase, side="source")

    def migration_lease(self) -> float:
        """Seconds a destination keeps a migration driven from here without a call: this
        machine's own lease setting (a cluster's machines share one), which paces the
        renewals during a long export."""
        return self.config.migration_lease_s

    def program_size(self, pid: int) -> int:
        with self.scheduler.lock:
            program = self.scheduler.get(pid).program
            return program.size if program is not None else 0

    def export_image(self, pid: int, transport: Transport, options: MigrationOptions,
                     text_held: Callable[[str, str], bool] | None = None) -> ProcessImage:
        """The frozen process as a ProcessImage, its touched pages put into `transport`.

        `text_held(program digest, text digest)` asks the destination whether it already
        holds this text (another process of the program runs there): then no text page is
        put, and the destination maps the frames it has. Text that may be written (an area
        with write permission) is never offered for sharing."""
        with self.scheduler.lock:
            p = self.scheduler.get(pid)
            if p.state is not RunState.FROZEN:
                raise ProcessStateError(f"process {pid} is not frozen")
            assert p.space is not None and p.program is not None
            registers = p.context.save()
            fixed = {id(us): key for key, us in p.user_spaces.items()}
            text: list[AreaImage] = []
            other: list[AreaImage] = []
            text_parts: list[npt.NDArray[np.int64]] = []
            other_parts: list[npt.NDArray[np.int64]] = []
            for us in p.space.user_spaces:
                region = us.region
                assert region is not None
                frames = region.frame_array()
                present = np.flatnonzero(frames != NOT_PRESENT)
                area = AreaImage(fixed.get(id(us), ""), region.kind, us.start, region.npages,
                                 us.perms, tuple(present.tolist()))
                if region.kind is RegionKind.TEXT:
                    text.append(area)
                    text_parts.append(frames[present])
                else:
                    other.append(area)
                    other_parts.append(frames[present])
            kernel = KernelState(
                name=p.name, brk_start=p.brk_start, brk=p.brk, mmap_top=p.mmap_top,
                tid_address=p.tid_address, sleep_left=p.sleep_left, stdout=bytes(p.stdout),
                stderr=bytes(p.stderr), stdout_taken=p.stdout_taken,
                stderr_taken=p.stderr_taken, accounting=p.accounting, created_at=p.created_at,
                migrations=tuple(p.migrations), files=FilesImage.of(p.files, p.view),
                cpu_features=p.cpu_features, signals=signals.of(p).for_image(),
                output_commit=p.output_commit, write_tracked=p.space.dirty is not None)
            program = p.program
            plate_name = p.plate_name
            memory = self.memory
        if options.resources is Resources.ALL and not plate_name:
            raise MigrationError(
                f"process {pid} arrived on {self.name} without its program image "
                "(resources=needed), so it cannot move with resources=all from here")
        # Page copies happen outside the lock: the process is frozen, nothing changes them.
        # Runs of frames go as views of real memory (the transport's put is their one copy);
        # a transport that puts many blocks at once takes many small views as well.
        with_text = options.resources is Resources.NEEDED
        digest, shared = "", False
        text_frames = _joined(text_parts)
        if with_text and text_held is not None and text and text_frames.size and not any(
                a.perms & PROT_WRITE for a in text):
            # Hashing the text (a few MiB at most) costs far less than sending it.
            digest = text_digest(program.digest, text, memory.frames[text_frames])
            shared = text_held(program.digest, digest)
            with_text = not shared
        rows = block_pages(transport, BLOCK_PAGES)
        views = 4096 if hasattr(transport, "put_many") else 64
        text_list = memory.gather(text_frames, rows, views) if with_text else []
        data_list = memory.gather(_joined(other_parts), rows, views)
        handles = put_blocks(transport, [*text_list, *data_list])
        text_blocks, data_blocks = handles[:len(text_list)], handles[len(text_list):]
        program_image = None
        if options.resources is Resources.ALL:
            raw = np.frombuffer(self.plate.read(plate_name), dtype=np.uint8)
            program_image = transport.put(raw.reshape(1, -1))
        return ProcessImage(pid=pid, program=program, registers=registers, kernel=kernel,
                            text_areas=tuple(text), other_areas=tuple(other),
                            text_blocks=text_blocks, data_blocks=data_blocks,
                            program_image=program_image, text_digest=digest,
                            text_shared=shared)

    def delete_migrated(self, pid: int, moved_bytes: int, reuse: bool) -> None:
        """Step 3: delete the local copy of a process that now lives elsewhere (`moved_bytes`
        went with it), holding its resources for reuse."""
        with self.scheduler.lock:
            p = self.scheduler.get(pid)
            self.scheduler.remove(p)
            self.handed_over.pop(pid, None)
            self.migration_bytes += moved_bytes
        vm.release_address_space(self.managers, p, hold=reuse)
        p.space = self.kernel_space
        self.processes.release(p, hold=reuse)
        self.scheduler.changed()

    def note_migration(self, record: MigrationRecord) -> None:
        with self.scheduler.lock:
            self.migration_totals[f"out_{record.result}"] += 1
            for phase, seconds in record.phases.items():
                self.migration_phase_seconds[phase] = (
                    self.migration_phase_seconds.get(phase, 0.0) + seconds)
            self.migration_records.append(record)
        log_migration(record)  # one log line per phase

    def recent_migrations(self) -> list[MigrationRecord]:
        """The records of the last migrations this machine drove, oldest first
        (what the metrics exporter and `tender-ray top` read)."""
        with self.scheduler.lock:
            return list(self.migration_records)

    def migrate_space(self, pid: int) -> MigrationRecord:
        """Same-machine migration (hetero virtual memory): re-paste every user space into a
        new virtual space. No page is copied."""
        started_at = time.time()
        start = time.perf_counter()
        self.freeze(pid)
        try:
            with self.scheduler.lock:
                p = self.scheduler.get(pid)
                old = p.space
                assert old is not None
                new = self.managers.spaces.acquire()
                dirty, old.dirty = old.dirty, None  # the same pages: tracked writes carry on
                for us in list(old.user_spaces):
                    old.unpaste(us)
                    new.paste(us)
                new.dirty = dirty
                p.space = new
                old.clear()
                self.managers.spaces.release(old)
                p.registers = p.context.save()
                self.syscalls.attach(p)
        finally:
            self.thaw(pid)
        seconds = time.perf_counter() - start
        record = MigrationRecord(pid=pid, source=self.name, destination=self.name,
                                 transfer="space", reuse=self.config.reuse,
                                 resources="needed", started_at=started_at, seconds=seconds,
                                 phases={"transform_space": seconds})
        with self.scheduler.lock:
            self.migration_totals["local_ok"] += 1
            self.scheduler.get(pid).migrations.append(record)
        return record
