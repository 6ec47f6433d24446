"""Machine: one Tender machine — its resource managers, real memory, plate, process table and
the computations that run processes. Plain Python, no Ray: `cluster.py` wraps it in an actor.

Computations are host threads; the CPU releases the interpreter lock while it emulates, so the
machine keeps answering calls while its processes run. All process-table changes happen under
one lock; a running process's CPU is touched only by the computation that holds it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import heapq
import itertools
import tempfile
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import numpy.typing as npt

from . import engine, vm
from .config import MachineConfig
from .cpu import EngineError, Stop, StopKind
from .errors import (
    CordonedError,
    MachineStoppedError,
    MigrationError,
    OutOfMemoryError,
    ProcessStateError,
    UnknownProcessError,
)
from .migration import (
    BLOCK_PAGES,
    AreaImage,
    FaultPlan,
    KernelState,
    MigrationOptions,
    MigrationRecord,
    ProcessImage,
    Resources,
    Transport,
    log_migration,
)
from .resources.computation import Computation, ComputationState, ComputationStatistics
from .resources.manager import ManagerStatistics, ResourceManager
from .resources.plate import Plate
from .resources.process import Process, ProcessState
from .resources.program import Program, parse_program
from .resources.real_memory import RealMemory, RealMemoryStatistics
from .resources.virtual_region import RegionKind, VirtualRegion
from .resources.virtual_space import SpaceKind, VirtualSpace
from .resources.virtual_user_space import VirtualUserSpace
from .syscalls import SystemCalls


def _asleep(wake_at: float, _seq: int, p: Process) -> bool:
    """Whether a sleepers' heap entry still stands (the process sleeps until then)."""
    return p.state is ProcessState.SLEEPING and p.wake_at == wake_at


PROGRAM_HOLD_LIMIT = 64  # parsed programs a machine holds for later execs of the same image


@dataclass(frozen=True)
class ProcessInfo:
    """A snapshot of one process, safe to send anywhere."""

    pid: int
    name: str
    machine: str
    state: str
    exit_status: int | None
    exit_reason: str
    cpu_seconds: float
    run_seconds: float
    resident_pages: int
    syscalls: dict[str, int]
    unsupported: dict[str, int]
    migrations: tuple[dict[str, object], ...]
    created_at: float


@dataclass(frozen=True)
class OutputChunk:
    """Bytes a process wrote, and where they start in its stream."""

    pid: int
    fd: int
    offset: int
    data: bytes


@dataclass(frozen=True)
class MachineStatistics:
    """A snapshot of one machine, what balancers, metrics and `top` read."""

    name: str
    state: str
    computations: tuple[ComputationStatistics, ...]
    processes: dict[str, int]  # by state
    runnable: int  # runnable + running
    load: float  # runnable processes per computation
    utilisation: float  # fraction of computation time spent running processes, since start
    memory: RealMemoryStatistics
    managers: tuple[ManagerStatistics, ...]
    syscalls: dict[str, int]
    unsupported: dict[str, int]
    exited: int
    uptime: float
    cordoned: bool = False
    migrations: dict[str, int] = field(default_factory=dict)  # out_ok, in_ok, out_failed...
    migration_bytes: int = 0
    migration_phase_seconds: dict[str, float] = field(default_factory=dict)
    engine: str = "emulated"


@dataclass(frozen=True)
class PollResult:
    statistics: MachineStatistics
    processes: tuple[ProcessInfo, ...]
    output: tuple[OutputChunk, ...]
    ended: tuple[ProcessInfo, ...]


def _counter(c: Counter[str]) -> dict[str, int]:
    return dict(sorted(c.items()))


