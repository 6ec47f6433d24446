"""The source machine's side of a migration: freezing a process, exporting its image, deleting
it once it lives elsewhere, and the same-machine move between virtual spaces. For a pre-copy,
also the live rounds: its pages put into the transport while it runs, with its writes tracked
so that each round knows which pages changed since the one before.

`MigrationSource` is a part of `Machine` (mixed in): it works on the machine state declared
below, which `Machine.__init__` sets, under the machine's lock (`scheduler.lock`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from tender_ray.abi.cpu_state import CpuState
from tender_ray.config import MachineConfig
from tender_ray.errors import MigrationError, ProcessStateError, TenderError
from tender_ray.kernel import address_space as vm
from tender_ray.kernel import process_tree, signals
from tender_ray.kernel.scheduler import Scheduler
from tender_ray.kernel.syscalls import SystemCalls
from tender_ray.kernel.tracking import WriteTracking
from tender_ray.migration.faults import FaultPlan
from tender_ray.migration.image import (
    BLOCK_PAGES,
    AreaImage,
    KernelState,
    PrecopyPart,
    ProcessImage,
    ThreadImage,
    text_digest,
)
from tender_ray.migration.options import MigrationOptions, Resources
from tender_ray.migration.precopy import FreezeSet, PrecopyFacts
from tender_ray.migration.record import MigrationRecord, log_migration
from tender_ray.migration.transports import Transport, block_pages, put_blocks
from tender_ray.resources.dirty_pages import WrittenPages
from tender_ray.resources.manager import ResourceManager
from tender_ray.resources.open_file import FilesImage
from tender_ray.resources.plate import Plate
from tender_ray.resources.process import Process, RunState, ThreadEntry
from tender_ray.resources.program import Program
from tender_ray.resources.real_memory import PAGE_SHIFT, RealMemory
from tender_ray.resources.thread import FUTEX_BITSET_MATCH_ANY
from tender_ray.resources.virtual_region import NOT_PRESENT, RegionKind, VirtualRegion
from tender_ray.resources.virtual_space import VirtualSpace
from tender_ray.resources.virtual_user_space import PROT_WRITE


def thread_images(p: Process) -> tuple[ThreadImage, ...]:
    """The threads of frozen process `p` as they travel, its first one included; empty for
    a process with one thread (lock held). A thread waiting in a futex travels with its
    place there (the destination queues it again on the same word, woken or not)."""
    if not p.members:
        return ()
    images = []
    for entry in (p, *p.members.values()):
        member = isinstance(entry, ThreadEntry)
        tid = entry.tid if isinstance(entry, ThreadEntry) else p.pid
        thread = p.threads.get(tid)
        wait = thread.futex if thread is not None else None
        images.append(ThreadImage(
            tid=tid, registers=entry.context.save() if member else None,
            clear_child_tid=thread.clear_child_tid if thread is not None else 0,
            sleep_left=entry.sleep_left if member else None,
            accounting=entry.accounting if member else None,
            futex_at=None if wait is None else wait.key.offset,
            futex_bitset=FUTEX_BITSET_MATCH_ANY if wait is None else wait.bitset,
            futex_woken=wait is not None and wait.woken,
            futex_call=0 if wait is None else wait.call))
    return tuple(images)


def _joined(parts: list[npt.NDArray[np.int64]]) -> npt.NDArray[np.int64]:
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _kernel_state(p: Process) -> KernelState:
    """Process `p`'s kernel-side state as it travels (lock held)."""
    assert p.space is not None
    return KernelState(
        name=p.name, brk_start=p.brk_start, brk=p.brk, mmap_top=p.mmap_top,
        tid_address=p.tid_address, sleep_left=p.sleep_left, stdout=bytes(p.stdout),
        stderr=bytes(p.stderr), stdout_taken=p.stdout_taken,
        stderr_taken=p.stderr_taken, accounting=p.accounting, created_at=p.created_at,
        migrations=tuple(p.migrations), files=FilesImage.of(p.files, p.view),
        cpu_features=p.cpu_features, signals=signals.of(p).for_image(),
        output_commit=p.output_commit, write_tracked=p.space.dirty is not None)


