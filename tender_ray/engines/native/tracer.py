"""A machine's tracer thread and the host processes it traces: starting a guest stub,
injecting system calls into it, waiting for it and killing it; plus the timer thread that
signals guests whose short quanta are over.

All ptrace calls for a machine come from its one tracer thread; computations submit requests
to it and wait. It waits for all its guests at once with waitpid on their process group; a
traced "doorbell" child, signalled when a request arrives, wakes it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import heapq
import itertools
import os
import signal
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, Protocol

from tender_ray.abi.cpu_state import Stop
from tender_ray.abi.linux import SYS_MUNMAP, Signal, signal_name
from tender_ray.engines.native import vdso
from tender_ray.engines.native.host_map import HostMap
from tender_ray.engines.native.libc import (
    NT_X86_XSTATE,
    PTRACE_CONT,
    PTRACE_EVENT_SECCOMP,
    PTRACE_GETREGS,
    PTRACE_GETREGSET,
    PTRACE_GETSIGINFO,
    PTRACE_O_EXITKILL,
    PTRACE_O_TRACESECCOMP,
    PTRACE_POKEDATA,
    PTRACE_SETOPTIONS,
    PTRACE_SETREGS,
    PTRACE_SETREGSET,
    WALL,
    WNOTHREAD,
    XSTATE_MAX,
    IoVec,
    Regs,
    SigInfo,
    XState,
    ptrace,
    siginfo_fields,
)
from tender_ray.engines.native.registers import MASK64, signed
from tender_ray.errors import EngineError
from tender_ray.resources.real_memory import PAGE_SHIFT, PAGE_SIZE, RealMemory

STUB: Final = Path(__file__).resolve().parent / "_stub" / "tender-stub"
STUB_ENTRY: Final = 0x1000B0  # _start of the stub (see _stub/Makefile: text at 0x100000)
TRAMPOLINE: Final = STUB_ENTRY + 2  # `syscall; mov %rax,%rbx; mov $39,%eax; jmp trampoline`
TRAMPOLINE_CODE: Final = bytes.fromhex("0f05" "4889c3" "b827000000" "ebf4" "0f0b9090")
SYS_GETPID: Final = 39  # the trampoline's round after a call: its entry stop holds the result
MEMORY_FD: Final = 100  # the machine's real memory inside every guest (above direct_files.LIMIT)
TASK_SIZE: Final = 0x7FFF_FFFF_F000  # top of user space (4-level paging)
VPN_LIMIT: Final = TASK_SIZE >> PAGE_SHIFT

QUANTUM_SIGNAL: Final = Signal.SIGURG  # ignored by default: harmless if it ever got through
# Signals from outside that are not fatal by default (ignored, or job control): suppressed.
HARMLESS_SIGNALS: Final = frozenset({
    Signal.SIGCHLD, Signal.SIGCONT, Signal.SIGSTOP, Signal.SIGTSTP, Signal.SIGTTIN,
    Signal.SIGTTOU, Signal.SIGURG, Signal.SIGWINCH})
# A stub starts with every catchable signal at its default action.
_SPAWN_DEFAULT_SIGNALS: Final = tuple(s for s in range(1, 32)
                                      if s not in (Signal.SIGKILL, Signal.SIGSTOP))


class GuestGone(EngineError):
    """The guest's host process died while the tracer worked on it."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def signal_text(sig: int) -> str:
    """"signal 11 (SIGSEGV)", or "signal 34" for a signal the Linux table does not name."""
    name = signal_name(sig)
    return f"signal {sig} ({name})" if name.startswith("SIG") else f"signal {sig}"


