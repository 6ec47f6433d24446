"""The descriptor system calls: closing, duplicating, descriptor and status flags (fcntl),
pipes and their size, ioctl; and the descriptors of events: eventfd, timerfd, epoll and
poll/ppoll/select over every kind of descriptor. All of it is the process's descriptor table
(resources/open_file.py, resources/event_file.py), which travels with the process whole: what
a descriptor, a timer or an epoll set holds is part of its image."""

from __future__ import annotations

import os
import struct
from typing import TYPE_CHECKING

from tender_ray.abi.cpu_state import SyscallArgs, SyscallOutcome
from tender_ray.abi.linux import Errno
from tender_ray.kernel.syscalls import locks
from tender_ray.kernel.syscalls.base import (
    O_CLOEXEC,
    Handler,
    end_timed_wait,
    errno_call,
    file_of,
    signed32,
    timed_wait_left,
    wait_until_ready,
)
from tender_ray.kernel.syscalls.file_stat import terminal_ioctl
from tender_ray.kernel.syscalls.time import clock_ns
from tender_ray.resources.event_file import Epoll, EventFd, Interest, TimerFd
from tender_ray.resources.image_file import F_SEAL_SEAL, ImageFile
from tender_ray.resources.open_file import (
    PIPE_MAX_SIZE,
    POLLERR,
    POLLHUP,
    POLLIN,
    POLLOUT,
    Directory,
    HostFile,
    OpenFile,
    PipeBuffer,
    PipeEnd,
)
from tender_ray.resources.process import Process
from tender_ray.resources.watch import Inotify

if TYPE_CHECKING:
    from tender_ray.kernel.syscalls.dispatch import SystemCalls

FAMILY = "descriptors and events"

F_DUPFD, F_GETFD, F_SETFD, F_GETFL, F_SETFL, F_DUPFD_CLOEXEC = 0, 1, 2, 3, 4, 1030
F_SETPIPE_SZ, F_GETPIPE_SZ, F_ADD_SEALS, F_GET_SEALS = 1031, 1032, 1033, 1034
F_SETLEASE, F_GETLEASE = 1024, 1025
FD_CLOEXEC = 1
PAGE = 4096
EFD_SEMAPHORE = 1
TFD_TIMER_ABSTIME = 1
EPOLL_CTL_ADD, EPOLL_CTL_DEL, EPOLL_CTL_MOD = 1, 2, 3
POLLNVAL = 0x20
_EPOLL_EVENT = struct.Struct("<IQ")  # struct epoll_event is packed on x86-64: 12 bytes
_TIMER_CLOCKS = (0, 1, 7, 8, 9)  # REALTIME, MONOTONIC, BOOTTIME and the two ALARMs
_SETTABLE_FLAGS = os.O_APPEND | os.O_NONBLOCK


