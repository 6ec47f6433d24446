"""The file system calls on open files: open through the view, reads and writes on any
descriptor, seeking, stat and statx, truncation, sync and advice; a new process's standard
descriptors. Every call works on the process's descriptor table (`p.files`,
resources/open_file.py) and its file view (`p.view`, resources/file_view.py); host files are
reached only through the view's file service. A read that must wait (an empty standard input
or pipe) blocks the process and restarts the call, so a waiting process sleeps, never spins,
and migrates as it is. The names of files (links, directories, modes) are file_tree.py's.
"""

from __future__ import annotations

import os
import stat as stat_mod
from collections.abc import Sequence
from typing import TYPE_CHECKING

from tender_ray.abi.cpu_state import SyscallArgs, SyscallOutcome
from tender_ray.abi.linux import SI_USER, Errno, Signal
from tender_ray.errors import UsageError
from tender_ray.kernel.syscalls import proc_files
from tender_ray.kernel.syscalls.base import (
    AT_EMPTY_PATH,
    AT_SYMLINK_NOFOLLOW,
    CWD,
    O_CLOEXEC,
    Handler,
    dir_base,
    errno_call,
    iovecs,
    read_path,
    resolve_at,
    restart_call,
    scatter,
    signed,
    view_of,
    wait_until_ready,
)
from tender_ray.kernel.syscalls.file_stat import stat_of
from tender_ray.resources import fifo as fifos
from tender_ray.resources.file_view import (
    FileStat,
    FileView,
    FileViewSpec,
    Resolved,
    read_whole,
)
from tender_ray.resources.image_file import F_SEAL_SEAL, MAX_IMAGE_FILE, FileBody, ImageFile
from tender_ray.resources.open_file import (
    OUTPUT_LIMIT,
    PIPE_BUF,
    Device,
    Directory,
    HostFile,
    OpenFile,
    OutputStream,
    PipeEnd,
    SocketEnd,
    StdinStream,
    standard_files,
)
from tender_ray.resources.process import Process

if TYPE_CHECKING:
    from tender_ray.kernel.syscalls.dispatch import SystemCalls

FAMILY = "files"

MAX_IO = 1 << 20  # one read or write moves at most 1 MiB (the file service's block)
O_TMPFILE = 0o20000000 | os.O_DIRECTORY
MFD_CLOEXEC, MFD_ALLOW_SEALING, MFD_HUGETLB = 1, 2, 4
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE = 1, 2, 0x10
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC


def _wait(sc: SystemCalls, p: Process, file: OpenFile, nr: int) -> SyscallOutcome:
    if file.flags & os.O_NONBLOCK:
        return SyscallOutcome(-Errno.EAGAIN)
    return wait_until_ready(sc, p, nr, file.wake_after())  # a timer's read: until it fires


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


def _broken_pipe(sc: SystemCalls, p: Process) -> SyscallOutcome:
    """No reader is left: SIGPIPE, as Linux sends it (si_code SI_USER, from itself). Its
    default action ends the process before the call returns; ignored, blocked or handled,
    the call answers -EPIPE (a handler's frame keeps that rax for after it)."""
    sc.services.raise_signal(p, Signal.SIGPIPE, SI_USER)
    return SyscallOutcome(-Errno.EPIPE, stop=True)


def _write_output(sc: SystemCalls, p: Process, file: OutputStream, data: bytes,
                  nr: int) -> SyscallOutcome:
    """A write to standard output or error, a pipe to the owner bounded by OUTPUT_LIMIT.
    Blocking, it is all or nothing: it waits until the whole write fits, then takes it
    (a write never exceeds MAX_IO, which the bound holds), so the caller gets the full count
    as from a blocking pipe on Linux, which writes everything before it returns — programs
    that ignore short writes to stdout stay right. Waiting, the process sleeps and migrates
    as it is, and issues the write again when woken. Non-blocking, as Linux's pipe: what
    fits, -EAGAIN when nothing does or an atomic write (at most PIPE_BUF) does not."""
    try:
        room = sc.services.output_room(p, file.stream)
        whole = len(data) <= room or room == OUTPUT_LIMIT  # an empty stream takes a block
        if not whole:
            if file.flags & os.O_NONBLOCK:
                if room == 0 or len(data) <= PIPE_BUF:
                    return SyscallOutcome(-Errno.EAGAIN)
                return SyscallOutcome(sc.services.write_output(p, file.stream, data[:room]))
            sc.services.wait_for_output(p, file.stream, min(len(data), OUTPUT_LIMIT))
            return restart_call(p, nr)
        return SyscallOutcome(sc.services.write_output(p, file.stream, data[:OUTPUT_LIMIT]))
    except OSError as e:
        if e.errno != Errno.EPIPE:
            raise
        return _broken_pipe(sc, p)


