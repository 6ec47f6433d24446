"""The native engine: a Tender process's instructions run on the host CPU, in a host process
traced by its machine (Linux x86-64).

Every guest is a small stub program (`_stub/stub.S`) started by the machine's tracer thread. It
installs a seccomp filter that hands *every* system call to the tracer (SECCOMP_RET_TRACE;
system calls through another ABI kill it), so the machine serves each one exactly as it does
for the emulated CPU and the kernel never runs a guest's call: the tracer skips it (orig_rax =
-1) and writes the machine's result into rax. That is the sandbox: no files, sockets, children,
exec or signals to others, because nothing reaches the host kernel. (One exception, checked: a
munmap the machine has done on a valid range is let through, as it is exactly the host change
needed.)

Memory stays the machine's. Real memory is a shared memory file (`RealMemory(shared=True)`),
passed to every guest as fd 3; the tracer maps it at frame offsets where the process's virtual
space has present pages. The virtual space is the source of truth and the host mappings are a
cache of it (like a TLB): memory system calls change the virtual space (the machine's code) and
then the tracer makes the range match; a page that is not present stays unmapped and its
SIGSEGV is served by the virtual space's fault path for a window of pages (a whole small area,
or a window that grows with sequential touches), since a fault here costs a few ptrace stops.
Host mappings change only through system calls injected at a trampoline page the stub leaves
behind (`syscall; jmp` at 0x1000b2), which is moved if the process maps over it. Guests never
see a vDSO (the machine's auxiliary vector has no AT_SYSINFO_EHDR and the stub's is unmapped),
so time calls are system calls and nothing ties a process to its host.

Computation = permission to run: a quantum ends when the guest's ITIMER_PROF (armed by the
tracer) raises SIGPROF, or, for quanta shorter than a kernel tick, when the machine's timer
thread signals the guest through a pidfd (SIGURG); the tracer snapshots it at the signal stop
and suppresses the signal. Registers go in and out in the engine-neutral `CpuState`, converted
from and to the kernel's user_regs_struct and FXSAVE area, so a process moves between engines
mid-run.

All ptrace calls for a machine come from its one tracer thread; computations submit requests to
it and wait. It waits for all its guests at once with waitpid on their process group; a traced
"doorbell" child, signalled when a request arrives, wakes it.
"""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import dataclasses
import errno
import heapq
import itertools
import os
import platform
import signal
import struct
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import numpy as np

from .cpu import GPR_NAMES, CpuState, Stop, StopKind, SyscallHandler
from .errors import EngineError, OutOfMemoryError
from .resources.real_memory import PAGE_SHIFT, PAGE_SIZE, RealMemory
from .resources.virtual_region import NOT_PRESENT
from .resources.virtual_space import VirtualSpace
from .resources.virtual_user_space import VirtualUserSpace

STUB: Final = Path(__file__).resolve().parent / "_stub" / "tender-stub"
STUB_ENTRY: Final = 0x1000B0  # _start of the stub (see _stub/Makefile: text at 0x100000)
TRAMPOLINE: Final = STUB_ENTRY + 2  # `syscall; jmp trampoline`
_TRAMPOLINE_CODE: Final = bytes.fromhex("0f05ebfc0f0b9090")
MEMORY_FD: Final = 3  # the machine's real memory inside every guest
TASK_SIZE: Final = 0x7FFF_FFFF_F000  # top of user space (4-level paging)
VPN_LIMIT: Final = TASK_SIZE >> PAGE_SHIFT
MASK64: Final = (1 << 64) - 1

# ptrace requests and options.
PTRACE_CONT, PTRACE_GETREGS, PTRACE_SETREGS = 7, 12, 13
PTRACE_GETFPREGS, PTRACE_SETFPREGS, PTRACE_POKEDATA = 14, 15, 5
PTRACE_SETOPTIONS, PTRACE_GETSIGINFO = 0x4200, 0x4202
PTRACE_O_TRACESECCOMP, PTRACE_O_EXITKILL = 0x80, 0x100000
PTRACE_EVENT_SECCOMP = 7
WALL, WNOTHREAD = 0x40000000, 0x20000000

# System calls the tracer injects.
SYS_MMAP, SYS_MPROTECT, SYS_MUNMAP, SYS_BRK, SYS_MREMAP, SYS_MADVISE = 9, 10, 11, 12, 25, 28
PROT_READ, PROT_WRITE, PROT_EXEC = 1, 2, 4
MAP_SHARED, MAP_PRIVATE, MAP_FIXED, MAP_ANONYMOUS = 0x01, 0x02, 0x10, 0x20
MAP_POPULATE, MAP_FIXED_NOREPLACE = 0x8000, 0x100000
# The calls that change an address space. The machine applies them to the virtual space and may
# ask for a stop so that an emulated CPU flushes its TLB; here the host mappings are made to
# match before the guest runs on, so that stop is not needed (memory calls never sleep or end
# a process).
MEMORY_CALLS: Final = frozenset({SYS_MMAP, SYS_MPROTECT, SYS_MUNMAP, SYS_BRK, SYS_MREMAP,
                                 SYS_MADVISE})

SIGTRAP, SIGKILL, SIGSEGV, SIGURG, SIGPROF = 5, 9, 11, 23, 27
QUANTUM_SIGNAL: Final = SIGURG  # ignored by default: harmless if it ever got through
# Quanta of at least this many microseconds are measured by the kernel: an ITIMER_PROF in the
# guest (its CPU time; the kernel checks at each tick, so shorter ones would be rounded up to
# a tick) raises SIGPROF, which the tracer takes as the end of the quantum. No thread of ours
# wakes for it. Shorter quanta use the timer thread and a signal through the guest's pidfd.
KERNEL_TIMER_MIN_US: Final = 4000
SYS_SETITIMER, ITIMER_PROF = 38, 2
_ITIMERVAL_OFFSET: Final = 0x800  # where in the trampoline page the tracer puts a timeval pair
SI_USER, SI_KERNEL, SEGV_MAPERR = 0, 0x80, 1
# Signals from outside that are not fatal by default (ignored, or job control): suppressed.
_HARMLESS_SIGNALS: Final = frozenset({17, 18, 19, 20, 21, 22, 23, 28})  # CHLD..TTOU, URG, WINCH
_FAULT_NAMES: Final = {4: "invalid instruction", 5: "breakpoint or trap", 7: "bus error",
                       8: "arithmetic error", 11: "segmentation fault", 31: "bad system call"}

# Fault-around: a touched page that is not present brings a window of its neighbours, which
# grows while the touches are sequential (up or down) and starts small otherwise; an area of
# at most WINDOW_SMALL pages (2 MiB: a malloc'd block, say) comes in whole.
WINDOW_MIN: Final = 16
WINDOW_GROWTH: Final = 4
WINDOW_MAX: Final = 1024
WINDOW_SMALL: Final = 512

# The EFLAGS bits a process owns (the rest are the kernel's).
_USER_FLAGS: Final = 0x40CD5  # CF PF AF ZF SF DF OF AC
_ALWAYS_FLAGS: Final = 0x202  # reserved bit 1 and IF

# --- the C library -------------------------------------------------------------------------

