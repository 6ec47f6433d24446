"""The signal system calls of a process (its threads share one mask and alternate stack for
now: docs/process_trees.md): actions, masks, the alternate stack, kill of itself, of a
process of its tree or of a process group (`job_control.kill`: stops and continues too),
tkill/tgkill, a pidfd of itself, waiting for a signal (pause/rt_sigsuspend), rt_sigreturn,
and signalfd — pending signals read as records. The state they keep is
`kernel.signals.SignalState`; delivery happens between runs (`Machine._before_run`); the
timers that raise signals are time.py's.
"""

from __future__ import annotations

import functools
import os
import struct
from typing import TYPE_CHECKING, Any

from tender_ray.abi.cpu_state import SyscallArgs, SyscallOutcome
from tender_ray.abi.linux import Errno
from tender_ray.kernel import job_control, signals
from tender_ray.kernel.signals import NSIG, SigAction, Wait, bit
from tender_ray.kernel.syscalls.base import ENDED, O_CLOEXEC, Handler, err, file_of, signed32
from tender_ray.resources.open_file import POLLIN, OpenFile
from tender_ray.resources.process import Process
from tender_ray.resources.virtual_space import BadAddress

if TYPE_CHECKING:
    from tender_ray.kernel.syscalls.dispatch import SystemCalls

FAMILY = "signals"

SIGSET_SIZE = 8  # the kernel's sigset_t: 64 signals
SIG_BLOCK, SIG_UNBLOCK, SIG_SETMASK = 0, 1, 2
MINSIGSTKSZ = 2048


def _valid(sig: int) -> bool:
    return 1 <= sig <= NSIG


