"""The destination machine's side of a migration, the paper's first two steps: create a kernel
process, transform it into the arriving one (operating space, program, start position), then
commit it into the table — or abort and give back whatever was made.

`MigrationDestination` is a part of `Machine` (mixed in): it works on the machine state
declared below, which `Machine.__init__` sets, under the machine's lock (`scheduler.lock`).
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import numpy as np
import numpy.typing as npt

from tender_ray.errors import CordonedError, MigrationError, OutOfMemoryError
from tender_ray.kernel import address_space as vm
from tender_ray.kernel.scheduler import Scheduler
from tender_ray.kernel.syscalls import SystemCalls
from tender_ray.migration.faults import FaultPlan
from tender_ray.migration.image import AreaImage, ProcessImage
from tender_ray.migration.options import MigrationOptions, Resources
from tender_ray.migration.record import MigrationRecord
from tender_ray.migration.transports import Transport
from tender_ray.resources.manager import ResourceManager
from tender_ray.resources.plate import Plate
from tender_ray.resources.process import Process
from tender_ray.resources.program import parse_program
from tender_ray.resources.real_memory import RealMemory
from tender_ray.resources.virtual_space import VirtualSpace
from tender_ray.resources.virtual_user_space import VirtualUserSpace


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

    def create_incoming(self, pid: int, frames: int, reuse: bool) -> float:
        """Step 1: a kernel process for an arriving process (from the pool when reusing);
        the seconds it took."""
        start = time.perf_counter()
        self.faults.check("create")
        with self.scheduler.lock:
            self.scheduler.check_running()
            if self.cordoned:
                raise CordonedError(f"machine {self.name} is cordoned (draining): it takes "
                                    "no arriving processes; pick another destination")
            if pid in self.scheduler.table or pid in self.incoming:
                raise MigrationError(f"machine {self.name} already has a process {pid}")
            if frames > self.memory.free_frames:
                raise OutOfMemoryError(
                    f"machine {self.name} has {self.memory.free_frames} free frames, process "
                    f"{pid} needs {frames}; pick another machine or free memory")
        p = self.processes.acquire(reuse=reuse)
        p.pid = pid
        with self.scheduler.lock:
            self.incoming[pid] = p
        seconds = time.perf_counter() - start
        if reuse:
            threading.Thread(target=self.processes.refill, daemon=True).start()
        return seconds

    def transform(self, image: ProcessImage, transport: Transport,
                  options: MigrationOptions) -> dict[str, float]:
        """Step 2: turn the kernel process into the arriving one; seconds per sub-step."""
        with self.scheduler.lock:
            p = self.incoming.get(image.pid)
        if p is None:
            raise MigrationError(f"no kernel process was created for {image.pid} on "
                                 f"{self.name}")
        m = self.managers
        phases: dict[str, float] = {}
        # (I) change the operating space.
        t = time.perf_counter()
        self.faults.check("transform_space")
        p.space = m.spaces.acquire(reuse=options.reuse)
        phases["transform_space"] = time.perf_counter() - t
        # (II) change the program: text copied memory-to-memory (or reloaded from the plate
        # when every resource moves), the other regions only created.
        t = time.perf_counter()
        self.faults.check("transform_program")
        p.program = image.program
        if options.resources is Resources.ALL:
            raw = transport.get(image.program_image).reshape(-1).tobytes()
            p.plate_name = self.plate.store_program(raw, image.program.digest)
            loaded = parse_program(self.plate.read(p.plate_name), image.program.name)
            text_blocks = [vm.text_pages(loaded, self.plate.read(p.plate_name),
                                         image.text_areas)]
        else:
            text_blocks = [transport.get(b) for b in image.text_blocks]
            # The image is not moved; if this plate has it already (it ran here), use it.
            known = self.plate.program_name(image.program.digest)
            p.plate_name = known if self.plate.exists(known) else ""
        self._build_areas(p, image.text_areas, text_blocks)
        created = [self._add_image_area(p, area) for area in image.other_areas]
        phases["transform_program"] = time.perf_counter() - t
        # (III) change the start position: data, BSS, heap, stack and mappings, registers.
        t = time.perf_counter()
        self.faults.check("transform_start")
        self._fill_areas(p, created, image.other_areas,
                         [transport.get(b) for b in image.data_blocks])
        k = image.kernel
        p.name, p.brk_start, p.brk, p.mmap_top = k.name, k.brk_start, k.brk, k.mmap_top
        p.tid_address, p.sleep_left = k.tid_address, k.sleep_left
        p.stdout, p.stderr = bytearray(k.stdout), bytearray(k.stderr)
        p.stdout_taken, p.stderr_taken = k.stdout_taken, k.stderr_taken
        p.accounting, p.created_at = k.accounting, k.created_at
        p.migrations = list(k.migrations)
        p.registers = image.registers
        self.syscalls.attach(p)
        phases["transform_start"] = time.perf_counter() - t
        self.faults.check("commit")
        return phases

    def _add_image_area(self, p: Process, area: AreaImage) -> VirtualUserSpace:
        us = vm.add_area(self.managers, p, area.kind, area.start, area.npages, area.perms)
        if area.key:
            p.user_spaces[area.key] = us
        return us

    def _build_areas(self, p: Process, areas: tuple[AreaImage, ...],
                     blocks: list[npt.NDArray[np.uint8]]) -> None:
        self._fill_areas(p, [self._add_image_area(p, a) for a in areas], areas, blocks)

    def _fill_areas(self, p: Process, user_spaces: list[VirtualUserSpace],
                    areas: tuple[AreaImage, ...], blocks: list[npt.NDArray[np.uint8]]) -> None:
        """Write page contents into fresh frames of each area and make them visible."""
        frames: list[int] = []
        for us, area in zip(user_spaces, areas, strict=True):
            assert us.region is not None
            frames += us.region.populate(list(area.present), self.memory, zero=False)
        try:
            self.memory.scatter(frames, blocks)
        except ValueError as exc:
            raise MigrationError(f"page blocks do not match the areas: {exc}") from None
        assert p.space is not None
        for us in user_spaces:
            p.space.refresh(us)  # pasted before they had frames: write their entries now

    def commit(self, pid: int) -> None:
        """The destination confirms: the process joins the table and runs (or sleeps on)."""
        with self.scheduler.lock:
            p = self.incoming.pop(pid, None)
            if p is None:
                raise MigrationError(f"no transformed process {pid} on {self.name}")
            self.migration_totals["in_ok"] += 1
            self.scheduler.add(p)
        self.scheduler.changed()

    def abort(self, pid: int) -> None:
        """Release whatever an unfinished incoming migration made here."""
        with self.scheduler.lock:
            p = self.incoming.pop(pid, None)
            self.migration_totals["in_aborted"] += 1
        if p is not None:
            self.release_incoming(p)

    def release_incoming(self, p: Process) -> None:
        """Give back an arriving process that will not join the table, and all it holds."""
        if p.space is not None and p.space is not self.kernel_space:
            vm.release_address_space(self.managers, p)
        p.space = self.kernel_space
        self.processes.release(p)

    def record_migration(self, pid: int, record: MigrationRecord) -> None:
        """Keep the finished record of the migration that brought `pid` here."""
        with self.scheduler.lock:
            p = self.scheduler.table.get(pid)
            if p is not None:
                p.migrations.append(record)
