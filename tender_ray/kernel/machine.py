"""Machine: one Tender machine — its resource managers, real memory, plate, process table and
the computations that run processes — as the client API sees it. Plain Python, no Ray: the
Ray layer (`cluster/`) wraps it in an actor.

The machine is a facade over its parts: the scheduler (`scheduler.py`, the only code that
changes a process's state), the system calls (`syscalls/`, reaching the machine through
`Services`), and its two sides of a migration (`source.py`, `destination.py`, mixed in).
"""

from __future__ import annotations

import functools
import itertools
import os
import tempfile
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Sequence

from tender_ray import engines
from tender_ray.abi.cpu_state import CpuState, Stop
from tender_ray.abi.linux import SEGV_MAPERR, Errno
from tender_ray.config import FaultAction, FaultSpec, MachineConfig
from tender_ray.engines import features
from tender_ray.errors import CordonedError, ProcessStateError, UnknownProcessError, UsageError
from tender_ray.kernel import address_space as vm
from tender_ray.kernel import job_control, process_tree, signals
from tender_ray.kernel.checkpoint import Checkpointing, held_output
from tender_ray.kernel.destination import MigrationDestination
from tender_ray.kernel.host_tree import HostTree
from tender_ray.kernel.scheduler import Scheduler
from tender_ray.kernel.snapshots import MachineStatistics, OutputChunk, PollResult, ProcessInfo
from tender_ray.kernel.source import MigrationSource
from tender_ray.kernel.syscalls import SystemCalls
from tender_ray.kernel.syscalls import files as file_calls
from tender_ray.kernel.syscalls import memory as memory_calls
from tender_ray.kernel.thread_group import ThreadGroups
from tender_ray.kernel.tracking import WriteTracking
from tender_ray.migration.faults import FaultPlan
from tender_ray.resources.file_view import FileViewSpec
from tender_ray.resources.manager import ResourceManager
from tender_ray.resources.open_file import OUTPUT_LIMIT
from tender_ray.resources.plate import Plate
from tender_ray.resources.process import Process, ProcessState, RunState
from tender_ray.resources.program import HeldPrograms, Program
from tender_ray.resources.real_memory import RealMemory
from tender_ray.resources.virtual_region import VirtualRegion
from tender_ray.resources.virtual_space import BadAddress, SpaceKind, VirtualSpace
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
    return FaultPlan(phase=spec.phase, action=_die if spec.action is FaultAction.EXIT else None,
                     side=spec.side.value, kind=spec.action.value, delay_s=spec.delay_s)


def choosing_features(program: Program, image: bytes, engine: str) -> frozenset[str]:
    """The CPU features a new process's code may pick paths by: the engine's, for glibc
    programs (dynamically linked, or static glibc, which names its cpu tunables); none for
    the others (musl never reads cpuid), so those move between any engines."""
    if program.interpreter or b"glibc.cpu." in image:
        return features.engine_features(engine)
    return frozenset()


