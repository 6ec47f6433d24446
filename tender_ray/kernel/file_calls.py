"""The file system calls: descriptors, reads and writes on any of them, open through the view.

Every call works on the process's descriptor table (`p.files`, resources/open_file.py) and its
file view (`p.view`, resources/file_view.py); host files are reached only through the view's
file service. A read that must wait (an empty standard input or pipe) blocks the process and
restarts the call, so a waiting process sleeps, never spins, and migrates as it is.
"""

from __future__ import annotations

import os
import stat as stat_mod
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

from tender_ray.abi.cpu_state import SyscallArgs, SyscallOutcome
from tender_ray.abi.linux import SI_USER, Errno, Signal
from tender_ray.errors import UsageError
from tender_ray.resources.file_view import FileStat, FileView, FileViewSpec, Resolved
from tender_ray.resources.open_file import (
    Device,
    Directory,
    HostFile,
    OpenFile,
    OutputStream,
    PipeBuffer,
    PipeEnd,
    StdinStream,
    standard_files,
)
from tender_ray.resources.process import Process

if TYPE_CHECKING:
    from tender_ray.kernel.syscalls import SystemCalls

Handler = Callable[["SystemCalls", Process, SyscallArgs], SyscallOutcome]

AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
AT_EMPTY_PATH = 0x1000
O_CLOEXEC = 0o2000000
F_DUPFD, F_GETFD, F_SETFD, F_GETFL, F_SETFL, F_DUPFD_CLOEXEC = 0, 1, 2, 3, 4, 1030
FD_CLOEXEC = 1
MAX_IO = 1 << 20  # one read or write moves at most 1 MiB (the file service's block)
_SETTABLE_FLAGS = os.O_APPEND | os.O_NONBLOCK
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC
_STAT = struct.Struct("<QQQIIIIQqqqqqqqqq3q")  # struct stat, 144 bytes on x86-64


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _view(sc: SystemCalls, p: Process) -> FileView:
    if p.view is None:  # exec gave none: the host tree as it is, from the machine's cwd
        p.view = FileView(FileViewSpec(cwd=os.getcwd(), writable=()), sc.file_service)
    elif p.view.service is None:  # it arrived: reopen its files here, or at its home
        service = sc.host_tree.service_for(p.view)
        p.view.attach(service)
        p.files.attach(service)
    return p.view


def _path(p: Process, addr: int) -> str:
    assert p.space is not None
    raw = b""
    while len(raw) < 4096:  # page by page: the string may end just before an unmapped page
        chunk = p.space.read(addr + len(raw), 4096 - (addr + len(raw)) % 4096)
        end = chunk.find(b"\0")
        if end >= 0:
            return (raw + chunk[:end]).decode("utf-8", "surrogateescape")
        raw += chunk
    raise OSError(int(Errno.ENAMETOOLONG), "path longer than 4096 bytes")


def _base(p: Process, dirfd: int) -> str | None:
    """The guest directory a *at call starts from."""
    dirfd = _signed(dirfd) if dirfd >= 1 << 31 else dirfd
    if dirfd in (AT_FDCWD, AT_FDCWD & 0xFFFFFFFF):
        return None
    d = p.files.get(dirfd)
    if not isinstance(d, Directory):
        raise OSError(int(Errno.ENOTDIR), f"descriptor {dirfd} is not a directory")
    return d.guest_path


def reattach(sc: SystemCalls, p: Process) -> None:
    """A process that arrived reopens its files through this machine's service before its
    first call that touches one (a file call, or an mmap of a descriptor)."""
    if p.view is not None and p.view.service is None:
        _view(sc, p)


