"""The thread system calls: making a thread (clone and clone3 with CLONE_THREAD, on an
engine that runs threads), a thread's exit, its id (a Tender id; the first thread's is the
pid), the clear-child-tid address, the TLS base (arch_prctl) and futexes through the
machine's futex table. A clone that makes a process is processes.py's."""

from __future__ import annotations

import dataclasses
import struct
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING

from tender_ray.abi import linux
from tender_ray.abi.cpu_state import CpuState, SyscallArgs, SyscallOutcome
from tender_ray.abi.linux import Errno
from tender_ray.kernel import signals
from tender_ray.kernel.futex import FutexError, FutexTable, futex_key
from tender_ray.kernel.syscalls import processes
from tender_ray.kernel.syscalls.base import (
    ENDED,
    Handler,
    end_timed_wait,
    timed_wait_left,
    wait_until_ready,
)
from tender_ray.kernel.syscalls.time import clock_ns
from tender_ray.resources.process import Process, ThreadEntry
from tender_ray.resources.thread import FUTEX_BITSET_MATCH_ANY, FutexKey, Thread
from tender_ray.resources.virtual_space import BadAddress

if TYPE_CHECKING:
    from tender_ray.kernel.syscalls.dispatch import SystemCalls

FAMILY = "threads"

_FUTEX_WAIT, _FUTEX_WAKE, _FUTEX_REQUEUE, _FUTEX_CMP_REQUEUE, _FUTEX_WAKE_OP = 0, 1, 3, 4, 5
_FUTEX_WAIT_BITSET, _FUTEX_WAKE_BITSET = 9, 10
_WAITS = frozenset({_FUTEX_WAIT, _FUTEX_WAIT_BITSET})
# FUTEX_FD is gone from Linux; the priority-inheritance futexes are not served.
_FUTEX_OPS = frozenset({*_WAITS, _FUTEX_WAKE, _FUTEX_WAKE_BITSET, _FUTEX_REQUEUE,
                        _FUTEX_CMP_REQUEUE, _FUTEX_WAKE_OP})
_FUTEX_PRIVATE, _FUTEX_CLOCK_REALTIME = 128, 256
_FUTEX_OP_OPARG_SHIFT = 8
_WAKE_OPS: dict[int, Callable[[int, int], int]] = {
    0: lambda old, arg: arg, 1: lambda old, arg: old + arg, 2: lambda old, arg: old | arg,
    3: lambda old, arg: old & ~arg, 4: lambda old, arg: old ^ arg}
_WAKE_COMPARISONS: dict[int, Callable[[int, int], bool]] = {
    0: lambda x, y: x == y, 1: lambda x, y: x != y, 2: lambda x, y: x < y,
    3: lambda x, y: x <= y, 4: lambda x, y: x > y, 5: lambda x, y: x >= y}
_FUTEX_NR = linux.sysno("futex")


def tid_of(p: Process) -> int:
    """The thread id of the thread `p` runs: a thread's own, or the pid for the first."""
    return p.tid if isinstance(p, ThreadEntry) else p.pid


