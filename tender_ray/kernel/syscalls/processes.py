"""The process system calls: its id and parent, ending, making another process (fork, vfork,
clone; kernel/process_tree.py) and waiting for it, its group and session, replacing its
program (execve; kernel/exec_transform.py), yielding, its resource limits (kept and carried
in the image) and its own attributes (prctl)."""

from __future__ import annotations

import ctypes
import os
import struct
from typing import TYPE_CHECKING, cast

from tender_ray.abi import linux
from tender_ray.abi.cpu_state import CpuState, SyscallArgs, SyscallOutcome
from tender_ray.abi.linux import Errno
from tender_ray.errors import TenderError
from tender_ray.kernel import address_space as vm
from tender_ray.kernel import exec_transform, job_control, process_tree, signals
from tender_ray.kernel.syscalls.base import (
    AT_EMPTY_PATH,
    AT_SYMLINK_NOFOLLOW,
    ENDED,
    Handler,
    dir_base,
    errno_call,
    read_path,
    signed32,
    view_of,
)
from tender_ray.resources.open_file import MAX_FDS
from tender_ray.resources.process import Process, ThreadEntry

if TYPE_CHECKING:
    from tender_ray.kernel.syscalls.dispatch import SystemCalls

FAMILY = "processes"

_CLONE_VM, _CLONE_VFORK, _CLONE_THREAD = 0x100, 0x4000, 0x10000
_CLONE_ARGS_SIZE_VER0 = 64  # struct clone_args as clone3 first took it
RLIM_INFINITY = (1 << 64) - 1
RLIMIT_STACK, RLIMIT_NOFILE, RLIM_NLIMITS = 3, 7, 16
# What getrlimit answers: (soft, hard); every other resource is unlimited.
LIMITS = {RLIMIT_STACK: (8 << 20, RLIM_INFINITY), RLIMIT_NOFILE: (MAX_FDS, MAX_FDS)}


