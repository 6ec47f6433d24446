"""The Linux system calls a Tender process may make, served by its kernel.

Each call gets the process and its six raw arguments and returns what goes into rax, plus
whether the computation must stop running the process (it sleeps, exits, yields). A call that
is not here returns -ENOSYS and is counted by its Linux name, so a report shows what a program
wanted. The calls reach their kernel only through `Services`.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Callable
from typing import Protocol

from tender_ray.abi import linux
from tender_ray.abi.cpu_state import SyscallArgs, SyscallOutcome
from tender_ray.abi.linux import Errno, syscall_name
from tender_ray.kernel import address_space as vm
from tender_ray.kernel import file_calls, file_calls_more, signal_calls, signals
from tender_ray.kernel.host_tree import HostTree
from tender_ray.resources.file_view import FileService
from tender_ray.resources.process import Process
from tender_ray.resources.virtual_space import BadAddress

Handler = Callable[["SystemCalls", Process, SyscallArgs], SyscallOutcome]

_REALTIME_CLOCKS = frozenset({linux.CLOCK_REALTIME, linux.CLOCK_REALTIME_COARSE,
                              linux.CLOCK_REALTIME_ALARM})
_MONOTONIC_CLOCKS = frozenset({linux.CLOCK_MONOTONIC, linux.CLOCK_MONOTONIC_RAW,
                               linux.CLOCK_MONOTONIC_COARSE, linux.CLOCK_BOOTTIME,
                               linux.CLOCK_BOOTTIME_ALARM})
_CPU_CLOCKS = frozenset({linux.CLOCK_PROCESS_CPUTIME_ID, linux.CLOCK_THREAD_CPUTIME_ID})


def restart_call(p: Process, nr: int) -> SyscallOutcome:
    """Answer a call that must wait: when the process runs again it issues the same call
    (rip back over the 2-byte `syscall`, rax its number), as Linux restarts a call cut off by
    -ERESTARTSYS. The registers then say everything, so a waiting process migrates as is."""
    p.register_edits.append(lambda s: s.with_regs(rip=s.rip - 2, rax=nr))
    signals.of(p).wait = signals.Wait("restart", nr=nr)  # a signal may end the wait: EINTR
    return SyscallOutcome(None, stop=True)


def _pread_all(pread: Callable[[int, int], bytes], length: int, offset: int) -> bytes:
    """`length` bytes of a file from `offset` (fewer at its end), in 1 MiB reads."""
    parts, done = [], 0
    while done < length:
        part = pread(min(length - done, 1 << 20), offset + done)
        if not part:
            break
        parts.append(part)
        done += len(part)
    return b"".join(parts)


_CLONE_VM, _CLONE_VFORK, _CLONE_THREAD = 0x100, 0x4000, 0x10000
_CLONE_ARGS_SIZE_VER0 = 64  # struct clone_args as clone3 first took it
_FUTEX_WAIT, _FUTEX_WAKE, _FUTEX_WAIT_BITSET, _FUTEX_WAKE_BITSET = 0, 1, 9, 10
_FUTEX_PRIVATE, _FUTEX_CLOCK_REALTIME = 128, 256


class Services(Protocol):
    """What a system call may ask of its kernel (the machine offers it)."""

    @property
    def managers(self) -> vm.Managers: ...

    def append_output(self, p: Process, fd: int, data: bytes) -> None: ...
    def exit_process(self, p: Process, status: int, reason: str) -> None: ...
    def sleep_process(self, p: Process, seconds: float) -> None: ...
    def block_process(self, p: Process) -> None: ...
    def raise_signal(self, p: Process, sig: int, code: int = 0x80) -> None: ...
    def timer_changed(self, p: Process) -> None: ...
    def get_fs_base(self, p: Process) -> int: ...
    def set_fs_base(self, p: Process, value: int) -> None: ...


class SystemCalls:
    """The system call table of one kernel."""

    def __init__(self, services: Services, host_tree: HostTree | None = None) -> None:
        self.services = services
        self.managers = services.managers
        self.host_tree = host_tree or HostTree("")  # whose host files a view uses
        self._table: dict[int, Handler] = {linux.sysno(name): handler
                                           for name, handler in _HANDLERS.items()}

    @property
    def file_service(self) -> FileService:
        """This machine's own host files (views of processes that started here)."""
        return self.host_tree.local

    def attach(self, p: Process) -> None:
        """Point the process's CPU at its space and at these calls, and load its registers."""
        cpu = p.context
        assert p.space is not None and p.registers is not None
        dispatch = self.dispatch
        cpu.bind(p.space, lambda nr, args: dispatch(p, nr, args))
        cpu.load(p.registers)

    def dispatch(self, process: Process, nr: int, args: SyscallArgs) -> SyscallOutcome:
        name = syscall_name(nr)
        process.accounting.syscalls[name] += 1
        handler = self._table.get(nr)
        if handler is None:
            process.accounting.unsupported[name] += 1
            return SyscallOutcome(-Errno.ENOSYS)
        space = process.space
        generation = space.generation if space is not None else 0
        try:
            outcome = handler(self, process, args)
        except BadAddress:
            return SyscallOutcome(-Errno.EFAULT)
        if space is not None and space.generation != generation and not outcome.stop:
            # Translations were removed or narrowed: stop so the CPU flushes its TLB before
            # the process runs on.
            return SyscallOutcome(outcome.result, stop=True)
        return outcome

    # Input and output, on any descriptor, are kernel/file_calls.py's.

    # --- memory --------------------------------------------------------------------------

    def brk(self, p: Process, a: SyscallArgs) -> SyscallOutcome:
        return SyscallOutcome(vm.set_break(self.managers, p, a[0]))

    def mmap(self, p: Process, a: SyscallArgs) -> SyscallOutcome:
        addr, length, prot, flags = a[0], a[1], a[2], a[3]
        if flags & linux.MAP_ANONYMOUS:
            return SyscallOutcome(vm.map_anonymous(self.managers, p, addr, length, prot, flags))
        file_calls.reattach(self, p)  # one that arrived since it opened the file
        try:  # a file: its pages are copied in at once (address_space.map_file says why)
            file = p.files.get(a[4] & 0xFFFFFFFF)
            shared_write = (flags & 3) == linux.MAP_SHARED and prot & linux.PROT_WRITE
            if not file.readable or (shared_write and not file.writable):
                return SyscallOutcome(-Errno.EACCES)  # as Linux: the descriptor forbids it
            result = vm.map_file(self.managers, p, addr, length, prot, flags, a[5],
                                 lambda n, off: _pread_all(file.pread, n, off))
        except OSError as e:
            return SyscallOutcome(-(e.errno or int(Errno.EIO)))
        if result == -Errno.ENODEV:
            p.accounting.unsupported["mmap(MAP_SHARED|PROT_WRITE of a file)"] += 1
        return SyscallOutcome(result)

    def munmap(self, p: Process, a: SyscallArgs) -> SyscallOutcome:
        return SyscallOutcome(vm.unmap(self.managers, p, a[0], a[1]))

    def mprotect(self, p: Process, a: SyscallArgs) -> SyscallOutcome:
        return SyscallOutcome(vm.protect(self.managers, p, a[0], a[1], a[2]))

    def madvise(self, p: Process, a: SyscallArgs) -> SyscallOutcome:
        if a[2] in (linux.MADV_DONTNEED, linux.MADV_FREE):
            return SyscallOutcome(vm.discard(self.managers, p, a[0], a[1]))
        return SyscallOutcome(0)  # advice only: ignoring it is correct

    # --- identity, signals, threads ------------------------------------------------------

    def getpid(self, p: Process, a: SyscallArgs) -> SyscallOutcome:
        return SyscallOutcome(p.pid)

    def getppid(self, p: Process, a: SyscallArgs) -> SyscallOutcome:
        return SyscallOutcome(1)

    def set_tid_address(self, p: Process, a: SyscallArgs) -> SyscallOutcome:
        p.tid_address = a[0]
        return SyscallOutcome(p.pid)

    def arch_prctl(self, p: Process, a: SyscallArgs) -> SyscallOutcome:
        if a[0] == linux.ARCH_SET_FS:
            self.services.set_fs_base(p, a[1])
            return SyscallOutcome(0)
        if a[0] == linux.ARCH_GET_FS:
            assert p.space is not None
            p.space.write(a[1], struct.pack("<Q", self.services.get_fs_base(p)))
            return SyscallOutcome(0)
        return SyscallOutcome(-Errno.EINVAL)

    def exit(self, p: Process, a: SyscallArgs) -> SyscallOutcome:
        self.services.exit_process(p, a[0] & 0xFF, "exited")
        return SyscallOutcome(None, stop=True)

    # A Tender process is one thread, and it makes no other process. A new process is
    # -ENOSYS, as any call not served: the program sees fork, vfork or posix_spawn fail and
    # says so (a shell: "can't fork"), and the report counts it. A thread ends the process
    # with a reason naming the call: a program that cannot have its thread has no useful way
    # on (glibc's pthread_create would answer EAGAIN, which programs retry or ignore), and
    # waiting for a thread that never runs would hang in a futex. The status is SIGSYS's, as
    # for a call a seccomp filter refuses.

    def _clone(self, p: Process, call: str, flags: int) -> SyscallOutcome:
        if flags & _CLONE_THREAD or (flags & _CLONE_VM and not flags & _CLONE_VFORK):
            # CLONE_VM without CLONE_VFORK shares the memory with a child that runs at the
            # same time: a thread, even without CLONE_THREAD (LinuxThreads made them so).
            what = "CLONE_THREAD" if flags & _CLONE_THREAD else "CLONE_VM"
            p.accounting.unsupported[f"{call} (a thread)"] += 1
            self.services.exit_process(p, 128 + linux.Signal.SIGSYS,
                                       f"{call} with {what} (a thread) is not supported: "
                                       "tender_ray runs single-threaded processes")
            return SyscallOutcome(None, stop=True)
        return self._no_new_process(p, call)  # fork-like, or vfork-like (posix_spawn)

    def _no_new_process(self, p: Process, call: str) -> SyscallOutcome:
        p.accounting.unsupported[call] += 1
        return SyscallOutcome(-Errno.ENOSYS)

    def clone(self, p: Process, a: SyscallArgs) -> SyscallOutcome:
        return self._clone(p, "clone", a[0])

    def clone3(self, p: Process, a: SyscallArgs) -> SyscallOutcome:
        if a[1] < _CLONE_ARGS_SIZE_VER0:
            return SyscallOutcome(-Errno.EINVAL)  # as Linux checks the size first
        assert p.space is not None
        (flags,) = struct.unpack("<Q", p.space.read(a[0], 8))  # clone_args.flags
        return self._clone(p, "clone3", flags)

    def fork(self, p: Process, a: SyscallArgs) -> SyscallOutcome:
        return self._no_new_process(p, "fork")

    def vfork(self, p: Process, a: SyscallArgs) -> SyscallOutcome:
        return self._no_new_process(p, "vfork")

    def uname(self, p: Process, a: SyscallArgs) -> SyscallOutcome:
        fields = [b"Linux", b"tender", b"6.0.0-tender", b"#1 Tender", b"x86_64", b"(none)"]
        assert p.space is not None
        p.space.write(a[0], b"".join(f.ljust(65, b"\0") for f in fields))
        return SyscallOutcome(0)

    def getrandom(self, p: Process, a: SyscallArgs) -> SyscallOutcome:
        count = min(a[1], 1 << 20)
        assert p.space is not None
        p.space.write(a[0], os.urandom(count))
        return SyscallOutcome(count)

    # --- time ----------------------------------------------------------------------------

    def _clock_ns(self, p: Process, clock: int) -> int | None:
        if clock in _REALTIME_CLOCKS:
            return time.time_ns()
        if clock in _MONOTONIC_CLOCKS:
            return time.monotonic_ns()
        if clock in _CPU_CLOCKS:
            return int(p.accounting.cpu_seconds * 1e9)
        return None

    def clock_gettime(self, p: Process, a: SyscallArgs) -> SyscallOutcome:
        ns = self._clock_ns(p, a[0])
        if ns is None:
            return SyscallOutcome(-Errno.EINVAL)
        assert p.space is not None
        p.space.write(a[1], struct.pack("<qq", ns // 1_000_000_000, ns % 1_000_000_000))
        return SyscallOutcome(0)

    def clock_getres(self, p: Process, a: SyscallArgs) -> SyscallOutcome:
        if self._clock_ns(p, a[0]) is None:
            return SyscallOutcome(-Errno.EINVAL)
        if a[1]:
            assert p.space is not None
            p.space.write(a[1], struct.pack("<qq", 0, 1))
        return SyscallOutcome(0)

    def gettimeofday(self, p: Process, a: SyscallArgs) -> SyscallOutcome:
        if a[0]:
            ns = time.time_ns()
            assert p.space is not None
            p.space.write(a[0], struct.pack("<qq", ns // 1_000_000_000, ns // 1000 % 1_000_000))
        return SyscallOutcome(0)

    def time(self, p: Process, a: SyscallArgs) -> SyscallOutcome:
        now = time.time_ns() // 1_000_000_000
        if a[0]:
            assert p.space is not None
            p.space.write(a[0], struct.pack("<q", now))
        return SyscallOutcome(now)

    def _sleep(self, p: Process, req: int, absolute_clock: int | None,
               rem: int = 0) -> SyscallOutcome:
        assert p.space is not None
        sec, nsec = struct.unpack("<qq", p.space.read(req, 16))
        if sec < 0 or not 0 <= nsec < 1_000_000_000:
            return SyscallOutcome(-Errno.EINVAL)
        seconds = sec + nsec / 1e9
        if absolute_clock is not None:
            now = self._clock_ns(p, absolute_clock)
            if now is None:
                return SyscallOutcome(-Errno.EINVAL)
            seconds = max(0.0, seconds - now / 1e9)
        signals.of(p).wait = signals.Wait("sleep", until=time.time() + seconds,
                                          rem=rem)  # a signal ends it with -EINTR
        self.services.sleep_process(p, seconds)
        return SyscallOutcome(0, stop=True)

    def nanosleep(self, p: Process, a: SyscallArgs) -> SyscallOutcome:
        return self._sleep(p, a[0], None, a[1])

    def clock_nanosleep(self, p: Process, a: SyscallArgs) -> SyscallOutcome:
        if self._clock_ns(p, a[0]) is None:
            return SyscallOutcome(-Errno.EINVAL)
        absolute = bool(a[1] & linux.TIMER_ABSTIME)
        return self._sleep(p, a[2], a[0] if absolute else None, 0 if absolute else a[3])

    def sched_yield(self, p: Process, a: SyscallArgs) -> SyscallOutcome:
        return SyscallOutcome(0, stop=True)

    def futex(self, p: Process, a: SyscallArgs) -> SyscallOutcome:
        """Futexes of a single-threaded process: nobody else can wake a waiter or be woken.
        glibc's locks and its exit path call them even without threads."""
        op = a[1] & ~(_FUTEX_PRIVATE | _FUTEX_CLOCK_REALTIME)
        if op in (_FUTEX_WAKE, _FUTEX_WAKE_BITSET):
            return SyscallOutcome(0)  # no other thread waits
        if op in (_FUTEX_WAIT, _FUTEX_WAIT_BITSET):
            assert p.space is not None
            (word,) = struct.unpack("<I", p.space.read(a[0], 4))
            if word != a[2] & 0xFFFF_FFFF:
                return SyscallOutcome(-Errno.EAGAIN)
            if a[3] and op == _FUTEX_WAIT:  # a relative timeout: it ends by timing out
                sec, nsec = struct.unpack("<qq", p.space.read(a[3], 16))
                self.services.sleep_process(p, max(0.0, sec + nsec / 1e9))
                return SyscallOutcome(-Errno.ETIMEDOUT, stop=True)
            # The value matches: only another thread could change it, and there is none, so
            # the wait would never end. Linux would hang; say so instead.
            self.services.exit_process(p, 128 + 6, "futex wait that no thread can end "
                                       "(threads are not supported)")
            return SyscallOutcome(None, stop=True)
        return SyscallOutcome(-Errno.ENOSYS)


# The calls served, by Linux name (several names share a handler).
_HANDLERS: dict[str, Handler] = {
    "brk": SystemCalls.brk, "mmap": SystemCalls.mmap, "munmap": SystemCalls.munmap,
    "mprotect": SystemCalls.mprotect, "madvise": SystemCalls.madvise,
    "getpid": SystemCalls.getpid, "gettid": SystemCalls.getpid, "getppid": SystemCalls.getppid,
    "set_tid_address": SystemCalls.set_tid_address, "arch_prctl": SystemCalls.arch_prctl,
    "exit": SystemCalls.exit, "exit_group": SystemCalls.exit,
    "clone": SystemCalls.clone, "clone3": SystemCalls.clone3, "fork": SystemCalls.fork,
    "vfork": SystemCalls.vfork,
    "uname": SystemCalls.uname, "getrandom": SystemCalls.getrandom,
    "clock_gettime": SystemCalls.clock_gettime, "clock_getres": SystemCalls.clock_getres,
    "gettimeofday": SystemCalls.gettimeofday, "time": SystemCalls.time,
    "nanosleep": SystemCalls.nanosleep, "clock_nanosleep": SystemCalls.clock_nanosleep,
    "sched_yield": SystemCalls.sched_yield, "futex": SystemCalls.futex,
}
_HANDLERS.update(signal_calls.HANDLERS)  # signals: kernel/signal_calls.py
_HANDLERS.update(file_calls.HANDLERS)  # descriptors and files: kernel/file_calls.py
_HANDLERS.update(file_calls_more.HANDLERS)  # ids, limits, directories, links, statx

__all__ = ["Services", "SystemCalls", "restart_call"]
