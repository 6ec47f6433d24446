"""The Linux system calls a Tender process may make, served by its machine.

Each call gets the process and its six raw arguments and returns what goes into rax, plus
whether the computation must stop running the process (it sleeps, exits, yields). A call that
is not here returns -ENOSYS and is counted, so a report shows what a program wanted.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import vm
from .cpu import SyscallOutcome
from .resources.process import Process, ProcessState
from .resources.virtual_space import BadAddress

if TYPE_CHECKING:
    from .machine import Machine

ENOENT, EBADF, EFAULT, EINVAL, ENOTTY, ENOSYS = 2, 9, 14, 22, 25, 38
TIOCGWINSZ = 0x5413
ARCH_SET_FS, ARCH_GET_FS = 0x1002, 0x1003
TIMER_ABSTIME = 1
MAX_IO = 1 << 24  # one write moves at most 16 MiB, like a pipe would in chunks

Args = tuple[int, int, int, int, int, int]
Handler = Callable[["SystemCalls", Process, Args], SyscallOutcome]

NAMES = {0: "read", 1: "write", 3: "close", 9: "mmap", 10: "mprotect", 11: "munmap",
         12: "brk", 13: "rt_sigaction", 14: "rt_sigprocmask", 16: "ioctl", 20: "writev",
         24: "sched_yield", 28: "madvise", 35: "nanosleep", 39: "getpid", 60: "exit",
         63: "uname", 96: "gettimeofday", 110: "getppid", 131: "sigaltstack",
         158: "arch_prctl", 186: "gettid", 200: "tkill", 201: "time", 218: "set_tid_address",
         228: "clock_gettime", 229: "clock_getres", 230: "clock_nanosleep",
         231: "exit_group", 234: "tgkill", 318: "getrandom"}


def syscall_name(nr: int) -> str:
    return NAMES.get(nr, _OTHER_NAMES.get(nr, f"syscall_{nr}"))


_OTHER_NAMES = {2: "open", 4: "stat", 5: "fstat", 8: "lseek", 17: "pread64", 19: "readv",
                21: "access", 25: "mremap", 32: "dup", 33: "dup2", 39: "getpid",
                41: "socket", 42: "connect", 56: "clone", 57: "fork", 58: "vfork",
                59: "execve", 61: "wait4", 62: "kill", 72: "fcntl", 89: "readlink",
                97: "getrlimit", 102: "getuid", 104: "getgid", 107: "geteuid", 108: "getegid",
                202: "futex", 257: "openat", 262: "newfstatat", 302: "prlimit64",
                435: "clone3"}


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


class SystemCalls:
    """The system call table of one machine."""

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.managers = machine.managers
        self._table: dict[int, Handler] = {
            0: SystemCalls.read, 1: SystemCalls.write, 3: SystemCalls.close,
            9: SystemCalls.mmap, 10: SystemCalls.mprotect, 11: SystemCalls.munmap,
            12: SystemCalls.brk, 13: SystemCalls.accept, 14: SystemCalls.accept,
            16: SystemCalls.ioctl, 20: SystemCalls.writev, 24: SystemCalls.sched_yield,
            28: SystemCalls.madvise, 35: SystemCalls.nanosleep, 39: SystemCalls.getpid,
            60: SystemCalls.exit, 63: SystemCalls.uname, 96: SystemCalls.gettimeofday,
            110: SystemCalls.getppid, 131: SystemCalls.accept, 158: SystemCalls.arch_prctl,
            186: SystemCalls.getpid, 200: SystemCalls.tkill, 201: SystemCalls.time,
            218: SystemCalls.set_tid_address, 228: SystemCalls.clock_gettime,
            229: SystemCalls.clock_getres, 230: SystemCalls.clock_nanosleep,
            231: SystemCalls.exit, 234: SystemCalls.tgkill, 318: SystemCalls.getrandom,
        }

    def dispatch(self, process: Process, nr: int, args: Args) -> SyscallOutcome:
        name = syscall_name(nr)
        process.accounting.syscalls[name] += 1
        handler = self._table.get(nr)
        if handler is None:
            process.accounting.unsupported[name] += 1
            return SyscallOutcome(-ENOSYS)
        space = process.space
        generation = space.generation if space is not None else 0
        try:
            outcome = handler(self, process, args)
        except BadAddress:
            return SyscallOutcome(-EFAULT)
        if space is not None and space.generation != generation and not outcome.stop:
            # Translations were removed or narrowed: stop so the CPU flushes its TLB before
            # the process runs on.
            return SyscallOutcome(outcome.result, stop=True)
        return outcome

    # --- input and output ----------------------------------------------------------------

    def read(self, p: Process, a: Args) -> SyscallOutcome:
        fd = a[0]
        if fd != 0:
            return SyscallOutcome(-EBADF)
        return SyscallOutcome(0)  # a Tender process's standard input is empty

    def _output(self, p: Process, fd: int, data: bytes) -> int:
        if fd not in (1, 2):
            return -EBADF
        self.machine.append_output(p, fd, data)
        return len(data)

    def write(self, p: Process, a: Args) -> SyscallOutcome:
        fd, buf, count = a[0], a[1], min(a[2], MAX_IO)
        if fd not in (1, 2):
            return SyscallOutcome(-EBADF)
        assert p.space is not None
        return SyscallOutcome(self._output(p, fd, p.space.read(buf, count)))

    def writev(self, p: Process, a: Args) -> SyscallOutcome:
        fd, iov, count = a[0], a[1], a[2]
        if fd not in (1, 2):
            return SyscallOutcome(-EBADF)
        if count > 1024:
            return SyscallOutcome(-EINVAL)
        assert p.space is not None
        vectors = struct.unpack(f"<{2 * count}Q", p.space.read(iov, 16 * count))
        data = b"".join(p.space.read(vectors[2 * i], vectors[2 * i + 1])
                        for i in range(count))
        return SyscallOutcome(self._output(p, fd, data))

    def close(self, p: Process, a: Args) -> SyscallOutcome:
        return SyscallOutcome(0 if a[0] in (0, 1, 2) else -EBADF)

    def ioctl(self, p: Process, a: Args) -> SyscallOutcome:
        if a[0] not in (0, 1, 2):
            return SyscallOutcome(-EBADF)
        return SyscallOutcome(-ENOTTY)  # not a terminal: stdio buffers fully, as in a pipe

    # --- memory --------------------------------------------------------------------------

    def brk(self, p: Process, a: Args) -> SyscallOutcome:
        return SyscallOutcome(vm.set_break(self.managers, p, a[0]))

    def mmap(self, p: Process, a: Args) -> SyscallOutcome:
        addr, length, prot, flags = a[0], a[1], a[2], a[3]
        return SyscallOutcome(vm.map_anonymous(self.managers, p, addr, length, prot, flags))

    def munmap(self, p: Process, a: Args) -> SyscallOutcome:
        return SyscallOutcome(vm.unmap(self.managers, p, a[0], a[1]))

    def mprotect(self, p: Process, a: Args) -> SyscallOutcome:
        return SyscallOutcome(vm.protect(self.managers, p, a[0], a[1], a[2]))

    def madvise(self, p: Process, a: Args) -> SyscallOutcome:
        if a[2] in (4, 8):  # MADV_DONTNEED, MADV_FREE
            return SyscallOutcome(vm.discard(self.managers, p, a[0], a[1]))
        return SyscallOutcome(0)

    # --- identity, signals, threads ------------------------------------------------------

    def getpid(self, p: Process, a: Args) -> SyscallOutcome:
        return SyscallOutcome(p.pid)

    def getppid(self, p: Process, a: Args) -> SyscallOutcome:
        return SyscallOutcome(1)

    def set_tid_address(self, p: Process, a: Args) -> SyscallOutcome:
        p.tid_address = a[0]
        return SyscallOutcome(p.pid)

    def accept(self, p: Process, a: Args) -> SyscallOutcome:
        """Signal set-up calls: accepted, but no signal is ever delivered."""
        return SyscallOutcome(0)

    def arch_prctl(self, p: Process, a: Args) -> SyscallOutcome:
        if a[0] == ARCH_SET_FS:
            self.machine.set_fs_base(p, a[1])
            return SyscallOutcome(0)
        if a[0] == ARCH_GET_FS:
            assert p.space is not None
            p.space.write(a[1], struct.pack("<Q", self.machine.get_fs_base(p)))
            return SyscallOutcome(0)
        return SyscallOutcome(-EINVAL)

    def exit(self, p: Process, a: Args) -> SyscallOutcome:
        self.machine.exit_process(p, a[0] & 0xFF, "exited")
        return SyscallOutcome(None, stop=True)

    def tkill(self, p: Process, a: Args) -> SyscallOutcome:
        return self._kill_self(p, a[0], a[1])

    def tgkill(self, p: Process, a: Args) -> SyscallOutcome:
        return self._kill_self(p, a[1], a[2])

    def _kill_self(self, p: Process, tid: int, sig: int) -> SyscallOutcome:
        if tid != p.pid:
            return SyscallOutcome(-3)  # ESRCH: a Tender process can signal only itself
        if sig == 0:
            return SyscallOutcome(0)
        self.machine.exit_process(p, 128 + sig, f"killed by signal {sig} (raised by itself)")
        return SyscallOutcome(None, stop=True)

    def uname(self, p: Process, a: Args) -> SyscallOutcome:
        fields = [b"Linux", b"tender", b"6.0.0-tender", b"#1 Tender", b"x86_64", b"(none)"]
        assert p.space is not None
        p.space.write(a[0], b"".join(f.ljust(65, b"\0") for f in fields))
        return SyscallOutcome(0)

    def getrandom(self, p: Process, a: Args) -> SyscallOutcome:
        count = min(a[1], 1 << 20)
        assert p.space is not None
        p.space.write(a[0], os.urandom(count))
        return SyscallOutcome(count)

    # --- time ----------------------------------------------------------------------------

    def _clock_ns(self, p: Process, clock: int) -> int | None:
        if clock == 0 or clock == 5 or clock == 8:  # REALTIME (and coarse, alarm)
            return time.time_ns()
        if clock in (1, 4, 6, 7, 9):  # MONOTONIC, RAW, COARSE, BOOTTIME
            return time.monotonic_ns()
        if clock in (2, 3):  # PROCESS_CPUTIME_ID, THREAD_CPUTIME_ID
            return int(p.accounting.cpu_seconds * 1e9)
        return None

    def clock_gettime(self, p: Process, a: Args) -> SyscallOutcome:
        ns = self._clock_ns(p, a[0])
        if ns is None:
            return SyscallOutcome(-EINVAL)
        assert p.space is not None
        p.space.write(a[1], struct.pack("<qq", ns // 1_000_000_000, ns % 1_000_000_000))
        return SyscallOutcome(0)

    def clock_getres(self, p: Process, a: Args) -> SyscallOutcome:
        if self._clock_ns(p, a[0]) is None:
            return SyscallOutcome(-EINVAL)
        if a[1]:
            assert p.space is not None
            p.space.write(a[1], struct.pack("<qq", 0, 1))
        return SyscallOutcome(0)

    def gettimeofday(self, p: Process, a: Args) -> SyscallOutcome:
        if a[0]:
            ns = time.time_ns()
            assert p.space is not None
            p.space.write(a[0], struct.pack("<qq", ns // 1_000_000_000, ns // 1000 % 1_000_000))
        return SyscallOutcome(0)

    def time(self, p: Process, a: Args) -> SyscallOutcome:
        now = time.time_ns() // 1_000_000_000
        if a[0]:
            assert p.space is not None
            p.space.write(a[0], struct.pack("<q", now))
        return SyscallOutcome(now)

    def _sleep(self, p: Process, req: int, absolute_clock: int | None) -> SyscallOutcome:
        assert p.space is not None
        sec, nsec = struct.unpack("<qq", p.space.read(req, 16))
        if sec < 0 or not 0 <= nsec < 1_000_000_000:
            return SyscallOutcome(-EINVAL)
        seconds = sec + nsec / 1e9
        if absolute_clock is not None:
            now = self._clock_ns(p, absolute_clock)
            if now is None:
                return SyscallOutcome(-EINVAL)
            seconds = max(0.0, seconds - now / 1e9)
        self.machine.sleep_process(p, seconds)
        return SyscallOutcome(0, stop=True)

    def nanosleep(self, p: Process, a: Args) -> SyscallOutcome:
        return self._sleep(p, a[0], None)

    def clock_nanosleep(self, p: Process, a: Args) -> SyscallOutcome:
        if self._clock_ns(p, a[0]) is None:
            return SyscallOutcome(-EINVAL)
        return self._sleep(p, a[2], a[0] if a[1] & TIMER_ABSTIME else None)

    def sched_yield(self, p: Process, a: Args) -> SyscallOutcome:
        return SyscallOutcome(0, stop=True)


__all__ = ["ProcessState", "SystemCalls", "syscall_name"]