def _load_libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
        libc.ptrace.restype = ctypes.c_long
    except (OSError, AttributeError):  # not a Unix C library: the self-check says no
        return None
    return libc


_libc = _load_libc()

_REG_NAMES: Final = ("r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8",
                     "rax", "rcx", "rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "eflags",
                     "rsp", "ss", "fs_base", "gs_base", "ds", "es", "fs", "gs")


class _Regs(ctypes.Structure):
    """struct user_regs_struct (x86-64)."""

    _fields_ = [(name, ctypes.c_uint64) for name in _REG_NAMES]


_FpRegs = ctypes.c_uint8 * 512  # struct user_fpregs_struct: the FXSAVE area
_SigInfo = ctypes.c_uint8 * 128


def _ptrace(request: int, pid: int, addr: int = 0, data: int | None = 0) -> int:
    assert _libc is not None
    result = _libc.ptrace(request, pid, addr, data)
    if result == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"ptrace({request:#x}, {pid}): {os.strerror(err)}")
    return int(result)


def _host_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a host process has used so far; 0 once it is gone."""
    try:
        return time.clock_gettime(((~pid) << 3) | 2)  # its process CPU-time clock
    except OSError:
        return 0.0


def _signed(value: int) -> int:
    value &= MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


# --- CPU state conversion ------------------------------------------------------------------

def _fp_tag(present: bool, mantissa: int, exponent: int) -> int:
    """A full x87 tag (as Unicorn reports it): 0 valid, 1 zero, 2 special, 3 empty."""
    if not present:
        return 3
    exp = exponent & 0x7FFF
    if exp == 0 and mantissa == 0:
        return 1
    if exp == 0 or exp == 0x7FFF or not mantissa >> 63:
        return 2
    return 0


def state_from_host(regs: _Regs, fp: bytes) -> CpuState:
    """The engine-neutral CpuState of a host thread's registers and FXSAVE area.

    FXSAVE keeps ST(i) in stack order (relative to TOP, bits 11-13 of the status word) and an
    abridged tag (one bit per physical register); CpuState keeps physical registers and the
    full tag word.
    """
    fpcw, fpsw, abridged = struct.unpack_from("<HHB", fp, 0)
    (mxcsr,) = struct.unpack_from("<I", fp, 24)
    top = (fpsw >> 11) & 7
    stack = [struct.unpack_from("<QH", fp, 32 + 16 * i) for i in range(8)]
    st = [stack[(p - top) & 7] for p in range(8)]
    tag = 0
    for p in range(7, -1, -1):
        tag = (tag << 2) | _fp_tag(bool(abridged >> p & 1), st[p][0], st[p][1])
    xmm = tuple(int.from_bytes(fp[160 + 16 * i: 176 + 16 * i], "little") for i in range(16))
    return CpuState(
        gpr=tuple(int(getattr(regs, name)) for name in GPR_NAMES), rip=int(regs.rip),
        rflags=(int(regs.eflags) & _USER_FLAGS) | _ALWAYS_FLAGS, fs_base=int(regs.fs_base),
        gs_base=int(regs.gs_base), mxcsr=mxcsr, fpcw=fpcw, fpsw=fpsw, fptag=tag,
        st=tuple((int(m), int(e)) for m, e in st), xmm=xmm)


def state_to_host(state: CpuState, regs: _Regs, fp: bytearray) -> None:
    """Write a CpuState into a host thread's registers and FXSAVE area (both updated in place;
    segment selectors and the MXCSR mask stay the host's)."""
    for name, value in zip(GPR_NAMES, state.gpr, strict=True):
        setattr(regs, name, value & MASK64)
    regs.rip = state.rip & MASK64
    regs.eflags = (state.rflags & _USER_FLAGS) | _ALWAYS_FLAGS
    regs.fs_base = state.fs_base & MASK64
    regs.gs_base = state.gs_base & MASK64
    regs.orig_rax = MASK64  # not in a system call: nothing to restart
    top = (state.fpsw >> 11) & 7
    abridged = sum(1 << p for p in range(8) if (state.fptag >> 2 * p) & 3 != 3)
    struct.pack_into("<HHBxHQQI", fp, 0, state.fpcw & 0xFFFF, state.fpsw & 0xFFFF, abridged,
                     0, 0, 0, state.mxcsr & 0xFFFF_FFFF)
    for i in range(8):
        mantissa, exponent = state.st[(top + i) & 7]
        struct.pack_into("<QH6x", fp, 32 + 16 * i, mantissa & MASK64, exponent & 0xFFFF)
    for i, value in enumerate(state.xmm):
        fp[160 + 16 * i: 176 + 16 * i] = (value & ((1 << 128) - 1)).to_bytes(16, "little")


# --- host mappings: a cache of the virtual space ---------------------------------------------

Run = tuple[int, int, int, int]  # (first virtual page, pages, first frame, protection)


class _HostMap:
    """Which runs of pages are mapped from the memory file in one guest, sorted by address."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._runs: dict[int, Run] = {}

    def clear(self) -> None:
        self._starts.clear()
        self._runs.clear()

    def __len__(self) -> int:
        return len(self._starts)

    def covers(self, vpn: int) -> bool:
        i = bisect.bisect(self._starts, vpn) - 1
        if i < 0:
            return False
        v, n, _, _ = self._runs[self._starts[i]]
        return v <= vpn < v + n

    def within(self, lo: int, hi: int) -> list[Run]:
        """The runs overlapping [lo, hi), clipped to it."""
        i = max(bisect.bisect(self._starts, lo) - 1, 0)
        out: list[Run] = []
        for start in self._starts[i:]:
            if start >= hi:
                break
            v, n, f, prot = self._runs[start]
            a, b = max(v, lo), min(v + n, hi)
            if a < b:
                out.append((a, b - a, f + (a - v), prot))
        return out

    def remove(self, lo: int, hi: int) -> None:
        """Forget [lo, hi), keeping the parts of runs that stick out."""
        i = max(bisect.bisect(self._starts, lo) - 1, 0)
        doomed = []
        for start in self._starts[i:]:
            if start >= hi:
                break
            v, n, _, _ = self._runs[start]
            if v + n > lo:
                doomed.append(start)
        for start in doomed:
            v, n, f, prot = self._runs.pop(start)
            del self._starts[bisect.bisect_left(self._starts, start)]
            if v < lo:
                self._insert((v, lo - v, f, prot))
            if v + n > hi:
                self._insert((hi, v + n - hi, f + (hi - v), prot))

    def add(self, run: Run) -> None:
        self.remove(run[0], run[0] + run[1])
        self._insert(run)

    def _insert(self, run: Run) -> None:
        bisect.insort(self._starts, run[0])
        self._runs[run[0]] = run


def _frame_runs(first_vpn: int, frames: list[int], prot: int) -> list[Run]:
    """Runs of present pages with consecutive frames in a slice of a region's frame list."""
    out: list[Run] = []
    if len(frames) > 64:
        f = np.asarray(frames, dtype=np.int64)
        present = f != NOT_PRESENT
        if not present.any():
            return out
        # A page continues a run when it and the one before are present with frames k, k+1.
        cont = np.zeros(len(f), dtype=bool)
        cont[1:] = present[1:] & present[:-1] & (f[1:] == f[:-1] + 1)
        starts = np.flatnonzero(present & ~cont)
        breaks = np.flatnonzero(~cont)
        ends = np.append(breaks, len(f))[np.searchsorted(breaks, starts, side="right")]
        return [(first_vpn + s, e - s, int(f[s]), prot)
                for s, e in zip(starts.tolist(), ends.tolist(), strict=True)]
    run_start = -1
    for i, frame in enumerate(frames):
        if frame == NOT_PRESENT:
            if run_start >= 0:
                out.append((first_vpn + run_start, i - run_start, frames[run_start], prot))
                run_start = -1
        elif run_start < 0:
            run_start = i
        elif frame != frames[i - 1] + 1:
            out.append((first_vpn + run_start, i - run_start, frames[run_start], prot))
            run_start = i
    if run_start >= 0:
        out.append((first_vpn + run_start, len(frames) - run_start, frames[run_start], prot))
    return out


