"""The thread system calls of a single-threaded process: its thread id (the pid), the
clear-child-tid address, the TLS base (arch_prctl) and futexes, which glibc's locks and exit
path call even without threads. Making a thread is clone's (processes.py)."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from tender_ray.abi import linux
from tender_ray.abi.cpu_state import SyscallArgs, SyscallOutcome
from tender_ray.abi.linux import Errno
from tender_ray.kernel.syscalls.base import Handler, timed_wait_left, wait_until_ready
from tender_ray.kernel.syscalls.time import clock_ns
from tender_ray.resources.process import Process

if TYPE_CHECKING:
    from tender_ray.kernel.syscalls.dispatch import SystemCalls

FAMILY = "threads"

_FUTEX_WAIT, _FUTEX_WAKE, _FUTEX_WAIT_BITSET, _FUTEX_WAKE_BITSET = 0, 1, 9, 10
_FUTEX_PRIVATE, _FUTEX_CLOCK_REALTIME = 128, 256
_FUTEX_NR = linux.sysno("futex")


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
    """Futexes of a single-threaded process: no other thread waits to be woken, and a wait
    ends as Linux ends it when no thread can change the word — by its timeout or by a
    signal (a process that waits for SIGTERM this way is waiting, not stuck)."""
    op = a[1] & ~(_FUTEX_PRIVATE | _FUTEX_CLOCK_REALTIME)
    if op in (_FUTEX_WAKE, _FUTEX_WAKE_BITSET):
        return SyscallOutcome(0)  # no other thread waits
    if op not in (_FUTEX_WAIT, _FUTEX_WAIT_BITSET):
        return SyscallOutcome(-Errno.ENOSYS)
    assert p.space is not None
    (word,) = struct.unpack("<I", p.space.read(a[0], 4))
    if word != a[2] & 0xFFFF_FFFF:
        p.files.timed_wait = None
        return SyscallOutcome(-Errno.EAGAIN)
    timeout: float | None = None
    if a[3]:
        sec, nsec = struct.unpack("<qq", p.space.read(a[3], 16))
        if sec < 0 or not 0 <= nsec < 1_000_000_000:
            return SyscallOutcome(-Errno.EINVAL)
        timeout = sec + nsec / 1e9
        if op == _FUTEX_WAIT_BITSET:  # an absolute time, on the clock the flags name
            clock = (linux.CLOCK_REALTIME if a[1] & _FUTEX_CLOCK_REALTIME
                     else linux.CLOCK_MONOTONIC)
            now = clock_ns(p, clock)
            assert now is not None
            timeout = max(0.0, timeout - now / 1e9)
    # Waiting is issuing the call again when woken (a signal, or the time up), so the word
    # is checked again and a waiting process migrates as its registers say.
    left = timed_wait_left(p, timeout)
    if left == 0:
        p.files.timed_wait = None
        return SyscallOutcome(-Errno.ETIMEDOUT)
    return wait_until_ready(sc, p, _FUTEX_NR, left)


HANDLERS: dict[str, Handler] = {
    "gettid": gettid, "set_tid_address": set_tid_address, "arch_prctl": arch_prctl,
    "futex": futex,
}
