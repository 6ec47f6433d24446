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
from tender_ray.resources.process import Process
from tender_ray.resources.virtual_space import BadAddress

MAX_IO = 1 << 24  # one write moves at most 16 MiB, like a pipe would in chunks

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
    return SyscallOutcome(None, stop=True)


class Services(Protocol):
    """What a system call may ask of its kernel (the machine offers it)."""

    @property
    def managers(self) -> vm.Managers: ...

    def append_output(self, p: Process, fd: int, data: bytes) -> None: ...
    def exit_process(self, p: Process, status: int, reason: str) -> None: ...
    def sleep_process(self, p: Process, seconds: float) -> None: ...
    def get_fs_base(self, p: Process) -> int: ...
    def set_fs_base(self, p: Process, value: int) -> None: ...


class SystemCalls:
    """The system call table of one kernel."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.managers = services.managers
        self._table: dict[int, Handler] = {linux.sysno(name): handler
                                           for name, handler in _HANDLERS.items()}

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

    # --- input and output ----------------------------------------------------------------

    def read(self, p: Process, a: SyscallArgs) -> SyscallOutcome:
        fd = a[0]
        if fd != 0:
            return SyscallOutcome(-Errno.EBADF)
        return SyscallOutcome(0)  # a Tender process's standard input is empty

    def _output(self, p: Process, fd: int, data: bytes) -> int:
        if fd not in (1, 2):
            return -Errno.EBADF
        self.services.append_output(p, fd, data)
        return len(data)

    def write(self, p: Process, a: SyscallArgs) -> SyscallOutcome:
        fd, buf, count = a[0], a[1], min(a[2], MAX_IO)
        if fd not in (1, 2):
            return SyscallOutcome(-Errno.EBADF)
        assert p.space is not None
        return SyscallOutcome(self._output(p, fd, p.space.read(buf, count)))

    def writev(self, p: Process, a: SyscallArgs) -> SyscallOutcome:
        fd, iov, count = a[0], a[1], a[2]
        if fd not in (1, 2):
            return SyscallOutcome(-Errno.EBADF)
        if count > 1024:
            return SyscallOutcome(-Errno.EINVAL)
        assert p.space is not None
        vectors = struct.unpack(f"<{2 * count}Q", p.space.read(iov, 16 * count))
        data = b"".join(p.space.read(vectors[2 * i], vectors[2 * i + 1])
                        for i in range(count))
        return SyscallOutcome(self._output(p, fd, data))

    def close(self, p: Process, a: SyscallArgs) -> SyscallOutcome:
        return SyscallOutcome(0 if a[0] in (0, 1, 2) else -Errno.EBADF)

    def ioctl(self, p: Process, a: SyscallArgs) -> SyscallOutcome:
        if a[0] not in (0, 1, 2):
            return SyscallOutcome(-Errno.EBADF)
        # Not a terminal (TIOCGWINSZ, TCGETS, any request): stdio buffers fully, as in a pipe.
        return SyscallOutcome(-Errno.ENOTTY)

    # --- memory --------------------------------------------------------------------------

    def brk(self, p: Process, a: SyscallArgs) -> SyscallOutcome:
        return SyscallOutcome(vm.set_break(self.managers, p, a[0]))

    def mmap(self, p: Process, a: SyscallArgs) -> SyscallOutcome:
        addr, length, prot, flags = a[0], a[1], a[2], a[3]
        return SyscallOutcome(vm.map_anonymous(self.managers, p, addr, length, prot, flags))

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

    def signal_setup(self, p: Process, a: SyscallArgs) -> SyscallOutcome:
        """Signal set-up calls: accepted, but no signal is ever delivered."""
        return SyscallOutcome(0)

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

    def tkill(self, p: Process, a: SyscallArgs) -> SyscallOutcome:
        return self._kill_self(p, a[0], a[1])

    def tgkill(self, p: Process, a: SyscallArgs) -> SyscallOutcome:
        return self._kill_self(p, a[1], a[2])

    def _kill_self(self, p: Process, tid: int, sig: int) -> SyscallOutcome:
        if tid != p.pid:
            return SyscallOutcome(-Errno.ESRCH)  # a Tender process can signal only itself
        if sig == 0:
            return SyscallOutcome(0)
        self.services.exit_process(p, 128 + sig, f"killed by signal {sig} (raised by itself)")
        return SyscallOutcome(None, stop=True)

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

    def _sleep(self, p: Process, req: int, absolute_clock: int | None) -> SyscallOutcome:
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
        self.services.sleep_process(p, seconds)
        return SyscallOutcome(0, stop=True)

    def nanosleep(self, p: Process, a: SyscallArgs) -> SyscallOutcome:
        return self._sleep(p, a[0], None)

    def clock_nanosleep(self, p: Process, a: SyscallArgs) -> SyscallOutcome:
        if self._clock_ns(p, a[0]) is None:
            return SyscallOutcome(-Errno.EINVAL)
        return self._sleep(p, a[2], a[0] if a[1] & linux.TIMER_ABSTIME else None)

    def sched_yield(self, p: Process, a: SyscallArgs) -> SyscallOutcome:
        return SyscallOutcome(0, stop=True)


# The calls served, by Linux name (several names share a handler).
_HANDLERS: dict[str, Handler] = {
    "read": SystemCalls.read, "write": SystemCalls.write, "writev": SystemCalls.writev,
    "close": SystemCalls.close, "ioctl": SystemCalls.ioctl,
    "brk": SystemCalls.brk, "mmap": SystemCalls.mmap, "munmap": SystemCalls.munmap,
    "mprotect": SystemCalls.mprotect, "madvise": SystemCalls.madvise,
    "getpid": SystemCalls.getpid, "gettid": SystemCalls.getpid, "getppid": SystemCalls.getppid,
    "set_tid_address": SystemCalls.set_tid_address, "arch_prctl": SystemCalls.arch_prctl,
    "rt_sigaction": SystemCalls.signal_setup, "rt_sigprocmask": SystemCalls.signal_setup,
    "sigaltstack": SystemCalls.signal_setup,
    "exit": SystemCalls.exit, "exit_group": SystemCalls.exit,
    "tkill": SystemCalls.tkill, "tgkill": SystemCalls.tgkill,
    "uname": SystemCalls.uname, "getrandom": SystemCalls.getrandom,
    "clock_gettime": SystemCalls.clock_gettime, "clock_getres": SystemCalls.clock_getres,
    "gettimeofday": SystemCalls.gettimeofday, "time": SystemCalls.time,
    "nanosleep": SystemCalls.nanosleep, "clock_nanosleep": SystemCalls.clock_nanosleep,
    "sched_yield": SystemCalls.sched_yield,
}

__all__ = ["Services", "SystemCalls", "restart_call"]