@errno_call
def close(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    p.files.close(a[0])
    return SyscallOutcome(0)


FIONREAD, FIONBIO, FIONCLEX, FIOCLEX = 0x541B, 0x5421, 0x5450, 0x5451


@errno_call
def ioctl(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    file, request = p.files.get(a[0]), a[1] & 0xFFFFFFFF
    assert p.space is not None
    if request == FIONBIO:
        (on,) = struct.unpack("<i", p.space.read(a[2], 4))
        file.flags = file.flags | os.O_NONBLOCK if on else file.flags & ~os.O_NONBLOCK
        return SyscallOutcome(0)
    if request in (FIOCLEX, FIONCLEX):
        p.files.entries[a[0]].cloexec = request == FIOCLEX
        return SyscallOutcome(0)
    if request == FIONREAD and isinstance(file, Inotify):
        p.space.write(a[2], struct.pack("<i", file.queued_bytes()))
        return SyscallOutcome(0)
    if request == FIONREAD:
        buffer = file.pipe if isinstance(file, PipeEnd) else getattr(file, "inbox", None)
        if buffer is None:
            return SyscallOutcome(-Errno.ENOTTY)
        p.space.write(a[2], struct.pack("<i", len(buffer.data)))
        return SyscallOutcome(0)
    answer = terminal_ioctl(file, request)  # a standard stream that is exec's terminal
    if answer is not None:
        p.space.write(a[2], answer)
        return SyscallOutcome(0)
    # Not a terminal (TIOCGWINSZ, TCGETS, any other request): stdio buffers fully.
    return SyscallOutcome(-Errno.ENOTTY)


@errno_call
def dup(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return SyscallOutcome(p.files.dup(a[0]))


@errno_call
def dup2(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    p.files.get(a[0])
    if a[0] == a[1]:
        return SyscallOutcome(a[1])
    return SyscallOutcome(p.files.dup(a[0], new=a[1]))


@errno_call
def dup3(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    if a[0] == a[1] or a[2] & ~O_CLOEXEC:
        return SyscallOutcome(-Errno.EINVAL)
    return SyscallOutcome(p.files.dup(a[0], new=a[1], cloexec=bool(a[2] & O_CLOEXEC)))


@errno_call
def fcntl(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    fd, cmd, arg = a[0], a[1], a[2]
    file = p.files.get(fd)
    if cmd in (F_DUPFD, F_DUPFD_CLOEXEC):
        return SyscallOutcome(p.files.dup(fd, lowest=arg, cloexec=cmd == F_DUPFD_CLOEXEC))
    if cmd == F_GETFD:
        return SyscallOutcome(FD_CLOEXEC if p.files.entries[fd].cloexec else 0)
    if cmd == F_SETFD:
        p.files.entries[fd].cloexec = bool(arg & FD_CLOEXEC)
        return SyscallOutcome(0)
    if cmd == F_GETFL:
        return SyscallOutcome(file.flags)
    if cmd == F_SETFL:
        file.flags = (file.flags & ~_SETTABLE_FLAGS) | (arg & _SETTABLE_FLAGS)
        return SyscallOutcome(0)
    if cmd in locks.LOCK_CMDS:
        return locks.fcntl_lock(sc, p, fd, cmd, arg)
    if cmd in (F_SETLEASE, F_GETLEASE):
        return _lease(p, file, cmd, arg)
    if cmd in (F_ADD_SEALS, F_GET_SEALS):
        if not isinstance(file, ImageFile):
            return SyscallOutcome(-Errno.EINVAL)
        body = file.body
        if cmd == F_GET_SEALS:
            return SyscallOutcome(body.seals)
        if body.seals & F_SEAL_SEAL:
            return SyscallOutcome(-Errno.EPERM)
        if not file.writable:
            return SyscallOutcome(-Errno.EPERM)
        body.seals |= arg & 0x1F
        return SyscallOutcome(0)
    if cmd in (F_GETPIPE_SZ, F_SETPIPE_SZ):
        if not isinstance(file, PipeEnd):
            return SyscallOutcome(-Errno.EBADF)
        if cmd == F_GETPIPE_SZ:
            return SyscallOutcome(file.pipe.capacity)
        return _set_pipe_size(file.pipe, arg & 0xFFFFFFFF)
    p.accounting.unsupported[f"fcntl({cmd})"] += 1
    return SyscallOutcome(-Errno.EINVAL)


def _lease(p: Process, file: OpenFile, cmd: int, arg: int) -> SyscallOutcome:
    """A lease on a regular file, kept by its description (so it travels). Nothing here
    opens the file behind the process's back, so no lease is ever broken."""
    if not isinstance(file, HostFile | ImageFile):
        return SyscallOutcome(-Errno.EINVAL)
    if cmd == F_GETLEASE:
        return SyscallOutcome(getattr(file, "lease", locks.F_UNLCK))
    if arg not in (locks.F_RDLCK, locks.F_WRLCK, locks.F_UNLCK):
        return SyscallOutcome(-Errno.EINVAL)
    if arg == locks.F_RDLCK and file.writable:
        return SyscallOutcome(-Errno.EAGAIN)  # as Linux: a read lease needs a read-only open
    setattr(file, "lease", arg)  # noqa: B010 - an attribute only leased files have
    return SyscallOutcome(0)


def _set_pipe_size(pipe: PipeBuffer, size: int) -> SyscallOutcome:
    """F_SETPIPE_SZ: at least a page, rounded up to a power of two pages, as Linux sizes it."""
    if size > PIPE_MAX_SIZE and os.geteuid() != 0:
        return SyscallOutcome(-Errno.EPERM)  # past pipe-max-size without CAP_SYS_RESOURCE
    if size > 1 << 31:
        return SyscallOutcome(-Errno.EINVAL)
    pages = max(1, -(-size // PAGE))
    capacity = PAGE << (pages - 1).bit_length()
    if capacity < len(pipe.data):
        return SyscallOutcome(-Errno.EBUSY)  # what it holds would not fit
    pipe.capacity = capacity
    return SyscallOutcome(capacity)


@errno_call
def pipe2(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    if a[1] & ~(O_CLOEXEC | os.O_NONBLOCK):
        return SyscallOutcome(-Errno.EINVAL)
    buffer = PipeBuffer()
    flags = a[1] & os.O_NONBLOCK
    cloexec = bool(a[1] & O_CLOEXEC)
    r = p.files.install(PipeEnd(buffer, False, flags), cloexec=cloexec)
    w = p.files.install(PipeEnd(buffer, True, flags), cloexec=cloexec)
    assert p.space is not None
    p.space.write(a[0], struct.pack("<ii", r, w))
    return SyscallOutcome(0)


def pipe(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return pipe2(sc, p, (a[0], 0, 0, 0, 0, 0))


# --- eventfd --------------------------------------------------------------------------------

@errno_call
def eventfd2(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    flags = a[1]
    if flags & ~(O_CLOEXEC | os.O_NONBLOCK | EFD_SEMAPHORE):
        return SyscallOutcome(-Errno.EINVAL)
    file = EventFd(a[0] & 0xFFFFFFFF, bool(flags & EFD_SEMAPHORE), flags & os.O_NONBLOCK)
    return SyscallOutcome(p.files.install(file, cloexec=bool(flags & O_CLOEXEC)))


def eventfd(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return eventfd2(sc, p, (a[0], 0, 0, 0, 0, 0))


# --- timerfd --------------------------------------------------------------------------------

def _timespec(p: Process, addr: int) -> float | None:
    assert p.space is not None
    sec, nsec = struct.unpack("<qq", p.space.read(addr, 16))
    return None if sec < 0 or not 0 <= nsec < 1_000_000_000 else sec + nsec / 1e9


def _put_itimerspec(p: Process, addr: int, value: tuple[float, float]) -> None:
    left, interval = (round(v * 1e9) for v in value)
    assert p.space is not None
    p.space.write(addr, struct.pack("<qqqq", interval // 1_000_000_000,
                                    interval % 1_000_000_000, left // 1_000_000_000,
                                    left % 1_000_000_000))


@errno_call
def timerfd_create(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    clock, flags = a[0] & 0xFFFFFFFF, a[1]
    if clock not in _TIMER_CLOCKS or flags & ~(O_CLOEXEC | os.O_NONBLOCK):
        return SyscallOutcome(-Errno.EINVAL)
    file = TimerFd(0 if clock in (0, 8) else 1, flags & os.O_NONBLOCK)
    return SyscallOutcome(p.files.install(file, cloexec=bool(flags & O_CLOEXEC)))


def _timer(p: Process, fd: int) -> TimerFd:
    return file_of(p, fd, TimerFd, Errno.EINVAL, "a timerfd")


@errno_call
def timerfd_settime(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    timer = _timer(p, a[0])
    if a[1] & ~(TFD_TIMER_ABSTIME | 2):  # 2: TFD_TIMER_CANCEL_ON_SET, nothing sets clocks
        return SyscallOutcome(-Errno.EINVAL)
    interval, value = _timespec(p, a[2]), _timespec(p, a[2] + 16)
    if interval is None or value is None:
        return SyscallOutcome(-Errno.EINVAL)
    if a[1] & TFD_TIMER_ABSTIME and value > 0:
        # The guest's clock values are clock_gettime's: on the timer's own time line.
        now = clock_ns(p, timer.clock)
        assert now is not None
        value = timer.now() + (value - now / 1e9)
    old = timer.set(value, interval, absolute=bool(a[1] & TFD_TIMER_ABSTIME) and value > 0)
    if a[3]:
        _put_itimerspec(p, a[3], old)
    return SyscallOutcome(0)


@errno_call
def timerfd_gettime(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    _put_itimerspec(p, a[1], _timer(p, a[0]).get())
    return SyscallOutcome(0)


# --- epoll and poll ---------------------------------------------------------------------------

@errno_call
def epoll_create1(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    if a[0] & ~O_CLOEXEC:
        return SyscallOutcome(-Errno.EINVAL)
    return SyscallOutcome(p.files.install(Epoll(0), cloexec=bool(a[0] & O_CLOEXEC)))


def epoll_create(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    if signed32(a[0]) <= 0:
        return SyscallOutcome(-Errno.EINVAL)
    return epoll_create1(sc, p, (0, 0, 0, 0, 0, 0))


def _epoll(p: Process, fd: int) -> Epoll:
    return file_of(p, fd, Epoll, Errno.EINVAL, "an epoll set")


@errno_call
def epoll_ctl(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    ep, op, fd = _epoll(p, a[0]), a[1], signed32(a[2])
    target = p.files.get(fd)
    if target is ep:
        return SyscallOutcome(-Errno.EINVAL)
    if isinstance(target, HostFile | Directory):
        return SyscallOutcome(-Errno.EPERM)  # as Linux: a regular file is always ready
    if isinstance(target, Epoll):
        p.accounting.unsupported["epoll_ctl (an epoll set in another)"] += 1
        return SyscallOutcome(-Errno.EINVAL)
    item = ep.interest.get(fd)
    if item is not None and item.file is not target:
        del ep.interest[fd]  # a stale entry: its descriptor was closed and reused
        item = None
    if op == EPOLL_CTL_DEL:
        if item is None:
            return SyscallOutcome(-Errno.ENOENT)
        del ep.interest[fd]
        return SyscallOutcome(0)
    if op not in (EPOLL_CTL_ADD, EPOLL_CTL_MOD):
        return SyscallOutcome(-Errno.EINVAL)
    assert p.space is not None
    events, data = _EPOLL_EVENT.unpack(p.space.read(a[3], _EPOLL_EVENT.size))
    if op == EPOLL_CTL_ADD:
        if item is not None:
            return SyscallOutcome(-Errno.EEXIST)
        ep.interest[fd] = Interest(target, events, data)
    elif item is None:
        return SyscallOutcome(-Errno.ENOENT)
    else:
        item.events, item.data = events, data
        item.seen = item.held = 0  # as Linux: a MOD re-arms an edge
    return SyscallOutcome(0)


def _timeout_ms(ms: int) -> float | None:
    value = signed32(ms)
    return None if value < 0 else value / 1000


def _epoll_wait(sc: SystemCalls, p: Process, a: SyscallArgs, nr: int) -> SyscallOutcome:
    ep, most = _epoll(p, a[0]), signed32(a[2])
    if most <= 0:
        return SyscallOutcome(-Errno.EINVAL)
    ready = ep.ready(p.files, most)
    if ready:
        end_timed_wait(p)
        assert p.space is not None
        p.space.write(a[1], b"".join(_EPOLL_EVENT.pack(e, d) for e, d in ready))
        return SyscallOutcome(len(ready))
    left = timed_wait_left(p, _timeout_ms(a[3]))
    if left == 0:
        end_timed_wait(p)
        return SyscallOutcome(0)
    timer = ep.wake_after()
    return wait_until_ready(sc, p, nr, min(t for t in (left, timer) if t is not None)
                            if left is not None or timer is not None else None)


@errno_call
def epoll_wait(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return _epoll_wait(sc, p, a, 232)


@errno_call
def epoll_pwait(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    if a[4]:
        p.accounting.unsupported["epoll_pwait with a signal mask (waited without it)"] += 1
    return _epoll_wait(sc, p, a, 281)


def _poll(sc: SystemCalls, p: Process, fds: int, n: int, timeout: float | None,
          nr: int) -> SyscallOutcome:
    if n > 1024:
        return SyscallOutcome(-Errno.EINVAL)
    assert p.space is not None
    raw = p.space.read(fds, 8 * n)
    entries = [struct.unpack_from("<ihh", raw, 8 * i) for i in range(n)]
    answers, wake = [], []
    for fd, events, _ in entries:
        if fd < 0:
            answers.append(0)
            continue
        entry = p.files.entries.get(fd)
        if entry is None:
            answers.append(POLLNVAL)
            continue
        answers.append(entry.file.readiness() & ((events & 0xFFFF) | POLLERR | POLLHUP))
        if (t := entry.file.wake_after()) is not None:
            wake.append(t)
    count = sum(1 for r in answers if r)
    left = None if count else timed_wait_left(p, timeout)
    if count or left == 0:
        end_timed_wait(p)
        p.space.write(fds, b"".join(struct.pack("<ihh", fd, events, r & 0xFFFF)
                                    for (fd, events, _), r in zip(entries, answers,
                                                                  strict=True)))
        return SyscallOutcome(count)
    bounds = [t for t in (left, *wake) if t is not None]
    return wait_until_ready(sc, p, nr, min(bounds) if bounds else None)


@errno_call
def poll(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return _poll(sc, p, a[0], a[1], _timeout_ms(a[2]), 7)


@errno_call
def ppoll(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    timeout = None
    if a[2]:
        timeout = _timespec(p, a[2])
        if timeout is None:
            return SyscallOutcome(-Errno.EINVAL)
    if a[3]:
        p.accounting.unsupported["ppoll with a signal mask (waited without it)"] += 1
    return _poll(sc, p, a[0], a[1], timeout, 271)


# What select counts as ready in each of its three sets (Linux's POLLIN_SET, POLLOUT_SET and
# POLLEX_SET, fs/select.c); POLLPRI is 0x2.
SELECT_SETS = (POLLIN | POLLHUP | POLLERR, POLLOUT | POLLERR, 0x2)
FD_SETSIZE = 1024  # descriptors are below RLIMIT_NOFILE's 1024


def _select(sc: SystemCalls, p: Process, a: SyscallArgs, timeout: float | None,
            nr: int) -> SyscallOutcome:
    """select and pselect6 over poll's readiness: the three bit sets read, answered, and
    written back only when the call ends (a wait re-issues it with the sets as they were)."""
    n = signed32(a[0])
    if n < 0:
        return SyscallOutcome(-Errno.EINVAL)
    n = min(n, FD_SETSIZE)
    size = (n + 63) // 64 * 8
    assert p.space is not None
    asked = [int.from_bytes(p.space.read(addr, size), "little") if addr and size else 0
             for addr in a[1:4]]
    ready, wake = [0, 0, 0], []
    for fd in range(n):
        bit = 1 << fd
        if not (asked[0] | asked[1] | asked[2]) & bit:
            continue
        entry = p.files.entries.get(fd)
        if entry is None:
            return SyscallOutcome(-Errno.EBADF)
        readiness = entry.file.readiness()
        for i, mask in enumerate(SELECT_SETS):
            if asked[i] & bit and readiness & mask:
                ready[i] |= bit
        if (t := entry.file.wake_after()) is not None:
            wake.append(t)
    count = sum(bin(r).count("1") for r in ready)
    left = None if count else timed_wait_left(p, timeout)
    if count or left == 0:
        end_timed_wait(p)
        for addr, bits in zip(a[1:4], ready, strict=True):
            if addr and size:
                p.space.write(addr, bits.to_bytes(size, "little"))
        return SyscallOutcome(count)
    bounds = [t for t in (left, *wake) if t is not None]
    return wait_until_ready(sc, p, nr, min(bounds) if bounds else None)


@errno_call
def select(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    timeout = None
    if a[4]:
        assert p.space is not None
        sec, usec = struct.unpack("<qq", p.space.read(a[4], 16))
        if sec < 0 or not 0 <= usec < 1_000_000:
            return SyscallOutcome(-Errno.EINVAL)
        timeout = sec + usec / 1e6
    return _select(sc, p, a, timeout, 23)


@errno_call
def pselect6(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    timeout = None
    if a[4]:
        timeout = _timespec(p, a[4])
        if timeout is None:
            return SyscallOutcome(-Errno.EINVAL)
    if a[5]:
        assert p.space is not None
        if struct.unpack("<Q", p.space.read(a[5], 8))[0]:
            p.accounting.unsupported["pselect6 with a signal mask (waited without it)"] += 1
    return _select(sc, p, a, timeout, 270)


CLOSE_RANGE_UNSHARE, CLOSE_RANGE_CLOEXEC = 2, 4


@errno_call
def close_range(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    first, last, flags = a[0] & 0xFFFFFFFF, a[1] & 0xFFFFFFFF, a[2]
    if first > last or flags & ~(CLOSE_RANGE_UNSHARE | CLOSE_RANGE_CLOEXEC):
        return SyscallOutcome(-Errno.EINVAL)
    for fd in sorted(fd for fd in p.files.entries if first <= fd <= last):
        if flags & CLOSE_RANGE_CLOEXEC:
            p.files.entries[fd].cloexec = True
        else:
            p.files.close(fd)
    return SyscallOutcome(0)  # UNSHARE: the table is the process's own already


HANDLERS: dict[str, Handler] = {
    "close": close, "ioctl": ioctl, "dup": dup, "dup2": dup2, "dup3": dup3, "fcntl": fcntl,
    "pipe2": pipe2, "pipe": pipe,
    "eventfd": eventfd, "eventfd2": eventfd2, "timerfd_create": timerfd_create,
    "timerfd_settime": timerfd_settime, "timerfd_gettime": timerfd_gettime,
    "epoll_create": epoll_create, "epoll_create1": epoll_create1, "epoll_ctl": epoll_ctl,
    "epoll_wait": epoll_wait, "epoll_pwait": epoll_pwait, "poll": poll, "ppoll": ppoll,
    "select": select, "pselect6": pselect6,
    "close_range": close_range,
}