def describe_status(status: int) -> tuple[int, str]:
    """(signal, reason) of a host process's end."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == Signal.SIGSYS:
            return sig, "killed by the sandbox: a system call through a denied ABI"
        return sig, f"killed by {signal_text(sig)} from outside"
    if os.WIFEXITED(status):
        return (Signal.SIGKILL,
                f"its host process exited on its own with status {os.WEXITSTATUS(status)}")
    return Signal.SIGKILL, f"its host process ended (wait status {status:#x})"


class Host:
    """One traced host process: a stub, then a guest. Touched only by the tracer thread, except
    `pidfd` (signals, under `lock`)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.pidfd = -1
        self.lock = threading.Lock()
        self.alive = True
        self.status: int | None = None  # wait status once it died
        self.regs = Regs()  # the guest's registers while it is stopped
        self.regs_dirty = False  # `regs` must be written before it runs
        self.fp = bytearray(XSTATE_MAX)  # the XSAVE area, its first `fp_size` bytes
        self.fp_size = 512
        self.fp_dirty = False
        self.scratch = Regs()  # registers for injected system calls
        self.trampoline = TRAMPOLINE
        self.maps = HostMap()
        self.at_seccomp = False  # stopped at a system call's entry (can be turned into another)
        self.itimer_us = 0  # the guest's ITIMER_PROF interval, 0 when not armed
        self.prof_seen = False  # a SIGPROF (end of quantum) was met while injecting
        self.outside_signals: list[int] = []  # fatal signals from outside, seen while injecting
        # Where the host's vDSO text lies in this process (`vdso.HOST_VDSO_BASE` and up), 0
        # when it has none there or a guest mapping may have replaced it.
        self.vdso_text = 0
        # A guest's other threads are host threads of this process (`host_threads`).
        self.leader: Host | None = None  # a thread's: the first thread's Host
        self.threads: list[Host] = []  # the first thread's: the others' Hosts

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

    # --- the stopped process's registers and memory (tracer thread only) ----------------

    def get_regs(self) -> None:
        ptrace(PTRACE_GETREGS, self.pid, 0, ctypes.addressof(self.regs))

    def put_regs(self) -> None:
        """Write `regs` back if they changed."""
        if self.regs_dirty:
            ptrace(PTRACE_SETREGS, self.pid, 0, ctypes.addressof(self.regs))
            self.regs_dirty = False

    def get_fp(self) -> None:
        """Read the whole XSAVE area (AVX and AVX-512 state too: a process that stops in the
        middle of a vector copy must find its ymm/zmm registers again wherever it goes)."""
        fp = XState.from_buffer(self.fp)
        iov = IoVec(ctypes.addressof(fp), XSTATE_MAX)
        ptrace(PTRACE_GETREGSET, self.pid, NT_X86_XSTATE, ctypes.addressof(iov))
        self.fp_size = int(iov.len)
        del fp  # (releases the export of `self.fp`)

    def put_fp(self) -> None:
        """Write `fp` back if it changed."""
        if self.fp_dirty:
            fp = XState.from_buffer(self.fp)
            iov = IoVec(ctypes.addressof(fp), self.fp_size)
            ptrace(PTRACE_SETREGSET, self.pid, NT_X86_XSTATE, ctypes.addressof(iov))
            del fp
            self.fp_dirty = False

    def siginfo(self) -> tuple[int, int, int]:
        """(code, address, sender) of the signal the process is stopped for."""
        info = SigInfo()
        ptrace(PTRACE_GETSIGINFO, self.pid, 0, ctypes.addressof(info))
        return siginfo_fields(bytes(info))

    def poke(self, address: int, word: int) -> None:
        ptrace(PTRACE_POKEDATA, self.pid, address, word)

    def cont(self) -> None:
        ptrace(PTRACE_CONT, self.pid, 0, 0)


# --- the tracer thread ---------------------------------------------------------------------

class Request:
    __slots__ = ("done", "error", "fn", "result")

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None

    def finish(self, result: Any = None, error: BaseException | None = None) -> None:
        self.result, self.error = result, error
        self.done.set()


PENDING: Final = object()  # a request that completes later (a run waiting for its stop)


class Traced(Protocol):
    """What the tracer and the timer call on an engine whose guest they serve (NativeCpu)."""

    def quantum_expired(self, run_id: int) -> None: ...  # timer thread
    def end_run(self) -> None: ...
    # Tracer thread: a wait status of the guest while it runs a quantum (the stop that ends the
    # run, or None), or while it does not (only its end can come); and let the guest go.
    def tracer_event(self, status: int) -> Stop | None: ...
    def tracer_idle_event(self, status: int) -> None: ...
    def tracer_discard(self) -> None: ...