class Machine(MigrationSource, MigrationDestination, Checkpointing, WriteTracking,
              ThreadGroups):
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
        self.host_tree = HostTree(self.name, self.config.host_files)  # the Ray layer links it
        self.syscalls = SystemCalls(self, self.host_tree)
        self.faults = fault_plan(self.config.fault)  # locks itself
        self.scheduler = Scheduler(self.name, self.config.computations, quantum=self.quantum,
                                   exact=self.exact, growth=self.config.quantum_growth,
                                   finish=self._finish, before_run=self._before_run,
                                   fault=self._fault, finish_member=self.finish_member)
        self.computations = self.scheduler.computations
        process_tree.watch(self)  # its blocked processes hear of every pipe change
        # The rest is guarded by the machine's lock (`scheduler.lock`).
        self._pids = itertools.count(pid_base)
        self._started = time.monotonic()
        self._exited = 0
        self.syscall_totals: Counter[str] = Counter()  # of every process that ended here
        self.unsupported_totals: Counter[str] = Counter()
        self.cordoned = False
        self.incoming = {}
        self.incoming_migrations = {}  # by migration id; with `incoming`, see destination.py
        self.migration_outcomes = OrderedDict()
        self.handed_over = {}  # pid -> migration id; see source.py
        self.migration_totals = Counter()  # "out_ok", "in_ok", "out_failed"...
        self.migration_bytes = 0
        self.migration_phase_seconds = {}
        self.migration_records = deque(maxlen=64)
        self._programs = HeldPrograms(PROGRAM_HOLD_LIMIT)  # for later execs of an image
        self.scheduler.start()
        self._init_checkpoints()  # and the periodic checkpointer, when the config asks

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
        # Host files still open here (a process that migrated away: its image carries their
        # paths and offsets, the destination reopened them) are closed before the entry
        # goes back to the pool.
        p.files.close_all()
        p.reset()
        p.signals = signals.SignalState()
        if p.cpu is not None:
            p.cpu.reset()
        p.space = self.kernel_space

    def _destroy_kernel_process(self, p: Process) -> None:
        if p.cpu is not None:
            p.cpu.close()
        p.cpu = None

    # --- creating processes --------------------------------------------------------------

    def exec(self, image: bytes, name: str, argv: Sequence[str | bytes],
             envp: Sequence[str | bytes] = (),
             read_file: Callable[[str], bytes] | None = None, *,
             files: FileViewSpec | None = None, stdin: str = "empty") -> int:
        """Load an x86-64 program (static, PIE or dynamically linked) and schedule it; its pid.

        The image is kept on the machine's plate once; the text is in memory from then on.
        A dynamically linked program's loader (PT_INTERP) is read with `read_file(path)`
        (unless given: from the process's file view, through the machine's own host files)
        and mapped too; the process starts in it.
        `files` is the process's view of the host tree (default: all of it, read-only, from
        the machine's cwd); `stdin` is "empty", "none" (EBADF), "stream" (`feed_stdin`) or a path
        in the view.
        """
        self.scheduler.check_running()
        if self.cordoned:
            raise CordonedError(f"machine {self.name} is cordoned (draining): start the "
                                "program on another machine")
        program = self._programs.get(image, name)  # too big for memory: vm.load_program says so
        plate_name = self.plate.store_program(image, program.digest)
        args = [a.encode() if isinstance(a, str) else a for a in argv] or [name.encode()]
        env = [e.encode() if isinstance(e, str) else e for e in envp]
        # The loader is read as the process will see files: switch to its file view here.
        interpreter = vm.read_interpreter(program, read_file or functools.partial(
            file_calls.read_in_view, self.syscalls, files))
        p = self.processes.acquire()
        try:
            vm.load_program(self.managers, p, program, image, args, env, interpreter,
                            vdso=engines.vdso_areas(self.engine))
            p.cpu_features = choosing_features(program, image, self.engine)
            self.syscalls.attach(p)
            file_calls.setup_files(self.syscalls, p, files, stdin,
                                   exe=args[0].decode("utf-8", "surrogateescape"),
                                   argv=args, envp=env)
        except BaseException:
            p.files.close_all()
            if p.space is not self.kernel_space:
                vm.release_address_space(self.managers, p)
            self.processes.release(p)
            raise
        p.name, p.plate_name, p.created_at = name, plate_name, time.time()
        return self.add_process(p)

    def add_process(self, p: Process) -> int:
        """Give a loaded process a pid of its own and schedule it (exec, fork); its pid."""
        with self.scheduler.lock:
            p.pid = next(self._pids)
            taken = self.ids_taken()  # pids and tids, of arrivals too
            while p.pid in taken:
                p.pid = next(self._pids)
            self.scheduler.add(p)
        self.scheduler.changed()
        return p.pid

    def _finish(self, p: Process) -> None:
        """An ended process gives back its address space; the entry waits to be reaped.
        The scheduler calls it once per process, lock held, no computation running it."""
        assert p.state is RunState.ZOMBIE
        p.ended_at = time.time()
        self.syscall_totals.update(p.accounting.all_syscalls())
        self.unsupported_totals.update(p.accounting.unsupported)
        process_tree.ended(self, p)  # the parent's zombie record, SIGCHLD
        vm.release_address_space(self.managers, p)
        p.files.close_all()  # host files and pipe ends go back with it
        p.space = self.kernel_space
        self._exited += 1
        self.scheduler.changed()

    # --- services for system calls (`syscalls.Services`; on the process's computation) ---

    def output_room(self, p: Process, fd: int) -> int:
        """Bytes a write to standard stream `fd` (1, 2) takes now without waiting: what is
        left of OUTPUT_LIMIT by the output the owner could take now. Output held for a
        checkpoint does not count (only a checkpoint releases it, and none may come: a writer
        waiting for it could wait forever); nor does anything before the owner's first take
        (a process nobody follows never waits). OSError EPIPE when the stream's reader has
        gone."""
        with self.scheduler.lock:
            p = process_tree.output_owner(self.scheduler.table, p)  # a child: its root's
            process_tree.drain_output(p)  # what it wrote straight to a host pipe counts
            return self.stream_room(p, fd)

    def stream_room(self, p: Process, fd: int) -> int:
        """`output_room` of the owner `p` as it stands (caller holds the lock)."""
        with self.scheduler.lock:
            reader = p.files.output()
            if fd in reader.closed:
                raise OSError(int(Errno.EPIPE), f"the reader of stream {fd} has gone")
            if not reader.followed:
                return OUTPUT_LIMIT
            held = held_output(p, self.checkpointing)[fd - 1]
            untaken = len(p.stdout if fd == 1 else p.stderr) - held
            return max(0, OUTPUT_LIMIT - untaken)

    def write_output(self, p: Process, fd: int, data: bytes) -> int:
        """Append what the process wrote to standard stream `fd` (the caller checked its room
        with `output_room`: only this process's computation appends, and a take only adds
        room); OSError EPIPE when the stream's reader has gone."""
        with self.scheduler.lock:
            p = process_tree.output_owner(self.scheduler.table, p)
            process_tree.drain_output(p)  # its host pipes' bytes were written first
            if fd in p.files.output().closed:
                raise OSError(int(Errno.EPIPE), f"the reader of stream {fd} has gone")
            (p.stdout if fd == 1 else p.stderr).extend(data)
            return len(data)

    def wait_for_output(self, p: Process, fd: int, need: int) -> None:
        """The writer waits (no deadline) until stream `fd` has room for `need` bytes: the
        owner's next take (`_take`) or the stream's close wakes it. Checked again under the
        lock, so a take that came meanwhile is not missed (then it does not wait)."""
        with self.scheduler.lock:
            reader = process_tree.output_owner(self.scheduler.table, p).files.output()
            if fd in reader.closed or self.output_room(p, fd) >= need:
                return
            reader.waiting = True
            self.scheduler.block(p)

    def stream_sink(self, p: Process) -> process_tree.StreamSink | None:  # `output_pipes`
        return process_tree.StreamSink.of(self.scheduler.lock, p, self.stream_room)

    def exit_process(self, p: Process, status: int, reason: str) -> None:
        self.scheduler.exit(p, status, reason)

    def raise_signal(self, p: Process, sig: int, code: int = signals.SI_KERNEL) -> None:
        """Queue a signal for `p` (its own call, SIGPIPE, a timer, `kill`); a waiting process
        wakes for one it will take, a running one is cut short so it takes it soon."""
        with self.scheduler.lock:
            if signals.queue(p, signals.SigInfo(sig, code, p.pid if code != signals.SI_KERNEL
                                                else 0)):
                self.scheduler.wake(p)
                if p.state.on_cpu:
                    p.context.preempt()

    def arrived(self, p: Process) -> None:
        self.timer_changed(p)  # a waiting arrival with an armed timer is woken on time
        self.checkpoint_arrival(p.pid)  # covered from the moment it is here

    def timer_changed(self, p: Process) -> None:
        """ITIMER_REAL was set: a process that waits meanwhile is woken by a host timer."""
        state = signals.of(p)
        if state.timer_at is None:
            return
        gen = state.timer_at

        def fire() -> None:
            with self.scheduler.lock:
                if self.scheduler.table.get(p.pid) is not p or state.timer_at != gen:
                    return  # gone, re-armed or already fired while it ran
                if signals.timer_due(state, time.monotonic()):
                    self.raise_signal(p, signals.Signal.SIGALRM)
                    self.timer_changed(p)

        timer = threading.Timer(max(0.0, gen - time.monotonic()), fire)
        timer.daemon = True
        timer.start()

    def _before_run(self, p: Process) -> None:
        """Deliver a pending signal before the process runs on: its default action, or its
        handler's frame (a register edit). Its computation calls it, CPU stopped."""
        with self.scheduler.lock:
            state = signals.of(p)
            if signals.timer_due(state, time.monotonic()):
                signals.queue(p, signals.SigInfo(signals.Signal.SIGALRM, signals.SI_KERNEL))
            for sig in signals.cpu_timers_due(state, p.accounting.cpu_seconds):
                signals.queue(p, signals.SigInfo(sig, signals.SI_KERNEL))
            if job_control.held(self.scheduler, p):
                return  # stopped: it runs again after SIGCONT
            while True:
                sig = state.deliverable(signals.tid_of(p))
                if not sig:
                    if state.wait is not None and signals.waits(p, state.wait):
                        state.wait = None  # it runs on: whatever it waited for is over
                    return
                action = state.actions[sig - 1]
                if sig == signals.Signal.SIGKILL or action.handler == signals.SIG_DFL:
                    state.take(sig, signals.tid_of(p))
                    if sig in job_control.STOP_SIGNALS:  # one that was blocked till now
                        job_control.stop(self.scheduler, p, sig)
                        job_control.held(self.scheduler, p)
                        return
                    if sig in signals.IGNORED_BY_DEFAULT:
                        continue
                    self.scheduler.exit(p, 128 + sig, signals.default_reason(sig))
                    return
                if action.handler == signals.SIG_IGN:
                    state.take(sig, signals.tid_of(p))
                    continue
                break

        def deliver(s: CpuState) -> CpuState:
            try:
                return signals.push_frame(p, sig, signals.end_wait(p, sig, s))
            except BadAddress:  # no room for the frame: Linux forces SIGSEGV
                self.scheduler.exit(p, 128 + 11, signals.default_reason(11)
                                    + f" (no stack for the frame of {signals.signal_name(sig)})")
                return s

        p.register_edits.append(deliver)

    def _fault(self, p: Process, stop: Stop) -> bool:
        """A fault the CPU raised: queued for the process's handler, pushed by `_before_run`
        over the faulting instruction (a handler that returns retries it, as on Linux);
        False (the process dies by it) without one. A touch just below a stack grows it
        instead. The scheduler calls it, lock held."""
        if p.state is RunState.EXITING:
            return False
        if stop.signal == signals.Signal.SIGSEGV and stop.code == SEGV_MAPERR and \
                memory_calls.grow_stack(p, stop.address):
            return True  # just below a stack: it grew, and the instruction runs again
        # si_addr: the address touched for a memory fault, the instruction's for the others.
        memory = stop.signal in (signals.Signal.SIGSEGV, signals.Signal.SIGBUS)
        addr = stop.address if memory else p.context.save().rip
        return signals.take_fault(p, stop.signal, stop.code, addr)

    def sleep_process(self, p: Process, seconds: float) -> None:
        self.scheduler.sleep(p, seconds)

    def block_process(self, p: Process) -> None:
        process_tree.block(self.scheduler, p)  # unless a pipe it may wait on just changed

    def wake_process(self, p: Process) -> None:
        self.scheduler.wake(p, members=False)  # (a futex wake: the one thread it chose)

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
            cpu_seconds=p.cpu_seconds, run_seconds=end - p.created_at,
            resident_pages=p.space.resident_pages() if p.space is not self.kernel_space
            and p.space is not None else 0,
            syscalls=_counter(p.accounting.all_syscalls()),
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

    def feed_stdin(self, pid: int, data: bytes, eof: bool = False) -> int:
        """Data for a process started with stdin="stream"; the bytes now buffered (at most
        1 MiB: feed more once it has read some). A process waiting for input wakes."""
        with self.scheduler.lock:
            p = self.scheduler.table.get(pid)
            if p is None:
                raise UnknownProcessError(f"no process {pid} on machine {self.name}")
            if p.state.migrating:  # its image may be taken already: data would be lost
                raise ProcessStateError(f"process {pid} is migrating: feed it again where "
                                        "it arrives")
            buffered = file_calls.feed_stdin(p, data, eof)
        self.scheduler.wake(p)
        return buffered

    def take_output(self, pid: int) -> tuple[bytes, bytes]:
        """Collect what the process wrote since the last call (stdout, stderr). Output not
        yet covered by a checkpoint is held (output commit, `kernel/checkpoint.py`)."""
        with self.scheduler.lock:
            return self._take(self.scheduler.get(pid))

    def take_chunks(self, pid: int) -> tuple[OutputChunk, ...]:
        """`take_output` with the offsets of what it takes in each stream, so a follower
        writes once what a restart from a checkpoint sends again."""
        with self.scheduler.lock:
            p = self.scheduler.get(pid)
            offsets = (p.stdout_taken, p.stderr_taken)
            out, err = self._take(p)
        return tuple(OutputChunk(pid, fd, offset, data) for fd, offset, data in
                     ((1, offsets[0], out), (2, offsets[1], err)) if data)

    def _take(self, p: Process) -> tuple[bytes, bytes]:
        """Take what the owner may have now; from the first take on, the process's outputs
        are bounded (`output_room`), and a writer waiting for room wakes."""
        process_tree.drain_output(p)  # what it wrote to host pipes first; they flow again
        held_out, held_err = held_output(p, self.checkpointing)
        out = bytes(p.stdout[:len(p.stdout) - held_out])
        err = bytes(p.stderr[:len(p.stderr) - held_err])
        p.stdout_taken += len(out)
        p.stderr_taken += len(err)
        del p.stdout[:len(out)]
        del p.stderr[:len(err)]
        reader = p.files.output()
        reader.followed = True
        if reader.waiting and (out or err):
            reader.waiting = False
            for writer in process_tree.output_writers(self.scheduler.table, p):
                self.scheduler.wake(writer)
        return out, err

    def close_output(self, pid: int, fd: int) -> None:
        """The reader of the process's standard stream `fd` (1, 2) has gone (the owner's own
        output closed): from now on a write there raises SIGPIPE and fails with EPIPE, as a
        pipe's writer does; a writer waiting for room wakes to find it so. It travels with
        the process."""
        if fd not in (1, 2):
            raise UsageError(f"stream {fd} is no output: give 1 (stdout) or 2 (stderr)")
        with self.scheduler.lock:
            p = self.scheduler.get(pid)
            if p.state.migrating:  # its image may be taken already: the close would be lost
                raise ProcessStateError(f"process {pid} is migrating: close its output again "
                                        "where it arrives")
            reader = p.files.output()
            reader.closed.add(fd)
            if reader.waiting:
                reader.waiting = False
                self.scheduler.wake(p)

    def poll(self, reap: bool = True) -> PollResult:
        """Everything a driver follows, in one call: statistics, the processes, the output
        written since the last poll (with offsets, so chunks from machines a process moved
        between fall in order), and the processes that ended (reaped when `reap`)."""
        with self.scheduler.lock:
            chunks: list[OutputChunk] = []
            ended: list[ProcessInfo] = []
            reaped: list[int] = []
            for p in list(self.scheduler.table.values()):
                offsets = (p.stdout_taken, p.stderr_taken)
                out, err = self._take(p)
                if out:
                    chunks.append(OutputChunk(p.pid, 1, offsets[0], out))
                if err:
                    chunks.append(OutputChunk(p.pid, 2, offsets[1], err))
                if reap and p.state is RunState.ZOMBIE:
                    ended.append(self._info(p))
                    reaped.append(p.pid)
                    self.scheduler.remove(p)
                    self.processes.release(p)
            result = PollResult(self.statistics(), tuple(self._info(p) for p in
                                                         self.scheduler.table.values()),
                                tuple(chunks), tuple(ended))
        for pid in reaped:  # collected: a restart of it would run it twice
            self.forget_checkpoint(pid)
        return result

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
        self.forget_checkpoint(pid)
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
            state = signals.of(p)
            if signal == signals.Signal.SIGKILL or (
                    state.actions[signal - 1].handler == signals.SIG_DFL
                    and signal not in signals.IGNORED_BY_DEFAULT
                    and not state.blocked & signals.bit(signal)):
                # Its default action ends it: at once, as SIGKILL, without waiting for a run.
                scheduler.kill(p, 128 + signal, signals.default_reason(signal))
            elif signal:  # queued: its handler or its default action, before it runs on
                # (a stop signal stops it, SIGCONT continues it: `job_control.send`)
                job_control.send(scheduler, p, signal, p.pid)
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
                engine=self.engine, checkpoints=dict(self.checkpoint_totals),
                checkpoint_records=tuple(self.checkpoint_records),
                restarts=tuple(self.restart_records),
                host_files=self.host_tree.statistics())

    def stop(self) -> None:
        """Stop the computations, end every process and free everything."""
        self._stop_checkpointer()
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