def _errno_call(fn: Handler) -> Handler:
    def call(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
        reattach(sc, p)
        try:
            return fn(sc, p, a)
        except OSError as e:
            return SyscallOutcome(-(e.errno or int(Errno.EIO)))
    return call


def _wait(sc: SystemCalls, p: Process, file: OpenFile, nr: int) -> SyscallOutcome:
    if file.flags & os.O_NONBLOCK:
        return SyscallOutcome(-Errno.EAGAIN)
    from tender_ray.kernel.syscalls import restart_call
    sc.services.block_process(p)
    return restart_call(p, nr)


def _read_into(sc: SystemCalls, p: Process, fd: int, length: int, nr: int,
               offset: int | None = None) -> tuple[bytes | None, SyscallOutcome | None]:
    file = p.files.get(fd)
    if isinstance(file, OutputStream):
        raise OSError(int(Errno.EBADF), f"descriptor {fd} is not open for reading")
    data = file.read(min(length, MAX_IO)) if offset is None else file.pread(
        min(length, MAX_IO), offset)
    if data is None:
        return None, _wait(sc, p, file, nr)
    return data, None


def _write_out(sc: SystemCalls, p: Process, fd: int, data: bytes, nr: int,
               offset: int | None = None) -> SyscallOutcome:
    file = p.files.get(fd)
    if isinstance(file, OutputStream):
        sc.services.append_output(p, file.stream, data)
        return SyscallOutcome(len(data))
    if offset is not None:
        return SyscallOutcome(file.pwrite(data[:MAX_IO], offset))
    try:
        written = file.write(data[:MAX_IO])
    except OSError as e:
        if e.errno != Errno.EPIPE or not isinstance(file, PipeEnd):
            raise
        # No reader is left: SIGPIPE, as Linux sends it (si_code SI_USER, from itself). Its
        # default action ends the process before the call returns; ignored, blocked or
        # handled, the call answers -EPIPE (a handler's frame keeps that rax for after it).
        sc.services.raise_signal(p, Signal.SIGPIPE, SI_USER)
        return SyscallOutcome(-Errno.EPIPE, stop=True)
    if written is None:
        return _wait(sc, p, file, nr)
    return SyscallOutcome(written)


def _iovecs(p: Process, iov: int, count: int) -> list[tuple[int, int]]:
    if count > 1024:
        raise OSError(int(Errno.EINVAL), "more than 1024 vectors")
    assert p.space is not None
    v = struct.unpack(f"<{2 * count}Q", p.space.read(iov, 16 * count))
    return [(v[2 * i], v[2 * i + 1]) for i in range(count)]


@_errno_call
def read(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    data, wait = _read_into(sc, p, a[0], a[2], 0)
    if wait is not None:
        return wait
    assert p.space is not None and data is not None
    p.space.write(a[1], data)
    return SyscallOutcome(len(data))


@_errno_call
def pread64(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    data, _ = _read_into(sc, p, a[0], a[2], 17, offset=_signed(a[3]))
    assert p.space is not None and data is not None
    p.space.write(a[1], data)
    return SyscallOutcome(len(data))


@_errno_call
def readv(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    vectors = _iovecs(p, a[1], a[2])
    data, wait = _read_into(sc, p, a[0], sum(n for _, n in vectors), 19)
    if wait is not None:
        return wait
    assert p.space is not None and data is not None
    done = 0
    for base, n in vectors:
        p.space.write(base, data[done:done + n])
        done += min(n, len(data) - done)
    return SyscallOutcome(len(data))


@_errno_call
def write(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    assert p.space is not None
    p.files.get(a[0])  # EBADF before reading the buffer
    return _write_out(sc, p, a[0], p.space.read(a[1], min(a[2], MAX_IO)), 1)


@_errno_call
def pwrite64(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    assert p.space is not None
    return _write_out(sc, p, a[0], p.space.read(a[1], min(a[2], MAX_IO)), 18,
                      offset=_signed(a[3]))


@_errno_call
def writev(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    p.files.get(a[0])
    assert p.space is not None
    space = p.space
    data = b"".join(space.read(base, n) for base, n in _iovecs(p, a[1], a[2]))
    return _write_out(sc, p, a[0], data, 20)


@_errno_call
def close(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    p.files.close(a[0])
    return SyscallOutcome(0)


@_errno_call
def ioctl(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    p.files.get(a[0])
    # Not a terminal (TIOCGWINSZ, TCGETS, any request): stdio buffers fully, as in a pipe.
    return SyscallOutcome(-Errno.ENOTTY)


def _open(sc: SystemCalls, p: Process, base: str | None, path: str, flags: int,
          mode: int) -> int:
    view = _view(sc, p)
    follow = not flags & os.O_NOFOLLOW
    r = view.resolve(path, base=base, follow_last=follow)
    cloexec = bool(flags & O_CLOEXEC)
    flags &= ~O_CLOEXEC
    file: OpenFile
    if r.device is not None:
        file = Device(r.device, flags)
    else:
        assert r.host is not None
        if flags & _WRITE_FLAGS:
            view.check_writable(r)
        st: FileStat | None
        try:
            st = view.service.lstat(r.host)
        except OSError:
            st = None
        if st is not None and stat_mod.S_ISDIR(st.mode):
            if flags & os.O_ACCMODE != os.O_RDONLY:
                raise OSError(int(Errno.EISDIR), f"{r.guest} is a directory")
            file = Directory(r.guest, r.host, flags)
        else:
            host_flags = (flags & ~os.O_DIRECTORY) | os.O_NOFOLLOW
            handle = view.service.open(r.host, host_flags, mode & 0o7777 & ~view.umask)
            file = HostFile(r.guest, r.host, flags & ~(os.O_TRUNC | os.O_EXCL), handle,
                            view.service)
    return p.files.install(file, cloexec=cloexec)


@_errno_call
def openat(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return SyscallOutcome(_open(sc, p, _base(p, a[0]), _path(p, a[1]), a[2], a[3]))


@_errno_call
def open_(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return SyscallOutcome(_open(sc, p, None, _path(p, a[0]), a[1], a[2]))


@_errno_call
def lseek(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return SyscallOutcome(p.files.get(a[0]).seek(_signed(a[1]), a[2]))


def _pack_stat(st: FileStat) -> bytes:
    def split(ns: int) -> tuple[int, int]:
        return ns // 1_000_000_000, ns % 1_000_000_000
    return _STAT.pack(st.dev, st.ino, st.nlink, st.mode, st.uid, st.gid, 0, st.rdev, st.size,
                      st.blksize, st.blocks, *split(st.atime_ns), *split(st.mtime_ns),
                      *split(st.ctime_ns), 0, 0, 0)


_CHAR_DEVICE = FileStat(0o20666, 0, 0, 5, 1, 0, 0, 0x103, 4096, 0, 0, 0, 0)


def _stat_of(sc: SystemCalls, p: Process, file: OpenFile) -> FileStat:
    if isinstance(file, HostFile):
        service, handle = file._live()
        return service.fstat(handle)
    if isinstance(file, Directory):
        return _view(sc, p).service.lstat(file.host_path)
    if isinstance(file, Device | OutputStream):
        return _CHAR_DEVICE
    return FileStat(0o10600, 0, 0, 0, 1, 0, 0, 0, 4096, 0, 0, 0, 0)  # a pipe (FIFO)


def _stat_path(sc: SystemCalls, p: Process, r: Resolved) -> FileStat:
    if r.device is not None:
        return _CHAR_DEVICE
    assert r.host is not None
    return _view(sc, p).service.lstat(r.host)


@_errno_call
def fstat(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    assert p.space is not None
    p.space.write(a[1], _pack_stat(_stat_of(sc, p, p.files.get(a[0]))))
    return SyscallOutcome(0)


@_errno_call
def newfstatat(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    assert p.space is not None
    path = _path(p, a[1])
    if not path and a[3] & AT_EMPTY_PATH:
        st = _stat_of(sc, p, p.files.get(a[0]))
    else:
        r = _view(sc, p).resolve(path, base=_base(p, a[0]),
                                 follow_last=not a[3] & AT_SYMLINK_NOFOLLOW)
        st = _stat_path(sc, p, r)
    p.space.write(a[2], _pack_stat(st))
    return SyscallOutcome(0)


@_errno_call
def stat(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    assert p.space is not None
    st = _stat_path(sc, p, _view(sc, p).resolve(_path(p, a[0])))
    p.space.write(a[1], _pack_stat(st))
    return SyscallOutcome(0)


@_errno_call
def lstat(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    assert p.space is not None
    st = _stat_path(sc, p, _view(sc, p).resolve(_path(p, a[0]), follow_last=False))
    p.space.write(a[1], _pack_stat(st))
    return SyscallOutcome(0)


@_errno_call
def dup(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return SyscallOutcome(p.files.dup(a[0]))


@_errno_call
def dup2(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    p.files.get(a[0])
    if a[0] == a[1]:
        return SyscallOutcome(a[1])
    return SyscallOutcome(p.files.dup(a[0], new=a[1]))


@_errno_call
def dup3(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    if a[0] == a[1] or a[2] & ~O_CLOEXEC:
        return SyscallOutcome(-Errno.EINVAL)
    return SyscallOutcome(p.files.dup(a[0], new=a[1], cloexec=bool(a[2] & O_CLOEXEC)))


@_errno_call
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
    return SyscallOutcome(-Errno.EINVAL)


@_errno_call
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


@_errno_call
def getcwd(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    cwd = _view(sc, p).cwd.encode() + b"\0"
    if len(cwd) > a[1]:
        return SyscallOutcome(-Errno.ERANGE)
    assert p.space is not None
    p.space.write(a[0], cwd)
    return SyscallOutcome(len(cwd))


@_errno_call
def chdir(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    view = _view(sc, p)
    r = view.resolve(_path(p, a[0]))
    if r.host is None or not os.path.isdir(r.host):
        return SyscallOutcome(-Errno.ENOTDIR)
    view.cwd = r.guest
    return SyscallOutcome(0)


HANDLERS: dict[str, Handler] = {
    "read": read, "write": write, "readv": readv, "writev": writev, "pread64": pread64,
    "pwrite64": pwrite64, "close": close, "ioctl": ioctl, "open": open_, "openat": openat,
    "lseek": lseek, "fstat": fstat, "newfstatat": newfstatat, "stat": stat, "lstat": lstat,
    "dup": dup, "dup2": dup2, "dup3": dup3, "fcntl": fcntl, "pipe2": pipe2,
    "pipe": lambda sc, p, a: pipe2(sc, p, (a[0], 0, 0, 0, 0, 0)),
    "getcwd": getcwd, "chdir": chdir,
}


def setup_files(sc: SystemCalls, p: Process, files: FileViewSpec | None, stdin: str,
                exe: str) -> None:
    """A new process's view and descriptors 0-2. `stdin`: "empty" (ended at once), "none"
    (reads answer EBADF), "stream" (fed by `Machine.feed_stdin`), or a path in the view."""
    # Without a view given, the host tree read-only: nothing is writable unless asked for.
    spec = files or FileViewSpec(cwd=os.getcwd(), writable=())
    tree = sc.host_tree
    p.view = FileView(spec, sc.file_service, exe=exe, home=tree.machine, home_node=tree.node)
    if stdin in ("empty", "none", "stream"):
        stream = StdinStream(available=stdin != "none")
        stream.eof = stdin == "empty"
        p.files = standard_files(stream)
        return
    p.files = standard_files()
    p.files.close(0)
    try:
        fd = _open(sc, p, None, stdin, os.O_RDONLY, 0)
    except OSError as e:
        raise UsageError(f"standard input {stdin!r}: {e.strerror} in the file view rooted at "
                         f"{spec.root}: give a readable file in the view") from None
    assert fd == 0


def read_in_view(sc: SystemCalls, files: FileViewSpec | None, path: str) -> bytes:
    """A whole file as a new process with view `files` will see it (its dynamic loader):
    resolved inside the view, read through this machine's own host files."""
    view = FileView(files or FileViewSpec(cwd=os.getcwd(), writable=()), sc.file_service)
    resolved = view.resolve(path)
    if resolved.host is None:
        raise OSError(int(Errno.EACCES), f"{path} is not a file of the view")
    service = sc.file_service
    handle = service.open(resolved.host, os.O_RDONLY | os.O_NOFOLLOW, 0)
    try:
        parts, offset = [], 0
        while part := service.pread(handle, 1 << 20, offset):
            parts.append(part)
            offset += len(part)
        return b"".join(parts)
    finally:
        service.close(handle)


def feed_stdin(p: Process, data: bytes, eof: bool) -> int:
    """Data for the process's standard input; the bytes now buffered."""
    stream = p.files.stdin()
    if stream is None or not stream.available:
        raise UsageError(f"process {p.pid} was not started with stdin=\"stream\": "
                         "it has no standard input to feed")
    try:
        return stream.feed(data, eof)
    except ValueError as e:
        raise UsageError(str(e)) from None