def desired_runs(space: VirtualSpace, lo: int, hi: int) -> list[Run]:
    """What the guest's host mappings in pages [lo, hi) must be: its present pages, in runs."""
    out: list[Run] = []
    for us in space.overlapping(lo << PAGE_SHIFT, hi << PAGE_SHIFT):
        region = us.region
        prot = us.perms & 7
        if region is None or not prot:
            continue  # PROT_NONE pages stay unmapped: touching them faults either way
        base = us.start >> PAGE_SHIFT
        a, b = max(lo, base), min(hi, base + region.npages)
        if a < b:
            out += _frame_runs(a, region.frames[a - base: b - base], prot)
    return out


# --- host processes ------------------------------------------------------------------------

class GuestGone(EngineError):
    """The guest's host process died while the tracer worked on it."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"SIG{sig}"


def describe_status(status: int) -> tuple[int, str]:
    """(signal, reason) of a host process's end."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == 31:
            return sig, "killed by the sandbox: a system call through a denied ABI"
        return sig, f"killed by signal {sig} ({_signal_name(sig)}) from outside"
    if os.WIFEXITED(status):
        return SIGKILL, f"its host process exited on its own with status {os.WEXITSTATUS(status)}"
    return SIGKILL, f"its host process ended (wait status {status:#x})"


class _Host:
    """One traced host process: a stub, then a guest. Touched only by the tracer thread, except
    `pidfd` (signals, under `lock`)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.pidfd = -1
        self.lock = threading.Lock()
        self.alive = True
        self.status: int | None = None  # wait status once it died
        self.regs = _Regs()  # the guest's registers while it is stopped
        self.regs_dirty = False  # `regs` must be written before it runs
        self.fp = bytearray(512)
        self.fp_dirty = False
        self.scratch = _Regs()  # registers for injected system calls
        self.trampoline = TRAMPOLINE
        self.maps = _HostMap()
        self.at_seccomp = False  # stopped at a system call's entry (can be turned into another)
        self.itimer_us = 0  # the guest's ITIMER_PROF interval, 0 when not armed
        self.prof_seen = False  # a SIGPROF (end of quantum) was met while injecting
        self.outside_signals: list[int] = []  # fatal signals from outside, seen while injecting

    def mark_dead(self, status: int) -> None:
        self.alive = False
        self.status = status
        with self.lock:
            if self.pidfd >= 0:
                os.close(self.pidfd)
                self.pidfd = -1

    def send(self, sig: int) -> bool:
        with self.lock:
            if self.pidfd < 0:
                return False
            try:
                signal.pidfd_send_signal(self.pidfd, sig)
            except ProcessLookupError:
                return False
            return True


_SPAWN_DEFAULT_SIGNALS: Final = tuple(s for s in range(1, 32) if s not in (SIGKILL, 19))


# --- the tracer thread ---------------------------------------------------------------------

class _Request:
    __slots__ = ("done", "error", "fn", "result")

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None

    def finish(self, result: Any = None, error: BaseException | None = None) -> None:
        self.result, self.error = result, error
        self.done.set()


_PENDING: Final = object()  # a request that completes later (a run waiting for its stop)


class _Timer:
    """Ends quanta: at each deadline, the guest of a still-running quantum gets a signal."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, NativeCpu, int]] = []
        self._seq = itertools.count()
        self._closed = False
        self._thread = threading.Thread(target=self._main, name="tender-quantum-timer",
                                        daemon=True)
        self._thread.start()

    def arm(self, cpu: NativeCpu, run_id: int, deadline: float) -> None:
        with self._cond:
            heapq.heappush(self._heap, (deadline, next(self._seq), cpu, run_id))
            if self._heap[0][2] is cpu:
                self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._heap.clear()
            self._cond.notify()

    def _main(self) -> None:
        while True:
            with self._cond:
                while not self._closed:
                    if not self._heap:
                        self._cond.wait()
                        continue
                    left = self._heap[0][0] - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                if self._closed:
                    return
                _, _, cpu, run_id = heapq.heappop(self._heap)
            cpu._quantum_expired(run_id)