def gettid(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return SyscallOutcome(tid_of(p))


def set_tid_address(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    if isinstance(p, ThreadEntry):
        p.thread.clear_child_tid = a[0]
    else:
        p.tid_address = a[0]  # (the first thread's travels in the image)
        main_thread(p).clear_child_tid = a[0]
    return SyscallOutcome(tid_of(p))


# --- making a thread, and its end ---------------------------------------------------------

_CLONE_VM, _CLONE_FS, _CLONE_FILES, _CLONE_SIGHAND = 0x100, 0x200, 0x400, 0x800
_CLONE_THREAD, _CLONE_SYSVSEM, _CLONE_SETTLS = 0x10000, 0x40000, 0x80000
_CLONE_PARENT_SETTID, _CLONE_CHILD_CLEARTID = 0x100000, 0x200000
_CLONE_DETACHED, _CLONE_UNTRACED, _CLONE_CHILD_SETTID = 0x400000, 0x800000, 0x1000000
_THREAD_NEEDS = _CLONE_VM | _CLONE_THREAD | _CLONE_SIGHAND
# What glibc's, musl's, Go's and node's thread creation pass besides (CLONE_DETACHED and
# CLONE_UNTRACED are ignored by Linux too; exit_signal 0).
_THREAD_TAKES = (_THREAD_NEEDS | _CLONE_FS | _CLONE_FILES | _CLONE_SYSVSEM | _CLONE_SETTLS
                 | _CLONE_PARENT_SETTID | _CLONE_CHILD_CLEARTID | _CLONE_CHILD_SETTID
                 | _CLONE_DETACHED | _CLONE_UNTRACED)
_CLONE_ARGS_SIZE_VER0 = 64


def _makes_threads(p: Process) -> bool:
    """Whether the engine running `p` can run a thread of it (the native engine can)."""
    return callable(getattr(p.context, "spawn_thread", None))


def clone(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    flags = a[0]
    if flags & _CLONE_THREAD and _makes_threads(p):
        # clone(flags, stack, parent_tid, child_tid, tls) on x86-64
        return _make_thread(sc, p, flags, a[1], a[2], a[3], a[4])
    return processes.clone(sc, p, a)


def clone3(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    if a[1] < _CLONE_ARGS_SIZE_VER0:
        return processes.clone3(sc, p, a)
    assert p.space is not None
    (flags, _pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls) = \
        struct.unpack("<8Q", p.space.read(a[0], 64))
    if flags & _CLONE_THREAD and _makes_threads(p):
        if exit_signal or not stack:
            return SyscallOutcome(-Errno.EINVAL)
        return _make_thread(sc, p, flags, stack + stack_size, parent_tid, child_tid, tls)
    return processes.clone3(sc, p, a)


def _make_thread(sc: SystemCalls, p: Process, flags: int, stack: int, parent_tid: int,
                 child_tid: int, tls: int) -> SyscallOutcome:
    """A new thread of `p`'s process, at the instruction after the call with rax 0, on
    `stack`, with the thread pointer `tls` when asked; its id (a Tender id) answers."""
    if flags & _THREAD_NEEDS != _THREAD_NEEDS:
        return SyscallOutcome(-Errno.EINVAL)  # CLONE_THREAD needs CLONE_SIGHAND, it CLONE_VM
    if flags & ~_THREAD_TAKES & 0xFFFF_FF00:
        p.accounting.unsupported[f"clone flags {flags & ~_THREAD_TAKES:#x} (a thread)"] += 1
        return SyscallOutcome(-Errno.EINVAL)
    assert p.space is not None
    leader = p.leader if isinstance(p, ThreadEntry) else p
    if leader.exit_status is not None or p.exit_status is not None:
        return ENDED  # it is ending: no new thread
    main_thread(leader)
    tid = sc.services.new_thread_id()
    word = struct.pack("<I", tid)
    if flags & _CLONE_PARENT_SETTID:
        p.space.write(parent_tid, word)
    if flags & _CLONE_CHILD_SETTID:
        p.space.write(child_tid, word)
    thread = Thread(tid, clear_child_tid=child_tid if flags & _CLONE_CHILD_CLEARTID else 0)
    entry = ThreadEntry(leader, thread)
    entry.cpu = p.context.spawn_thread()  # type: ignore[attr-defined]
    leader.threads[tid] = thread
    signals.thread_born(p, tid)

    def start(state: CpuState) -> CpuState:
        # The caller's registers once its CPU has stopped past the call (inside the call an
        # engine may still point at it): the thread's are those, with rax 0, its stack and
        # its thread pointer.
        if leader.exit_status is not None:  # it ended meanwhile: no thread
            leader.threads.pop(tid, None)
            signals.thread_gone(leader, tid)
            entry.context.close()
            return state
        begin = state.with_regs(rax=0, rsp=stack or state.reg("rsp"))
        entry.registers = (dataclasses.replace(begin, fs_base=tls) if flags & _CLONE_SETTLS
                           else begin)
        sc.attach(entry)
        sc.services.start_thread(entry)
        return state

    p.register_edits.append(start)
    return SyscallOutcome(tid, stop=True)


def exit_thread(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    """exit: the calling thread ends; the last one ends the process."""
    leader = p.leader if isinstance(p, ThreadEntry) else p
    if not leader.members:
        return processes.exit_(sc, p, a)
    sc.services.exit_thread(p, a[0] & 0xFF)
    if p is leader:  # it runs no more, though the process lives on: its word is released
        _clear_child_tid(sc, leader, main_thread(leader).clear_child_tid)
    return ENDED


def thread_ended(sc: SystemCalls, t: ThreadEntry) -> None:
    """What Linux does when a thread ends: zero its clear-child-tid word and wake one
    waiter there (pthread_join waits on it); the thread's calls count for its process."""
    leader = t.leader
    leader.threads.pop(t.tid, None)
    signals.thread_gone(leader, t.tid)
    sc.futexes.cancel(t.thread)
    if not hasattr(leader.accounting, "ended_threads"):  # (an older image's)
        leader.accounting.ended_threads = Counter()
    leader.accounting.ended_threads.update(t.accounting.all_syscalls())
    leader.accounting.unsupported.update(t.accounting.unsupported)
    leader.accounting.cpu_seconds += t.accounting.cpu_seconds
    if leader.exit_status is None:
        _clear_child_tid(sc, leader, t.thread.clear_child_tid)


def _clear_child_tid(sc: SystemCalls, leader: Process, address: int) -> None:
    """Zero a thread's clear-child-tid word and wake one waiter there, as Linux does when
    the thread ends (musl's thread-list lock and pthread_join wait on it)."""
    space = leader.space
    if address and space is not None:
        try:  # (stored before the wake: see FutexTable.wait)
            space.write(address, b"\0\0\0\0")
            sc.futexes.wake(futex_key(space, address, private=False), 1)
        except (BadAddress, FutexError):
            pass  # as on Linux: a bad address there is ignored


def arch_prctl(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    if a[0] == linux.ARCH_SET_FS:
        sc.services.set_fs_base(p, a[1])
        return SyscallOutcome(0)
    if a[0] == linux.ARCH_GET_FS:
        assert p.space is not None
        p.space.write(a[1], struct.pack("<Q", sc.services.get_fs_base(p)))
        return SyscallOutcome(0)
    return SyscallOutcome(-Errno.EINVAL)


def main_thread(p: Process) -> Thread:
    """The record of the process's first thread (its tid is the pid), made on first use."""
    thread = p.threads.get(p.pid)
    if thread is None:
        thread = p.threads[p.pid] = Thread(p.pid, clear_child_tid=p.tid_address)
    return thread


def thread_of(p: Process) -> Thread:
    """The record of the thread `p` runs."""
    return p.thread if isinstance(p, ThreadEntry) else main_thread(p)


def futex(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    """Futexes through the machine's table (kernel/futex.py). A wait queues the thread and
    is issued again when it runs; a wake chooses waiters oldest first. In a process with one
    thread no other thread wakes it, so a wait ends as Linux ends it then — by its timeout
    or by a signal (a process that waits for SIGTERM this way is waiting, not stuck)."""
    op = a[1] & ~(_FUTEX_PRIVATE | _FUTEX_CLOCK_REALTIME)
    if op not in _FUTEX_OPS:
        return SyscallOutcome(-Errno.ENOSYS)
    assert p.space is not None
    table = sc.futexes
    thread = thread_of(p)
    made = sum(p.accounting.syscalls.values())  # this call's number (the thread's own count)
    waiting = thread.futex
    if waiting is not None and (waiting.call != made - 1 or op not in _WAITS):
        table.cancel(thread)  # a wait a signal (or the time) ended: over
    try:
        key = futex_key(p.space, a[0], bool(a[1] & _FUTEX_PRIVATE))
        if op in _WAITS:
            return _wait(sc, p, thread, key, a, op, made)
        if op in (_FUTEX_WAKE, _FUTEX_WAKE_BITSET):
            bitset = a[5] & 0xFFFF_FFFF if op == _FUTEX_WAKE_BITSET else FUTEX_BITSET_MATCH_ANY
            return SyscallOutcome(table.wake(key, _count(a[2]), bitset))
        other = futex_key(p.space, a[4], bool(a[1] & _FUTEX_PRIVATE))
        if op == _FUTEX_WAKE_OP:
            return _wake_op(p, table, key, other, a)
        if op == _FUTEX_CMP_REQUEUE and _word(p, a[0]) != a[5] & 0xFFFF_FFFF:
            return SyscallOutcome(-Errno.EAGAIN)
        wake, move = _signed32(a[2]), _signed32(a[3])
        if wake < 0 or move < 0:
            return SyscallOutcome(-Errno.EINVAL)
        # (REQUEUE and CMP_REQUEUE answer the woken and the moved together, as Linux does.)
        return SyscallOutcome(table.requeue(key, other, wake, move))
    except FutexError:
        return SyscallOutcome(-Errno.EINVAL)


def _count(value: int) -> int:
    """A count of threads to wake (an int: a negative one wakes none)."""
    return max(0, _signed32(value))


def _signed32(value: int) -> int:
    value &= 0xFFFF_FFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def _word(p: Process, address: int) -> int:
    assert p.space is not None
    (word,) = struct.unpack("<I", p.space.read(address, 4))
    return int(word)


def _wait(sc: SystemCalls, p: Process, thread: Thread, key: FutexKey, a: SyscallArgs,
          op: int, made: int) -> SyscallOutcome:
    table = sc.futexes
    if table.take_wake(thread):  # a wake chose it: the wait is over, the word not read
        end_timed_wait(p)
        return SyscallOutcome(0)
    bitset = a[5] & 0xFFFF_FFFF if op == _FUTEX_WAIT_BITSET else FUTEX_BITSET_MATCH_ANY
    if not bitset:
        return SyscallOutcome(-Errno.EINVAL)
    expected = a[2] & 0xFFFF_FFFF
    if _word(p, a[0]) != expected:
        table.cancel(thread)
        end_timed_wait(p)
        return SyscallOutcome(-Errno.EAGAIN)
    timeout: float | None = None
    if a[3]:
        assert p.space is not None
        sec, nsec = struct.unpack("<qq", p.space.read(a[3], 16))
        if sec < 0 or not 0 <= nsec < 1_000_000_000:
            table.cancel(thread)
            return SyscallOutcome(-Errno.EINVAL)
        timeout = sec + nsec / 1e9
        if op == _FUTEX_WAIT_BITSET:  # an absolute time, on the clock the flags name
            clock = (linux.CLOCK_REALTIME if a[1] & _FUTEX_CLOCK_REALTIME
                     else linux.CLOCK_MONOTONIC)
            now = clock_ns(p, clock)
            assert now is not None
            timeout = max(0.0, timeout - now / 1e9)
    # Waiting is issuing the call again when woken (a wake, a signal, or the time up), so
    # the word is checked again and a waiting process migrates as its registers say.
    left = timed_wait_left(p, timeout)
    if left == 0:
        table.cancel(thread)
        end_timed_wait(p)
        return SyscallOutcome(-Errno.ETIMEDOUT)
    # The word is read again under the table's lock: a thread that stored to it and woke
    # meanwhile (a thread's end zeroing its clear-child-tid word) is not missed.
    if not table.wait(thread, key, lambda: sc.services.wake_process(p), bitset,
                      still=lambda: _word(p, a[0]) == expected):
        end_timed_wait(p)
        return SyscallOutcome(-Errno.EAGAIN)
    assert thread.futex is not None
    thread.futex.call = made
    return wait_until_ready(sc, p, _FUTEX_NR, left)


def _wake_op(p: Process, table: FutexTable, key: FutexKey, other: FutexKey,
             a: SyscallArgs) -> SyscallOutcome:
    """FUTEX_WAKE_OP: change the word at uaddr2 by the encoded operation, wake on uaddr, and
    wake on uaddr2 too when the word's old value passes the encoded comparison."""
    encoded = a[5] & 0xFFFF_FFFF
    operation, compare = encoded >> 28 & 0xF, encoded >> 24 & 0xF
    oparg, cmparg = _sign12(encoded >> 12 & 0xFFF), _sign12(encoded & 0xFFF)
    if operation & _FUTEX_OP_OPARG_SHIFT:
        oparg = 1 << (oparg & 31)  # Linux takes a shift out of range modulo 32
    change = _WAKE_OPS.get(operation & ~_FUTEX_OP_OPARG_SHIFT)
    test = _WAKE_COMPARISONS.get(compare)
    if change is None or test is None:
        return SyscallOutcome(-Errno.ENOSYS)
    assert p.space is not None
    old = _word(p, a[4])
    p.space.write(a[4], struct.pack("<I", change(old, oparg) & 0xFFFF_FFFF))
    woken = table.wake(key, _count(a[2]))
    if test(_signed32(old), cmparg):
        woken += table.wake(other, _count(a[3]))
    return SyscallOutcome(woken)


def _sign12(value: int) -> int:
    return value - (1 << 12) if value >= 1 << 11 else value


HANDLERS: dict[str, Handler] = {
    "gettid": gettid, "set_tid_address": set_tid_address, "arch_prctl": arch_prctl,
    "futex": futex,
}
# Calls of the processes family whose thread form is served here (a clone that makes a
# thread, the exit of one thread of several); they pass every other form on to processes.py.
PROCESS_CALLS: dict[str, Handler] = {"clone": clone, "clone3": clone3, "exit": exit_thread}