def _write_out(sc: SystemCalls, p: Process, fd: int, data: bytes, nr: int,
               offset: int | None = None) -> SyscallOutcome:
    file = p.files.get(fd)
    if isinstance(file, OutputStream):
        return _write_output(sc, p, file, data, nr)
    if offset is not None:
        return SyscallOutcome(file.pwrite(data[:MAX_IO], offset))
    try:
        written = file.write(data[:MAX_IO])
    except OSError as e:
        if e.errno != Errno.EPIPE or not isinstance(file, PipeEnd | SocketEnd):
            raise
        return _broken_pipe(sc, p)
    if written is None:
        return _wait(sc, p, file, nr)
    return SyscallOutcome(written)


@errno_call
def read(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    data, wait = _read_into(sc, p, a[0], a[2], 0)
    if wait is not None:
        return wait
    assert p.space is not None and data is not None
    p.space.write(a[1], data)
    return SyscallOutcome(len(data))


@errno_call
def pread64(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    data, _ = _read_into(sc, p, a[0], a[2], 17, offset=signed(a[3]))
    assert p.space is not None and data is not None
    p.space.write(a[1], data)
    return SyscallOutcome(len(data))


@errno_call
def readv(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    vectors = iovecs(p, a[1], a[2])
    data, wait = _read_into(sc, p, a[0], sum(n for _, n in vectors), 19)
    if wait is not None:
        return wait
    assert data is not None
    return scatter(p, vectors, data)


@errno_call
def write(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    assert p.space is not None
    p.files.get(a[0])  # EBADF before reading the buffer
    return _write_out(sc, p, a[0], p.space.read(a[1], min(a[2], MAX_IO)), 1)


@errno_call
def pwrite64(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    assert p.space is not None
    return _write_out(sc, p, a[0], p.space.read(a[1], min(a[2], MAX_IO)), 18,
                      offset=signed(a[3]))


@errno_call
def writev(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    p.files.get(a[0])
    assert p.space is not None
    space = p.space
    data = b"".join(space.read(base, n) for base, n in iovecs(p, a[1], a[2]))
    return _write_out(sc, p, a[0], data, 20)


def _open(sc: SystemCalls, p: Process, base: str | None, path: str, flags: int,
          mode: int) -> int:
    view = view_of(sc, p)
    follow = not flags & os.O_NOFOLLOW
    r = view.resolve(path, base=base, follow_last=follow)
    cloexec = bool(flags & O_CLOEXEC)
    flags &= ~O_CLOEXEC
    file: OpenFile
    if r.proc is not None:
        return _open_proc(sc, p, r, flags, cloexec)
    if flags & O_TMPFILE == O_TMPFILE:
        file = _tmpfile(view, r, flags & ~O_TMPFILE, mode)
    elif r.device is not None:
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
        elif st is not None and stat_mod.S_ISFIFO(st.mode):
            file = _open_fifo(sc, p, view, r, st, flags)
        else:
            host_flags = (flags & ~os.O_DIRECTORY) | os.O_NOFOLLOW
            handle = view.service.open(r.host, host_flags, mode & 0o7777 & ~view.umask)
            file = HostFile(r.guest, r.host, flags & ~(os.O_TRUNC | os.O_EXCL), handle,
                            view.service)
    return p.files.install(file, cloexec=cloexec)


def _open_fifo(sc: SystemCalls, p: Process, view: FileView, r: Resolved, st: FileStat,
               flags: int) -> fifos.FifoEnd:
    """A FIFO: an end of the machine's pipe for it (resources/fifo.py), never the host's
    FIFO itself. `MustWait` when Linux would block the open for the other side."""
    if flags & os.O_DIRECTORY:
        raise OSError(int(Errno.ENOTDIR), f"{r.guest} is a FIFO, not a directory")
    if flags & os.O_CREAT and flags & os.O_EXCL:
        raise OSError(int(Errno.EEXIST), f"{r.guest} exists (a FIFO)")
    own = [f.fifo for f in (e.file for e in p.files.entries.values())
           if isinstance(f, fifos.FifoEnd)]
    fifo = fifos.registry_of(sc).buffer((view.home_node, st.dev, st.ino), r.guest, own)
    fifo.host, fifo.stat = r.host or "", st
    return fifos.open_end(fifo, p, flags & ~(os.O_CREAT | os.O_EXCL | os.O_TRUNC),
                          sum(p.accounting.syscalls.values()))


def _opened(sc: SystemCalls, p: Process, nr: int, base: str | None, path: str, flags: int,
            mode: int) -> SyscallOutcome:
    """An open call's answer: the descriptor, or a wait for a FIFO's other side (the call
    is issued again; a signal ends the wait with EINTR)."""
    try:
        return SyscallOutcome(_open(sc, p, base, path, flags, mode))
    except fifos.MustWait:
        return wait_until_ready(sc, p, nr, fifos.RETRY)


def _open_proc(sc: SystemCalls, p: Process, r: Resolved, flags: int, cloexec: bool) -> int:
    """A file of /proc/self, made now from the process; its links opened as what they name."""
    assert r.proc is not None
    target = proc_files.link_target(sc, p, r.proc)
    if target is not None:
        if target.startswith("/") and not target.endswith(")"):
            return _open(sc, p, None, target, flags | (O_CLOEXEC if cloexec else 0), 0)
        fd = int(r.proc.rsplit("/", 1)[1])  # a pipe or an event: the same description
        return p.files.dup(fd, cloexec=cloexec)
    if (listed := proc_files.directory(p, r.proc, r.guest, flags)) is not None:
        return p.files.install(listed, cloexec=cloexec)
    if flags & _WRITE_FLAGS:
        raise OSError(int(Errno.EACCES), f"{r.guest} cannot be written")
    body = FileBody(name=r.guest, data=bytearray(proc_files.contents(sc, p, r.proc)),
                    mode=stat_mod.S_IFREG | 0o444, nlink=1)
    return p.files.install(ImageFile(body, os.O_RDONLY), cloexec=cloexec)


def _tmpfile(view: FileView, r: Resolved, flags: int, mode: int) -> ImageFile:
    """O_TMPFILE: a file without a name in directory `r`; its contents live in the image."""
    if flags & os.O_ACCMODE == os.O_RDONLY:
        raise OSError(int(Errno.EINVAL), "O_TMPFILE needs O_WRONLY or O_RDWR")
    if r.host is None or not stat_mod.S_ISDIR(view.service.lstat(r.host).mode):
        raise OSError(int(Errno.ENOTDIR), f"{r.guest} is not a directory")
    view.check_writable(r)
    body = FileBody(name="", mode=stat_mod.S_IFREG | (mode & 0o7777 & ~view.umask))
    body.name = f"{r.guest.rstrip('/')}/#{body.ino} (deleted)"
    return ImageFile(body, flags & ~(os.O_CREAT | os.O_EXCL | os.O_TRUNC))


def take_into_image(sc: SystemCalls, p: Process, host_path: str) -> None:
    """`host_path` was just unlinked: an open file of the process that now has no name left
    keeps its contents in the process image from here on (as CRIU's ghost files), so it
    reads and writes the same wherever the process goes. Every description of it shares
    one body; descriptors keep their offsets."""
    bodies: dict[int, FileBody] = {}
    for entry in list(p.files.entries.values()):
        old = entry.file
        if not isinstance(old, HostFile) or old.host_path != host_path or old.lost is not None:
            continue
        service, handle = old._live()
        st = service.fstat(handle)
        if st.nlink != 0:
            continue  # another name keeps it
        if st.size > MAX_IMAGE_FILE:
            p.accounting.unsupported["unlinked open file too large to carry"] += 1
            continue
        body = bodies.get(st.ino)
        if body is None:
            data = bytearray()
            while part := service.pread(handle, MAX_IO, len(data)):
                data += part
            body = bodies[st.ino] = FileBody(
                name=f"{old.guest_path} (deleted)", data=data, mode=st.mode, uid=st.uid,
                gid=st.gid, nlink=0, ino=st.ino, atime_ns=st.atime_ns, mtime_ns=st.mtime_ns,
                ctime_ns=st.ctime_ns)
        new = ImageFile(body, old.flags, old.offset)
        new.refs = old.refs
        for other in p.files.entries.values():
            if other.file is old:
                other.file = new
        old.release()


@errno_call
def openat(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return _opened(sc, p, 257, dir_base(p, a[0]), read_path(p, a[1]), a[2], a[3])


@errno_call
def open_(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return _opened(sc, p, 2, None, read_path(p, a[0]), a[1], a[2])


@errno_call
def creat(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    flags = os.O_CREAT | os.O_WRONLY | os.O_TRUNC
    return _opened(sc, p, 85, None, read_path(p, a[0]), flags, a[1])


@errno_call
def memfd_create(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    flags = a[1]
    if flags & ~(MFD_CLOEXEC | MFD_ALLOW_SEALING) or flags & MFD_HUGETLB:
        return SyscallOutcome(-Errno.EINVAL)
    assert p.space is not None
    name = p.space.read_cstring(a[0], 249).decode("utf-8", "surrogateescape")
    body = FileBody(name=f"/memfd:{name} (deleted)", mode=stat_mod.S_IFREG | 0o777, nlink=0,
                    seals=0 if flags & MFD_ALLOW_SEALING else F_SEAL_SEAL)
    return SyscallOutcome(p.files.install(ImageFile(body, os.O_RDWR),
                                          cloexec=bool(flags & MFD_CLOEXEC)))


@errno_call
def lseek(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return SyscallOutcome(p.files.get(a[0]).seek(signed(a[1]), a[2]))




def of_fd(p: Process, fd: int) -> Resolved:
    """Where the file or directory a descriptor holds is."""
    f: OpenFile = p.files.get(fd)
    if isinstance(f, HostFile | Directory):
        return Resolved(f.guest_path, host=f.host_path)
    raise OSError(int(Errno.EPERM), f"descriptor {fd} is no file of the view")


def writable_target(sc: SystemCalls, p: Process, dirfd: int, addr: int,
                    flags: int) -> Resolved:
    """The file a change names (by path, or by descriptor with AT_EMPTY_PATH), in a
    writable directory of the view."""
    if addr == 0 or (flags & AT_EMPTY_PATH and not read_path(p, addr)):
        r = of_fd(p, dirfd)
    else:
        r = resolve_at(sc, p, dirfd, addr, follow=not flags & AT_SYMLINK_NOFOLLOW)
    view_of(sc, p).check_writable(r)
    if r.host is None:
        raise OSError(int(Errno.EPERM), f"{r.guest} is an emulated device")
    return r


@errno_call
def fadvise64(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    p.files.get(a[0])  # EBADF; the advice itself changes nothing here
    return SyscallOutcome(0)



def _regular(p: Process, fd: int, writing: bool) -> HostFile | ImageFile:
    f = p.files.get(fd)
    if isinstance(f, HostFile | ImageFile) and (f.writable or not writing):
        return f
    if writing and isinstance(f, HostFile | ImageFile):
        raise OSError(int(Errno.EINVAL), f"descriptor {fd} is not open for writing")
    raise OSError(int(Errno.EINVAL), f"descriptor {fd} is no regular file")


@errno_call
def ftruncate(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    if signed(a[1]) < 0:
        return SyscallOutcome(-Errno.EINVAL)
    f = _regular(p, a[0], True)
    if isinstance(f, ImageFile):
        f.body.truncate(a[1])
        return SyscallOutcome(0)
    service, handle = f._live()
    service.ftruncate(handle, a[1])
    return SyscallOutcome(0)


@errno_call
def fallocate(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    """Space is not reserved ahead here, so allocating only makes the file long enough
    (unless FALLOC_FL_KEEP_SIZE); a hole punched or a range zeroed reads as zeros after,
    as on Linux (written as zeros: the file's holes are not kept)."""
    mode, offset, length = a[1] & 0xFFFFFFFF, signed(a[2]), signed(a[3])
    if offset < 0 or length <= 0:
        return SyscallOutcome(-Errno.EINVAL)
    if mode & FALLOC_FL_PUNCH_HOLE and not mode & FALLOC_FL_KEEP_SIZE:
        return SyscallOutcome(-Errno.EOPNOTSUPP)  # as Linux: a hole never shortens a file
    if mode & ~(FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE):
        p.accounting.unsupported[f"fallocate(mode {mode:#x})"] += 1  # collapse, insert...
        return SyscallOutcome(-Errno.EOPNOTSUPP)
    file = p.files.get(a[0])
    if isinstance(file, PipeEnd):
        return SyscallOutcome(-Errno.ESPIPE)
    if not isinstance(file, HostFile | ImageFile):
        return SyscallOutcome(-Errno.ENODEV)
    if not file.writable:
        return SyscallOutcome(-Errno.EBADF)
    size = stat_of(sc, p, file).size
    end = offset + length
    if mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE):
        stop = min(end, size) if mode & FALLOC_FL_KEEP_SIZE else end
        for at in range(offset, stop, MAX_IO):
            file.pwrite(bytes(min(MAX_IO, stop - at)), at)
    elif end > size and not mode & FALLOC_FL_KEEP_SIZE:
        if isinstance(file, ImageFile):
            file.body.truncate(end)
        else:
            service, handle = file._live()
            service.ftruncate(handle, end)
    return SyscallOutcome(0)


@errno_call
def truncate(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    if signed(a[1]) < 0:
        return SyscallOutcome(-Errno.EINVAL)
    r = writable_target(sc, p, CWD, a[0], 0)
    assert r.host is not None
    service = view_of(sc, p).service
    handle = service.open(r.host, os.O_WRONLY | os.O_NOFOLLOW, 0)
    try:
        service.ftruncate(handle, a[1])
    finally:
        service.close(handle)
    return SyscallOutcome(0)


@errno_call
def fsync(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    f = p.files.get(a[0])
    if isinstance(f, Directory):
        return SyscallOutcome(0)
    regular = _regular(p, a[0], False)
    if isinstance(regular, HostFile):
        service, handle = regular._live()
        service.fsync(handle)
    return SyscallOutcome(0)




HANDLERS: dict[str, Handler] = {
    "read": read, "write": write, "readv": readv, "writev": writev, "pread64": pread64,
    "pwrite64": pwrite64, "open": open_, "openat": openat, "lseek": lseek,
    "ftruncate": ftruncate, "truncate": truncate, "fsync": fsync, "fdatasync": fsync,
    "fadvise64": fadvise64, "creat": creat, "fallocate": fallocate,
    "memfd_create": memfd_create,
}


def setup_files(sc: SystemCalls, p: Process, files: FileViewSpec | None, stdin: str,
                exe: str, argv: Sequence[bytes] = (), envp: Sequence[bytes] = ()) -> None:
    """A new process's view and descriptors 0-2. `stdin`: "empty" (ended at once), "none"
    (reads answer EBADF), "stream" (fed by `Machine.feed_stdin`), or a path in the view."""
    # Without a view given, the host tree read-only: nothing is writable unless asked for.
    spec = files or FileViewSpec(cwd=os.getcwd(), writable=())
    tree = sc.host_tree
    p.view = FileView(spec, sc.file_service, exe=exe, home=tree.machine, home_node=tree.node)
    p.view.cmdline = b"".join(arg + b"\0" for arg in argv)
    p.view.environ = b"".join(var + b"\0" for var in envp)
    stdio = spec.stdio
    if stdin in ("empty", "none", "stream"):
        stream = StdinStream(available=stdin != "none",
                             outside=stdio[0] if stdio and stdin == "stream" else None)
        stream.eof = stdin == "empty"
        p.files = standard_files(stream, stdio)
        return
    p.files = standard_files(None, stdio)
    p.files.close(0)
    try:
        fd = _open(sc, p, None, stdin, os.O_RDONLY, 0)
    except fifos.MustWait:
        raise UsageError(f"standard input {stdin!r} is a FIFO with no writer yet: a Tender "
                         "process's input is a file, or a stream fed by exec") from None
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
    return read_whole(sc.file_service, resolved.host, os.O_RDONLY | os.O_NOFOLLOW)


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