class _Tracer:
    """One machine's tracer thread: owns every ptrace call for the machine's guests."""

    def __init__(self, memory: RealMemory) -> None:
        self.memory_fd = memory.fd
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._queue: deque[_Request] = deque()
        self._waiting = False  # blocked in waitpid
        self._rung = False  # the doorbell was signalled and has not stopped yet
        self._closing = False
        self.running: dict[int, NativeCpu] = {}  # pid -> engine whose guest runs a quantum
        self.owners: dict[int, NativeCpu] = {}  # pid -> engine, every live guest
        self.runs: dict[int, _Request] = {}  # pid -> the run request waiting for its stop
        self.current: _Request | None = None  # the request being executed
        self._doorbell: _Host | None = None
        self.pgid = 0
        self.users = 0
        self.timer = _Timer()
        self._started = threading.Event()
        self.failure: BaseException | None = None
        self.thread = threading.Thread(target=self._main, name="tender-tracer", daemon=True)
        self.thread.start()
        self._started.wait(30)
        if self.failure is not None:
            raise EngineError(f"native engine: cannot start the tracer: {self.failure}")

    # --- called from any thread --------------------------------------------------------

    def submit(self, fn: Callable[[], Any]) -> _Request:
        request = _Request(fn)
        ring = None
        with self._cond:
            if self._closing or not self.thread.is_alive():
                request.finish(error=EngineError("the native engine's tracer has stopped"))
                return request
            self._queue.append(request)
            self._cond.notify()
            if self._waiting and not self._rung and self._doorbell is not None:
                self._rung = True
                ring = self._doorbell
        if ring is not None:
            ring.send(QUANTUM_SIGNAL)
        return request

    def call(self, fn: Callable[[], Any], timeout: float | None = None) -> Any:
        request = self.submit(fn)
        deadline = None if timeout is None else time.monotonic() + timeout
        while not request.done.wait(1.0):
            if not self.thread.is_alive():
                raise EngineError("the native engine's tracer thread died")
            if deadline is not None and time.monotonic() > deadline:
                raise EngineError(f"the native engine's tracer did not answer in {timeout} s")
        if request.error is not None:
            raise request.error
        return request.result

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
            ring = self._doorbell if self._waiting else None
        if ring is not None:
            ring.send(QUANTUM_SIGNAL)
        self.timer.close()

    # --- the thread --------------------------------------------------------------------

    def _main(self) -> None:
        try:
            self._doorbell = self.spawn(doorbell=True)
            self.pgid = self._doorbell.pid
        except BaseException as exc:
            self.failure = exc
            self._started.set()
            return
        self._started.set()
        try:
            self._loop()
        finally:
            self._shutdown()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self.running and not self._closing:
                    self._cond.wait()
                if self._closing and not self._queue and not self.running:
                    return
                request = self._queue.popleft() if self._queue else None
                if request is None:
                    self._waiting = True
            if request is not None:
                self._execute(request)
                continue
            try:
                pid, status = os.waitpid(-self.pgid, WALL | WNOTHREAD)
            except ChildProcessError:
                pid, status = 0, 0
            finally:
                with self._lock:
                    self._waiting = False
            if pid:
                try:
                    self._event(pid, status)
                except Exception as exc:  # keep serving the other guests
                    cpu = self.owners.get(pid)
                    if cpu is not None and pid in self.running:
                        self.finish_run(cpu, error=EngineError(f"tracer failure: {exc!r}"))

    def _execute(self, request: _Request) -> None:
        self.current = request
        try:
            result = request.fn()
        except BaseException as exc:
            request.finish(error=exc)
            return
        if result is not _PENDING:
            request.finish(result)

    def _event(self, pid: int, status: int) -> None:
        doorbell = self._doorbell
        if doorbell is not None and pid == doorbell.pid:
            self._doorbell_event(doorbell, status)
            return
        cpu = self.owners.get(pid)
        if cpu is None:
            return  # a host process already let go of (its end, reaped here)
        if pid not in self.running:
            cpu._t_idle_event(status)
            return
        try:
            stop = cpu._t_event(status)
        except EngineError as exc:
            self.finish_run(cpu, error=exc)
            return
        except BaseException as exc:  # the machine's handler failed: the process ends
            self.finish_run(cpu, error=EngineError(f"system call handler failed: {exc!r}"))
            return
        if stop is not None:
            self.finish_run(cpu, stop)

    def finish_run(self, cpu: NativeCpu, stop: Stop | None = None,
                   error: BaseException | None = None) -> None:
        host = cpu._host
        pid = host.pid if host is not None else -1
        cpu._end_run()
        self.running.pop(pid, None)
        request = self.runs.pop(pid, None)
        if request is not None:
            request.finish(stop, error)

    def _doorbell_event(self, doorbell: _Host, status: int) -> None:
        if os.WIFSTOPPED(status):
            with self._lock:
                self._rung = False
            with contextlib.suppress(OSError):
                _ptrace(PTRACE_CONT, doorbell.pid, 0, 0)
            return
        doorbell.mark_dead(status)  # killed from outside: ring a new one
        with self._lock:
            self._doorbell = None
            self._rung = False
        self._doorbell = self.spawn(doorbell=True)

    def _shutdown(self) -> None:
        for cpu in list(self.owners.values()):
            with contextlib.suppress(Exception):
                cpu._t_discard()
        if self._doorbell is not None:
            self.kill(self._doorbell)
        with self._cond:
            self._closing = True
            pending = list(self._queue)
            self._queue.clear()
        for request in pending:
            request.finish(error=EngineError("the native engine's tracer has stopped"))
        for request in list(self.runs.values()):
            request.finish(error=EngineError("the native engine's tracer has stopped"))
        self.runs.clear()

    # --- host processes (tracer thread only) -------------------------------------------

    def spawn(self, doorbell: bool = False) -> _Host:
        """Start a stub and bring it to its ready stop: traced, filtered, its own memory
        unmapped but for the trampoline page."""
        actions: list[tuple[Any, ...]] = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
            (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
        ]
        extra = -1
        if not doorbell:
            source = self.memory_fd
            if source == MEMORY_FD:  # dup2(3, 3) would keep close-on-exec set
                source = extra = os.dup(self.memory_fd)
            actions.append((os.POSIX_SPAWN_DUP2, source, MEMORY_FD))
        argv = [b"tender-stub", b"doorbell"] if doorbell else [b"tender-stub"]
        try:
            pid = os.posix_spawn(STUB, argv, {}, file_actions=actions,
                                 setpgroup=0 if doorbell else self.pgid, setsigmask=(),
                                 setsigdef=_SPAWN_DEFAULT_SIGNALS)
        finally:
            if extra >= 0:
                os.close(extra)
        host = _Host(pid)
        try:
            status = self.wait(host)
            if not os.WIFSTOPPED(status) or os.WSTOPSIG(status) != 19:
                raise EngineError(f"the stub did not stop for its tracer ({_stub_failure(status)})")
            _ptrace(PTRACE_SETOPTIONS, pid, 0, PTRACE_O_EXITKILL | PTRACE_O_TRACESECCOMP)
            host.pidfd = os.pidfd_open(pid)
            _ptrace(PTRACE_CONT, pid, 0, 0)
            if doorbell:
                return host
            status = self.wait(host)
            if not os.WIFSTOPPED(status) or os.WSTOPSIG(status) != SIGTRAP:
                raise EngineError(f"the stub did not get ready ({_stub_failure(status)})")
            _ptrace(PTRACE_GETREGS, pid, 0, ctypes.addressof(host.regs))
            fp = _FpRegs()
            _ptrace(PTRACE_GETFPREGS, pid, 0, ctypes.addressof(fp))
            host.fp[:] = bytes(fp)
            page = host.trampoline & ~(PAGE_SIZE - 1)
            # Nothing of the stub stays but its page: no stack, no vDSO, no vvar.
            self.inject(host, SYS_MUNMAP, 0, page)
            self.inject(host, SYS_MUNMAP, page + PAGE_SIZE, TASK_SIZE - page - PAGE_SIZE)
            return host
        except BaseException:
            self.kill(host)
            raise

    def wait(self, host: _Host) -> int:
        """The next wait status of one host process (blocking)."""
        _, status = os.waitpid(host.pid, WALL)
        if os.WIFEXITED(status) or os.WIFSIGNALED(status):
            host.mark_dead(status)
        return status

    def kill(self, host: _Host) -> None:
        """End a host process and reap it."""
        self.owners.pop(host.pid, None)
        self.running.pop(host.pid, None)
        if not host.alive:
            return
        if not host.send(SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.kill(host.pid, SIGKILL)  # not reaped yet, so the pid is still ours
        try:
            while True:
                _, status = os.waitpid(host.pid, WALL)
                if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                    break
        except ChildProcessError:
            status = SIGKILL
        host.mark_dead(status)

    def inject(self, host: _Host, nr: int, *args: int) -> int:
        """Make the stopped host process run one system call at the trampoline; its result.

        At a system call's entry stop (the guest's own, or the trampoline's next round) that
        call becomes the injected one: one stop per call. From any other stop the process is
        sent to the trampoline first: two. The registers are left in the trampoline, so
        `host.regs` is marked to be written back before the guest runs on.
        """
        r = host.scratch
        ctypes.pointer(r)[0] = host.regs  # valid segment registers and bases
        for name, value in zip(("rdi", "rsi", "rdx", "r10", "r8", "r9"), args, strict=False):
            setattr(r, name, value & MASK64)
        host.regs_dirty = True
        pid = host.pid
        try:
            if host.at_seccomp:
                r.orig_rax = nr
                r.rip = host.trampoline + 2  # the call returns into the trampoline's loop
                _ptrace(PTRACE_SETREGS, pid, 0, ctypes.addressof(r))
                _ptrace(PTRACE_CONT, pid, 0, 0)
            else:
                r.rip, r.rax, r.orig_rax = host.trampoline, nr, MASK64
                _ptrace(PTRACE_SETREGS, pid, 0, ctypes.addressof(r))
                _ptrace(PTRACE_CONT, pid, 0, 0)
                self._wait_entry(host)  # the injected call's own entry: let it run
                _ptrace(PTRACE_CONT, pid, 0, 0)
            self._wait_entry(host)  # the trampoline's next round: the result is its number
            host.at_seccomp = True
            _ptrace(PTRACE_GETREGS, pid, 0, ctypes.addressof(r))
            if r.rip != host.trampoline + 2:
                raise EngineError(f"injected system call {nr} came back at {r.rip:#x}")
            return _signed(r.orig_rax)
        except OSError as exc:
            if exc.errno == errno.ESRCH:
                status = self.reap_lost(host)
                raise GuestGone(status, describe_status(status)[1]) from None
            raise

    def _wait_entry(self, host: _Host) -> None:
        """Wait for the host process's next system call entry, noting (not delivering) the
        signals that come first."""
        pid = host.pid
        while True:
            status = self.wait(host)
            if not host.alive:
                raise GuestGone(status, describe_status(status)[1])
            if status >> 8 == SIGTRAP | PTRACE_EVENT_SECCOMP << 8:
                return
            # (A quantum signal met here is checked for by `_t_resume`.)
            sig = os.WSTOPSIG(status) if status >> 16 == 0 else 0
            if sig == SIGPROF and host.itimer_us:
                host.prof_seen = True
            elif sig and sig != QUANTUM_SIGNAL and sig not in _HARMLESS_SIGNALS:
                host.outside_signals.append(sig)
            _ptrace(PTRACE_CONT, pid, 0, 0)

    def reap_lost(self, host: _Host) -> int:
        """A host process that vanished under ptrace (killed): collect its status."""
        if host.alive:
            try:
                _, status = os.waitpid(host.pid, WALL)
                while not (os.WIFEXITED(status) or os.WIFSIGNALED(status)):
                    _, status = os.waitpid(host.pid, WALL)
            except ChildProcessError:
                status = SIGKILL
            host.mark_dead(status)
        return host.status if host.status is not None else SIGKILL


def _stub_failure(status: int) -> str:
    if os.WIFEXITED(status):
        code = os.WEXITSTATUS(status)
        return {101: "ptrace(PTRACE_TRACEME) was refused: ptrace is not permitted here",
                102: "prctl(PR_SET_NO_NEW_PRIVS) failed",
                103: "seccomp filters are not permitted here"}.get(
                    code, f"it exited with status {code}")
    if os.WIFSIGNALED(status):
        return f"it was killed by signal {os.WTERMSIG(status)}"
    return f"it stopped with signal {os.WSTOPSIG(status)}"


_tracers: weakref.WeakKeyDictionary[RealMemory, _Tracer] = weakref.WeakKeyDictionary()
_tracers_lock = threading.Lock()


def _tracer_for(memory: RealMemory) -> _Tracer:
    if memory.fd < 0:
        raise EngineError("the native engine needs real memory in a shared memory file "
                          "(RealMemory(..., shared=True))")
    with _tracers_lock:
        tracer = _tracers.get(memory)
        if tracer is None or tracer.failure is not None or not tracer.thread.is_alive():
            tracer = _Tracer(memory)
            _tracers[memory] = tracer
        tracer.users += 1
        return tracer


def _release_tracer(memory: RealMemory, tracer: _Tracer) -> None:
    with _tracers_lock:
        tracer.users -= 1
        if tracer.users > 0:
            return
        if _tracers.get(memory) is tracer:
            del _tracers[memory]
    tracer.close()


# --- the engine ----------------------------------------------------------------------------

class NativeCpu:
    """One process's processor context as a traced host process (the `Engine` protocol).

    Its methods run on the computation (or machine) thread; everything touching the host
    process runs on the machine's tracer thread (`_t_*`). While the guest is stopped, its
    registers are cached here: `save`, `load` and the fs base never wait for the tracer.
    """

    def __init__(self, memory: RealMemory) -> None:
        self.memory = memory
        self._tracer = _tracer_for(memory)
        self.space: VirtualSpace | None = None
        self.handler: SyscallHandler | None = None
        self._host: _Host | None = None
        self._pending: CpuState | None = None  # loaded, not yet written to the host
        self._full_sync = True
        self._lost: Stop | None = None  # the host process died under a bound process
        self._run_id = 0
        self._preempt_pending = False  # [preempt] asked to end a run that had not begun
        self._signalled = -1  # the run id the quantum signal was sent for
        self._in_run = False
        self._run_lock = threading.Lock()
        self._window: tuple[int, int, int] = (-1, -1, 0)  # last fault-around (lo, hi, size)
        self._fault_repeats = 0
        self._last_fault = -1
        self._closed = False
        self.stats = {"syscalls": 0, "faults": 0, "injected": 0, "quanta": 0}
        # Host CPU time the guest used: in the last run, and in all runs (the computation's
        # own thread only waits, so its CPU time does not show what the process cost).
        self.last_run_cpu_seconds = 0.0
        self.cpu_seconds = 0.0
        self._cpu_mark = 0.0
        self._tracer.submit(self._t_prepare)  # a kernel process is prepared in advance

    # --- the Engine protocol -----------------------------------------------------------

    def bind(self, space: VirtualSpace, handler: SyscallHandler) -> None:
        self.space = space
        self.handler = handler
        self._full_sync = True
        self._lost = None

    def load(self, state: CpuState) -> None:
        self._pending = state

    def save(self) -> CpuState:
        if self._pending is not None:
            return self._pending
        host = self._host
        if host is None:
            raise EngineError("the native CPU holds no process state")
        return state_from_host(host.regs, bytes(host.fp))

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
        self._window = (-1, -1, 0)
        self._tracer.submit(self._t_renew)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.space = None
        self.handler = None
        tracer = self._tracer
        tracer.submit(self._t_discard)
        _release_tracer(self.memory, tracer)

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
        self._quantum_expired(run_id)

    # --- called by the timer thread ----------------------------------------------------

    def _quantum_expired(self, run_id: int) -> None:
        with self._run_lock:
            if not self._in_run or self._run_id != run_id:
                return
            self._signalled = run_id
            host = self._host
        if host is not None:
            host.send(QUANTUM_SIGNAL)

    def _end_run(self) -> None:
        with self._run_lock:
            was_running, self._in_run = self._in_run, False
            self._preempt_pending = False
        host = self._host
        if was_running and host is not None:
            used = max(0.0, _host_cpu_seconds(host.pid) - self._cpu_mark) if host.alive else 0.0
            self.last_run_cpu_seconds = used
            self.cpu_seconds += used

    # --- tracer thread: preparing and discarding host processes -------------------------

    def _t_prepare(self) -> None:
        if self._host is None and not self._closed:
            host = self._tracer.spawn()
            self._host = host
            self._tracer.owners[host.pid] = self

    def _t_discard(self) -> None:
        host, self._host = self._host, None
        if host is not None:
            self._tracer.kill(host)

    def _t_renew(self) -> None:
        self._t_discard()
        self._t_prepare()

    def _t_idle_event(self, status: int) -> None:
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
        if host is None or not host.alive:
            self._t_discard()
            self._t_prepare()
            host = self._host
            assert host is not None
        try:
            if self._pending is not None:
                state_to_host(self._pending, host.regs, host.fp)
                host.regs_dirty = host.fp_dirty = True
                self._pending = None
            if self._full_sync:
                self._t_sync(0, VPN_LIMIT)
                self._full_sync = False
            kernel_timer = quantum >= KERNEL_TIMER_MIN_US
            if host.itimer_us != (quantum if kernel_timer else 0):
                self._t_set_itimer(quantum if kernel_timer else 0)
            self._cpu_mark = _host_cpu_seconds(host.pid)
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
            self._end_run()
            return stop
        self.stats["quanta"] += 1
        request = self._tracer.current
        assert request is not None
        self._tracer.runs[host.pid] = request
        if not kernel_timer:
            self._tracer.timer.arm(self, run_id, time.monotonic() + quantum / 1e6)
        return _PENDING

    def _t_set_itimer(self, interval_us: int) -> None:
        """Arm (or, with 0, disarm) the guest's ITIMER_PROF: a SIGPROF every `interval_us` of
        its CPU time."""
        host = self._host
        assert host is not None
        where = (host.trampoline & ~(PAGE_SIZE - 1)) + _ITIMERVAL_OFFSET
        seconds, micros = divmod(interval_us, 1_000_000)
        for i, word in enumerate((seconds, micros, seconds, micros)):  # interval, first value
            _ptrace(PTRACE_POKEDATA, host.pid, where + 8 * i, word)
        result = self._tracer.inject(host, SYS_SETITIMER, ITIMER_PROF, where, 0)
        if result < 0:
            raise EngineError(f"setitimer in the guest failed: {os.strerror(-result)}")
        host.itimer_us = interval_us
        host.prof_seen = False

    def _t_vanished(self, host: _Host, exc: GuestGone | OSError) -> Stop:
        """The guest's host process went away under a ptrace call (GuestGone, or ESRCH from
        the kernel): the process is lost. Any other OSError is a real failure: re-raised."""
        if isinstance(exc, GuestGone):
            return self._t_lost(exc.status)
        if exc.errno == errno.ESRCH:
            return self._t_lost(self._tracer.reap_lost(host))
        raise exc

    def _t_lost(self, status: int) -> Stop:
        host = self._host
        pid = host.pid if host is not None else 0
        if host is not None:
            self._tracer.owners.pop(host.pid, None)
            self._tracer.running.pop(host.pid, None)
        self._end_run()
        sig, why = describe_status(status)
        self._lost = Stop(StopKind.FAULT, sig, 0, f"{why} (host process {pid})")
        return self._lost

    def _t_resume(self) -> Stop | None:
        """Let the stopped guest go on, unless the quantum ended while the tracer worked."""
        host = self._host
        assert host is not None
        if host.outside_signals:
            sig = host.outside_signals[0]
            return Stop(StopKind.FAULT, sig, 0, f"killed by signal {sig} "
                        f"({_signal_name(sig)}) from outside (host process {host.pid})")
        if (self._signalled == self._run_id or host.prof_seen) and self._in_run:
            host.prof_seen = False
            self._t_snapshot()
            return Stop(StopKind.QUANTUM)
        pid = host.pid
        if host.regs_dirty:
            _ptrace(PTRACE_SETREGS, pid, 0, ctypes.addressof(host.regs))
            host.regs_dirty = False
        if host.fp_dirty:
            fp = _FpRegs.from_buffer(host.fp)
            _ptrace(PTRACE_SETFPREGS, pid, 0, ctypes.addressof(fp))
            del fp
            host.fp_dirty = False
        _ptrace(PTRACE_CONT, pid, 0, 0)
        return None

    def _t_snapshot(self) -> None:
        """Cache the FPU state at a stop the computation will see (registers are cached)."""
        host = self._host
        assert host is not None
        if host.fp_dirty:
            return
        fp = _FpRegs.from_buffer(host.fp)
        _ptrace(PTRACE_GETFPREGS, host.pid, 0, ctypes.addressof(fp))
        del fp

    def _t_event(self, status: int) -> Stop | None:
        """A wait status of the running guest: the stop to report, or None when it runs on."""
        host = self._host
        assert host is not None
        if os.WIFEXITED(status) or os.WIFSIGNALED(status):
            host.mark_dead(status)
            return self._t_lost(status)
        try:
            host.at_seccomp = status >> 8 == SIGTRAP | PTRACE_EVENT_SECCOMP << 8
            if host.at_seccomp:
                return self._t_syscall()
            if status >> 16 == 0:
                return self._t_signal(os.WSTOPSIG(status))
            _ptrace(PTRACE_CONT, host.pid, 0, 0)  # another ptrace event: not asked for
            return None
        except (GuestGone, OSError) as exc:
            return self._t_vanished(host, exc)

    def _t_syscall(self) -> Stop | None:
        host = self._host
        assert host is not None and self.handler is not None and self.space is not None
        r = host.regs
        _ptrace(PTRACE_GETREGS, host.pid, 0, ctypes.addressof(r))
        nr = int(r.orig_rax)
        args = (int(r.rdi), int(r.rsi), int(r.rdx), int(r.r10), int(r.r8), int(r.r9))
        self.stats["syscalls"] += 1
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
            self._t_sync_call(nr, args, outcome.result)
            stop = False
        elif self.space is not space or space.generation != generation:
            self._full_sync = True  # not expected: make everything match to be safe
            self._t_sync(0, VPN_LIMIT)
            self._full_sync = False
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
                or (self._signalled == self._run_id and self._in_run)):
            return False
        host.maps.remove(addr >> PAGE_SHIFT, end >> PAGE_SHIFT)
        if host.regs_dirty:  # (set_fs_base cannot happen here; be safe all the same)
            _ptrace(PTRACE_SETREGS, host.pid, 0, ctypes.addressof(host.regs))
            host.regs_dirty = False
        _ptrace(PTRACE_CONT, host.pid, 0, 0)
        return True

    def _t_sync_call(self, nr: int, args: tuple[int, ...], result: int | None) -> None:
        """Make the host mappings match the virtual space where a memory call changed it."""
        space = self.space
        assert space is not None
        res = _signed(result) if result is not None else -errno.EINVAL
        if nr == SYS_MMAP:
            if -4096 < res < 0:
                return
            lo, hi = res >> PAGE_SHIFT, (res + args[1] + PAGE_SIZE - 1) >> PAGE_SHIFT
        elif nr == SYS_BRK:
            # Growing adds only pages that are not present; shrinking leaves a hole up to the
            # next area, which must not stay mapped.
            lo = (max(res, 0) + PAGE_SIZE - 1) >> PAGE_SHIFT
            above = [us.start for us in space.overlapping(lo << PAGE_SHIFT, TASK_SIZE)
                     if us.start >= lo << PAGE_SHIFT]
            hi = (above[0] >> PAGE_SHIFT) if above else VPN_LIMIT
        elif nr == SYS_MREMAP:
            return  # not served by the machine: nothing changed
        else:
            addr, length = args[0], args[1]
            if addr % PAGE_SIZE or length > TASK_SIZE:
                return
            lo, hi = addr >> PAGE_SHIFT, min((addr + length + PAGE_SIZE - 1) >> PAGE_SHIFT,
                                              VPN_LIMIT)
        self._t_sync(max(lo, 0), min(hi, VPN_LIMIT))

    def _t_sync(self, lo: int, hi: int, force: bool = False) -> None:
        """Make the host mappings of pages [lo, hi) what the virtual space says."""
        host, space = self._host, self.space
        assert host is not None and space is not None
        if lo >= hi:
            return
        tramp = host.trampoline >> PAGE_SHIFT
        if lo <= tramp < hi and space.find(tramp << PAGE_SHIFT) is not None:
            self._t_move_trampoline()
        desired = desired_runs(space, lo, hi)
        current = host.maps.within(lo, hi)
        if not force and desired == current:
            return
        if force:
            stale, new = current, desired
        else:
            want, have = set(desired), set(current)
            stale = [c for c in current if c not in want]
            new = [d for d in desired if d not in have]
        tracer = self._tracer
        # Unmap what is stale and will not be mapped over (MAP_FIXED replaces the rest).
        for v, n in _subtract([(v, n) for v, n, _, _ in stale], [(v, n) for v, n, _, _ in new]):
            self.stats["injected"] += 1
            res = tracer.inject(host, SYS_MUNMAP, v << PAGE_SHIFT, n << PAGE_SHIFT)
            if res < 0:
                raise EngineError(f"munmap of {v << PAGE_SHIFT:#x} failed: {os.strerror(-res)}")
            host.maps.remove(v, v + n)
        for run in new:
            v, n, f, prot = run
            flags = MAP_SHARED | MAP_FIXED | (MAP_POPULATE if n <= WINDOW_MAX else 0)
            self.stats["injected"] += 1
            res = tracer.inject(host, SYS_MMAP, v << PAGE_SHIFT, n << PAGE_SHIFT, prot, flags,
                                MEMORY_FD, f << PAGE_SHIFT)
            if res != v << PAGE_SHIFT:
                raise EngineError(f"mapping {n} pages at {v << PAGE_SHIFT:#x} failed: "
                                  f"{os.strerror(-res) if res < 0 else hex(res)}")
            host.maps.add(run)

    def _t_move_trampoline(self) -> None:
        """The process maps over the trampoline page: put the trampoline somewhere free."""
        host, space = self._host, self.space
        assert host is not None and space is not None
        old = host.trampoline & ~(PAGE_SIZE - 1)
        candidates = itertools.chain(range(0x10_0000, 0x1_0000, -PAGE_SIZE),
                                     range(0x7FF0_0000_0000, 0x7FF0_0100_0000, PAGE_SIZE))
        for page in candidates:
            if page != old and space.find(page) is None and not host.maps.covers(
                    page >> PAGE_SHIFT):
                break
        else:
            raise EngineError("no free page for the system call trampoline")
        res = self._tracer.inject(host, SYS_MMAP, page, PAGE_SIZE, PROT_READ | PROT_EXEC,
                                  MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0)
        if res != page:
            raise EngineError(f"cannot map a new trampoline page at {page:#x}")
        _ptrace(PTRACE_POKEDATA, host.pid, page, int.from_bytes(_TRAMPOLINE_CODE, "little"))
        host.trampoline = page
        self._tracer.inject(host, SYS_MUNMAP, old, PAGE_SIZE)

    def _t_signal(self, sig: int) -> Stop | None:
        host = self._host
        assert host is not None
        pid = host.pid
        _ptrace(PTRACE_GETREGS, pid, 0, ctypes.addressof(host.regs))
        info = _SigInfo()
        _ptrace(PTRACE_GETSIGINFO, pid, 0, ctypes.addressof(info))
        raw = bytes(info)
        code = struct.unpack_from("<i", raw, 8)[0]
        (address,) = struct.unpack_from("<Q", raw, 16)
        (sender,) = struct.unpack_from("<i", raw, 16)
        if sig == SIGPROF and code == SI_KERNEL:  # the kernel's quantum timer
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
        if sig == SIGSEGV and code == SEGV_MAPERR:
            return self._t_fault(address)
        if code > 0:  # raised by the CPU: the process faulted
            why = _FAULT_NAMES.get(sig, f"signal {sig}")
            if sig == SIGSEGV:
                why = ("general protection fault" if code == SI_KERNEL
                       else f"access violating the protection of {address:#x}")
            return self._t_fatal(sig, address if code != SI_KERNEL else int(host.regs.rip),
                                 why)
        if sig in _HARMLESS_SIGNALS:
            return self._t_resume()
        self._t_snapshot()
        return Stop(StopKind.FAULT, sig, 0, f"killed by signal {sig} ({_signal_name(sig)})"
                    f" from outside (host process {pid})")

    def _t_fatal(self, sig: int, address: int, detail: str) -> Stop:
        """The stop of a process the CPU killed, described as the emulated CPU would.

        The host says only which signal and address; the emulated CPU, given the same state
        and memory, runs the one faulting instruction and says what it did (a write to an
        unmapped address, a divide error...), so both engines give the same reasons.
        """
        self._t_snapshot()
        host, space = self._host, self.space
        assert host is not None and space is not None
        try:
            from .cpu import Cpu, SyscallOutcome

            cpu = Cpu(self.memory, exact=True, translation_buffer=1 << 20)
            try:
                cpu.bind(space, lambda _nr, _args: SyscallOutcome(None, stop=True))
                cpu.load(state_from_host(host.regs, bytes(host.fp)))
                stop = cpu.run(1)
            finally:
                cpu.close()
            if stop.kind is StopKind.FAULT and stop.signal == sig:
                return stop
        except Exception:  # only a description is at stake: keep the host's
            pass
        return Stop(StopKind.FAULT, sig, address, detail)

    def _t_fault(self, address: int) -> Stop | None:
        """A touch of a page the host does not map: a page the virtual space must provide."""
        host, space = self._host, self.space
        assert host is not None and space is not None
        self.stats["faults"] += 1
        vpn = address >> PAGE_SHIFT
        us = space.find(address) if address < TASK_SIZE else None
        if us is None or us.region is None:
            return self._t_fatal(SIGSEGV, address, f"access to unmapped address {address:#x}")
        if not us.perms & 7:
            return self._t_fatal(SIGSEGV, address,
                                 f"access to a page without access rights at {address:#x}")
        if vpn == self._last_fault:
            self._fault_repeats += 1
            if self._fault_repeats > 3:
                self._t_snapshot()
                return Stop(StopKind.FAULT, SIGSEGV, address,
                            f"page {address:#x} cannot be mapped")
        else:
            self._last_fault, self._fault_repeats = vpn, 0
        lo, hi = self._fault_window(vpn, us.start >> PAGE_SHIFT, us.end >> PAGE_SHIFT)
        try:
            self._populate(us, lo, hi)
        except OutOfMemoryError:
            try:
                lo, hi = vpn, vpn + 1
                self._populate(us, lo, hi)
            except OutOfMemoryError as exc:
                self._t_snapshot()
                return Stop(StopKind.FAULT, SIGKILL, address, f"out of real memory: {exc}")
        self._t_sync(lo, hi, force=host.maps.covers(vpn))
        return self._t_resume()

    def _fault_window(self, vpn: int, first: int, end: int) -> tuple[int, int]:
        """The pages to bring in for a touch of page `vpn` of the area [first, end)."""
        if end - first <= WINDOW_SMALL:
            return first, end  # a small area (a malloc'd block, say) comes in at once
        last_lo, last_hi, size = self._window
        if last_hi <= vpn < last_hi + WINDOW_MIN:
            size = min(size * WINDOW_GROWTH, WINDOW_MAX)
            lo, hi = vpn, vpn + size
        elif last_lo - WINDOW_MIN <= vpn < last_lo:
            size = min(size * WINDOW_GROWTH, WINDOW_MAX)
            lo, hi = vpn - size + 1, vpn + 1
        else:
            size = WINDOW_MIN
            lo = vpn & ~(WINDOW_MIN - 1)
            hi = lo + WINDOW_MIN
        lo, hi = max(lo, first), min(hi, end)
        self._window = (lo, hi, size)
        return lo, hi

    def _populate(self, us: VirtualUserSpace, lo: int, hi: int) -> None:
        """Give the not-present pages [lo, hi) of a user space zeroed frames, and entries
        (what the virtual space's fault path does, for a window of pages at once)."""
        space = self.space
        assert space is not None and us.region is not None
        region = us.region
        base = us.start >> PAGE_SHIFT
        a, b = lo - base, hi - base
        frames = region.frames
        window = frames[a:b]
        if window.count(NOT_PRESENT) == len(window):
            frames[a:b] = self.memory.allocate(b - a)  # the usual case: all new, one run
        elif NOT_PRESENT in window:
            region.populate([i for i in range(a, b) if frames[i] == NOT_PRESENT], self.memory)
        perms = us.perms
        space.table.update(zip(range(lo, hi), [(f << PAGE_SHIFT) | perms for f in frames[a:b]],
                               strict=True))


