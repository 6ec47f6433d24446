"""What every family of system calls shares: the handler's shape, the services a call may ask
of its kernel, restarting a call that must wait, and reading a call's arguments (signed
integers, paths, I/O vectors) out of the guest's memory; the file view a call resolves
paths in, reattached to this machine's files after an arrival.
"""

from __future__ import annotations

import functools
import os
import struct
import time as _time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, TypeVar

from tender_ray.abi.cpu_state import SyscallArgs, SyscallOutcome
from tender_ray.abi.linux import Errno
from tender_ray.kernel import address_space as vm
from tender_ray.kernel import signals
from tender_ray.resources.file_view import FileView, FileViewSpec, Resolved
from tender_ray.resources.open_file import Directory, OpenFile
from tender_ray.resources.process import Process, ThreadEntry

if TYPE_CHECKING:
    from tender_ray.kernel.syscalls.dispatch import SystemCalls

Handler = Callable[["SystemCalls", Process, SyscallArgs], SyscallOutcome]

AT_FDCWD = -100
CWD = AT_FDCWD & 0xFFFFFFFF  # AT_FDCWD as a call's 32-bit argument
AT_SYMLINK_NOFOLLOW = 0x100
AT_EMPTY_PATH = 0x1000
O_CLOEXEC = 0o2000000
ENDED = SyscallOutcome(None, stop=True)  # the process ended (or waits): stop running it


class Services(Protocol):
    """What a system call may ask of its kernel (the machine offers it)."""

    @property
    def managers(self) -> vm.Managers: ...

    def output_room(self, p: Process, fd: int) -> int: ...
    def stream_sink(self, p: Process) -> object: ...
    def write_output(self, p: Process, fd: int, data: bytes) -> int: ...
    def wait_for_output(self, p: Process, fd: int, need: int) -> None: ...
    def exit_process(self, p: Process, status: int, reason: str) -> None: ...
    def sleep_process(self, p: Process, seconds: float) -> None: ...
    def block_process(self, p: Process) -> None: ...
    def wake_process(self, p: Process) -> None: ...
    def new_thread_id(self) -> int: ...
    def start_thread(self, t: ThreadEntry) -> None: ...
    def exit_thread(self, p: Process, status: int) -> None: ...
    def raise_signal(self, p: Process, sig: int, code: int = 0x80) -> None: ...
    def timer_changed(self, p: Process) -> None: ...
    def get_fs_base(self, p: Process) -> int: ...
    def set_fs_base(self, p: Process, value: int) -> None: ...


def restart_call(p: Process, nr: int) -> SyscallOutcome:
    """Answer a call that must wait: when the process runs again it issues the same call
    (rip back over the 2-byte `syscall`, rax its number), as Linux restarts a call cut off by
    -ERESTARTSYS. The registers then say everything, so a waiting process migrates as is."""
    p.register_edits.append(lambda s: s.with_regs(rip=s.rip - 2, rax=nr))
    # A signal may end the wait (EINTR).
    signals.of(p).wait = signals.Wait("restart", nr=nr, thread=signals.tid_of(p))
    return SyscallOutcome(None, stop=True)


def wait_until_ready(sc: SystemCalls, p: Process, nr: int,
                     seconds: float | None) -> SyscallOutcome:
    """A call that found nothing ready waits — `seconds` at most (None: until woken: input
    arrives, a signal) — and is then issued again, as `restart_call` says."""
    if seconds is None:
        sc.services.block_process(p)
    else:
        sc.services.sleep_process(p, max(0.0, seconds))
    return restart_call(p, nr)


def timed_wait_left(p: Process, timeout: float | None) -> float | None:
    """Seconds left of a timed wait of `timeout` seconds (None: no limit) that begins with this
    call — or began with the same call before it was issued again after an early wake (no
    other call of its thread between), so waking early never lengthens the wait."""
    made = sum(p.accounting.syscalls.values())  # (the calls of run entry `p`'s thread)
    began = p.thread.timed_wait if isinstance(p, ThreadEntry) else p.files.timed_wait
    if began is not None and began[0] == made - 1:
        deadline: float | None = began[1]
    else:
        deadline = None if timeout is None else _time.time() + timeout
    _keep_timed_wait(p, None if deadline is None else (made, deadline))
    return None if deadline is None else max(0.0, deadline - _time.time())


def end_timed_wait(p: Process) -> None:
    """Run entry `p`'s timed wait is over (its call answers)."""
    _keep_timed_wait(p, None)