def getpid(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return SyscallOutcome(p.pid)


def getppid(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return SyscallOutcome(process_tree.ppid(p))  # 1 for a process exec started, or orphaned


def exit_(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    sc.services.exit_process(p, a[0] & 0xFF, "exited")
    return ENDED


def sched_yield(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return SyscallOutcome(0, stop=True)


_MAX_AFFINITY_BYTES = 1 << 13  # a mask of 65,536 CPUs: more than any kernel's NR_CPUS
_SYS_SCHED_GETAFFINITY = 204
_LIBC = ctypes.CDLL(None, use_errno=True)


def sched_getaffinity(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    """The CPUs the machine's own process may run on, exactly as the host's kernel answers
    it (the mask, and the mask's length, which depends on how that kernel was built): what
    the program would see natively on this host, and what `/sys`'s CPU lists, which the file
    view reads from the host, say too. Of itself, one of its threads or a process of its
    tree (0: itself); any other pid is not visible (ESRCH)."""
    pid, size = signed32(a[0]), a[1]
    if pid < 0 or (pid not in (0, p.pid) and pid not in p.threads
                   and (job_control.getpgid(sc, p, pid).result or 0) < 0):
        return SyscallOutcome(-Errno.ESRCH)
    buffer = ctypes.create_string_buffer(min(size, _MAX_AFFINITY_BYTES))
    got = _LIBC.syscall(_SYS_SCHED_GETAFFINITY, 0, ctypes.c_size_t(len(buffer)), buffer)
    if got < 0:
        return SyscallOutcome(-ctypes.get_errno())
    assert p.space is not None
    p.space.write(a[2], buffer.raw[:got])
    return SyscallOutcome(got)


# A new process (fork, vfork, clone without CLONE_VM) is a Tender process of its own on this
# machine (kernel/process_tree.py). A thread is threads.py's (clone comes there first); what
# reaches here with CLONE_THREAD or a bare CLONE_VM is a thread this engine cannot make, or a
# child sharing the memory without being a thread (LinuxThreads made them so). It ends the
# process with a reason naming the call: a program that cannot have its thread has no useful
# way on, and waiting for a thread that never runs would hang in a futex. The status is
# SIGSYS's, as for a call a seccomp filter refuses.

def _clone(sc: SystemCalls, p: Process, call: str, flags: int, stack: int = 0,
           parent_tid: int = 0, child_tid: int = 0, tls: int = 0) -> SyscallOutcome:
    if flags & _CLONE_THREAD or (flags & _CLONE_VM and not flags & _CLONE_VFORK):
        # CLONE_VM without CLONE_VFORK shares the memory with a child that runs at the
        # same time: a thread, even without CLONE_THREAD (LinuxThreads made them so).
        what = "CLONE_THREAD" if flags & _CLONE_THREAD else "CLONE_VM"
        p.accounting.unsupported[f"{call} (a thread)"] += 1
        sc.services.exit_process(p, 128 + linux.Signal.SIGSYS,
                                 f"{call} with {what} (a thread) is not supported on this "
                                 "engine or with these flags: run the program with one "
                                 "thread (its -j1 or --threads=1 option, say) or natively")
        return ENDED
    # fork-like, or vfork-like (posix_spawn, CPython's subprocess): a child on a copy
    return process_tree.fork(sc, p, flags, stack, parent_tid, child_tid, tls)


def clone(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return _clone(sc, p, "clone", a[0], a[1], a[2], a[3], a[4])


def clone3(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    if a[1] < _CLONE_ARGS_SIZE_VER0:
        return SyscallOutcome(-Errno.EINVAL)  # as Linux checks the size first
    assert p.space is not None
    # struct clone_args: flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size,
    # tls; the exit signal has a field of its own (not in the flags' low byte)
    flags, _, child_tid, parent_tid, exit_signal, stack, size, tls = struct.unpack(
        "<8Q", p.space.read(a[0], 64))
    if flags & 0xFF:
        return SyscallOutcome(-Errno.EINVAL)
    return _clone(sc, p, "clone3", flags | (exit_signal & 0xFF), stack + size if stack else 0,
                  parent_tid, child_tid, tls)


def fork(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return process_tree.fork(sc, p, linux.Signal.SIGCHLD, 0, 0, 0, 0)


def vfork(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return process_tree.fork(sc, p, process_tree.CLONE_VM | process_tree.CLONE_VFORK
                             | linux.Signal.SIGCHLD, 0, 0, 0, 0)


def wait4(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return process_tree.wait4(sc, p, signed32(a[0]), a[1], a[2] & 0xFFFFFFFF, a[3], 61)


def waitid(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return process_tree.waitid(sc, p, a[0] & 0xFFFFFFFF, signed32(a[1]), a[2],
                               a[3] & 0xFFFFFFFF, a[4], 247)


def getpgid(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return job_control.getpgid(sc, p, signed32(a[0]))


def getpgrp(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return job_control.getpgid(sc, p, 0)


def getsid(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return job_control.getsid(sc, p, signed32(a[0]))


def setpgid(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return job_control.setpgid(sc, p, signed32(a[0]), signed32(a[1]))


def setsid(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return job_control.setsid(sc, p)


# --- execve: a transform in place (kernel/exec_transform.py) ------------------------------

def _execve(sc: SystemCalls, p: Process, path: str, argv_addr: int, envp_addr: int
            ) -> SyscallOutcome:
    if getattr(p, "members", None):
        # Linux ends the other threads first; here they would still run on the old space.
        p.accounting.unsupported["execve (several threads)"] += 1
        sc.services.exit_process(p, 128 + linux.Signal.SIGSYS,
                                 "execve in a process with several threads is not supported "
                                 "yet: exec from a single-threaded process (fork first)")
        return ENDED
    argv = exec_transform.read_vector(p, argv_addr)
    envp = exec_transform.read_vector(p, envp_addr)
    new = exec_transform.prepare(view_of(sc, p), path, argv, envp)
    loader = new.interpreter[0] if new.interpreter is not None else None
    if vm.frames_needed(new.program, new.argv, new.envp, loader) > sc.managers.memory.nframes:
        return SyscallOutcome(-Errno.ENOMEM)
    services = cast(exec_transform.ProgramLoader, sc.services)  # the machine loads it

    def transform(state: CpuState) -> CpuState:
        try:
            return exec_transform.commit(sc, services, p, new)
        except TenderError as exc:  # past the point of no return: the process ends
            sc.services.exit_process(p, 128 + linux.Signal.SIGKILL,
                                  f"execve of {path} failed after the old program was gone: "
                                  f"{exc}")
            return state

    p.register_edits.append(transform)
    return SyscallOutcome(None, stop=True)


@errno_call
def execve(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return _execve(sc, p, read_path(p, a[0]), a[1], a[2])


@errno_call
def execveat(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    flags = a[4]
    if flags & ~(AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW):
        return SyscallOutcome(-Errno.EINVAL)
    path = read_path(p, a[1])
    if not path and flags & AT_EMPTY_PATH:
        return SyscallOutcome(-Errno.ENOSYS)  # executing an open descriptor is not offered
    if not path.startswith("/"):
        base = dir_base(p, a[0]) if signed32(a[0]) != -100 else None
        if base is not None:
            path = base.rstrip("/") + "/" + path
    return _execve(sc, p, path, a[2], a[3])


# --- resource limits ------------------------------------------------------------------------

def limit(p: Process, resource: int) -> tuple[int, int]:
    """(soft, hard) of a resource: what setrlimit kept, else the default."""
    return signals.of(p).limits.get(resource, LIMITS.get(resource, (RLIM_INFINITY,
                                                                      RLIM_INFINITY)))


def _limits(p: Process, resource: int, new: int, old: int) -> SyscallOutcome:
    if resource >= RLIM_NLIMITS:
        return SyscallOutcome(-Errno.EINVAL)
    soft, hard = limit(p, resource)
    assert p.space is not None
    if new:
        new_soft, new_hard = struct.unpack("<QQ", p.space.read(new, 16))
        if new_soft > new_hard:
            return SyscallOutcome(-Errno.EINVAL)
        if new_hard > hard and os.geteuid() != 0:
            return SyscallOutcome(-Errno.EPERM)  # raising a hard limit needs privilege
        if resource == RLIMIT_NOFILE and new_hard > MAX_FDS:
            return SyscallOutcome(-Errno.EPERM)  # past the table's size (Linux's nr_open)
    if old:
        p.space.write(old, struct.pack("<QQ", soft, hard))
    if new:
        # Kept, and it travels with the process (its signal state carries it). RLIMIT_NOFILE
        # is enforced by the descriptor table; the others are answered as set.
        signals.of(p).limits[resource] = (new_soft, new_hard)
        if resource == RLIMIT_NOFILE:
            p.files.limit = new_soft
    return SyscallOutcome(0)


def prlimit64(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    if a[0] not in (0, p.pid):
        return SyscallOutcome(-Errno.ESRCH)  # only itself: no other process is visible
    return _limits(p, a[1], a[2], a[3])


def getrlimit(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return _limits(p, a[0], 0, a[1])


def setrlimit(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return _limits(p, a[0], a[1], 0)


def getrusage(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    """RUSAGE_SELF (every thread's) and _THREAD (the caller's): CPU time (as user time) and
    the largest resident size; RUSAGE_CHILDREN: the CPU time of the children it waited for."""
    who = a[0] & 0xFFFFFFFF
    if who not in (0, 1, 0xFFFFFFFF):
        return SyscallOutcome(-Errno.EINVAL)
    leader = p.leader if isinstance(p, ThreadEntry) else p
    seconds = (process_tree.children_cpu(p) if who == 0xFFFFFFFF
               else leader.cpu_seconds if who == 0 else p.accounting.cpu_seconds)
    us = round(seconds * 1e6)
    resident = 0
    if who != 0xFFFFFFFF and p.space is not None:
        resident = sum(u.region.resident() for u in p.space.user_spaces
                       if u.region is not None) * 4  # kB
    assert p.space is not None
    p.space.write(a[1], struct.pack("<qqqq14q", us // 1_000_000, us % 1_000_000, 0, 0,
                                    resident, *([0] * 13)))
    return SyscallOutcome(0)


# --- prctl --------------------------------------------------------------------------------

PR_SET_PDEATHSIG, PR_GET_PDEATHSIG, PR_GET_DUMPABLE, PR_SET_DUMPABLE = 1, 2, 3, 4
PR_GET_KEEPCAPS, PR_SET_KEEPCAPS, PR_SET_NAME, PR_GET_NAME = 7, 8, 15, 16
PR_GET_SECCOMP, PR_CAPBSET_READ, PR_SET_TIMERSLACK, PR_GET_TIMERSLACK = 21, 23, 29, 30
PR_SET_CHILD_SUBREAPER, PR_GET_CHILD_SUBREAPER = 36, 37
PR_SET_NO_NEW_PRIVS, PR_GET_NO_NEW_PRIVS, PR_SET_THP_DISABLE, PR_GET_THP_DISABLE = 38, 39, 41, 42
PR_SET_VMA = 0x53564D41
CAP_LAST_CAP = 40
TIMER_SLACK_NS = 50_000  # Linux's default timer slack
# Options whose value a process sets and reads back: set -> (get, default, largest value).
_KEPT = {PR_SET_KEEPCAPS: (PR_GET_KEEPCAPS, 0, 1), PR_SET_TIMERSLACK: (PR_GET_TIMERSLACK,
         TIMER_SLACK_NS, RLIM_INFINITY), PR_SET_CHILD_SUBREAPER: (PR_GET_CHILD_SUBREAPER, 0, 1),
         PR_SET_THP_DISABLE: (PR_GET_THP_DISABLE, 0, 1)}
_READ_BACK = {get: (put, default) for put, (get, default, _) in _KEPT.items()}


def _put_int(p: Process, addr: int, value: int) -> SyscallOutcome:
    assert p.space is not None
    p.space.write(addr, struct.pack("<i", value))
    return SyscallOutcome(0)


def prctl(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    """The process's own attributes. Each is kept with its signal state and travels; the
    process name is its name in the machine's table (what `tender-ray top` shows)."""
    option, arg = a[0] & 0xFFFFFFFF, a[1]
    state = signals.of(p)
    if option == PR_SET_NAME:
        assert p.space is not None
        raw = b""
        while len(raw) < 15 and b"\0" not in raw:  # at most 16 bytes, page by page
            a_ = arg + len(raw)
            raw += p.space.read(a_, min(16 - len(raw), 4096 - a_ % 4096))
        p.name = raw.split(b"\0")[0][:15].decode("utf-8", "surrogateescape")
        return SyscallOutcome(0)
    if option == PR_GET_NAME:
        assert p.space is not None
        p.space.write(arg, p.name.encode("utf-8", "surrogateescape")[:15].ljust(16, b"\0"))
        return SyscallOutcome(0)
    if option == PR_SET_PDEATHSIG:
        if arg > signals.NSIG:
            return SyscallOutcome(-Errno.EINVAL)
        state.pdeathsig = arg  # the parent is outside the cluster: it never dies here
        return SyscallOutcome(0)
    if option == PR_GET_PDEATHSIG:
        return _put_int(p, arg, state.pdeathsig)
    if option == PR_SET_DUMPABLE:
        if arg not in (0, 1):
            return SyscallOutcome(-Errno.EINVAL)
        state.dumpable = arg
        return SyscallOutcome(0)
    if option == PR_GET_DUMPABLE:
        return SyscallOutcome(state.dumpable)
    if option == PR_SET_NO_NEW_PRIVS:
        if arg != 1 or any(a[2:5]):
            return SyscallOutcome(-Errno.EINVAL)
        state.no_new_privs = True  # for good, as on Linux
        return SyscallOutcome(0)
    if option == PR_GET_NO_NEW_PRIVS:
        return SyscallOutcome(int(state.no_new_privs))
    if option in _KEPT:
        _, default, most = _KEPT[option]
        if arg > most:
            return SyscallOutcome(-Errno.EINVAL)
        state.prctl_values[option] = arg if arg or option != PR_SET_TIMERSLACK else default
        return SyscallOutcome(0)
    if option in _READ_BACK:
        put, default = _READ_BACK[option]
        value = state.prctl_values.get(put, default)
        if option == PR_GET_CHILD_SUBREAPER:
            return _put_int(p, arg, value)
        return SyscallOutcome(value)
    if option == PR_GET_SECCOMP:
        return SyscallOutcome(0)  # no filter of its own
    if option == PR_CAPBSET_READ:
        return SyscallOutcome(1 if arg <= CAP_LAST_CAP else -Errno.EINVAL)
    if option == PR_SET_VMA:
        return SyscallOutcome(0)  # a name for an anonymous area: accepted, not shown anywhere
    p.accounting.unsupported[f"prctl({option})"] += 1
    return SyscallOutcome(-Errno.EINVAL)


HANDLERS: dict[str, Handler] = {
    "getpid": getpid, "getppid": getppid, "exit": exit_, "exit_group": exit_,
    "clone": clone, "clone3": clone3, "sched_yield": sched_yield,
    "sched_getaffinity": sched_getaffinity,
    "prlimit64": prlimit64, "getrlimit": getrlimit, "setrlimit": setrlimit, "prctl": prctl,
    "getrusage": getrusage, "execve": execve, "execveat": execveat, "fork": fork,
    "vfork": vfork, "wait4": wait4, "waitid": waitid, "getpgid": getpgid, "getpgrp": getpgrp,
    "getsid": getsid, "setpgid": setpgid, "setsid": setsid,
}
