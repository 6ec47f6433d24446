"""Machine: one Tender machine — its resource managers, real memory, plate, process table and
the computations that run processes. Plain Python, no Ray: `cluster.py` wraps it in an actor.

Computations are host threads; the CPU releases the interpreter lock while it emulates, so the
machine keeps answering calls while its processes run. All process-table changes happen under
one lock; a running process's CPU is touched only by the computation that holds it.
"""

from __future__ import annotations

import heapq
import itertools
import tempfile
import threading
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from . import vm
from .config import MachineConfig
from .cpu import Cpu, EngineError, Stop, StopKind
from .errors import (
    BadProgramError,
    MachineStoppedError,
    ProcessStateError,
    UnknownProcessError,
)
from .resources.computation import Computation, ComputationState, ComputationStatistics
from .resources.manager import ManagerStatistics, ResourceManager
from .resources.plate import Plate
from .resources.process import Process, ProcessState
from .resources.program import parse_program
from .resources.real_memory import RealMemory, RealMemoryStatistics
from .resources.virtual_region import VirtualRegion
from .resources.virtual_space import SpaceKind, VirtualSpace
from .resources.virtual_user_space import VirtualUserSpace
from .syscalls import SystemCalls


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
    extra: dict[str, object] = field(default_factory=dict)


def _counter(c: Counter[str]) -> dict[str, int]:
    return dict(sorted(c.items()))


class Machine:
    """A Tender machine. Thread-safe; `stop()` ends it and fails every pending wait."""

    def __init__(self, config: MachineConfig | None = None, *, pid_base: int = 1000) -> None:
        self.config = config or MachineConfig()
        self.name = self.config.name
        self.memory = RealMemory(self.config.memory_mib << 20)
        if self.config.plate_dir:
            self.plate = Plate(self.config.plate_dir)
            self._plate_tmp = None
        else:
            self._plate_tmp = tempfile.TemporaryDirectory(prefix=f"tender-plate-{self.name}-")
            self.plate = Plate(self._plate_tmp.name)
        self.exact = self.config.quantum_instructions is not None
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
        self.computations = [Computation(i) for i in range(self.config.computations)]
        for comp in self.computations:
            comp.thread = threading.Thread(target=self._run_computation, args=(comp,),
                                           name=f"{self.name}-computation-{comp.index}",
                                           daemon=True)
            comp.thread.start()

    # --- kernel processes (the process manager's hooks) ----------------------------------

    def _new_kernel_process(self) -> Process:
        p = Process()
        p.space = self.kernel_space
        p.cpu = Cpu(self.memory, exact=self.exact)
        return p

    def _reset_kernel_process(self, p: Process) -> None:
        cpu = p.cpu
        p.reset()
        if isinstance(cpu, Cpu):
            cpu.reset()
        p.space = self.kernel_space

    def _destroy_kernel_process(self, p: Process) -> None:
        if isinstance(p.cpu, Cpu):
            p.cpu.close()
        p.cpu = None

    def _cpu(self, p: Process) -> Cpu:
        assert isinstance(p.cpu, Cpu)
        return p.cpu

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
        program = parse_program(image, name)
        if vm.frames_needed(program) > self.memory.nframes:
            raise BadProgramError(name, f"too big for real memory: needs "
                                        f"{vm.frames_needed(program) * 4} KiB, machine "
                                        f"{self.name} has {self.memory.size >> 10} KiB")
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
            p.name = name
            p.plate_name = plate_name
            p.created_at = time.time()
            self._table[p.pid] = p
            self._make_runnable(p)
        return p.pid

    def _make_runnable(self, p: Process) -> None:
        p.state = ProcessState.RUNNABLE
        self._runq.append(p)
        self._cond.notify_all()

    # --- services for system calls (called on a computation thread) ----------------------

    def append_output(self, p: Process, fd: int, data: bytes) -> None:
        with self._lock:
            (p.stdout if fd == 1 else p.stderr).extend(data)

    def exit_process(self, p: Process, status: int, reason: str) -> None:
        """Mark the process ended; its computation releases it once the CPU has stopped."""
        with self._lock:
            p.exit_status = status
            p.exit_reason = reason
            p.state = ProcessState.ZOMBIE

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
                    if p.state is ProcessState.SLEEPING and p.wake_at == wake_at:
                        p.wake_at = None
                        self._make_runnable(p)
                if self._runq:
                    p = self._runq.popleft()
                    p.state = ProcessState.RUNNING
                    comp.pid, comp.state = p.pid, ComputationState.RUNNING
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
            try:
                stop = cpu.run(self.quantum)
            except EngineError as exc:
                stop = Stop(StopKind.FAULT, 0, 0, f"engine failure: {exc}")
            cpu_time = time.thread_time() - cpu_time
            wall = time.monotonic() - wall
            with self._cond:
                comp.busy_seconds += wall
                comp.quanta += 1
                comp.pid, comp.state = None, ComputationState.IDLE
                p.accounting.cpu_seconds += cpu_time
                p.accounting.quanta += 1
                if stop.kind is StopKind.FAULT and p.state is not ProcessState.ZOMBIE:
                    status = 128 + stop.signal if stop.signal else 128 + 11
                    self.exit_process(p, status, f"{stop.detail} at {stop.address:#x}"
                                      if stop.address else stop.detail)
                if p.state is ProcessState.ZOMBIE:
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
        """An ended process gives back its address space; the entry waits to be reaped."""
        p.ended_at = time.time()
        for name, n in p.accounting.syscalls.items():
            self.syscall_totals[name] += n
        for name, n in p.accounting.unsupported.items():
            self.unsupported_totals[name] += n
        vm.release_address_space(self.managers, p)
        p.space = self.kernel_space
        self._exited += 1

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
            out, err = bytes(p.stdout), bytes(p.stderr)
            p.stdout.clear()
            p.stderr.clear()
            return out, err

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
            if p.state is ProcessState.ZOMBIE:
                return self._info(p)
            if p.state is ProcessState.RUNNING:
                # The computation finishes the quantum, then sees the zombie and releases it.
                self.exit_process(p, 128 + signal, f"killed by signal {signal}")
                return self._info(p)
            if p.state is ProcessState.RUNNABLE:
                self._runq.remove(p)
            self.exit_process(p, 128 + signal, f"killed by signal {signal}")
            self._finish(p)
            self._cond.notify_all()
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
                exited=self._exited, uptime=uptime, cordoned=self.cordoned)

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
            self._runq.clear()
            self._sleepers.clear()
        self.processes.close()
        self.managers.spaces.close()
        self.managers.regions.close()
        self.managers.user_spaces.close()
        if self._plate_tmp is not None:
            self._plate_tmp.cleanup()