class Machine:
    """A Tender machine. Thread-safe; `stop()` ends it and fails every pending wait."""

    def __init__(self, config: MachineConfig | None = None, *, pid_base: int = 1000) -> None:
        self.config = config or MachineConfig()
        self.name = self.config.name
        self.exact = self.config.quantum_instructions is not None
        self.engine, self.engine_notice = engine.resolve(self.config.engine, exact=self.exact)
        # The native engine maps real memory into its guests: a shared memory file.
        self.memory = RealMemory(self.config.memory_mib << 20, shared=self.engine == "native")
        if self.config.plate_dir:
            self.plate = Plate(self.config.plate_dir)
            self._plate_tmp = None
        else:
            self._plate_tmp = tempfile.TemporaryDirectory(prefix=f"tender-plate-{self.name}-")
            self.plate = Plate(self._plate_tmp.name)
        self.quantum = self.config.quantum_instructions or self.config.quantum_us
        reuse = self.config.reuse
        memory = self.memory
        self.kernel_space = VirtualSpace(memory)  # single virtual memory: kernel processes
        self.kernel_space.kind = SpaceKind.KERNEL
        self.processes: ResourceManager[Process] = ResourceManager(
            "process", self._new_kernel_process, self._reset_kernel_process,
            self._destroy_kernel_process, reuse=reuse, pool_size=self.config.pool_size)
        self.managers = vm.Managers(
            memory=memory,
            spaces=ResourceManager("virtual_space", lambda: VirtualSpace(memory),
                                   VirtualSpace.clear, reuse=reuse, hold_limit=64),
            regions=ResourceManager("virtual_region", VirtualRegion, reuse=reuse,
                                    hold_limit=1024),
            user_spaces=ResourceManager("virtual_user_space", VirtualUserSpace,
                                        VirtualUserSpace.reset, reuse=reuse, hold_limit=1024),
        )
        self.syscalls = SystemCalls(self)
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._table: dict[int, Process] = {}  # the process table; guarded by _lock
        self._runq: deque[Process] = deque()  # RUNNABLE processes, in turn order
        self._sleepers: list[tuple[float, int, Process]] = []  # heap by wake time
        self._seq = itertools.count()
        self._pids = itertools.count(pid_base)
        self._stopped = False
        self._started = time.monotonic()
        self._exited = 0
        self.syscall_totals: Counter[str] = Counter()  # of every process that ran here
        self.unsupported_totals: Counter[str] = Counter()
        self.cordoned = False
        self._incoming: dict[int, Process] = {}  # kernel processes being transformed
        self.faults = FaultPlan()
        self.migration_totals: Counter[str] = Counter()  # "out_ok", "in_ok", "out_failed"...
        self.migration_bytes = 0
        self.migration_phase_seconds: dict[str, float] = {}
        self.migration_records: deque[dict[str, object]] = deque(maxlen=64)
        # Set by whoever balances this machine (the actor layer): called when a process
        # starts, ends, arrives or leaves, or the machine is cordoned, so the balancer need
        # not poll to notice. It must not block: it may run with the machine's lock held.
        self.on_change: Callable[[], None] | None = None
        self._programs: dict[str, Program] = {}  # image digest -> parsed program, held
        self.computations = [Computation(i) for i in range(self.config.computations)]
        for comp in self.computations:
            comp.thread = threading.Thread(target=self._run_computation, args=(comp,),
                                           name=f"{self.name}-computation-{comp.index}",
                                           daemon=True)
            comp.thread.start()
        self._clock: threading.Thread | None = None
        if not self.exact:  # exact quanta are counted, not timed: no clock cuts them
            self._clock = threading.Thread(target=self._run_clock, name=f"{self.name}-clock",
                                           daemon=True)
            self._clock.start()

    # --- kernel processes (the process manager's hooks) ----------------------------------

    def _new_kernel_process(self) -> Process:
        p = Process()
        p.space = self.kernel_space
        p.cpu = engine.create(self.engine, self.memory, exact=self.exact)
        return p

    def _reset_kernel_process(self, p: Process) -> None:
        cpu = p.cpu
        p.reset()
        if cpu is not None:
            cast(engine.Engine, cpu).reset()
        p.space = self.kernel_space

    def _destroy_kernel_process(self, p: Process) -> None:
        if p.cpu is not None:
            cast(engine.Engine, p.cpu).close()
        p.cpu = None

    def _cpu(self, p: Process) -> engine.Engine:
        assert p.cpu is not None
        return cast(engine.Engine, p.cpu)

    def _bind(self, p: Process) -> None:
        """Point the process's CPU at its space and system calls, and load its registers."""
        cpu = self._cpu(p)
        assert p.space is not None and p.registers is not None
        dispatch = self.syscalls.dispatch
        cpu.bind(p.space, lambda nr, args: dispatch(p, nr, args))
        cpu.load(p.registers)

    # --- creating processes --------------------------------------------------------------

    def exec(self, image: bytes, name: str, argv: Sequence[str | bytes],
             envp: Sequence[str | bytes] = ()) -> int:
        """Load a static x86-64 program and schedule it; its pid.

        The image is kept on the machine's plate once; the text is in memory from then on.
        """
        self._check_running()
        if self.cordoned:
            raise CordonedError(f"machine {self.name} is cordoned (draining): start the "
                                "program on another machine")
        program = self._program(image, name)  # too big for memory: vm.load_program says so
        plate_name = self.plate.store_program(image, program.digest)
        args = [a.encode() if isinstance(a, str) else a for a in argv] or [name.encode()]
        env = [e.encode() if isinstance(e, str) else e for e in envp]
        p = self.processes.acquire()
        try:
            vm.load_program(self.managers, p, program, image, args, env)
            self._bind(p)
        except BaseException:
            if p.space is not self.kernel_space:
                vm.release_address_space(self.managers, p)
            self.processes.release(p)
            raise
        with self._cond:
            p.pid = next(self._pids)
            while p.pid in self._table or p.pid in self._incoming:  # one that arrived
                p.pid = next(self._pids)
            p.name = name
            p.plate_name = plate_name
            p.created_at = time.time()
            self._table[p.pid] = p
            self._make_runnable(p)
            self._preempt_for(p)
        self._changed()
        return p.pid

    def _preempt_for(self, p: Process) -> None:
        """A process became runnable from outside (started, arrived): if no computation is
        free, cut short the quantum that has run longest past the base slice, so the newcomer
        waits about one base slice at most. Called with the lock held."""
        if self.exact or p.state is not ProcessState.RUNNABLE:
            return
        if any(c.state is ComputationState.IDLE for c in self.computations):
            return
        ran, running = self._longest_slice()
        if running is not None and ran >= self.quantum / 1e6:
            self._cpu(running).preempt()

    def _longest_slice(self) -> tuple[float, Process | None]:
        """How long the slice that has run longest has run, and its process (lock held)."""
        now = time.monotonic()
        longest: tuple[float, Process | None] = (0.0, None)
        for comp in self.computations:
            running = self._table.get(comp.pid) if comp.pid is not None else None
            if running is not None and running.on_cpu and now - comp.run_started > longest[0]:
                longest = (now - comp.run_started, running)
        return longest

    def _run_clock(self) -> None:
        """The machine's clock: wakes a sleeper whose time is up while every computation is
        busy, by cutting short the slice that has run longest once it has had the base
        quantum. (An idle computation wakes sleepers itself, in `_next`.) The woken process
        goes to the front of the run queue, so a long slice is not also a long sleep."""
        base = self.quantum / 1e6
        with self._cond:
            while not self._stopped:
                while self._sleepers and not _asleep(*self._sleepers[0]):
                    heapq.heappop(self._sleepers)  # woken or moved on meanwhile
                if not self._sleepers:
                    self._cond.wait()
                    continue
                late = time.monotonic() - self._sleepers[0][0]
                if late < 0:
                    self._cond.wait(-late)
                    continue
                if any(c.state is ComputationState.IDLE for c in self.computations):
                    self._cond.wait(base)  # that computation takes it
                    continue
                ran, running = self._longest_slice()
                if running is not None and ran >= base:
                    self._cpu(running).preempt()
                    self._cond.wait(base)  # the slice ends; `_next` wakes the sleeper
                else:
                    self._cond.wait(max(0.001, base - ran))

    def _changed(self) -> None:
        callback = self.on_change
        if callback is not None:
            with contextlib.suppress(Exception):  # a balancer that went away changes nothing
                callback()

    def _program(self, image: bytes, name: str) -> Program:
        """The program resource of an image: parsed once per image, held for later execs
        (the first exec of an image pays for reading its headers)."""
        digest = hashlib.sha256(image).hexdigest()
        with self._lock:
            held = self._programs.get(digest)
        if held is None:
            held = parse_program(image, name)
            with self._lock:
                self._programs[digest] = held
                while len(self._programs) > PROGRAM_HOLD_LIMIT:  # the oldest goes first
                    del self._programs[next(iter(self._programs))]
        return held if held.name == name else dataclasses.replace(held, name=name)

    def _make_runnable(self, p: Process, front: bool = False) -> None:
        p.state = ProcessState.RUNNABLE
        if front:  # a process that slept: it used little processor, it runs next
            self._runq.appendleft(p)
        else:
            self._runq.append(p)
        self._cond.notify_all()

    # --- services for system calls (called on a computation thread) ----------------------

    def append_output(self, p: Process, fd: int, data: bytes) -> None:
        with self._lock:
            (p.stdout if fd == 1 else p.stderr).extend(data)

    def exit_process(self, p: Process, status: int, reason: str) -> None:
        """End the process (the first reason given wins). ZOMBIE means ended *and* released:
        a process its computation still runs is released by that computation when the CPU
        has stopped, so nobody sees a zombie whose resources are still in use."""
        with self._cond:
            if p.exit_status is None:
                p.exit_status = status
                p.exit_reason = reason
            if p.on_cpu or p.state is ProcessState.ZOMBIE:
                return
            if p.state is ProcessState.RUNNABLE:
                self._runq.remove(p)
            p.state = ProcessState.ZOMBIE
            self._finish(p)
            self._cond.notify_all()

    def sleep_process(self, p: Process, seconds: float) -> None:
        with self._lock:
            p.state = ProcessState.SLEEPING
            p.wake_at = time.monotonic() + seconds

    def set_fs_base(self, p: Process, value: int) -> None:
        self._cpu(p).set_fs_base(value)

    def get_fs_base(self, p: Process) -> int:
        return self._cpu(p).fs_base()

    # --- the computations ----------------------------------------------------------------

    def _next(self, comp: Computation) -> Process | None:
        """Wait for a runnable process (waking sleepers on time); None when stopping."""
        with self._cond:
            while not self._stopped:
                now = time.monotonic()
                while self._sleepers and self._sleepers[0][0] <= now:
                    wake_at, _, p = heapq.heappop(self._sleepers)
                    if _asleep(wake_at, 0, p):
                        p.wake_at = None
                        self._make_runnable(p, front=True)
                if self._runq:
                    p = self._runq.popleft()
                    p.state = ProcessState.RUNNING
                    p.on_cpu = True
                    comp.pid, comp.state = p.pid, ComputationState.RUNNING
                    comp.run_started = now
                    return p
                timeout = self._sleepers[0][0] - now if self._sleepers else None
                self._cond.wait(timeout)
            return None

    def _run_computation(self, comp: Computation) -> None:
        while True:
            p = self._next(comp)
            if p is None:
                comp.state = ComputationState.STOPPED
                return
            cpu = self._cpu(p)
            wall = time.monotonic()
            cpu_time = time.thread_time()
            quantum = self.quantum if self.exact else (p.quantum or self.quantum)
            try:
                stop = cpu.run(quantum)
            except EngineError as exc:
                stop = Stop(StopKind.FAULT, 0, 0, f"engine failure: {exc}")
            # The computation's own CPU time, plus what a guest host process used (native).
            cpu_time = time.thread_time() - cpu_time + cpu.last_run_cpu_seconds
            wall = time.monotonic() - wall
            with self._cond:
                comp.busy_seconds += wall
                comp.quanta += 1
                comp.pid, comp.state = None, ComputationState.IDLE
                p.on_cpu = False
                p.accounting.cpu_seconds += cpu_time
                p.accounting.quanta += 1
                # A process that used its whole slice gets one twice as long next time, up to
                # `quantum_growth` times the base; one that blocks goes back to the base. Busy
                # processes switch less often (each switch costs the machine's own work);
                # newcomers do not wait for long slices (`_preempt_for`). A slice cut short
                # (a preemption) earns nothing.
                if not self.exact and stop.kind is StopKind.QUANTUM and wall >= quantum / 1e6:
                    p.quantum = min(quantum * 2, self.quantum * self.config.quantum_growth)
                elif p.state is ProcessState.SLEEPING:
                    p.quantum = 0
                if stop.kind is StopKind.FAULT and p.exit_status is None:
                    p.exit_status = 128 + (stop.signal or 11)
                    p.exit_reason = (f"{stop.detail} at {stop.address:#x}" if stop.address
                                     else stop.detail)
                if p.exit_status is not None:
                    p.state = ProcessState.ZOMBIE
                    self._finish(p)
                elif p.state is ProcessState.SLEEPING:
                    if p.freeze_requested:
                        p.sleep_left = max(0.0, (p.wake_at or 0) - time.monotonic())
                        p.wake_at = None
                        p.state = ProcessState.FROZEN
                    else:
                        assert p.wake_at is not None
                        heapq.heappush(self._sleepers, (p.wake_at, next(self._seq), p))
                elif p.freeze_requested:
                    p.state = ProcessState.FROZEN
                else:
                    self._make_runnable(p)
                self._cond.notify_all()

    def _finish(self, p: Process) -> None:
        """An ended process gives back its address space; the entry waits to be reaped.
        Called exactly once, with the lock held and no computation running it."""
        assert not p.on_cpu
        p.ended_at = time.time()
        for name, n in p.accounting.syscalls.items():
            self.syscall_totals[name] += n
        for name, n in p.accounting.unsupported.items():
            self.unsupported_totals[name] += n
        vm.release_address_space(self.managers, p)
        p.space = self.kernel_space
        self._exited += 1
        self._changed()

    # --- migration: the source side ------------------------------------------------------

    def freeze(self, pid: int, timeout: float = 30.0) -> int:
        """Stop a process at an instruction boundary for a migration; its resident pages.

        Only one migration may own a process: a second request gets ProcessStateError.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            self._check_running()
            p = self._get(pid)
            if p.migrating:
                raise ProcessStateError(f"process {pid} is already migrating")
            if p.state is ProcessState.ZOMBIE:
                raise ProcessStateError(f"process {pid} has finished ({p.exit_reason})")
            p.migrating = True
            if p.on_cpu:
                # Its computation stops it at an instruction boundary, ending the quantum
                # early, and leaves it FROZEN; until then its state may still change.
                p.freeze_requested = True
                self._cpu(p).preempt()
                while p.on_cpu and time.monotonic() < deadline:
                    self._cond.wait(deadline - time.monotonic())
                p.freeze_requested = False
            if p.on_cpu:
                p.migrating = False
                raise ProcessStateError(f"process {pid} could not be frozen in {timeout} s")
            if p.state is ProcessState.RUNNABLE:
                self._runq.remove(p)
                p.state = ProcessState.FROZEN
            elif p.state is ProcessState.SLEEPING:
                p.sleep_left = max(0.0, (p.wake_at or 0.0) - time.monotonic())
                p.wake_at = None
                p.state = ProcessState.FROZEN
            elif p.state is ProcessState.ZOMBIE:
                p.migrating = False
                raise ProcessStateError(f"process {pid} finished while freezing "
                                        f"({p.exit_reason})")
            assert p.space is not None
            return p.space.resident_pages()

    def thaw(self, pid: int) -> None:
        """Resume a frozen process where it was (a migration failed or was refused)."""
        with self._cond:
            p = self._get(pid)
            if p.state is not ProcessState.FROZEN:
                return
            p.migrating = False
            self._resume(p)

    def _resume(self, p: Process) -> None:
        """A frozen process goes on: asleep for what was left of its sleep, else runnable."""
        if p.sleep_left is not None:
            p.state = ProcessState.SLEEPING
            p.wake_at = time.monotonic() + p.sleep_left
            p.sleep_left = None
            heapq.heappush(self._sleepers, (p.wake_at, next(self._seq), p))
            self._cond.notify_all()
        else:
            self._make_runnable(p)

    def program_size(self, pid: int) -> int:
        with self._lock:
            program = self._get(pid).program
            return program.size if program is not None else 0

    def export_image(self, pid: int, transport: Transport,
                     options: MigrationOptions) -> ProcessImage:
        """The frozen process as a ProcessImage, its touched pages put into `transport`."""
        with self._lock:
            p = self._get(pid)
            if p.state is not ProcessState.FROZEN:
                raise ProcessStateError(f"process {pid} is not frozen")
            assert p.space is not None and p.program is not None
            registers = self._cpu(p).save()
            fixed = {id(us): key for key, us in p.user_spaces.items()}
            text: list[AreaImage] = []
            other: list[AreaImage] = []
            text_frames: list[int] = []
            other_frames: list[int] = []
            for us in p.space.user_spaces:
                region = us.region
                assert region is not None
                present = region.present()
                area = AreaImage(fixed.get(id(us), ""), region.kind, us.start, region.npages,
                                 us.perms, tuple(present))
                frames = [region.frames[i] for i in present]
                if region.kind is RegionKind.TEXT:
                    text.append(area)
                    text_frames += frames
                else:
                    other.append(area)
                    other_frames += frames
            kernel = KernelState(
                name=p.name, brk_start=p.brk_start, brk=p.brk, mmap_top=p.mmap_top,
                tid_address=p.tid_address, sleep_left=p.sleep_left, stdout=bytes(p.stdout),
                stderr=bytes(p.stderr), stdout_taken=p.stdout_taken,
                stderr_taken=p.stderr_taken, accounting=p.accounting, created_at=p.created_at,
                migrations=tuple(p.migrations))
            program = p.program
            plate_name = p.plate_name
            memory = self.memory
        if options.resources is Resources.ALL and not plate_name:
            raise MigrationError(
                f"process {pid} arrived on {self.name} without its program image "
                "(resources=needed), so it cannot move with resources=all from here")
        # Page copies happen outside the lock: the process is frozen, nothing changes them.
        with_text = options.resources is Resources.NEEDED
        text_blocks = tuple(transport.put(b) for b in memory.gather(text_frames, BLOCK_PAGES)
                            ) if with_text else ()
        data_blocks = tuple(transport.put(b) for b in memory.gather(other_frames, BLOCK_PAGES))
        program_image = None
        if options.resources is Resources.ALL:
            raw = np.frombuffer(self.plate.read(plate_name), dtype=np.uint8)
            program_image = transport.put(raw.reshape(1, -1))
        return ProcessImage(pid=pid, program=program, registers=registers, kernel=kernel,
                            text_areas=tuple(text), other_areas=tuple(other),
                            text_blocks=text_blocks, data_blocks=data_blocks,
                            program_image=program_image)

    def delete_migrated(self, pid: int, record: MigrationRecord, reuse: bool) -> None:
        """Step 3: delete the local copy of a process that now lives elsewhere, holding its
        resources for reuse."""
        with self._cond:
            p = self._get(pid)
            del self._table[pid]
            p.migrating = False
            self.migration_bytes += record.bytes
        vm.release_address_space(self.managers, p, hold=reuse)
        p.space = self.kernel_space
        self.processes.release(p, hold=reuse)
        with self._cond:
            self._cond.notify_all()
        self._changed()

    def note_migration(self, record: MigrationRecord) -> None:
        with self._lock:
            self.migration_totals[f"out_{record.result}"] += 1
            for phase, seconds in record.phases.items():
                self.migration_phase_seconds[phase] = (
                    self.migration_phase_seconds.get(phase, 0.0) + seconds)
            self.migration_records.append(record.as_dict())
        log_migration(record)  # [metrics #5] one log line per phase

    def recent_migrations(self) -> list[dict[str, object]]:
        """[metrics #5] The records of the last migrations this machine drove, oldest first
        (what the metrics exporter and `tender-ray top` read)."""
        with self._lock:
            return list(self.migration_records)

    def migrate_space(self, pid: int) -> MigrationRecord:
        """Same-machine migration (hetero virtual memory): re-paste every user space into a
        new virtual space. No page is copied."""
        record = MigrationRecord(pid=pid, source=self.name, destination=self.name,
                                 transfer="space", reuse=self.config.reuse,
                                 resources="needed", started_at=time.time())
        start = time.perf_counter()
        self.freeze(pid)
        try:
            with self._lock:
                p = self._get(pid)
                old = p.space
                assert old is not None
                new = self.managers.spaces.acquire()
                for us in list(old.user_spaces):
                    old.unpaste(us)
                    new.paste(us)
                p.space = new
                old.clear()
                self.managers.spaces.release(old)
                registers = self._cpu(p).save()
                p.registers = registers
                self._bind(p)
        finally:
            self.thaw(pid)
        record.seconds = time.perf_counter() - start
        record.phases = {"transform_space": record.seconds}
        with self._lock:
            self.migration_totals["local_ok"] += 1
            p = self._get(pid)
            p.migrations.append(record.as_dict())
        return record

    # --- migration: the destination side -------------------------------------------------

    def create_incoming(self, pid: int, frames: int, reuse: bool) -> float:
        """Step 1: a kernel process for an arriving process (from the pool when reusing);
        the seconds it took."""
        start = time.perf_counter()
        self.faults.check("create")
        with self._lock:
            self._check_running()
            if self.cordoned:
                raise CordonedError(f"machine {self.name} is cordoned (draining): it takes "
                                    "no arriving processes; pick another destination")
            if pid in self._table or pid in self._incoming:
                raise MigrationError(f"machine {self.name} already has a process {pid}")
            if frames > self.memory.free_frames:
                raise OutOfMemoryError(
                    f"machine {self.name} has {self.memory.free_frames} free frames, process "
                    f"{pid} needs {frames}; pick another machine or free memory")
        p = self.processes.acquire(reuse=reuse)
        p.pid = pid
        p.state = ProcessState.KERNEL
        with self._lock:
            self._incoming[pid] = p
        seconds = time.perf_counter() - start
        if reuse:
            threading.Thread(target=self.processes.refill, daemon=True).start()
        return seconds

    def transform(self, image: ProcessImage, transport: Transport,
                  options: MigrationOptions) -> dict[str, float]:
        """Step 2: turn the kernel process into the arriving one; seconds per sub-step."""
        with self._lock:
            p = self._incoming.get(image.pid)
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
        p.migrations = [dict(r) for r in k.migrations]
        p.registers = image.registers
        self._bind(p)
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
        with self._cond:
            p = self._incoming.pop(pid, None)
            if p is None:
                raise MigrationError(f"no transformed process {pid} on {self.name}")
            self._table[pid] = p
            self.migration_totals["in_ok"] += 1
            self._resume(p)
            self._preempt_for(p)
        self._changed()

    def abort(self, pid: int) -> None:
        """Release whatever an unfinished incoming migration made here."""
        with self._lock:
            p = self._incoming.pop(pid, None)
            self.migration_totals["in_aborted"] += 1
        if p is not None:
            self._release_incoming(p)

    def _release_incoming(self, p: Process) -> None:
        if p.space is not None and p.space is not self.kernel_space:
            vm.release_address_space(self.managers, p)
        p.space = self.kernel_space
        self.processes.release(p)

    def record_migration(self, pid: int, record: dict[str, object]) -> None:
        """Keep the finished record of the migration that brought `pid` here."""
        with self._lock:
            p = self._table.get(pid)
            if p is not None:
                p.migrations.append(record)

    # --- asking about processes ----------------------------------------------------------

    def _get(self, pid: int) -> Process:
        p = self._table.get(pid)
        if p is None:
            raise UnknownProcessError(f"no process {pid} on machine {self.name}")
        return p

    def _info(self, p: Process) -> ProcessInfo:
        end = p.ended_at or time.time()
        return ProcessInfo(
            pid=p.pid, name=p.name, machine=self.name, state=p.state.value,
            exit_status=p.exit_status, exit_reason=p.exit_reason,
            cpu_seconds=p.accounting.cpu_seconds, run_seconds=end - p.created_at,
            resident_pages=p.space.resident_pages() if p.space is not self.kernel_space
            and p.space is not None else 0,
            syscalls=_counter(p.accounting.syscalls),
            unsupported=_counter(p.accounting.unsupported),
            migrations=tuple(p.migrations), created_at=p.created_at)

    def info(self, pid: int) -> ProcessInfo:
        with self._lock:
            return self._info(self._get(pid))

    def list_processes(self) -> list[ProcessInfo]:
        with self._lock:
            return [self._info(p) for p in self._table.values()]

    def load(self) -> tuple[MachineStatistics, list[ProcessInfo]]:
        """What a balancer or an exporter reads each round, in one call: the statistics and
        the processes (nothing taken, nothing reaped)."""
        with self._lock:
            return self.statistics(), self.list_processes()

    def wait(self, pid: int, timeout: float | None = None) -> ProcessInfo:
        """Wait until the process has ended (or `timeout` passed); its info either way."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            p = self._get(pid)
            while p.state is not ProcessState.ZOMBIE:
                self._check_running()
                if self._table.get(pid) is not p:
                    raise UnknownProcessError(f"process {pid} left machine {self.name}")
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._cond.wait(left if left is not None else 1.0)
            return self._info(p)

    def take_output(self, pid: int) -> tuple[bytes, bytes]:
        """Collect what the process wrote since the last call (stdout, stderr)."""
        with self._lock:
            p = self._get(pid)
            return self._take(p)

    @staticmethod
    def _take(p: Process) -> tuple[bytes, bytes]:
        out, err = bytes(p.stdout), bytes(p.stderr)
        p.stdout_taken += len(out)
        p.stderr_taken += len(err)
        p.stdout.clear()
        p.stderr.clear()
        return out, err

    def poll(self, reap: bool = True) -> PollResult:
        """Everything a driver follows, in one call: statistics, the processes, the output
        written since the last poll (with offsets, so chunks from machines a process moved
        between fall in order), and the processes that ended (reaped when `reap`)."""
        with self._lock:
            chunks: list[OutputChunk] = []
            ended: list[ProcessInfo] = []
            for p in list(self._table.values()):
                offsets = (p.stdout_taken, p.stderr_taken)
                out, err = self._take(p)
                if out:
                    chunks.append(OutputChunk(p.pid, 1, offsets[0], out))
                if err:
                    chunks.append(OutputChunk(p.pid, 2, offsets[1], err))
                if reap and p.state is ProcessState.ZOMBIE:
                    ended.append(self._info(p))
                    del self._table[p.pid]
                    self.processes.release(p)
            return PollResult(self.statistics(), tuple(self._info(p) for p in
                                                       self._table.values()),
                              tuple(chunks), tuple(ended))

    def cordon(self) -> None:
        """Take no new processes (exec or migration in) until `uncordon`."""
        with self._lock:
            self.cordoned = True
        self._changed()

    def uncordon(self) -> None:
        with self._lock:
            self.cordoned = False
        self._changed()

    def reap(self, pid: int) -> tuple[ProcessInfo, bytes, bytes]:
        """Remove an ended process; its final info and its uncollected output."""
        with self._lock:
            p = self._get(pid)
            if p.state is not ProcessState.ZOMBIE:
                raise ProcessStateError(f"process {pid} is {p.state.value}, not finished")
            info = self._info(p)
            out, err = bytes(p.stdout), bytes(p.stderr)
            del self._table[pid]
        self.processes.release(p)
        return info, out, err

    def kill(self, pid: int, signal: int = 9) -> ProcessInfo:
        """End a process from outside, as a signal would."""
        with self._cond:
            p = self._get(pid)
            # A migration owns a frozen process: let it finish first, then kill the process
            # if it is still here (a killed process must not also go on elsewhere).
            deadline = time.monotonic() + 60
            while p.migrating and time.monotonic() < deadline:
                self._cond.wait(deadline - time.monotonic())
            if self._table.get(pid) is not p:
                raise UnknownProcessError(f"process {pid} migrated away from {self.name} "
                                          "while being killed; kill it where it runs now")
            if p.migrating:
                raise ProcessStateError(f"process {pid} is still migrating; try again")
            self.exit_process(p, 128 + signal, f"killed by signal {signal}")
            if p.on_cpu:  # its computation releases it once the quantum, cut short, ends
                self._cpu(p).preempt()
            return self._info(p)

    # --- the machine as a whole ----------------------------------------------------------

    def _check_running(self) -> None:
        if self._stopped:
            raise MachineStoppedError(f"machine {self.name} has stopped")

    def statistics(self) -> MachineStatistics:
        with self._lock:
            states = Counter(p.state.value for p in self._table.values())
            runnable = states.get("runnable", 0) + states.get("running", 0)
            uptime = time.monotonic() - self._started
            comps = tuple(c.statistics() for c in self.computations)
            busy = sum(c.busy_seconds for c in self.computations)
            return MachineStatistics(
                name=self.name, state="stopped" if self._stopped else "running",
                computations=comps, processes=dict(states), runnable=runnable,
                load=runnable / len(self.computations),
                utilisation=busy / (uptime * len(self.computations)) if uptime > 0 else 0.0,
                memory=self.memory.statistics(),
                managers=(self.processes.statistics(), self.managers.spaces.statistics(),
                          self.managers.regions.statistics(),
                          self.managers.user_spaces.statistics()),
                syscalls=_counter(self.syscall_totals),
                unsupported=_counter(self.unsupported_totals),
                exited=self._exited, uptime=uptime, cordoned=self.cordoned,
                migrations=dict(self.migration_totals), migration_bytes=self.migration_bytes,
                migration_phase_seconds=dict(self.migration_phase_seconds),
                engine=self.engine)

    def stop(self) -> None:
        """Stop the computations, end every process and free everything."""
        with self._cond:
            if self._stopped:
                return
            self._stopped = True
            self._cond.notify_all()
        for comp in self.computations:
            if comp.thread is not None:
                comp.thread.join(timeout=30)
        with self._lock:
            for p in list(self._table.values()):
                if p.state is not ProcessState.ZOMBIE:
                    p.exit_status, p.exit_reason = 128 + 9, f"machine {self.name} stopped"
                    p.state = ProcessState.ZOMBIE
                    self._finish(p)
                self.processes.release(p)
            self._table.clear()
            for p in self._incoming.values():
                self._release_incoming(p)
            self._incoming.clear()
            self._runq.clear()
            self._sleepers.clear()
        self.processes.close()
        self.managers.spaces.close()
        self.managers.regions.close()
        self.managers.user_spaces.close()
        if self._plate_tmp is not None:
            self._plate_tmp.cleanup()
