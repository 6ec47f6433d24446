"""The thread system calls of a single-threaded process: its thread id (the pid), the
clear-child-tid address, the TLS base (arch_prctl) and futexes, which glibc's locks and exit
path call even without threads. Making a thread is clone's (processes.py)."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from tender_ray.abi import linux
from tender_ray.abi.cpu_state import SyscallArgs, SyscallOutcome
from tender_ray.abi.linux import Errno
from tender_ray.kernel.syscalls.base import ENDED, Handler
from tender_ray.resources.process import Process

if TYPE_CHECKING:
    from tender_ray.kernel.syscalls.dispatch import SystemCalls

FAMILY = "threads"

_FUTEX_WAIT, _FUTEX_WAKE, _FUTEX_WAIT_BITSET, _FUTEX_WAKE_BITSET = 0, 1, 9, 10
_FUTEX_PRIVATE, _FUTEX_CLOCK_REALTIME = 128, 256


def gettid(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return SyscallOutcome(p.pid)  # its one thread has the process's id


def set_tid_address(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    p.tid_address = a[0]
    return SyscallOutcome(p.pid)


def arch_prctl(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    if a[0] == linux.ARCH_SET_FS:
        sc.services.set_fs_base(p, a[1])
        return SyscallOutcome(0)
    if a[0] == linux.ARCH_GET_FS:
        assert p.space is not None
        p.space.write(a[1], struct.pack("<Q", sc.services.get_fs_base(p)))
        return SyscallOutcome(0)
    return SyscallOutcome(-Errno.EINVAL)


def futex(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    """Futexes of a single-threaded process: nobody else can wake a waiter or be woken."""
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
            sc.services.sleep_process(p, max(0.0, sec + nsec / 1e9))
            return SyscallOutcome(-Errno.ETIMEDOUT, stop=True)
        # The value matches: only another thread could change it, and there is none, so
        # the wait would never end. Linux would hang; say so instead.
        sc.services.exit_process(p, 128 + 6, "futex wait that no thread can end "
                                 "(threads are not supported)")
        return ENDED
    return SyscallOutcome(-Errno.ENOSYS)


HANDLERS: dict[str, Handler] = {
    "gettid": gettid, "set_tid_address": set_tid_address, "arch_prctl": arch_prctl,
    "futex": futex,
}
