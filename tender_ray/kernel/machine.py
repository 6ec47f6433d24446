"""Machine: one Tender machine — its resource managers, real memory, plate, process table and
the computations that run processes — as the client API sees it. Plain Python, no Ray: the
Ray layer (`cluster/`) wraps it in an actor.

The machine is a facade over its parts: the scheduler (`scheduler.py`, the only code that
changes a process's state), the system calls (`syscalls.py`, reaching the machine through
`Services`), and its two sides of a migration (`source.py`, `destination.py`, mixed in).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import os
import tempfile
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence

from tender_ray import engines
from tender_ray.config import FaultAction, FaultSpec, MachineConfig
from tender_ray.errors import CordonedError, ProcessStateError, UnknownProcessError
from tender_ray.kernel import address_space as vm
from tender_ray.kernel.destination import MigrationDestination
from tender_ray.kernel.scheduler import Scheduler
from tender_ray.kernel.snapshots import MachineStatistics, OutputChunk, PollResult, ProcessInfo
from tender_ray.kernel.source import MigrationSource
from tender_ray.kernel.syscalls import SystemCalls
from tender_ray.migration.faults import FaultPlan
from tender_ray.resources.manager import ResourceManager
from tender_ray.resources.plate import Plate
from tender_ray.resources.process import Process, ProcessState, RunState
from tender_ray.resources.program import Program, parse_program
from tender_ray.resources.real_memory import RealMemory
from tender_ray.resources.virtual_region import VirtualRegion
from tender_ray.resources.virtual_space import SpaceKind, VirtualSpace
from tender_ray.resources.virtual_user_space import VirtualUserSpace

PROGRAM_HOLD_LIMIT = 64  # parsed programs a machine holds for later execs of the same image
KILL_PATIENCE = 60.0  # seconds a kill waits for a migration that owns the process to end
FAULT_EXIT_STATUS = 17  # the status a machine's process dies with at an EXIT fault


def _counter(c: Counter[str]) -> dict[str, int]:
    return dict(sorted(c.items()))


def _die() -> None:
    os._exit(FAULT_EXIT_STATUS)  # a crash: nothing is cleaned up, as on a real one


def fault_plan(spec: FaultSpec | None) -> FaultPlan:
    """The machine's fault plan from its configuration (an empty plan without one)."""
    if spec is None:
        return FaultPlan()
    return FaultPlan(phase=spec.phase, action=_die if spec.action is FaultAction.EXIT else None)