def _keep_timed_wait(p: Process, record: tuple[int, float] | None) -> None:
    # A thread after the first keeps its own; the first keeps it in its descriptor table,
    # where it travels in the image.
    if isinstance(p, ThreadEntry):
        p.thread.timed_wait = record
    else:
        p.files.timed_wait = record


def err(e: Errno) -> SyscallOutcome:
    return SyscallOutcome(-e)


def signed(value: int) -> int:
    """A 64-bit argument as the signed value the guest passed."""
    return value - (1 << 64) if value >= 1 << 63 else value


def signed32(value: int) -> int:
    """A 32-bit argument (an int: a descriptor, a dirfd) as the signed value passed."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def read_path(p: Process, addr: int) -> str:
    """The NUL-terminated path at `addr` (ENAMETOOLONG past 4096 bytes)."""
    assert p.space is not None
    raw = b""
    while len(raw) < 4096:  # page by page: the string may end just before an unmapped page
        chunk = p.space.read(addr + len(raw), 4096 - (addr + len(raw)) % 4096)
        end = chunk.find(b"\0")
        if end >= 0:
            return (raw + chunk[:end]).decode("utf-8", "surrogateescape")
        raw += chunk
    raise OSError(int(Errno.ENAMETOOLONG), "path longer than 4096 bytes")


def iovecs(p: Process, iov: int, count: int) -> list[tuple[int, int]]:
    """The (base, length) pairs of a struct iovec array."""
    if count > 1024:
        raise OSError(int(Errno.EINVAL), "more than 1024 vectors")
    assert p.space is not None
    v = struct.unpack(f"<{2 * count}Q", p.space.read(iov, 16 * count))
    return [(v[2 * i], v[2 * i + 1]) for i in range(count)]


F = TypeVar("F", bound=OpenFile)


def file_of(p: Process, fd: int, kind: type[F], errno: Errno, what: str) -> F:
    """The open file at `fd` if it is of `kind`; else `errno` ("descriptor N is not WHAT")."""
    file = p.files.get(fd)
    if not isinstance(file, kind):
        raise OSError(int(errno), f"descriptor {fd} is not {what}")
    return file


def scatter(p: Process, vectors: list[tuple[int, int]], data: bytes) -> SyscallOutcome:
    """Write `data` across the iovec `vectors` in order (readv, preadv): the read's count."""
    assert p.space is not None
    done = 0
    for base, n in vectors:
        p.space.write(base, data[done:done + n])
        done += min(n, len(data) - done)
    return SyscallOutcome(len(data))


def view_of(sc: SystemCalls, p: Process) -> FileView:
    """The process's file view, attached to this machine's host files."""
    if p.view is None:  # exec gave none: the host tree as it is, from the machine's cwd
        p.view = FileView(FileViewSpec(cwd=os.getcwd(), writable=()), sc.file_service)
    elif p.view.service is None:  # it arrived: reopen its files here, or at its home
        service = sc.host_tree.service_for(p.view)
        p.view.attach(service)
        p.files.attach(service)
    return p.view


def reattach(sc: SystemCalls, p: Process) -> None:
    """A process that arrived reopens its files through this machine's service before its
    first call that touches one (a file call, or an mmap of a descriptor)."""
    if p.view is not None and p.view.service is None:
        view_of(sc, p)


def dir_base(p: Process, dirfd: int) -> str | None:
    """The guest directory a *at call starts from (None: the working directory)."""
    fd = signed32(dirfd)
    if fd == AT_FDCWD:
        return None
    d = p.files.get(fd)
    if not isinstance(d, Directory):
        raise OSError(int(Errno.ENOTDIR), f"descriptor {fd} is not a directory")
    return d.guest_path


def resolve_at(sc: SystemCalls, p: Process, dirfd: int, addr: int,
               follow: bool = True) -> Resolved:
    """The path at `addr`, from `dirfd`, resolved in the view."""
    return view_of(sc, p).resolve(read_path(p, addr), base=dir_base(p, dirfd),
                                  follow_last=follow)


def errno_call(fn: Handler) -> Handler:
    """A call on files: reattached after an arrival, an OSError answered as its -errno."""
    @functools.wraps(fn)
    def call(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
        reattach(sc, p)
        try:
            return fn(sc, p, a)
        except OSError as e:
            return SyscallOutcome(-(e.errno or int(Errno.EIO)))
    return call


def answer(value: int) -> Handler:
    """A call whose answer is always `value`."""
    return lambda sc, p, a: SyscallOutcome(value)