def _subtract(ranges: list[tuple[int, int]],
              holes: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(start, length) ranges minus the holes, adjacent pieces merged."""
    out: list[tuple[int, int]] = []
    holes = sorted(holes)
    for start, length in sorted(ranges):
        pieces = [(start, start + length)]
        for h_start, h_len in holes:
            h_end = h_start + h_len
            next_pieces = []
            for a, b in pieces:
                if h_end <= a or h_start >= b:
                    next_pieces.append((a, b))
                    continue
                if a < h_start:
                    next_pieces.append((a, h_start))
                if h_end < b:
                    next_pieces.append((h_end, b))
            pieces = next_pieces
        for a, b in pieces:
            if out and out[-1][0] + out[-1][1] == a:
                out[-1] = (out[-1][0], b - out[-1][0])
            else:
                out.append((a, b - a))
    return out


# --- is the native engine possible here? ----------------------------------------------------

_check_lock = threading.Lock()
_check_result: tuple[bool, str] | None = None
SELF_CHECK_TIMEOUT: Final = 15.0


def self_check() -> tuple[bool, str]:
    """Whether the native engine works on this host, and why not: spawns a traced guest that
    makes two system calls (served here) and must end with the expected value. Cached; bounded
    by a timeout, so a host where tracing hangs falls back instead of hanging."""
    global _check_result
    with _check_lock:
        if _check_result is None:
            _check_result = _self_check()
        return _check_result


def _self_check() -> tuple[bool, str]:
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        return False, f"it needs Linux on x86-64 (this is {sys.platform} {platform.machine()})"
    if _libc is None or not hasattr(os, "pidfd_open") or not hasattr(os, "posix_spawn"):
        return False, "this Python has no ptrace, pidfd_open or posix_spawn"
    if not os.access(STUB, os.X_OK):
        return False, f"its stub program {STUB} is missing or not executable"
    with open(STUB, "rb") as f:
        header = f.read(64)
    if header[:4] != b"\x7fELF" or struct.unpack_from("<Q", header, 24)[0] != STUB_ENTRY:
        return False, f"its stub program {STUB} is not the one this module knows (rebuild it)"
    outcome: list[tuple[bool, str]] = []

    def probe() -> None:
        try:
            outcome.append(_probe())
        except BaseException as exc:  # anything at all means: not here
            outcome.append((False, str(exc) or type(exc).__name__))

    thread = threading.Thread(target=probe, name="tender-native-self-check", daemon=True)
    thread.start()
    thread.join(SELF_CHECK_TIMEOUT)
    if thread.is_alive():
        return False, f"the ptrace self-check did not finish in {SELF_CHECK_TIMEOUT:.0f} s"
    return outcome[0] if outcome else (False, "the ptrace self-check failed")


# mov $39,%eax; syscall (getpid); mov %rax,%rdi; mov $60,%eax; syscall (exit)
_PROBE_CODE: Final = bytes.fromhex("b827000000" "0f05" "4889c7" "b83c000000" "0f05")


def _probe() -> tuple[bool, str]:
    from .cpu import SyscallOutcome

    memory = RealMemory(4 * PAGE_SIZE, shared=True)
    space = VirtualSpace(memory)
    code = memory.allocate_one()
    memory.frames[code, : len(_PROBE_CODE)] = np.frombuffer(_PROBE_CODE, np.uint8)
    seen: list[tuple[int, int]] = []

    def handler(nr: int, args: tuple[int, int, int, int, int, int]) -> SyscallOutcome:
        seen.append((nr, args[0]))
        return SyscallOutcome(4242 if nr == 39 else 0, stop=nr == 60)

    # A user space so that the fault path and syncing see the page.
    from .resources.virtual_region import RegionKind, VirtualRegion
    from .resources.virtual_user_space import VirtualUserSpace
    region = VirtualRegion().setup(RegionKind.TEXT, 1)
    region.frames[0] = code
    space.paste(VirtualUserSpace().setup(region, 0x400000, PROT_READ | PROT_EXEC))
    cpu = NativeCpu(memory)
    try:
        cpu.bind(space, handler)
        cpu.load(CpuState.initial(0x400000, 0))
        for _ in range(10):
            stop = cpu.run(100_000)
            if stop.kind is not StopKind.QUANTUM:
                break
        if stop.kind is not StopKind.SYSCALL or seen != [(39, 0), (60, 4242)]:
            return False, f"the traced probe went wrong: {stop} after {seen}"
        return True, ""
    finally:
        cpu.close()