class Machine(MigrationSource, MigrationDestination):
    """A Tender machine. Thread-safe; `stop()` ends it and fails every pending wait."""

    def __init__(self, config: MachineConfig | None = None, *, pid_base: int = 1000) -> None:
        # Fixed at construction, read-only after.
        self.config = config or MachineConfig()
        self.name = self.config.name
        self.exact = self.config.quantum_instructions is not None
        self.engine, self.engine_notice = engines.resolve(self.config.engine, exact=self.exact)
        self.quantum = self.config.quantum_instructions or self.config.quantum_us
        # The native engine maps real memory into its guests: a shared memory file.
        self.memory = RealMemory(self.config.memory_mib << 20, shared=self.engine == "native")
        self._plate_tmp: tempfile.TemporaryDirectory[str] | None = None
        if self.config.plate_dir:
            self.plate = Plate(self.config.plate_dir)
        else:
            self._plate_tmp = tempfile.TemporaryDirectory(prefix=f"tender-plate-{self.name}-")
            self.plate = Plate(self._plate_tmp.name)
        reuse = self.config.reuse
        memory = self.memory
        self.kernel_space = VirtualSpace(memory)  # single virtual memory: kernel processes
        self.kernel_space.kind = SpaceKind.KERNEL
        # The managers lock themselves.
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
        self.faults = fault_plan(self.config.fault)  # locks itself
        self.scheduler = Scheduler(self.name, self.config.computations, quantum=self.quantum,
                                   exact=self.exact, growth=self.config.quantum_growth,
                                   finish=self._finish)
        self.computations = self.scheduler.computations
        # The rest is guarded by the machine's lock (`scheduler.lock`).
        self._pids = itertools.count(pid_base)
        self._started = time.monotonic()
        self._exited = 0
        self.syscall_totals: Counter[str] = Counter()  # of every process that ended here
        self.unsupported_totals: Counter[str] = Counter()
        self.cordoned = False
        self.incoming = {}
        self.migration_totals = Counter()  # "out_ok", "in_ok", "out_failed"...
        self.migration_bytes = 0
        self.migration_phase_seconds = {}
        self.migration_records = deque(maxlen=64)
        self._programs: dict[str, Program] = {}  # image digest -> parsed program, held
        self.scheduler.start()

    @property
    def on_change(self) -> Callable[[], None] | None:
        """Called when a process starts, ends, arrives or leaves, or the machine is cordoned
        (set by whoever balances this machine, so it need not poll). It must not block: it
        may run with the machine's lock held."""
        return self.scheduler.on_change

    @on_change.setter
    def on_change(self, callback: Callable[[], None] | None) -> None:
        self.scheduler.on_change = callback

    # --- kernel processes (the process manager's hooks) ----------------------------------

    def _new_kernel_process(self) -> Process:
        p = Process()
        p.space = self.kernel_space
        p.cpu = engines.create(self.engine, self.memory, exact=self.exact)
        return p

    def _reset_kernel_process(self, p: Process) -> None:
        p.reset()
        if p.cpu is not None:
            p.cpu.reset()
        p.space = self.kernel_space

    def _destroy_kernel_process(self, p: Process) -> None:
        if p.cpu is not None:
            p.cpu.close()
        p.cpu = None

    # --- creating processes --------------------------------------------------------------

    def exec(self, image: bytes, name: str, argv: Sequence[str | bytes],
             envp: Sequence[str | bytes] = ()) -> int:
        """Load a static x86-64 program and schedule it; its pid.

        The image is kept on the machine's plate once; the text is in memory from then on.
        """
        self.scheduler.check_running()
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
            self.syscalls.attach(p)
        except BaseException:
            if p.space is not self.kernel_space:
                vm.release_address_space(self.managers, p)
            self.processes.release(p)
            raise
        with self.scheduler.lock:
            p.pid = next(self._pids)
            while p.pid in self.scheduler.table or p.pid in self.incoming:  # one that arrived
                p.pid = next(self._pids)
            p.name = name
            p.plate_name = plate_name
            p.created_at = time.time()
            self.scheduler.add(p)
        self.scheduler.changed()
        return p.pid

    def _program(self, image: bytes, name: str) -> Program:
        """The program resource of an image: parsed once per image, held for later execs
        (the first exec of an image pays for reading its headers)."""
        digest = hashlib.sha256(image).hexdigest()
        with self.scheduler.lock:
            held = self._programs.get(digest)
        if held is None:
            held = parse_program(image, name)
            with self.scheduler.lock:
                self._programs[digest] = held
                while len(self._programs) > PROGRAM_HOLD_LIMIT:  # the oldest goes first
                    del self._programs[next(iter(self._programs))]
        return held if held.name == name else dataclasses.replace(held, name=name)

    def _finish(self, p: Process) -> None:
        """An ended process gives back its address space; the entry waits to be reaped.
        The scheduler calls it once per process, lock held, no computation running it."""
        assert p.state is RunState.ZOMBIE
        p.ended_at = time.time()
        self.syscall_totals.update(p.accounting.syscalls)
        self.unsupported_totals.update(p.accounting.unsupported)
        vm.release_address_space(self.managers, p)
        p.space = self.kernel_space
        self._exited += 1
        self.scheduler.changed()

    # --- services for system calls (`syscalls.Services`; on the process's computation) ---

    def append_output(self, p: Process, fd: int, data: bytes) -> None:
        with self.scheduler.lock:
            (p.stdout if fd == 1 else p.stderr).extend(data)

    def exit_process(self, p: Process, status: int, reason: str) -> None:
        self.scheduler.exit(p, status, reason)

    def sleep_process(self, p: Process, seconds: float) -> None:
        self.scheduler.sleep(p, seconds)

    def set_fs_base(self, p: Process, value: int) -> None:
        p.context.set_fs_base(value)

    def get_fs_base(self, p: Process) -> int:
        return p.context.fs_base()

    # --- asking about processes ----------------------------------------------------------

    def _info(self, p: Process) -> ProcessInfo:
        end = p.ended_at or time.time()
        return ProcessInfo(
            pid=p.pid, name=p.name, machine=self.name, state=p.shown_state.value,
            exit_status=p.exit_status, exit_reason=p.exit_reason,
            cpu_seconds=p.accounting.cpu_seconds, run_seconds=end - p.created_at,
            resident_pages=p.space.resident_pages() if p.space is not self.kernel_space
            and p.space is not None else 0,
            syscalls=_counter(p.accounting.syscalls),
            unsupported=_counter(p.accounting.unsupported),
            migrations=tuple(p.migrations), created_at=p.created_at)

    def info(self, pid: int) -> ProcessInfo:
        with self.scheduler.lock:
            return self._info(self.scheduler.get(pid))

    def list_processes(self) -> list[ProcessInfo]:
        with self.scheduler.lock:
            return [self._info(p) for p in self.scheduler.table.values()]

    def load(self) -> tuple[MachineStatistics, list[ProcessInfo]]:
        """What a balancer or an exporter reads each round, in one call: the statistics and
        the processes (nothing taken, nothing reaped)."""
        with self.scheduler.lock:
            return self.statistics(), self.list_processes()

    def wait(self, pid: int, timeout: float | None = None) -> ProcessInfo:
        """Wait until the process has ended (or `timeout` passed); its info either way."""
        deadline = None if timeout is None else time.monotonic() + timeout
        scheduler = self.scheduler
        with scheduler.cond:
            p = scheduler.get(pid)
            while p.state is not RunState.ZOMBIE:
                scheduler.check_running()
                if scheduler.table.get(pid) is not p:
                    raise UnknownProcessError(f"process {pid} left machine {self.name}")
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                scheduler.cond.wait(left if left is not None else 1.0)
            return self._info(p)

    def take_output(self, pid: int) -> tuple[bytes, bytes]:
        """Collect what the process wrote since the last call (stdout, stderr)."""
        with self.scheduler.lock:
            return self._take(self.scheduler.get(pid))

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
        with self.scheduler.lock:
            chunks: list[OutputChunk] = []
            ended: list[ProcessInfo] = []
            for p in list(self.scheduler.table.values()):
                offsets = (p.stdout_taken, p.stderr_taken)
                out, err = self._take(p)
                if out:
                    chunks.append(OutputChunk(p.pid, 1, offsets[0], out))
                if err:
                    chunks.append(OutputChunk(p.pid, 2, offsets[1], err))
                if reap and p.state is RunState.ZOMBIE:
                    ended.append(self._info(p))
                    self.scheduler.remove(p)
                    self.processes.release(p)
            return PollResult(self.statistics(), tuple(self._info(p) for p in
                                                       self.scheduler.table.values()),
                              tuple(chunks), tuple(ended))

    def cordon(self) -> None:
        """Take no new processes (exec or migration in) until `uncordon`."""
        with self.scheduler.lock:
            self.cordoned = True
        self.scheduler.changed()

    def uncordon(self) -> None:
        with self.scheduler.lock:
            self.cordoned = False
        self.scheduler.changed()

    def reap(self, pid: int) -> tuple[ProcessInfo, bytes, bytes]:
        """Remove an ended process; its final info and its uncollected output."""
        with self.scheduler.lock:
            p = self.scheduler.get(pid)
            if p.state is not RunState.ZOMBIE:
                raise ProcessStateError(f"process {pid} is {p.shown_state.value}, not "
                                        "finished")
            info = self._info(p)
            out, err = bytes(p.stdout), bytes(p.stderr)
            self.scheduler.remove(p)
        self.processes.release(p)
        return info, out, err

    def kill(self, pid: int, signal: int = 9) -> ProcessInfo:
        """End a process from outside, as a signal would."""
        scheduler = self.scheduler
        with scheduler.cond:
            p = scheduler.get(pid)
            # A migration owns a frozen process: let it finish first, then kill the process
            # if it is still here (a killed process must not also go on elsewhere).
            deadline = time.monotonic() + KILL_PATIENCE
            while p.state.migrating and time.monotonic() < deadline:
                scheduler.cond.wait(deadline - time.monotonic())
            if scheduler.table.get(pid) is not p:
                raise UnknownProcessError(f"process {pid} migrated away from {self.name} "
                                          "while being killed; kill it where it runs now")
            if p.state.migrating:
                raise ProcessStateError(f"process {pid} is still migrating; try again")
            scheduler.kill(p, 128 + signal, f"killed by signal {signal}")
            return self._info(p)

    # --- the machine as a whole ----------------------------------------------------------

    def statistics(self) -> MachineStatistics:
        with self.scheduler.lock:
            states = Counter(p.shown_state.value for p in self.scheduler.table.values())
            runnable = states.get(ProcessState.RUNNABLE.value, 0) + states.get(
                ProcessState.RUNNING.value, 0)
            uptime = time.monotonic() - self._started
            comps = tuple(c.statistics() for c in self.computations)
            busy = sum(c.busy_seconds for c in self.computations)
            return MachineStatistics(
                name=self.name, state="stopped" if self.scheduler.stopped else "running",
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
        if not self.scheduler.halt():
            return
        with self.scheduler.lock:
            for p in self.scheduler.end_all(f"machine {self.name} stopped"):
                self.processes.release(p)
            for p in self.incoming.values():
                self.release_incoming(p)
            self.incoming.clear()
        self.processes.close()
        self.managers.spaces.close()
        self.managers.regions.close()
        self.managers.user_spaces.close()
        if self._plate_tmp is not None:
            self._plate_tmp.cleanup()


__all__ = ["Machine", "fault_plan"]
