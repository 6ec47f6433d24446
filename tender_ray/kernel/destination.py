"""The destination machine's side of a migration, the paper's first two steps: create a kernel
process, transform it into the arriving one (operating space, program, start position), then
commit it into the table — or abort and give back whatever was made.

Every call names its migration by id. What an arriving migration made is held under a lease
that each call of its source renews; a source silent past the lease (it died, or lost its way)
has it all released by the lease reaper, and the migration is then EXPIRED: it can never
commit. A pre-copy's live rounds stage page contents here (in frames of this machine, by
virtual page) under the same lease; its live image has the arriving space built around them
while the process still runs, and the freeze's transform only patches that space and commits
in the same call (`kernel.staged_space`); whatever the process does not take is freed with the
migration. Commit and abort are idempotent and exclusive (the first one to decide
wins; the other answers with it), and the outcome of recent migrations is remembered, so a
source that lost an answer asks again instead of guessing.

`MigrationDestination` is a part of `Machine` (mixed in): it works on the machine state
declared below, which `Machine.__init__` sets, under the machine's lock (`scheduler.lock`).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from tender_ray.config import MachineConfig
from tender_ray.engines import features
from tender_ray.errors import (
    CordonedError,
    LeaseExpiredError,
    MigrationError,
    OutOfMemoryError,
)
from tender_ray.kernel import address_space as vm
from tender_ray.kernel import shared_text, staged_space, thread_group, tracking
from tender_ray.kernel.scheduler import Scheduler
from tender_ray.kernel.staged_space import StagedPages
from tender_ray.kernel.syscalls import SystemCalls
from tender_ray.migration.faults import FaultPlan
from tender_ray.migration.image import AreaImage, ProcessImage
from tender_ray.migration.options import MigrationOptions, Resources
from tender_ray.migration.record import MigrationRecord, Outcome
from tender_ray.migration.transports import Transport, get_blocks
from tender_ray.resources.manager import ResourceManager
from tender_ray.resources.plate import Plate
from tender_ray.resources.process import Process
from tender_ray.resources.program import parse_program
from tender_ray.resources.real_memory import PAGE_SIZE, RealMemory
from tender_ray.resources.virtual_region import NOT_PRESENT
from tender_ray.resources.virtual_space import VirtualSpace
from tender_ray.resources.virtual_user_space import VirtualUserSpace

OUTCOMES_KEPT = 4096  # outcomes of finished migrations remembered, for sources that ask late


@dataclass
class IncomingMigration:
    """One arriving migration while it is under way (the destination's lock guards it)."""

    mid: str  # the migration's id (chosen by the source)
    pid: int
    source: str  # the machine that drives it (for errors and logs)
    process: Process  # the kernel process being transformed
    expires_at: float  # time.monotonic(); each call of the source renews it
    calls: int = 0  # calls of this migration running here now: no expiry while one runs
    doomed: Outcome | None = None  # aborted or expired while a call ran: that call releases
    # What this side knows of the migration, kept with the process at commit so it has a
    # record even if the source dies before sending its full one (which then replaces it).
    record: MigrationRecord | None = None
    # Pre-copy: the frames holding the pages of its live rounds, by virtual page number,
    # until the final transform maps them (or the migration ends without it: then freed).
    staged: StagedPages = field(default_factory=lambda: StagedPages())


class MigrationDestination:
    """The calls a migration makes of the machine it goes to (`migration.protocol.Destination`).
    """

    # The machine's state this side works on (set by `Machine.__init__`).
    name: str
    memory: RealMemory
    plate: Plate
    managers: vm.Managers
    processes: ResourceManager[Process]
    kernel_space: VirtualSpace
    scheduler: Scheduler
    syscalls: SystemCalls
    faults: FaultPlan  # where to fail on purpose (drills and tests)
    cordoned: bool  # lock
    migration_totals: Counter[str]  # lock
    # Kernel processes created for arriving processes, by pid, until commit or abort; lock.
    # Their pids are taken: nothing else may start under them meanwhile.
    incoming: dict[int, Process]
    config: MachineConfig
    engine: str  # the engine its processes run on
    incoming_migrations: dict[str, IncomingMigration]  # lock; by migration id, as `incoming`
    migration_outcomes: OrderedDict[str, Outcome]  # lock; of finished ones, the last few
    _lease_reaper: threading.Thread | None = None  # lock; started with the first arrival

    def create_incoming(self, mid: str, source: str, pid: int, frames: int,
                        reuse: bool) -> float:
        """Step 1: a kernel process for an arriving process (from the pool when reusing),
        held under a lease for migration `mid` from machine `source`; the seconds it took."""
        start = time.perf_counter()
        self.faults.check("before_create")
        self.faults.check("create")
        with self.scheduler.lock:
            self.scheduler.check_running()
            if self.cordoned:
                raise CordonedError(f"machine {self.name} is cordoned (draining): it takes "
                                    "no arriving processes; pick another destination")
            if mid in self.incoming_migrations or mid in self.migration_outcomes:
                # A create that arrives after its source gave up (it was slow) must not
                # make anything: the source has already taken its copy back.
                raise MigrationError(f"migration {mid} is already known on {self.name} "
                                     f"({self._outcome(mid).value}); start a new one")
            if pid in self.scheduler.table or pid in self.incoming:
                other = [m.mid for m in self.incoming_migrations.values() if m.pid == pid]
                raise MigrationError(
                    f"machine {self.name} already has a process {pid}"
                    + (f" (arriving by migration {other[0]})" if other else ""))
            if frames > self.memory.free_frames:
                raise OutOfMemoryError(
                    f"machine {self.name} has {self.memory.free_frames} free frames, process "
                    f"{pid} needs {frames}; pick another machine or free memory")
        p = self.processes.acquire(reuse=reuse)
        p.pid = pid
        with self.scheduler.lock:
            if pid in self.incoming or mid in self.incoming_migrations or (
                    mid in self.migration_outcomes):  # lost a race with another create
                raced = True
            else:
                raced = False
                self.incoming[pid] = p
                self.incoming_migrations[mid] = IncomingMigration(
                    mid, pid, source, p, time.monotonic() + self.config.migration_lease_s)
                if self._lease_reaper is None:
                    self._lease_reaper = threading.Thread(
                        target=self._reap_leases, name=f"{self.name}-lease-reaper",
                        daemon=True)
                    self._lease_reaper.start()
        if raced:
            self.processes.release(p)
            raise MigrationError(f"process {pid} or migration {mid} arrived twice on "
                                 f"{self.name} at once; start a new migration")
        seconds = time.perf_counter() - start
        if reuse:
            threading.Thread(target=self.processes.refill, daemon=True).start()
        self.faults.check("after_create")
        return seconds

    # --- the lease ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _call(self, mid: str) -> Iterator[IncomingMigration]:
        """One call of migration `mid` from its source: the lease renewed as it begins and
        ends, no expiry while it runs, and what an abort or expiry meanwhile doomed released
        once it ends."""
        with self.scheduler.lock:
            m = self.incoming_migrations.get(mid)
            if m is None or m.doomed is not None:
                outcome = self._outcome(mid)
                if outcome is Outcome.EXPIRED:
                    raise LeaseExpiredError(
                        f"migration {mid} expired on {self.name}: its source was silent for "
                        f"over {self.config.migration_lease_s} s; start a new migration")
                raise MigrationError(f"no migration {mid} under way on {self.name} "
                                     f"({outcome.value}); start a new one")
            m.calls += 1
            m.expires_at = time.monotonic() + self.config.migration_lease_s
        try:
            yield m
        finally:
            with self.scheduler.lock:
                m.calls -= 1
                m.expires_at = time.monotonic() + self.config.migration_lease_s
                release = m.calls == 0 and m.doomed is not None and (
                    self.incoming_migrations.get(mid) is m)
                if release:
                    self._forget(m)
            if release:
                self._free_staged(m)
                self.release_incoming(m.process)

    def renew(self, mid: str) -> Outcome:
        """A heartbeat of the source during a long step of its own: keep migration `mid`'s
        lease; its outcome so far."""
        with self.scheduler.lock:
            m = self.incoming_migrations.get(mid)
            if m is not None and m.doomed is None:
                m.expires_at = time.monotonic() + self.config.migration_lease_s
            return self._outcome(mid)

    def outcome(self, mid: str) -> Outcome:
        """What became of migration `mid` here (UNKNOWN: never seen, or long forgotten)."""
        with self.scheduler.lock:
            return self._outcome(mid)

    def _outcome(self, mid: str) -> Outcome:  # lock held
        m = self.incoming_migrations.get(mid)
        if m is not None:
            return m.doomed or Outcome.PENDING
        return self.migration_outcomes.get(mid, Outcome.UNKNOWN)

    def _decide(self, mid: str, outcome: Outcome) -> None:  # lock held
        self.migration_outcomes[mid] = outcome
        self.migration_outcomes.move_to_end(mid)
        while len(self.migration_outcomes) > OUTCOMES_KEPT:
            self.migration_outcomes.popitem(last=False)

    def _forget(self, m: IncomingMigration) -> None:  # lock held; the caller releases
        self.incoming_migrations.pop(m.mid, None)
        if self.incoming.get(m.pid) is m.process:
            del self.incoming[m.pid]

    def _reap_leases(self) -> None:
        """Release the arriving migrations whose source went silent past the lease (a thread
        of its own: it must run whatever the computations do). The outcome is decided first,
        under the lock, so no late call can commit; the resources are given back just after,
        outside it (releasing an engine context may wait for its tracer)."""
        lease = self.config.migration_lease_s
        while True:
            time.sleep(min(lease / 4, 0.5))
            expired: list[IncomingMigration] = []
            with self.scheduler.lock:
                if self.scheduler.stopped:
                    return  # `stop` released everything
                now = time.monotonic()
                for m in list(self.incoming_migrations.values()):
                    if m.calls == 0 and m.doomed is None and m.expires_at < now:
                        self._decide(m.mid, Outcome.EXPIRED)
                        self._forget(m)
                        self.migration_totals["in_expired"] += 1
                        expired.append(m)
            for m in expired:
                self._free_staged(m)
                self.release_incoming(m.process)

    def transform(self, image: ProcessImage, transport: Transport,
                  options: MigrationOptions, mid: str = "") -> dict[str, float]:
        """Step 2: turn the kernel process into the arriving one; seconds per sub-step.

        With `mid`, that migration's kernel process, under its lease (an abort or expiry
        that comes meanwhile releases it when this ends); without, the one created for the
        image's pid (callers that hold it themselves)."""
        if not mid:
            with self.scheduler.lock:
                p = self.incoming.get(image.pid)
            if p is None:
                raise MigrationError(f"no kernel process was created for {image.pid} on "
                                     f"{self.name}")
            return self._transform(p, image, transport, options)
        self.faults.check("before_transform")
        with self._call(mid) as m:
            if m.pid != image.pid:
                raise MigrationError(f"migration {mid} brings process {m.pid}, not "
                                     f"{image.pid}")
            if image.precopy is not None and image.precopy.live:
                return staged_space.prepare(self.managers, m.process, image, options,
                                            m.staged, self._add_image_area)
            started_at = time.time()
            phases = self._transform(m.process, image, transport, options, m.staged)
            self._free_staged(m)  # staged pages the image did not take (written again, gone)
            with self.scheduler.lock:
                doomed = m.doomed
                m.record = MigrationRecord(
                    pid=m.pid, source=m.source, destination=self.name,
                    transfer=options.transfer.value, reuse=options.reuse,
                    resources=options.resources.value, seconds=sum(phases.values()),
                    pages=image.pages_sent, bytes=image.pages_sent * PAGE_SIZE,
                    phases=dict(phases), started_at=started_at, migration_id=mid,
                    text_pages=image.text_pages_sent, text_shared=image.text_shared)
        if doomed is not None:
            raise MigrationError(f"migration {mid} was {doomed.value} on {self.name} while "
                                 "it transformed; the process stays at its source")
        self.faults.check("after_transform")
        if image.precopy is not None and image.precopy.commit:
            # A pre-copy's freeze: the commit comes in the same call (one round trip).
            t = time.perf_counter()
            outcome = self.commit(mid)
            if outcome is not Outcome.COMMITTED:
                raise MigrationError(f"migration {mid} was {outcome.value} on {self.name} "
                                     "before its commit; the process stays at its source")
            phases["commit"] = time.perf_counter() - t
        return phases

    def _transform(self, p: Process, image: ProcessImage, transport: Transport,
                   options: MigrationOptions,
                   staged: StagedPages | None = None) -> dict[str, float]:
        phases: dict[str, float] = {}
        lacking = features.missing(image.kernel.cpu_features,
                                   features.engine_features(self.engine))
        if lacking:  # before anything is made: the process goes on at its source
            raise MigrationError(
                f"process {image.pid} started on a CPU with {', '.join(sorted(lacking))}, "
                f"which {self.name}'s {self.engine} engine lacks; its code may use them "
                "(glibc picks code by cpuid at start): move it to a machine whose engine "
                "offers them")
        thread_group.check_arrival(p, image, self.name, self.engine)
        if image.kernel.write_tracked and not getattr(p.context, "tracks_writes", False):
            raise MigrationError(
                f"process {image.pid} has its writes tracked, which {self.name}'s "
                f"{self.engine} engine cannot do: stop tracking it first, or move it to a "
                "machine whose engine can")
        # Shared text is pinned before anything is made: if its holder has gone, the source
        # sends the text and transforms again (TextNotHeldError), with nothing to undo here.
        pinned = self._pin_text(image) if image.text_shared else None
        try:
            return self._transform_pinned(p, image, transport, options, phases, pinned,
                                          staged)
        except BaseException:
            if pinned is not None and not pinned.mapped:
                self.memory.free(pinned.frames)  # this mapper lets go; the holder keeps them
            raise

    def _transform_pinned(self, p: Process, image: ProcessImage, transport: Transport,
                          options: MigrationOptions, phases: dict[str, float],
                          pinned: shared_text.PinnedText | None,
                          staged: StagedPages | None = None) -> dict[str, float]:
        m = self.managers
        # (I) change the operating space (a pre-copy's was built while it ran: it is
        # brought to the image's layout).
        t = time.perf_counter()
        self.faults.check("transform_space")
        patch = image.precopy
        if patch is None:
            p.space = m.spaces.acquire(reuse=options.reuse)
        else:
            if staged is None or not staged.prepared:
                raise MigrationError(f"process {image.pid}: the freeze's image of a pre-copy "
                                     f"came before its live image on {self.name}")
            staged_space.drop_stale(self.memory, p, patch.stale, staged)
            kept = staged_space.keep_prepared(m, p, image.other_areas, staged)
        phases["transform_space"] = time.perf_counter() - t
        # (II) change the program: text copied memory-to-memory (or reloaded from the plate
        # when every resource moves), the other regions only created.
        t = time.perf_counter()
        self.faults.check("transform_program")
        p.program = image.program
        # One stream of blocks, text first: the transport may fetch ahead across the two.
        blocks: Iterator[npt.NDArray[np.uint8]]
        if options.resources is Resources.ALL:
            raw = transport.get(image.program_image).reshape(-1).tobytes()
            p.plate_name = self.plate.store_program(raw, image.program.digest)
            loaded = parse_program(self.plate.read(p.plate_name), image.program.name)
            blocks = iter([vm.text_pages(loaded, self.plate.read(p.plate_name),
                                         image.text_areas)])
            data_blocks = get_blocks(transport, image.data_blocks)
        else:
            blocks = data_blocks = get_blocks(transport,
                                              (*image.text_blocks, *image.data_blocks))
            # The image is not moved; if this plate has it already (it ran here), use it.
            known = self.plate.program_name(image.program.digest)
            p.plate_name = known if self.plate.exists(known) else ""
        if pinned is not None:
            shared_text.share_text(p, image, pinned, self._add_image_area)
        else:
            self._build_areas(p, image.text_areas, blocks)
        if patch is None:
            created = [self._add_image_area(p, area) for area in image.other_areas]
        else:
            assert staged is not None
            created = [kept.get(i) or staged_space.place_staged(
                p, self._add_image_area(p, area), staged)
                for i, area in enumerate(image.other_areas)]
        phases["transform_program"] = time.perf_counter() - t
        # (III) change the start position: data, BSS, heap, stack and mappings, registers.
        t = time.perf_counter()
        self.faults.check("transform_start")
        if patch is None:
            self._fill_areas(p, created, image.other_areas, data_blocks)
        else:
            staged_space.patch_areas(self.memory, p, created, image.other_areas, data_blocks,
                                     self._copy_in)
        if next(data_blocks, None) is not None:
            raise MigrationError("page blocks do not match the areas: more pages than the "
                                 "areas hold")
        k = image.kernel
        p.name, p.brk_start, p.brk, p.mmap_top = k.name, k.brk_start, k.brk, k.mmap_top
        p.cpu_features = k.cpu_features
        p.tid_address, p.sleep_left = k.tid_address, k.sleep_left
        if k.signals is not None:  # its signal state goes on here, its timer from its time left
            p.signals = k.signals.arrived()
        p.stdout, p.stderr = bytearray(k.stdout), bytearray(k.stderr)
        p.stdout_taken, p.stderr_taken = k.stdout_taken, k.stderr_taken
        # Still held until a checkpoint covers it: a crash here restarts from that checkpoint.
        p.output_commit = k.output_commit
        p.accounting, p.created_at = k.accounting, k.created_at
        p.migrations = list(k.migrations)
        p.files, p.view = k.files.restore()  # host files reopen on their first call
        p.registers = image.registers
        self.syscalls.attach(p)
        thread_group.arrive(p, image, self.syscalls)
        if k.write_tracked:
            tracking.arrive_tracked(p, self.name)
        phases["transform_start"] = time.perf_counter() - t
        self.faults.check("commit")
        return phases

    # --- content-addressed text (`kernel.shared_text`) -----------------------------------

    def holds_text(self, program_digest: str, digest: str) -> bool:
        """Whether a process here (running, frozen or arriving) maps text with this digest
        (`migration.image.text_digest`), which an arriving process can then share."""
        with self.scheduler.lock:
            return self._text_holder(program_digest, digest) is not None

    def _text_holder(self, program_digest: str, digest: str
                     ) -> shared_text.HeldText | None:  # lock held
        return shared_text.text_holder(
            (*self.scheduler.table.values(), *self.incoming.values()), self.kernel_space,
            self.memory, program_digest, digest)

    def _pin_text(self, image: ProcessImage) -> shared_text.PinnedText:
        with self.scheduler.lock:  # no holder leaves the table (and frees) meanwhile
            return shared_text.pin_text(
                self._text_holder(image.program.digest, image.text_digest), image,
                self.memory, self.name)

    def _add_image_area(self, p: Process, area: AreaImage) -> VirtualUserSpace:
        us = vm.add_area(self.managers, p, area.kind, area.start, area.npages, area.perms)
        if area.key:
            p.user_spaces[area.key] = us
        return us

    def _build_areas(self, p: Process, areas: tuple[AreaImage, ...],
                     blocks: Iterator[npt.NDArray[np.uint8]]) -> None:
        self._fill_areas(p, [self._add_image_area(p, a) for a in areas], areas, blocks)

    def _fill_areas(self, p: Process, user_spaces: list[VirtualUserSpace],
                    areas: tuple[AreaImage, ...],
                    blocks: Iterator[npt.NDArray[np.uint8]]) -> None:
        """Write page contents into fresh frames of each area and make them visible: frames
        taken for all at once (held ones first, no zeroing), then each block copied in as
        it arrives (one copy per page), taking from `blocks` exactly the areas' pages."""
        filled: list[tuple[VirtualUserSpace, npt.NDArray[np.int64],
                           npt.NDArray[np.int64]]] = []
        for us, area in zip(user_spaces, areas, strict=True):
            assert us.region is not None
            indexes = np.fromiter(area.present, dtype=np.int64, count=len(area.present))
            filled.append((us, indexes, us.region.populate_array(indexes, self.memory,
                                                                 zero=False)))
        self._copy_in(blocks, filled)
        assert p.space is not None
        for us, indexes, got in filled:
            p.space.add_entries(us, indexes, got)  # pasted before they had frames

    def _copy_in(self, blocks: Iterator[npt.NDArray[np.uint8]],
                 filled: list[tuple[VirtualUserSpace, npt.NDArray[np.int64],
                                    npt.NDArray[np.int64]]]) -> None:
        """Copy the blocks into the frames of `filled` (user space, page indexes, frames),
        in order, taking exactly their pages from `blocks`."""
        frames = (np.concatenate([f for _, _, f in filled]) if filled
                  else np.zeros(0, dtype=np.int64))
        done = 0
        try:
            while done < len(frames):
                block = next(blocks, None)
                if block is None:
                    raise ValueError(f"{done} pages for {len(frames)} frames")
                self.memory.scatter_at(frames, done, block)
                done += block.shape[0]
        except ValueError as exc:
            raise MigrationError(f"page blocks do not match the areas: {exc}") from None

    # --- pre-copy: the live rounds ------------------------------------------------------

    def precopy_pages(self, mid: str, vpns: npt.NDArray[np.int64], handles: tuple[object, ...],
                      transport: Transport) -> int:
        """One live round of pre-copy migration `mid`: stage the pages `vpns` (virtual page
        numbers, in block order) from the blocks `handles` in frames here, replacing what an
        earlier round staged for the same pages; the pages staged in all."""
        self.faults.check("precopy")
        with self._call(mid) as m:
            staged = m.staged
            found, at = staged.find(vpns)
            known = np.full(vpns.size, NOT_PRESENT, dtype=np.int64)
            known[found] = staged.frames[at]
            fresh = ~found
            count = int(fresh.sum())
            if count:
                if count > self.memory.free_frames:
                    raise OutOfMemoryError(
                        f"machine {self.name} has {self.memory.free_frames} free frames, "
                        f"pre-copy of process {m.pid} needs {count} more; pick another "
                        "machine or free memory")
                known[fresh] = self.memory.allocate_array(count, zero=False)
                staged.add(vpns[fresh], known[fresh])
            done = 0
            for block in get_blocks(transport, handles):
                self.memory.scatter_at(known, done, block)
                done += block.shape[0]
            if done != vpns.size:
                raise MigrationError(f"pre-copy round of process {m.pid}: {done} pages in "
                                     f"the blocks for {vpns.size} pages")
            return len(staged)

    def _free_staged(self, m: IncomingMigration) -> None:
        """Free the frames of pages staged for migration `m` that no process took."""
        if len(m.staged):
            self.memory.free(m.staged.clear())

    def commit(self, mid: str) -> Outcome:
        """The destination confirms: the process joins the table and runs (or sleeps on).

        Idempotent: COMMITTED, again on a repeat. A migration aborted or expired here, or
        one never heard of, does not commit: its outcome is the answer (the source keeps its
        copy)."""
        self.faults.check("before_commit")
        with self.scheduler.lock:
            self.scheduler.check_running()  # a stopped machine is a dead one: it runs nothing
            m = self.incoming_migrations.get(mid)
            if m is None or m.doomed is not None:
                return self._outcome(mid)
            self._forget(m)
            self._decide(mid, Outcome.COMMITTED)
            self.migration_totals["in_ok"] += 1
            if m.record is not None:
                m.process.migrations.append(m.record)
            self.scheduler.add(m.process)
        self.arrived(m.process)
        self.scheduler.changed()
        self.faults.check("after_commit")
        return Outcome.COMMITTED

    def arrived(self, p: Process) -> None:
        """A committed arrival is in the table (the machine re-arms what runs on host time,
        such as a signal timer)."""

    def abort(self, mid: str) -> Outcome:
        """Release whatever the unfinished migration `mid` made here; ABORTED, or COMMITTED
        if it had already committed (then nothing is undone: the source must delete).
        Idempotent; a migration not (yet) seen is marked aborted, so a late create of it
        makes nothing."""
        with self.scheduler.lock:
            # A stopped machine answers as a dead one: what it committed died with it.
            self.scheduler.check_running()
            outcome = self._outcome(mid)
            if outcome is not Outcome.PENDING:
                if outcome is Outcome.UNKNOWN:
                    self._decide(mid, Outcome.ABORTED)
                    self.migration_totals["in_aborted"] += 1
                    return Outcome.ABORTED
                return outcome
            m = self.incoming_migrations[mid]
            self._decide(mid, Outcome.ABORTED)
            self.migration_totals["in_aborted"] += 1
            if m.calls:  # a transform still runs on it: that call releases it as it ends
                m.doomed = Outcome.ABORTED
                return Outcome.ABORTED
            self._forget(m)
        self._free_staged(m)
        self.release_incoming(m.process)
        return Outcome.ABORTED

    def release_incoming(self, p: Process) -> None:
        """Give back an arriving process that will not join the table, and all it holds."""
        thread_group.release(p, self.syscalls)
        if p.space is not None and p.space is not self.kernel_space:
            vm.release_address_space(self.managers, p)
        p.space = self.kernel_space
        self.processes.release(p)

    def record_migration(self, pid: int, record: MigrationRecord) -> None:
        """Keep the finished record of the migration that brought `pid` here."""
        with self.scheduler.lock:
            p = self.scheduler.table.get(pid)
            if p is None:
                return
            for i, known in enumerate(p.migrations):  # this side's own, kept at commit
                if record.migration_id and known.migration_id == record.migration_id:
                    p.migrations[i] = record
                    return
            p.migrations.append(record)