def rt_sigaction(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    sig, act, oact, size = a[0], a[1], a[2], a[3]
    if size != SIGSET_SIZE or not _valid(sig):
        return err(Errno.EINVAL)
    state = signals.of(p)
    assert p.space is not None
    new = None
    if act:
        if bit(sig) & signals.UNBLOCKABLE:
            return err(Errno.EINVAL)  # SIGKILL and SIGSTOP keep their default
        new = SigAction(*struct.unpack("<QQQQ", p.space.read(act, 32)))
    if oact:
        old = state.actions[sig - 1]
        p.space.write(oact, struct.pack("<QQQQ", old.handler, old.flags, old.restorer,
                                        old.mask))
    if new is not None:
        state.actions[sig - 1] = new
        if state.ignored(sig):  # setting SIG_IGN discards a pending one, as Linux does
            state.pending.pop(sig, None)
    return SyscallOutcome(0)


def rt_sigprocmask(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    how, new, old, size = a[0], a[1], a[2], a[3]
    if size != SIGSET_SIZE:
        return err(Errno.EINVAL)
    mine = signals.own(p)  # the calling thread's mask
    assert p.space is not None
    before = mine.blocked
    if new:
        mask = struct.unpack("<Q", p.space.read(new, 8))[0]
        if how == SIG_BLOCK:
            mine.blocked |= mask
        elif how == SIG_UNBLOCK:
            mine.blocked &= ~mask
        elif how == SIG_SETMASK:
            mine.blocked = mask
        else:
            return err(Errno.EINVAL)
        mine.blocked &= ~signals.UNBLOCKABLE
    if old:
        p.space.write(old, struct.pack("<Q", before))
    # A signal this unblocked is delivered before the next instruction: stop to do it.
    return SyscallOutcome(0, stop=bool(signals.of(p).deliverable(signals.tid_of(p))))


def rt_sigpending(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    if a[1] != SIGSET_SIZE:
        return err(Errno.EINVAL)
    state = signals.of(p)
    assert p.space is not None
    p.space.write(a[0], struct.pack("<Q", state.pending_for(signals.tid_of(p))
                                    & signals.own(p).blocked))
    return SyscallOutcome(0)


def sigaltstack(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    state = signals.own(p)  # each thread has its own
    assert p.space is not None
    ss_sp, ss_flags, ss_size = state.altstack
    rsp = p.context.save().reg("rsp")
    on_alt = ss_flags != signals.SS_DISABLE and ss_sp < rsp <= ss_sp + ss_size
    if a[1]:
        shown = signals.SS_ONSTACK if on_alt else ss_flags
        p.space.write(a[1], struct.pack("<QiiQ", ss_sp, shown, 0, ss_size))
    if a[0]:
        sp, flags, _, size = struct.unpack("<QiiQ", p.space.read(a[0], 24))
        if on_alt:
            return err(Errno.EPERM)  # not while running on it
        if flags not in (0, signals.SS_DISABLE):
            return err(Errno.EINVAL)
        if flags == signals.SS_DISABLE:
            state.altstack = (0, signals.SS_DISABLE, 0)
        elif size < MINSIGSTKSZ:
            return err(Errno.ENOMEM)
        else:
            state.altstack = (sp, 0, size)
    return SyscallOutcome(0)


def _signal_self(sc: SystemCalls, p: Process, target: int, sig: int,
                 code: int) -> SyscallOutcome:
    if target != p.pid:
        return err(Errno.ESRCH)  # a Tender process can signal only itself
    if not 0 <= sig <= NSIG:
        return err(Errno.EINVAL)
    return job_control.kill(sc, p, p.pid, sig, code)  # delivered as the call returns


def kill(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    """kill(pid, sig): itself, a process of its tree, its group (0), a group (-pgid, as
    killpg), or every process of its tree but itself (-1) — `job_control.kill`."""
    return job_control.kill(sc, p, signed32(a[0]), signed32(a[1]))


def _thread_kill(sc: SystemCalls, p: Process, tgid: int, tid: int, sig: int
                 ) -> SyscallOutcome:
    """A signal to thread `tid` (of process `tgid`; 0: any): one of its own threads, or one
    of another process of its tree, which alone takes it (`job_control.kill_thread`)."""
    return job_control.kill_thread(sc, p, tgid, tid, sig)


def tkill(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return _thread_kill(sc, p, 0, signed32(a[0]), signed32(a[1]))


def tgkill(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return _thread_kill(sc, p, signed32(a[0]), signed32(a[1]), signed32(a[2]))


# --- waiting for a signal, and coming back from a handler -------------------------------------

def _wait_for_signal(sc: SystemCalls, p: Process) -> SyscallOutcome:
    state = signals.of(p)
    if not state.deliverable(signals.tid_of(p)):
        state.wait = Wait("pause", thread=signals.tid_of(p))
        sc.services.block_process(p)
    # -EINTR is the answer once a handler has run (rt_sigreturn gives back this rax).
    return SyscallOutcome(-Errno.EINTR, stop=True)


def pause(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return _wait_for_signal(sc, p)


def rt_sigsuspend(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    if a[1] != SIGSET_SIZE:
        return err(Errno.EINVAL)
    mine = signals.own(p)
    assert p.space is not None
    mask = struct.unpack("<Q", p.space.read(a[0], 8))[0]
    mine.saved_mask = mine.blocked  # the handler's frame saves this one, to come back to
    mine.blocked = mask & ~signals.UNBLOCKABLE
    return _wait_for_signal(sc, p)


def rt_sigreturn(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    # The frame is read when the edit is applied: the registers then are the ones the
    # handler returned with, and the whole state is given back at once. A frame that cannot
    # be read is a fault, as on Linux (SIGSEGV).
    assert p.space is not None
    frame = p.context.save().reg("rsp") - 8
    try:
        p.space.read(frame, signals.FRAME_SIZE)
    except BadAddress:
        sc.services.exit_process(p, 128 + 11, signals.default_reason(11)
                                + " (rt_sigreturn found no signal frame)")
        return ENDED
    p.register_edits.append(lambda s: signals.read_frame(p, s))
    # The stop is for the edit alone: the thread runs on in its quantum. (Ending the quantum
    # here let a thread that signals it in a loop, sleeping microseconds between — Go's
    # preemption of a thread it waits for — run first every time, and this one never ran
    # more than its handler.)
    p.runs_on = True
    return SyscallOutcome(None, stop=True)


# --- signalfd and pidfd ----------------------------------------------------------------------

SIGINFO_SIZE = 128  # struct signalfd_siginfo
_SIGINFO = struct.Struct("<IiiIIiIIIIiiQQQQH")
SIGNALFD_LOOK = 0.05  # seconds between looks while a read or poll waits on a signalfd
_UNBLOCKABLE = bit(9) | bit(19)  # SIGKILL, SIGSTOP


class SignalFd(OpenFile):
    """A signalfd: reads take the process's pending signals of `mask` (the process blocks
    them, so they wait to be read rather than delivered). It holds only its mask; the
    signal state is the process's, bound before each call that may read or poll it
    (`bound`), so after a move it is the destination's."""

    kind = "signalfd"

    def __init__(self, mask: int, flags: int) -> None:
        super().__init__(flags | os.O_RDONLY)
        self.mask = mask
        self.state: signals.SignalState | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "state": None}

    def _taken(self) -> list[int]:
        state = self.state
        return [] if state is None else sorted(s for s in state.pending
                                               if self.mask & bit(s))

    def read(self, length: int) -> bytes | None:
        if length < SIGINFO_SIZE:
            raise OSError(int(Errno.EINVAL), "a signalfd is read 128 bytes at a time")
        taken = self._taken()[:length // SIGINFO_SIZE]
        if not taken or self.state is None:
            return None
        out = b""
        for sig in taken:
            info = self.state.pending.pop(sig)
            out += _SIGINFO.pack(sig, 0, info.code, info.pid, 0 if info.fault else os.getuid(),
                                 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, info.addr, 0)
            out = out.ljust(len(out) + SIGINFO_SIZE - _SIGINFO.size, b"\0")
        return out

    def readiness(self) -> int:
        return POLLIN if self._taken() else 0

    def wake_after(self) -> float | None:
        # A blocked signal wakes nobody: a wait on the descriptor looks again now and then.
        return SIGNALFD_LOOK


def bound(name: str, handler: Handler) -> Handler:
    """`handler`, with the caller's signalfds bound to its signal state first (the table
    wraps the calls that read or poll descriptors with this)."""
    if name not in ("read", "readv", "poll", "ppoll", "epoll_wait", "epoll_pwait", "ioctl"):
        return handler

    @functools.wraps(handler)
    def call(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
        for entry in p.files.entries.values():
            if isinstance(entry.file, SignalFd):
                entry.file.state = signals.of(p)
        return handler(sc, p, a)
    return call


def signalfd4(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    if a[2] != SIGSET_SIZE or a[3] & ~(os.O_NONBLOCK | O_CLOEXEC):
        return err(Errno.EINVAL)
    assert p.space is not None
    (mask,) = struct.unpack("<Q", p.space.read(a[1], 8))
    mask &= ~_UNBLOCKABLE  # as Linux: SIGKILL and SIGSTOP are never taken
    fd = signed32(a[0])
    if fd != -1:
        try:
            file_of(p, fd, SignalFd, Errno.EINVAL, "a signalfd").mask = mask
        except OSError as e:
            return SyscallOutcome(-(e.errno or int(Errno.EINVAL)))
        return SyscallOutcome(fd)
    made = SignalFd(mask, a[3] & os.O_NONBLOCK)
    made.state = signals.of(p)
    try:
        return SyscallOutcome(p.files.install(made, cloexec=bool(a[3] & O_CLOEXEC)))
    except OSError as e:
        return SyscallOutcome(-(e.errno or int(Errno.EMFILE)))


def signalfd(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return signalfd4(sc, p, (a[0], a[1], a[2], 0, 0, 0))


class PidFd(OpenFile):
    """A pidfd of the process itself (no other process is visible): it never becomes
    readable, since the process that could wait on it is the one that would have to end."""

    kind = "pidfd"

    def __init__(self, pid: int, flags: int) -> None:
        super().__init__(flags | os.O_RDWR)
        self.pid = pid

    def readiness(self) -> int:
        return 0


def pidfd_open(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    if a[1] & ~os.O_NONBLOCK:
        return err(Errno.EINVAL)
    if signed32(a[0]) != p.pid:
        return err(Errno.ESRCH if signed32(a[0]) > 0 else Errno.EINVAL)
    try:  # as Linux: a pidfd is always close-on-exec
        return SyscallOutcome(p.files.install(PidFd(p.pid, a[1] & os.O_NONBLOCK), cloexec=True))
    except OSError as e:
        return SyscallOutcome(-(e.errno or int(Errno.EMFILE)))


def pidfd_send_signal(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    if a[3]:
        return err(Errno.EINVAL)
    try:
        target = file_of(p, signed32(a[0]), PidFd, Errno.EBADF, "a pidfd")
    except OSError as e:
        return SyscallOutcome(-(e.errno or int(Errno.EBADF)))
    if a[2]:
        p.accounting.unsupported["pidfd_send_signal with a siginfo (sent as kill)"] += 1
    return _signal_self(sc, p, target.pid, a[1], signals.SI_USER)


HANDLERS: dict[str, Handler] = {
    "signalfd": signalfd, "signalfd4": signalfd4, "pidfd_open": pidfd_open,
    "pidfd_send_signal": pidfd_send_signal,
    "rt_sigaction": rt_sigaction, "rt_sigprocmask": rt_sigprocmask,
    "rt_sigpending": rt_sigpending, "sigaltstack": sigaltstack,
    "kill": kill, "tkill": tkill, "tgkill": tgkill,
    "pause": pause, "rt_sigsuspend": rt_sigsuspend, "rt_sigreturn": rt_sigreturn,
}
