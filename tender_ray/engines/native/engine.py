"""The native engine: a Tender process's instructions run on the host CPU, in a host process
traced by its machine (Linux x86-64).

Every guest is a small stub program (`_stub/stub.S`) started by the machine's tracer thread. It
installs a seccomp filter that hands *every* system call to the tracer (SECCOMP_RET_TRACE;
system calls through another ABI kill it), so the machine serves each one exactly as it does
for the emulated CPU and the kernel never runs a guest's call: the tracer skips it (orig_rax =
-1) and writes the machine's result into rax. That is the sandbox: no files, sockets, children,
exec or signals to others, because nothing reaches the host kernel. (One exception, checked: a
munmap the machine has done on a valid range is let through, as it is exactly the host change
needed. The other: reads of read-only regular files held as real host descriptors, and writes
to its own standard streams held as host pipes, go straight to the kernel: `direct_files`.)

Memory stays the machine's: the guest maps the machine's real-memory file where its virtual
space has present pages (`mappings`). A guest started on a native machine has a vDSO of
Tender's own in its image (`vdso`): while it runs here, its clock reads call the host's vDSO
(mapped at one fixed address in every guest host process) without a stop; at every stop they
fall back to system calls, so nothing ties a process to its host.

Computation = permission to run: a quantum ends when the guest's ITIMER_PROF (armed by the
tracer) raises SIGPROF, or, for quanta shorter than a kernel tick, when the machine's timer
thread signals the guest through a pidfd (SIGURG); the tracer snapshots it at the signal stop
and suppresses the signal. Registers go in and out in the engine-neutral `CpuState`
(`registers`), so a process moves between engines mid-run.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import threading
import time
from typing import Final

from tender_ray.abi.cpu_state import CpuState, Stop, StopKind, SyscallHandler
from tender_ray.abi.linux import (
    ITIMER_PROF,
    SEGV_ACCERR,
    SEGV_MAPERR,
    SI_KERNEL,
    SI_USER,
    SYS_BRK,
    SYS_MADVISE,
    SYS_MMAP,
    SYS_MPROTECT,
    SYS_MREMAP,
    SYS_MUNMAP,
    SYS_SETITIMER,
    Signal,
)
from tender_ray.engines.base import Replay
from tender_ray.engines.native import host_threads, vdso
from tender_ray.engines.native.direct_files import DirectFiles
from tender_ray.engines.native.libc import PTRACE_EVENT_SECCOMP, PTRACE_SINGLESTEP, ptrace
from tender_ray.engines.native.mappings import HostMappings
from tender_ray.engines.native.registers import MASK64, state_from_host, state_to_host
from tender_ray.engines.native.tracer import (
    HARMLESS_SIGNALS,
    PENDING,
    QUANTUM_SIGNAL,
    TASK_SIZE,
    VPN_LIMIT,
    GuestGone,
    Host,
    describe_status,
    release_tracer,
    signal_text,
    tracer_for,
)
from tender_ray.errors import EngineError, OutOfMemoryError
from tender_ray.resources.dirty_pages import DirtyPages
from tender_ray.resources.real_memory import PAGE_SHIFT, PAGE_SIZE, RealMemory
from tender_ray.resources.virtual_space import VirtualSpace

# The calls that change an address space. The machine applies them to the virtual space and may
# ask for a stop so that an emulated CPU flushes its TLB; here the host mappings are made to
# match before the guest runs on, so that stop is not needed (memory calls never sleep or end
# a process).
MEMORY_CALLS: Final = frozenset({SYS_MMAP, SYS_MPROTECT, SYS_MUNMAP, SYS_BRK, SYS_MREMAP,
                                 SYS_MADVISE})

# Quanta of at least this many microseconds are measured by the kernel: an ITIMER_PROF in the
# guest (its CPU time; the kernel checks at each tick, so shorter ones would be rounded up to
# a tick) raises SIGPROF, which the tracer takes as the end of the quantum. No thread of ours
# wakes for it. Shorter quanta use the timer thread and a signal through the guest's pidfd.
KERNEL_TIMER_MIN_US: Final = 4000
_STEP_LIMIT: Final = 100_000  # instructions a clock read in the host's vDSO may take to return
_ITIMERVAL_OFFSET: Final = 0x800  # where in the trampoline page the tracer puts a timeval pair
_FAULT_NAMES: Final[dict[int, str]] = {Signal.SIGILL: "invalid instruction",
                       Signal.SIGTRAP: "breakpoint or trap", Signal.SIGBUS: "bus error",
                       Signal.SIGFPE: "arithmetic error", Signal.SIGSEGV: "segmentation fault",
                       Signal.SIGSYS: "bad system call"}


class NativeCpu:
    """One process's processor context as a traced host process (the `Engine` protocol).

    Its methods run on the computation (or machine) thread; everything touching the host
    process runs on the machine's tracer thread (`_t_*`, and the `tracer_*` methods the tracer
    calls). While the guest is stopped, its registers are cached here: `save`, `load` and the
    fs base never wait for the tracer.

    `replay` explains a fault the host reports as another engine would (see `base.Replay`);
    without it a fault is described from the host's signal alone.
    """

    # Write tracking: while the space's writes are tracked, the pages not yet written in the
    # interval are mapped read-only (`host_map.desired_runs`); the first store to one stops
    # the guest with SIGSEGV (SEGV_ACCERR), which marks the page, maps it writable and is
    # suppressed (`HostMappings.write_fault`). A take (the interval's `epoch` moves) makes
    # the next run resynchronise every mapping, read-only again.
    tracks_writes = True
    spawn_thread, moves_threads = host_threads.spawn, True  # threads move, remade by `spawn`

    def __init__(self, memory: RealMemory, *, replay: Replay | None = None) -> None:
        self.memory = memory
        self._replay = replay
        self._tracer = tracer_for(memory)
        self.space: VirtualSpace | None = None
        self.handler: SyscallHandler | None = None
        self._host: Host | None = None
        self._pending: CpuState | None = None  # loaded, not yet written to the host
        self._full_sync = True
        self._dirty: DirtyPages | None = None  # the write tracking the mappings agree with
        self._dirty_epoch = -1
        self._lost: Stop | None = None  # the host process died under a bound process
        self._run_id = 0
        self._preempt_pending = False  # [preempt] asked to end a run that had not begun
        self._signalled = -1  # the run id the quantum signal was sent for
        self._in_run = False
        self._run_lock = threading.Lock()
        self._fault_repeats = 0
        self._last_fault = -1
        self._closed = False
        # (`vdso_steps`: instructions stepped to bring a stopped guest out of the host's vDSO)
        self.stats = {"syscalls": 0, "faults": 0, "injected": 0, "quanta": 0, "vdso_steps": 0}
        self._mappings = HostMappings(self._tracer, self.stats)
        # Read-only host files the guest holds as real descriptors (`direct_files`); the
        # kernel points `direct.table` at the bound process's descriptor table.
        self.direct = DirectFiles(self._tracer, self.stats)
        # Host CPU time the guest used: in the last run, and in all runs (the computation's
        # own thread only waits, so its CPU time does not show what the process cost).
        self.last_run_cpu_seconds = 0.0
        self.cpu_seconds = 0.0
        self._cpu_mark = 0.0
        # Added to the host's CLOCK_MONOTONIC by the process's vDSO (`vdso`): what the
        # machine's own clock adds for it (nothing, while every machine reads this host's).
        self.monotonic_offset_ns = 0
        self._tracer.submit(self._t_prepare)  # a kernel process is prepared in advance

    # --- the Engine protocol -----------------------------------------------------------

    def bind(self, space: VirtualSpace, handler: SyscallHandler) -> None:
        self.space = space
        self.handler = handler
        self._full_sync = True
        self._lost = None
        self.direct.unbind()
        # Repeated faults on one page count only within one process (the next one on this
        # context touches the same stack pages once each).
        self._last_fault, self._fault_repeats = -1, 0

    def load(self, state: CpuState) -> None:
        self._pending = state

    def save(self) -> CpuState:
        if self._pending is not None:
            return self._pending
        host = self._host
        if host is None:
            raise EngineError("the native CPU holds no process state")
        return state_from_host(host.regs, bytes(host.fp[:host.fp_size]))

    def fs_base(self) -> int:
        if self._pending is not None:
            return self._pending.fs_base
        return int(self._host.regs.fs_base) if self._host is not None else 0

    def set_fs_base(self, value: int) -> None:
        if self._pending is not None:
            self._pending = dataclasses.replace(self._pending, fs_base=value)
        elif self._host is not None:
            self._host.regs.fs_base = value & MASK64
            self._host.regs_dirty = True

    def run(self, quantum: int) -> Stop:
        """Let the guest run for `quantum` microseconds at most; why it stopped."""
        if self.space is None or self.handler is None:
            raise EngineError("native CPU has no process bound")
        try:
            result = self._tracer.call(lambda: self._t_begin(quantum))
        except EngineError:
            raise
        except Exception as exc:
            raise EngineError(f"native engine: {exc}") from exc
        assert isinstance(result, Stop)
        return result

    def reset(self) -> None:
        """Forget the process; a fresh host process is prepared for the next one."""
        self.space = None
        self.handler = None
        self._pending = None
        self._lost = None
        self._full_sync = True
        self._mappings.forget_window()
        self._tracer.submit(self._t_renew)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.space = None
        self.handler = None
        tracer = self._tracer
        tracer.submit(self.tracer_discard)
        release_tracer(self.memory, tracer)

    @property
    def host_pid(self) -> int:
        """The pid of the host process running the guest (0 when there is none)."""
        host = self._host
        return host.pid if host is not None and host.alive else 0

    def preempt(self) -> None:
        """End the running quantum now (from another thread): as if its time were up. Asked
        before the run has begun, it ends that run as soon as it begins."""
        with self._run_lock:
            if not self._in_run:
                self._preempt_pending = True
                return
            run_id = self._run_id
        self.quantum_expired(run_id)

    # --- called by the timer thread (and the tracer) -----------------------------------

    def quantum_expired(self, run_id: int) -> None:
        """Run `run_id`'s time is up: signal its guest, if that run is still going."""
        with self._run_lock:
            if not self._in_run or self._run_id != run_id:
                return
            self._signalled = run_id
            host = self._host
        if host is not None:
            host.send(QUANTUM_SIGNAL)

    def end_run(self) -> None:
        """The run is over (any thread may ask once more): account the guest's CPU time."""
        with self._run_lock:
            was_running, self._in_run = self._in_run, False
            self._preempt_pending = False
        if was_running:  # a guest that is not running has nothing left in its output pipes
            self.direct.drain_outputs()
        host, space = self._host, self.space
        if was_running and space is not None:
            vdso.clear(space)  # stopped: its clock calls are system calls until it runs here
        if was_running and host is not None:
            used = max(0.0, host_threads.cpu_seconds(host) - self._cpu_mark) if host.alive else 0.0
            self.last_run_cpu_seconds = used
            self.cpu_seconds += used

    # --- tracer thread: preparing and discarding host processes -------------------------

    def _t_prepare(self) -> None:
        if self._host is None and not self._closed:
            host = self._tracer.spawn()
            self._host = host
            self._tracer.owners[host.pid] = self

    def tracer_discard(self) -> None:
        """Kill the host process (tracer thread)."""
        host, self._host = self._host, None
        if host is not None:
            host_threads.discard(self._tracer, host)

    def _t_renew(self) -> None:
        self.tracer_discard()
        self._t_prepare()

    def tracer_idle_event(self, status: int) -> None:
        """An event of a guest that is not running: only its end can come."""
        host = self._host
        if host is None or not (os.WIFEXITED(status) or os.WIFSIGNALED(status)):
            return
        host.mark_dead(status)
        self._tracer.owners.pop(host.pid, None)
        if self.space is not None:
            sig, why = describe_status(status)
            self._lost = Stop(StopKind.FAULT, sig, 0, f"{why} (host process {host.pid})")

    # --- tracer thread: running --------------------------------------------------------

    def _t_begin(self, quantum: int) -> object:
        if self._lost is not None:
            return self._lost
        host = self._host
        if (status := host_threads.lost(host)) is not None:
            return self._t_lost(status)
        if host is None or not host.alive:
            self.tracer_discard()
            self._t_prepare()
            host = self._host
            assert host is not None
        try:
            if self._pending is None and self.space is not None and host_threads.alone(host) \
                    and self.direct.wants_rehost(host, self.space):
                host = self._t_rehost(host)
            if self._pending is not None:
                state_to_host(self._pending, host.regs, host.fp, host.fp_size)
                host.regs_dirty = host.fp_dirty = True
                self._pending = None
            dirty = self.space.dirty if self.space is not None else None
            if dirty is not self._dirty or (dirty is not None
                                            and dirty.epoch != self._dirty_epoch):
                self._dirty, self._dirty_epoch = dirty, dirty.epoch if dirty else -1
                self._full_sync = True  # tracking began, ended, or a new interval
            if self._full_sync:
                self._t_sync_all()
            assert self.space is not None
            self.direct.before_run(host, self.space, self._t_sync_range)
            kernel_timer = quantum >= KERNEL_TIMER_MIN_US and not host_threads.thread_quanta(host)
            if host.itimer_us != (quantum if kernel_timer else 0):
                self._t_set_itimer(quantum if kernel_timer else 0)
            self._t_time_page()
            self._cpu_mark = host_threads.cpu_seconds(host)
            self.last_run_cpu_seconds = 0.0
            with self._run_lock:
                self._run_id += 1
                self._in_run = True
                run_id = self._run_id
                if self._preempt_pending:  # `_t_resume` ends the quantum before it starts
                    self._signalled = run_id
            self._tracer.running[host.pid] = self
            stop = self._t_resume()
        except (GuestGone, OSError) as exc:
            return self._t_vanished(host, exc)
        if stop is not None:
            self._tracer.running.pop(host.pid, None)
            self.end_run()
            return stop
        self.stats["quanta"] += 1
        request = self._tracer.current
        assert request is not None
        self._tracer.runs[host.pid] = request
        if not kernel_timer:
            self._tracer.timer.arm(self, run_id, time.monotonic() + quantum / 1e6)
        return PENDING

    def _t_sync_range(self, lo: int, hi: int) -> None:
        """Make the host mappings of pages [lo, hi) match the virtual space."""
        assert self._host is not None and self.space is not None
        self._mappings.sync(self._host, self.space, lo, hi)

    def _t_rehost(self, host: Host) -> Host:
        """A fresh host process for the stopped guest: filters only narrow (`direct_files`)."""
        if not host.fp_dirty:
            host.get_fp()
        self._pending = state_from_host(host.regs, bytes(host.fp[:host.fp_size]))
        self.tracer_discard()
        self._t_prepare()
        self._full_sync = True
        self._mappings.forget_window()
        self.direct.rehosted()
        assert self._host is not None
        return self._host

    def _t_sync_all(self) -> None:
        """Make every host mapping match the virtual space."""
        assert self._host is not None and self.space is not None
        self._full_sync = True
        self._mappings.sync(self._host, self.space, 0, VPN_LIMIT)
        self._full_sync = False

    def _t_time_page(self) -> None:
        """Let the process's vDSO answer clock reads with this host's vDSO while it runs here,
        unless a guest mapping may have replaced that (then every read is a system call)."""
        host, space = self._host, self.space
        assert host is not None and space is not None
        if host.vdso_text and space.overlapping(vdso.HOST_VDSO_BASE, vdso.HOST_VDSO_END):
            host.vdso_text = 0
        vdso.fill(space, host.vdso_text, self.monotonic_offset_ns)

    def _t_set_itimer(self, interval_us: int) -> None:
        """Arm (or, with 0, disarm) the guest's ITIMER_PROF: a SIGPROF every `interval_us` of
        its CPU time."""
        host = self._host
        assert host is not None
        where = (host.trampoline & ~(PAGE_SIZE - 1)) + _ITIMERVAL_OFFSET
        seconds, micros = divmod(interval_us, 1_000_000)
        for i, word in enumerate((seconds, micros, seconds, micros)):  # interval, first value
            host.poke(where + 8 * i, word)
        result = self._tracer.inject(host, SYS_SETITIMER, ITIMER_PROF, where, 0)
        if result < 0:
            raise EngineError(f"setitimer in the guest failed: {os.strerror(-result)}")
        host.itimer_us = interval_us
        host.prof_seen = False

    def _t_vanished(self, host: Host, exc: GuestGone | OSError) -> Stop:
        """The guest's host process went away under a ptrace call (GuestGone, or ESRCH from
        the kernel): the process is lost. Any other OSError is a real failure: re-raised."""
        if isinstance(exc, GuestGone):
            return self._t_lost(exc.status)
        if exc.errno == errno.ESRCH:  # the host's errno, from ptrace
            return self._t_lost(self._tracer.reap_lost(host))
        raise exc

    def _t_lost(self, status: int) -> Stop:
        host = self._host
        pid = host.pid if host is not None else 0
        if host is not None:
            self._tracer.owners.pop(host.pid, None)
            self._tracer.running.pop(host.pid, None)
        self.end_run()
        sig, why = describe_status(status)
        self._lost = Stop(StopKind.FAULT, sig, 0, f"{why} (host process {pid})")
        return self._lost

    def _t_resume(self) -> Stop | None:
        """Let the stopped guest go on, unless the quantum ended while the tracer worked."""
        host = self._host
        assert host is not None
        if host.outside_signals:
            sig = host.outside_signals[0]
            return Stop(StopKind.FAULT, sig, 0, f"killed by {signal_text(sig)} from outside "
                        f"(host process {host.pid})")
        if (self._signalled == self._run_id or host.prof_seen) and self._in_run:
            host.prof_seen = False
            self._t_snapshot()
            return Stop(StopKind.QUANTUM)
        host.put_regs()
        host.put_fp()
        host.cont()
        return None

    def _t_snapshot(self) -> None:
        """Cache the FPU state at a stop the computation will see (registers are cached)."""
        host = self._host
        assert host is not None
        if vdso.HOST_VDSO_BASE <= host.regs.rip < vdso.HOST_VDSO_END:
            self._t_step_out_of_host_vdso()
        if not host.fp_dirty:
            host.get_fp()

    def _t_step_out_of_host_vdso(self) -> None:
        """The guest stopped inside the host's vDSO (a clock read): step it until it is back
        in its own code, so that the state the computation sees (and may move to another host
        or engine) never points into host memory. Signals met meanwhile are noted as while
        injecting; a system call the host's vDSO falls back to is served as any other."""
        host, handler = self._host, self.handler
        assert host is not None and handler is not None
        r = host.regs
        for _ in range(_STEP_LIMIT):
            if not vdso.HOST_VDSO_BASE <= r.rip < vdso.HOST_VDSO_END:
                return
            host.put_regs()
            host.put_fp()
            self.stats["vdso_steps"] += 1
            ptrace(PTRACE_SINGLESTEP, host.pid, 0, 0)
            status = self._tracer.wait(host)
            if not host.alive:
                raise GuestGone(status, describe_status(status)[1])
            host.get_regs()
            host.at_seccomp = status >> 8 == Signal.SIGTRAP | PTRACE_EVENT_SECCOMP << 8
            if host.at_seccomp:  # the host's vDSO made a call: the machine answers it
                nr = int(r.orig_rax)
                outcome = handler(nr, (int(r.rdi), int(r.rsi), int(r.rdx), int(r.r10),
                                       int(r.r8), int(r.r9)))
                r.rax = (outcome.result if outcome.result is not None else nr) & MASK64
                r.orig_rax = MASK64
                host.regs_dirty = True
                continue
            sig = os.WSTOPSIG(status) if status >> 16 == 0 else 0
            if sig in _FAULT_NAMES and sig not in (Signal.SIGTRAP, Signal.SIGSYS):
                return  # it faults there (a bad pointer, say): as natively, it stops there
            if sig == Signal.SIGPROF and (host.itimer_us or host_threads.thread_quanta(host)):
                host.prof_seen = True
            elif sig and sig not in (Signal.SIGTRAP, QUANTUM_SIGNAL, *HARMLESS_SIGNALS):
                host.outside_signals.append(sig)
        raise EngineError(f"the guest did not leave the host's vDSO in {_STEP_LIMIT} steps "
                          f"(at {r.rip:#x})")

    def tracer_event(self, status: int) -> Stop | None:
        """A wait status of the running guest: the stop to report, or None when it runs on."""
        host = self._host
        assert host is not None
        if os.WIFEXITED(status) or os.WIFSIGNALED(status):
            host.mark_dead(status)
            return self._t_lost(status)
        try:
            host.at_seccomp = status >> 8 == Signal.SIGTRAP | PTRACE_EVENT_SECCOMP << 8
            if host.at_seccomp:
                return self._t_syscall()
            if status >> 16 == 0:
                return self._t_signal(os.WSTOPSIG(status))
            host.cont()  # another ptrace event: not asked for
            return None
        except (GuestGone, OSError) as exc:
            return self._t_vanished(host, exc)

    # --- tracer thread: system calls ---------------------------------------------------

    def _t_syscall(self) -> Stop | None:
        host = self._host
        assert host is not None and self.handler is not None and self.space is not None
        r = host.regs
        host.get_regs()
        nr = int(r.orig_rax)
        args = (int(r.rdi), int(r.rsi), int(r.rdx), int(r.r10), int(r.r8), int(r.r9))
        self.stats["syscalls"] += 1
        self._last_fault = -1  # it went on since its last fault: that one was served
        space = self.space
        generation = space.generation
        outcome = self.handler(nr, args)
        if nr == SYS_MUNMAP and outcome.result == 0 and self._t_pass_munmap(args):
            return None  # the kernel runs the guest's own call: it unmaps exactly that
        # The kernel skips the call (orig_rax = -1) and the guest sees the machine's result;
        # rax keeps the call number when there is none, as on the emulated CPU.
        r.rax = (outcome.result if outcome.result is not None else nr) & MASK64
        r.orig_rax = MASK64
        host.regs_dirty = True
        stop = outcome.stop
        if nr in MEMORY_CALLS:
            assert self.space is not None
            self._mappings.after_call(host, self.space, nr, args, outcome.result)
            if host.vdso_text and self.space.overlapping(vdso.HOST_VDSO_BASE,
                                                         vdso.HOST_VDSO_END):
                self._t_time_page()  # the host's vDSO is mapped over: stop using it
            stop = False
        elif self.space is not space or space.generation != generation:
            self._t_sync_all()  # not expected: make everything match to be safe
        if self.space is not None and self.direct.after_call(host, self.space, nr, args):
            stop = True  # the next run begins in a host process that lets its reads pass
        if stop:
            self._t_snapshot()
            return Stop(StopKind.SYSCALL)
        return self._t_resume()

    def _t_pass_munmap(self, args: tuple[int, ...]) -> bool:
        """Let a munmap the machine has done run in the kernel too, when that is exactly the
        host change it needs: a valid range, away from the trampoline, and the quantum not
        over (the guest resumes at once, so the cached registers never show the call half
        done). Saves injecting the same call."""
        host = self._host
        assert host is not None
        addr, length = args[0], args[1]
        end = (addr + length + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
        tramp = host.trampoline & ~(PAGE_SIZE - 1)
        if (addr % PAGE_SIZE or not 0 < length <= TASK_SIZE or end > TASK_SIZE
                or addr <= tramp < end or host.outside_signals or host.prof_seen
                or (addr < vdso.HOST_VDSO_END and end > vdso.HOST_VDSO_BASE)
                or (self._signalled == self._run_id and self._in_run)):
            return False
        host.maps.remove(addr >> PAGE_SHIFT, end >> PAGE_SHIFT)
        host.put_regs()  # (set_fs_base cannot happen here; be safe all the same)
        host.cont()
        return True

    # --- tracer thread: signals and faults ---------------------------------------------

    def _t_signal(self, sig: int) -> Stop | None:
        host = self._host
        assert host is not None
        host.get_regs()
        if self.direct.settle(host, sig):  # a direct write cut off: the machine serves it
            return self._t_syscall()  # (else a call the kernel ran is settled, `direct_files`)
        code, address, sender = host.siginfo()
        if sig == Signal.SIGPROF and code == SI_KERNEL:  # the kernel's quantum timer
            if not host.itimer_us:
                return self._t_resume()  # left over from before it was disarmed
            host.prof_seen = False
            self._t_snapshot()
            return Stop(StopKind.QUANTUM)
        if sig == QUANTUM_SIGNAL and code == SI_USER and sender == os.getpid():
            if self._signalled == self._run_id:
                self._t_snapshot()
                return Stop(StopKind.QUANTUM)
            return self._t_resume()  # left over from an earlier quantum
        if sig == Signal.SIGSEGV and code == SEGV_MAPERR:
            return self._t_fault(address)
        if sig == Signal.SIGSEGV and code == SEGV_ACCERR and self.space is not None and \
                self._mappings.write_fault(host, self.space, address):
            return self._t_resume()  # the first store of the interval to a tracked page
        if code > 0:  # raised by the CPU: the process faulted
            why = _FAULT_NAMES.get(sig, f"signal {sig}")
            if sig == Signal.SIGSEGV:
                why = ("general protection fault" if code == SI_KERNEL
                       else f"access violating the protection of {address:#x}")
            return self._t_fatal(sig, address if code != SI_KERNEL else int(host.regs.rip),
                                 why, code)
        if sig in HARMLESS_SIGNALS:
            return self._t_resume()
        self._t_snapshot()
        return Stop(StopKind.FAULT, sig, 0, f"killed by {signal_text(sig)}"
                    f" from outside (host process {host.pid})")

    def _t_fatal(self, sig: int, address: int, detail: str, code: int) -> Stop:
        """The stop of a process the CPU killed, described as the emulated CPU would.

        The host says only which signal and address; the emulated CPU (through `replay`),
        given the same state and memory, runs the one faulting instruction and says what it
        did (a write to an unmapped address, a divide error...), so both engines give the
        same reasons.
        """
        self._t_snapshot()
        host, space = self._host, self.space
        assert host is not None and space is not None
        if self._replay is not None:
            try:
                stop = self._replay(self.memory, space, state_from_host(
                    host.regs, bytes(host.fp[:host.fp_size])))
                if stop.kind is StopKind.FAULT and stop.signal == sig:
                    # The host's code and data address are the CPU's own (the replay's
                    # address is only the page's); its description is kept.
                    exact = address if sig in (Signal.SIGSEGV, Signal.SIGBUS) else stop.address
                    return dataclasses.replace(stop, code=code, address=exact)
            except Exception:  # only a description is at stake: keep the host's
                pass
        return Stop(StopKind.FAULT, sig, address, detail, code)

    def _t_fault(self, address: int) -> Stop | None:
        """A touch of a page the host does not map: a page the virtual space must provide."""
        host, space = self._host, self.space
        assert host is not None and space is not None
        self.stats["faults"] += 1
        vpn = address >> PAGE_SHIFT
        us = space.find(address) if address < TASK_SIZE else None
        if us is None or us.region is None:
            return self._t_fatal(Signal.SIGSEGV, address,
                                 f"access to unmapped address {address:#x}", SEGV_MAPERR)
        if not us.perms & 7:
            return self._t_fatal(Signal.SIGSEGV, address,
                                 f"access to a page without access rights at {address:#x}",
                                 SEGV_ACCERR)
        if vpn == self._last_fault:
            self._fault_repeats += 1
            if self._fault_repeats > 3:
                self._t_snapshot()
                return Stop(StopKind.FAULT, Signal.SIGSEGV, address,
                            f"page {address:#x} cannot be mapped")
        else:
            self._last_fault, self._fault_repeats = vpn, 0
        try:
            self._mappings.bring_in(host, space, us, vpn)
        except OutOfMemoryError as exc:
            self._t_snapshot()
            return Stop(StopKind.FAULT, Signal.SIGKILL, address, f"out of real memory: {exc}")
        return self._t_resume()