def _text_identity(program: Program, text: list[AreaImage], frames: npt.NDArray[np.int64],
                   memory: RealMemory) -> str:
    """The digest of text that may be shared (`migration.image.text_digest`), or "" for none
    or text that may be written."""
    if not text or not frames.size or any(a.perms & PROT_WRITE for a in text):
        return ""
    # Hashing the text (a few MiB at most) costs far less than sending it.
    return text_digest(program.digest, text, memory.frames[frames])


def _present_of(region: VirtualRegion, vpns: npt.NDArray[np.int64], base: int
                ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Which of the sorted pages `vpns` the region at page `base` holds: their indexes in it
    and their frames. A few are looked up one by one; a large share by one pass over the
    region's frame list."""
    lo, hi = np.searchsorted(vpns, (base, base + region.npages))
    indexes = vpns[lo:hi] - base
    if indexes.size * 8 > region.npages:
        frames = region.frame_array()[indexes]
    else:
        listed = region.frames
        frames = np.fromiter((listed[i] for i in indexes.tolist()), dtype=np.int64,
                             count=indexes.size)
    held = frames != NOT_PRESENT
    return indexes[held], frames[held]


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
    engine: str  # the engine its processes run on
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
            process_tree.check_movable(self.scheduler.table, p)  # a tree's member stays
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
                     text_held: Callable[[str, str], bool] | None = None,
                     patch: FreezeSet | None = None) -> ProcessImage:
        """The frozen process as a ProcessImage, its touched pages put into `transport`.

        `text_held(program digest, text digest)` asks the destination whether it already
        holds this text (another process of the program runs there): then no text page is
        put, and the destination maps the frames it has. Text that may be written (an area
        with write permission) is never offered for sharing. `patch`: the freeze of a
        pre-copy, whose destination holds the other areas' pages from the live rounds: only
        the pages of `patch.send` still present are put, looked up one by one rather than
        walking every page (the image patches the space the destination built)."""
        with self.scheduler.lock:
            p = self.scheduler.get(pid)
            if p.state is not RunState.FROZEN:
                raise ProcessStateError(f"process {pid} is not frozen")
            assert p.space is not None and p.program is not None
            registers = p.context.save()
            threads = thread_images(p)
            fixed = {id(us): key for key, us in p.user_spaces.items()}
            text: list[AreaImage] = []
            other: list[AreaImage] = []
            text_parts: list[npt.NDArray[np.int64]] = []
            other_parts: list[npt.NDArray[np.int64]] = []
            sent_parts: list[npt.NDArray[np.int64]] = []
            for us in p.space.user_spaces:
                region = us.region
                assert region is not None
                if patch is not None and region.kind is not RegionKind.TEXT:
                    base = us.start >> PAGE_SHIFT
                    present, frames = _present_of(region, patch.send, base)
                    sent_parts.append(base + present)
                else:
                    frames = region.frame_array()
                    present = np.flatnonzero(frames != NOT_PRESENT)
                    frames = frames[present]
                area = AreaImage(fixed.get(id(us), ""), region.kind, us.start, region.npages,
                                 us.perms, tuple(present.tolist()))
                if region.kind is RegionKind.TEXT:
                    text.append(area)
                    text_parts.append(frames)
                else:
                    other.append(area)
                    other_parts.append(frames)
            kernel = _kernel_state(p)
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
        shared = False
        text_frames = _joined(text_parts)
        digest = _text_identity(program, text, text_frames, memory) if (
            with_text and text_held is not None) else ""
        if digest:
            assert text_held is not None
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
                            text_shared=shared, precopy=None if patch is None else PrecopyPart(
                                # Pages to send that no area holds now are gone as well.
                                False, stale=np.setdiff1d(np.union1d(patch.stale, patch.send),
                                                          _joined(sent_parts))),
                            threads=threads)

    # --- pre-copy: the live rounds ------------------------------------------------------

    def precopy_layout(self, pid: int) -> ProcessImage:
        """The live image of a pre-copy (`PrecopyPart.live`): where the running process's
        other areas lie, for the destination to build its space from the staged pages while
        it runs on, and its text's digest if it may be shared (see `export_image`). Taken
        with the process off its CPU; no page is put."""
        assert isinstance(self, WriteTracking)

        def look(p: Process) -> tuple[ProcessImage, list[AreaImage],
                                      npt.NDArray[np.int64]]:
            assert p.space is not None and p.program is not None
            fixed = {id(us): key for key, us in p.user_spaces.items()}
            areas: list[AreaImage] = []
            text: list[AreaImage] = []
            text_parts: list[npt.NDArray[np.int64]] = []
            for us in p.space.user_spaces:
                region = us.region
                assert region is not None
                if region.kind is RegionKind.TEXT:
                    frames = region.frame_array()
                    present = np.flatnonzero(frames != NOT_PRESENT)
                    text.append(AreaImage("", region.kind, us.start, region.npages, us.perms,
                                          tuple(present.tolist())))
                    text_parts.append(frames[present])
                else:
                    areas.append(AreaImage(fixed.get(id(us), ""), region.kind, us.start,
                                           region.npages, us.perms, ()))
            # Registers and kernel state as they stand; the freeze's image brings the ones
            # it goes on with.
            return ProcessImage(pid=pid, program=p.program,
                                registers=p.registers or CpuState.initial(0, 0),
                                kernel=_kernel_state(p), text_areas=(),
                                other_areas=tuple(areas), text_blocks=(), data_blocks=(),
                                precopy=PrecopyPart(True)), text, _joined(text_parts)

        image, text, frames = self._off_cpu(pid, look, 10.0)
        # The text's digest (read-only text does not change while it runs): the source asks
        # the destination whether it holds it before the freeze rather than during it.
        return dataclasses.replace(
            image, text_digest=_text_identity(image.program, text, frames, self.memory))

    def precopy_facts(self, pid: int) -> PrecopyFacts:
        """What an "auto" migration decides by: the process's resident pages, this machine's
        engine, and the dirty rate its last pre-copy measured (0: none yet)."""
        with self.scheduler.lock:
            p = self.scheduler.get(pid)
            if p.state in (RunState.EXITING, RunState.ZOMBIE) or p.space is None:
                raise ProcessStateError(f"process {pid} has finished ({p.exit_reason})")
            measured = [m for m in p.migrations if m.copy_rate > 0]
            last = measured[-1] if measured else None
            return PrecopyFacts(p.space.resident_pages(), self.engine,
                                last.dirty_rate if last else 0.0,
                                last.copy_rate if last else 0.0)

    def precopy_begin(self, pid: int) -> bool:
        """Track process `pid`'s writes for a pre-copy. False (nothing done) if they are
        tracked already for another purpose, or it has threads: then it moves by
        stop-and-copy. ProcessTreeError for a process of a tree (before any page is sent)."""
        assert isinstance(self, WriteTracking)
        with self.scheduler.lock:
            p = self.scheduler.get(pid)
            process_tree.check_movable(self.scheduler.table, p)
            if p.members:  # (see `_single_threaded`)
                return False
        if self.is_tracked(pid):
            return False
        self.start_tracking(pid)
        return True

    def precopy_round(self, pid: int, transport: Transport, most: int | None,
                      fewest: int = 0) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64],
                                                tuple[Any, ...] | None]:
        """One live round while the process runs: the first (`most` None) puts every present
        page of its non-text areas, a later one those written since the round before, if
        there are more than `fewest` and at most `most` of them. Returns the pages gone
        meanwhile, the pages written (virtual page numbers, in block order) and their
        blocks' handles, None when they were not put.

        The written set is taken and the pages' frames looked up in one step with the
        process off its CPU; the copy then runs while it goes on. A page written during the
        copy is in the next round's set (its copy here may be torn, and is sent again), as is
        one whose frame changed hands (it is gone, or written, by the next take)."""
        assert isinstance(self, WriteTracking)
        first = most is None

        def look(p: Process) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64],
                                      npt.NDArray[np.int64]]:
            assert p.space is not None and p.space.dirty is not None
            _single_threaded(p)
            taken = None if first else p.space.dirty.take()
            vpn_parts: list[npt.NDArray[np.int64]] = []
            frame_parts: list[npt.NDArray[np.int64]] = []
            for us in p.space.user_spaces:
                region = us.region
                if region is None or region.kind is RegionKind.TEXT:
                    continue
                frames = region.frame_array()
                present = np.flatnonzero(frames != NOT_PRESENT)
                vpns = (us.start >> PAGE_SHIFT) + present
                if taken is not None:
                    keep = np.isin(vpns, taken.pages, assume_unique=True)
                    vpns, present = vpns[keep], present[keep]
                vpn_parts.append(vpns)
                frame_parts.append(frames[present])
            gone = np.zeros(0, dtype=np.int64) if taken is None else taken.dropped
            if taken is not None:  # written pages no longer present are gone as well
                gone = np.union1d(gone, np.setdiff1d(taken.pages, _joined(vpn_parts)))
            return gone, _joined(vpn_parts), _joined(frame_parts)

        gone, vpns, frames = self._off_cpu(pid, look, 10.0)
        if most is not None and not fewest < vpns.size <= most:
            return gone, vpns, None
        rows = block_pages(transport, BLOCK_PAGES)
        views = 4096 if hasattr(transport, "put_many") else 64
        handles = put_blocks(transport, self.memory.gather(frames, rows, views))
        return gone, vpns, handles

    def precopy_end(self, pid: int) -> WrittenPages:
        """The frozen process's writes since the last live round, and its tracking ends
        (it arrives untracked: the tracking was the pre-copy's)."""
        assert isinstance(self, WriteTracking)
        with self.scheduler.lock:
            _single_threaded(self.scheduler.get(pid))
        written = self.take_written(pid)
        self.stop_tracking(pid)
        return written

    def precopy_cancel(self, pid: int) -> None:
        """A pre-copy that did not finish: stop tracking the process's writes (nothing if it
        has ended, or no longer is tracked)."""
        assert isinstance(self, WriteTracking)
        with contextlib.suppress(TenderError, KeyError):
            self.stop_tracking(pid)

    def delete_migrated(self, pid: int, moved_bytes: int, reuse: bool) -> None:
        """Step 3: delete the local copy of a process that now lives elsewhere (`moved_bytes`
        went with it), holding its resources for reuse."""
        with self.scheduler.lock:
            p = self.scheduler.get(pid)
            self.scheduler.remove(p)
            self.handed_over.pop(pid, None)
            self.migration_bytes += moved_bytes
            for thread in p.threads.values():  # their waits are issued again there
                self.syscalls.futexes.cancel(thread)
            for t in p.members.values():  # its threads went with it: their contexts go
                if t.cpu is not None:
                    t.cpu.close()
                    t.cpu = None
            p.members.clear()
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
                for t in p.members.values():  # its threads share the new space
                    t.registers = t.context.save()
                    self.syscalls.attach(t)
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


def _single_threaded(p: Process) -> None:
    """A pre-copy's rounds take a process's written pages off its one CPU: a second thread
    running meanwhile on another CPU could go on writing through translations that predate
    the take, unseen. A process that started a thread during its pre-copy is not moved
    (MigrationError: it runs on here; asked again, it moves by stop-and-copy)."""
    if p.members:
        raise MigrationError(f"process {p.pid} started a thread during its pre-copy; it runs "
                             "on here, and moves by stop-and-copy when asked again")