class _Timer:
    """Ends quanta: at each deadline, the guest of a still-running quantum gets a signal."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Traced, int]] = []
        self._seq = itertools.count()
        self._closed = False
        self._thread = threading.Thread(target=self._main, name="tender-quantum-timer",
                                        daemon=True)
        self._thread.start()

    def arm(self, cpu: Traced, run_id: int, deadline: float) -> None:
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
            cpu.quantum_expired(run_id)


class Tracer:
    """One machine's tracer thread: owns every ptrace call for the machine's guests."""

    def __init__(self, memory: RealMemory) -> None:
        self.memory_fd = memory.fd
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._queue: deque[Request] = deque()
        self._waiting = False  # blocked in waitpid
        self._rung = False  # the doorbell was signalled and has not stopped yet
        self._closing = False
        self.running: dict[int, Traced] = {}  # pid -> engine whose guest runs a quantum
        self.owners: dict[int, Traced] = {}  # pid -> engine, every live guest
        self.runs: dict[int, Request] = {}  # pid -> the run request waiting for its stop
        self.current: Request | None = None  # the request being executed
        self._doorbell: Host | None = None
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

    def submit(self, fn: Callable[[], Any]) -> Request:
        request = Request(fn)
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
                        self.finish_run(cpu, pid, error=EngineError(f"tracer failure: {exc!r}"))

    def _execute(self, request: Request) -> None:
        self.current = request
        try:
            result = request.fn()
        except BaseException as exc:
            request.finish(error=exc)
            return
        if result is not PENDING:
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
            cpu.tracer_idle_event(status)
            return
        try:
            stop = cpu.tracer_event(status)
        except EngineError as exc:
            self.finish_run(cpu, pid, error=exc)
            return
        except BaseException as exc:  # the machine's handler failed: the process ends
            self.finish_run(cpu, pid,
                            error=EngineError(f"system call handler failed: {exc!r}"))
            return
        if stop is not None:
            self.finish_run(cpu, pid, stop)

    def finish_run(self, cpu: Traced, pid: int, stop: Stop | None = None,
                   error: BaseException | None = None) -> None:
        """End the run of guest `pid` (its engine `cpu`): answer the request waiting for it."""
        cpu.end_run()
        self.running.pop(pid, None)
        request = self.runs.pop(pid, None)
        if request is not None:
            request.finish(stop, error)

    def _doorbell_event(self, doorbell: Host, status: int) -> None:
        if os.WIFSTOPPED(status):
            with self._lock:
                self._rung = False
            with contextlib.suppress(OSError):
                doorbell.cont()
            return
        doorbell.mark_dead(status)  # killed from outside: ring a new one
        with self._lock:
            self._doorbell = None
            self._rung = False
        self._doorbell = self.spawn(doorbell=True)

    def _shutdown(self) -> None:
        for cpu in list(self.owners.values()):
            with contextlib.suppress(Exception):
                cpu.tracer_discard()
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

    def spawn(self, doorbell: bool = False) -> Host:
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
            if source == MEMORY_FD:  # dup2(N, N) would keep close-on-exec set
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
        host = Host(pid)
        try:
            status = self.wait(host)
            if not os.WIFSTOPPED(status) or os.WSTOPSIG(status) != Signal.SIGSTOP:
                raise EngineError(f"the stub did not stop for its tracer ({_stub_failure(status)})")
            ptrace(PTRACE_SETOPTIONS, pid, 0, PTRACE_O_EXITKILL | PTRACE_O_TRACESECCOMP)
            host.pidfd = os.pidfd_open(pid)
            host.cont()
            if doorbell:
                return host
            status = self.wait(host)
            if not os.WIFSTOPPED(status) or os.WSTOPSIG(status) != Signal.SIGTRAP:
                raise EngineError(f"the stub did not get ready ({_stub_failure(status)})")
            host.get_regs()
            host.get_fp()
            page = host.trampoline & ~(PAGE_SIZE - 1)
            # Nothing of the stub stays but its page: no stack, no vDSO, no vvar.
            self.inject(host, SYS_MUNMAP, 0, page)
            self.inject(host, SYS_MUNMAP, page + PAGE_SIZE, TASK_SIZE - page - PAGE_SIZE)
            # The host's vDSO again, at one address in every guest host process, below the
            # trampoline page: the guest's own vDSO calls into it (see `vdso`).
            if vdso.host_offsets() is not None and self.inject(
                    host, vdso.SYS_ARCH_PRCTL, vdso.ARCH_MAP_VDSO_64, vdso.HOST_VDSO_BASE) >= 0:
                host.vdso_text = vdso.host_text(pid)
            return host
        except BaseException:
            self.kill(host)
            raise

    def wait(self, host: Host) -> int:
        """The next wait status of one host process (blocking)."""
        _, status = os.waitpid(host.pid, WALL)
        if os.WIFEXITED(status) or os.WIFSIGNALED(status):
            host.mark_dead(status)
        return status

    def kill(self, host: Host) -> None:
        """End a host process and reap it (its other threads first: the first thread's end
        is not reported while they are unreaped)."""
        self.owners.pop(host.pid, None)
        self.running.pop(host.pid, None)
        if not host.alive:
            return
        if not host.send(Signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.kill(host.pid, Signal.SIGKILL)  # not reaped yet, so the pid is still ours
        for thread in host.threads:
            self.reap_lost(thread)
        try:
            while True:
                _, status = os.waitpid(host.pid, WALL)
                if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                    break
        except ChildProcessError:
            status = Signal.SIGKILL
        host.mark_dead(status)

    def inject(self, host: Host, nr: int, *args: int) -> int:
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
                ptrace(PTRACE_SETREGS, pid, 0, ctypes.addressof(r))
                host.cont()
            else:
                r.rip, r.rax, r.orig_rax = host.trampoline, nr, MASK64
                ptrace(PTRACE_SETREGS, pid, 0, ctypes.addressof(r))
                host.cont()
                self._wait_entry(host)  # the injected call's own entry: let it run
                host.cont()
            while True:  # the trampoline's next round, a getpid: the result is in rbx
                self._wait_entry(host)
                host.at_seccomp = True
                ptrace(PTRACE_GETREGS, pid, 0, ctypes.addressof(r))
                if r.rip != host.trampoline + 2:
                    raise EngineError(f"injected system call {nr} came back at {r.rip:#x}")
                if r.orig_rax == SYS_GETPID:
                    return signed(r.rbx)
                if r.orig_rax != nr:
                    raise EngineError(f"injected system call {nr} came back as call "
                                      f"{signed(r.orig_rax)}")
                # A signal came (-ERESTARTNOINTR and the like): the kernel issues the same
                # call again from the trampoline, and it runs to its end this time.
                host.cont()
        except OSError as exc:
            if exc.errno == errno.ESRCH:  # the host's errno: the process is gone
                status = self.reap_lost(host)
                raise GuestGone(status, describe_status(status)[1]) from None
            raise

    def _wait_entry(self, host: Host) -> None:
        """Wait for the host process's next system call entry, noting (not delivering) the
        signals that come first."""
        while True:
            status = self.wait(host)
            if not host.alive:
                raise GuestGone(status, describe_status(status)[1])
            if status >> 8 == Signal.SIGTRAP | PTRACE_EVENT_SECCOMP << 8:
                return
            # (A quantum signal met here is checked for by the engine before it resumes.)
            sig = os.WSTOPSIG(status) if status >> 16 == 0 else 0
            if sig == Signal.SIGPROF and (host.itimer_us or host.leader or host.threads):
                host.prof_seen = True  # (the timer is the whole host process's)
            elif sig and sig != QUANTUM_SIGNAL and sig not in HARMLESS_SIGNALS:
                host.outside_signals.append(sig)
            host.cont()

    def reap_lost(self, host: Host) -> int:
        """A host process that vanished under ptrace (killed): collect its status."""
        if host.alive:
            try:
                _, status = os.waitpid(host.pid, WALL)
                while not (os.WIFEXITED(status) or os.WIFSIGNALED(status)):
                    _, status = os.waitpid(host.pid, WALL)
            except ChildProcessError:
                status = Signal.SIGKILL
            host.mark_dead(status)
        return host.status if host.status is not None else Signal.SIGKILL


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


# One tracer per machine (per real memory), shared by its engines and ended with the last.
_tracers: weakref.WeakKeyDictionary[RealMemory, Tracer] = weakref.WeakKeyDictionary()
_tracers_lock = threading.Lock()


def tracer_for(memory: RealMemory) -> Tracer:
    """The tracer of the machine that owns `memory` (started on first use), one more user."""
    if memory.fd < 0:
        raise EngineError("the native engine needs real memory in a shared memory file "
                          "(RealMemory(..., shared=True))")
    with _tracers_lock:
        tracer = _tracers.get(memory)
        if tracer is None or tracer.failure is not None or not tracer.thread.is_alive():
            tracer = Tracer(memory)
            _tracers[memory] = tracer
        tracer.users += 1
        return tracer


def release_tracer(memory: RealMemory, tracer: Tracer) -> None:
    """One user fewer; the last one closes the tracer."""
    with _tracers_lock:
        tracer.users -= 1
        if tracer.users > 0:
            return
        if _tracers.get(memory) is tracer:
            del _tracers[memory]
    tracer.close()
