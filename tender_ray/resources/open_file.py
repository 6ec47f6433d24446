"""Open files as process state: the open file descriptions and a process's descriptor table.

A description is what `open`, `pipe2` or the machine made (a host file, a directory, a pipe
end, the standard input stream, an output stream, an emulated device); a descriptor points at
one, and `dup` shares it with its offset. The whole table is plain data that pickles and deep-
copies with its sharing intact, so it travels in the process image. Host fds never travel: a
host file keeps its view path, flags and offset, and its handle in the machine's file service
is dropped on pickling and reopened at the destination (`FdTable.attach`).

Errors are `OSError` with a Linux errno; a read or write that must wait answers None.
"""

from __future__ import annotations

import contextlib
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tender_ray.abi.linux import Errno
from tender_ray.resources.file_view import MAX_BLOCK, FileService, FileView, StreamIdentity

STDIN_LIMIT = 1 << 20  # bytes the standard input may hold; the feeder waits for less
OUTPUT_LIMIT = 1 << 20  # untaken output a stream may hold; a writer waits for less
PIPE_CAPACITY = 1 << 16  # as Linux's default pipe
PIPE_BUF = 4096  # a pipe write up to this size is atomic
PIPE_MAX_SIZE = 1 << 20  # /proc/sys/fs/pipe-max-size: F_SETPIPE_SZ's limit
# Readiness (poll/epoll event bits, as Linux numbers them).
POLLIN, POLLOUT, POLLERR, POLLHUP = 0x1, 0x4, 0x8, 0x10
MAX_FDS = 1024  # RLIMIT_NOFILE's usual soft limit
_ACCESS = os.O_ACCMODE


def _error(errno: Errno, what: str) -> OSError:
    return OSError(int(errno), what)


class OpenFile:
    """An open file description. `flags` are its status flags (access mode, O_APPEND,
    O_NONBLOCK), owned by the process's computation like everything in the table."""

    kind = "file"

    def __init__(self, flags: int) -> None:
        self.flags = flags
        self.refs = 0  # descriptors pointing at it (FdTable's)

    @property
    def readable(self) -> bool:
        return self.flags & _ACCESS in (os.O_RDONLY, os.O_RDWR)

    @property
    def writable(self) -> bool:
        return self.flags & _ACCESS in (os.O_WRONLY, os.O_RDWR)

    def read(self, length: int) -> bytes | None:
        raise _error(Errno.EINVAL, f"{self.kind} cannot be read")

    def write(self, data: bytes) -> int | None:
        raise _error(Errno.EINVAL, f"{self.kind} cannot be written")

    def pread(self, length: int, offset: int) -> bytes:
        """Bytes at an offset, the offset unchanged (also what mmap of an fd reads)."""
        raise _error(Errno.ESPIPE, f"{self.kind} has no offsets")

    def pwrite(self, data: bytes, offset: int) -> int:
        raise _error(Errno.ESPIPE, f"{self.kind} has no offsets")

    def seek(self, offset: int, whence: int) -> int:
        raise _error(Errno.ESPIPE, f"{self.kind} cannot seek")

    def release(self) -> None:
        """The last descriptor is gone."""

    def readiness(self) -> int:
        """What a read or write would do now without waiting (POLLIN, POLLOUT, POLLHUP...):
        a regular file or device never makes one wait."""
        return (POLLIN if self.readable else 0) | (POLLOUT if self.writable else 0)

    def wake_after(self) -> float | None:
        """Seconds until time alone may make it ready (a timer); None: only an event can."""
        return None

    def identity(self) -> tuple[int, int] | None:
        """(device, inode) of the file it is open on, where it has one that can be told."""
        return None

    def attach(self, service: FileService) -> None:
        """Give it the machine's file service (after exec or arrival)."""

    def flush(self) -> None:
        """What was written through it is at its home (before the process's image is taken)."""


class HostFile(OpenFile):
    """A regular file of the host tree, seen through the view: its host fd is a handle in the
    file service (not migrated); `offset` is the description's and travels."""

    kind = "host file"

    def __init__(self, guest_path: str, host_path: str, flags: int, handle: int,
                 service: FileService) -> None:
        super().__init__(flags)
        self.guest_path = guest_path  # what the guest opened, for /proc-like answers
        self.host_path = host_path  # reopened from this at a destination
        self._offset = 0
        self.handle: int | None = handle  # the service's, dropped on pickling
        self.service: FileService | None = service
        self.lost: int | None = None  # errno of a failed reopen or write-behind: calls answer it

    # A host descriptor on the open file description a native guest holds directly (the
    # native engine's direct_files): while there is one, the description's offset is the
    # kernel's, read and moved through it. Never pickled.
    direct_fd: int | None = None
    # (size, mtime_ns) of a file that was direct when its image was taken: the destination
    # checks the file it reopens against it. Class-level for images made before it existed.
    direct_check: tuple[int, int] | None = None
    changed: str | None = None  # why the reopened file is refused (it changed on the way)

    @property
    def offset(self) -> int:
        if self.direct_fd is not None:
            self._offset = os.lseek(self.direct_fd, 0, os.SEEK_CUR)
        return self._offset

    @offset.setter
    def offset(self, value: int) -> None:
        self._offset = value
        if self.direct_fd is not None:
            os.lseek(self.direct_fd, value, os.SEEK_SET)

    def go_direct(self, fd: int) -> None:
        """From now on the description is the one `fd` (the machine's) is open on."""
        self.direct_fd = fd

    def leave_direct(self) -> None:
        """The host process that held the description is gone: keep its offset, drop it."""
        if self.direct_fd is not None:
            offset = self.offset
            fd, self.direct_fd = self.direct_fd, None
            self._offset = offset
            with contextlib.suppress(OSError):
                os.close(fd)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["handle"] = None
        state["service"] = None
        if self.direct_fd is not None:
            state["_offset"] = self.offset
            del state["direct_fd"]
            if self.service is not None and self.handle is not None:
                with contextlib.suppress(OSError):
                    st = self.service.fstat(self.handle)
                    state["direct_check"] = (st.size, st.mtime_ns)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "offset" in state:  # an image made before offsets could be the kernel's
            state["_offset"] = state.pop("offset")
        self.__dict__.update(state)

    def flush(self) -> None:
        if self.service is not None and self.handle is not None and self.lost is None:
            try:
                self.service.flush(self.handle)
            except OSError as e:  # a write-behind that failed: the file's next call says so
                self.lost = e.errno or int(Errno.EIO)

    def attach(self, service: FileService) -> None:
        self.service = service
        self.handle = None
        try:
            # Never recreate or truncate: the file is reopened as it is now.
            flags = self.flags & ~(os.O_CREAT | os.O_TRUNC | os.O_EXCL)
            self.handle = service.open(self.host_path, flags | os.O_NOFOLLOW, 0)
        except OSError as e:
            self.lost = e.errno or int(Errno.EIO)
            return
        if self.direct_check is not None:
            # It was read straight from the kernel: the file reopened must be the one it read.
            try:
                st = service.fstat(self.handle)
                now: tuple[int, int] | None = (st.size, st.mtime_ns)
            except OSError:
                now = None
            if now != self.direct_check:
                self.changed = (f"{self.guest_path} changed while the process moved (size, "
                                f"mtime {self.direct_check} then, {now} now)")
                self.lost = int(Errno.ESTALE)
            self.direct_check = None  # checked: the next move checks the file as it is then

    def identity(self) -> tuple[int, int] | None:
        try:
            service, handle = self._live()
            st = service.fstat(handle)
        except OSError:
            return None
        return st.dev, st.ino

    def _live(self) -> tuple[FileService, int]:
        if self.lost is not None:
            raise _error(Errno(self.lost), self.changed
                         or f"{self.guest_path} vanished since it was opened")
        if self.service is None or self.handle is None:
            raise _error(Errno.EIO, f"{self.guest_path} is not attached to a file service")
        return self.service, self.handle

    def read(self, length: int) -> bytes | None:
        if not self.readable:
            raise _error(Errno.EBADF, f"{self.guest_path} is not open for reading")
        if self.direct_fd is not None:  # one read on the shared description: atomic
            self._live()
            data = os.read(self.direct_fd, min(length, MAX_BLOCK))
            self._offset += len(data)
            return data
        data = self.pread(length, self.offset)
        self.offset += len(data)
        return data

    def write(self, data: bytes) -> int | None:
        if not self.writable:
            raise _error(Errno.EBADF, f"{self.guest_path} is not open for writing")
        if self.flags & os.O_APPEND:
            service, handle = self._live()
            self.offset = service.fstat(handle).size
        written = self.pwrite(data, self.offset)
        self.offset += written
        return written

    def pread(self, length: int, offset: int) -> bytes:
        service, handle = self._live()
        return service.pread(handle, length, offset)

    def pwrite(self, data: bytes, offset: int) -> int:
        service, handle = self._live()
        return service.pwrite(handle, data, offset)

    def seek(self, offset: int, whence: int) -> int:
        if whence == os.SEEK_SET:
            base = 0
        elif whence == os.SEEK_CUR:
            base = self.offset
        elif whence == os.SEEK_END:
            service, handle = self._live()
            base = service.fstat(handle).size
        else:
            raise _error(Errno.EINVAL, f"whence {whence} is not SEEK_SET/CUR/END")
        if base + offset < 0:
            raise _error(Errno.EINVAL, "the offset would be negative")
        self.offset = base + offset
        return self.offset

    def release(self) -> None:
        if self.service is not None and self.handle is not None:
            self.service.close(self.handle)
        self.handle = None
        if self.direct_fd is not None:
            fd, self.direct_fd = self.direct_fd, None
            with contextlib.suppress(OSError):
                os.close(fd)


class Directory(OpenFile):
    """A directory opened for getdents64; `position` counts entries already returned."""

    kind = "directory"

    def __init__(self, guest_path: str, host_path: str, flags: int) -> None:
        super().__init__(flags)
        self.guest_path = guest_path
        self.host_path = host_path
        self.position = 0

    def read(self, length: int) -> bytes | None:
        raise _error(Errno.EISDIR, f"{self.guest_path} is a directory")

    def seek(self, offset: int, whence: int) -> int:
        if whence != os.SEEK_SET or offset < 0:
            raise _error(Errno.EINVAL, "a directory seeks only to a position it gave")
        self.position = offset
        return offset


@dataclass
class PipeBuffer:
    """The bounded buffer between a pipe's ends; the counts say which ends are still open.
    Each change is told to `pipe_changed` (processes at both ends may wait on it)."""

    data: bytearray = field(default_factory=bytearray)
    readers: int = 0
    writers: int = 0
    capacity: int = PIPE_CAPACITY  # F_SETPIPE_SZ changes it

    def put(self, data: bytes) -> int | None:
        """Append what fits: its count, or None when the buffer is full (the writer waits)."""
        room = self.capacity - len(self.data)
        if room <= 0:
            return None
        self.data.extend(data[:room])
        _changed(self)
        return min(room, len(data))

    def take(self, length: int) -> bytes:
        """Up to `length` bytes from the front."""
        data = bytes(self.data[:length])
        del self.data[:length]
        if data:
            _changed(self)
        return data


# Told of every change of a pipe (data put or taken, an end closed) by the kernel whose
# processes share pipes (kernel/process_tree.py wakes those that wait); None: nobody waits
# on another process.
pipe_changed: Callable[[PipeBuffer], None] | None = None


def _changed(pipe: PipeBuffer) -> None:
    hook = pipe_changed
    if hook is not None:
        hook(pipe)


class PipeEnd(OpenFile):
    """One end of an in-process pipe (`pipe2`)."""

    kind = "pipe"

    def __init__(self, pipe: PipeBuffer, write_end: bool, flags: int) -> None:
        super().__init__(flags | (os.O_WRONLY if write_end else os.O_RDONLY))
        self.pipe = pipe
        self.write_end = write_end
        if write_end:
            pipe.writers += 1
        else:
            pipe.readers += 1

    def read(self, length: int) -> bytes | None:
        if self.write_end:
            raise _error(Errno.EBADF, "the write end of a pipe cannot be read")
        if not self.pipe.data:
            return b"" if self.pipe.writers == 0 else None
        return self.pipe.take(length)

    def write(self, data: bytes) -> int | None:
        if not self.write_end:
            raise _error(Errno.EBADF, "the read end of a pipe cannot be written")
        if self.pipe.readers == 0:
            # The kernel's write call raises SIGPIPE on this error (kernel/syscalls/files.py).
            raise _error(Errno.EPIPE, "every read end of the pipe is closed")
        # As Linux's: a write of at most PIPE_BUF bytes is all or nothing, and a blocking one
        # waits until all of it fits (a pipe's capacity at most), so a program that ignores
        # the count it returns stays right; a non-blocking larger one takes what fits.
        pipe = self.pipe
        atomic = len(data) <= PIPE_BUF or not self.flags & os.O_NONBLOCK
        if pipe.capacity - len(pipe.data) < min(len(data) if atomic else 1, pipe.capacity):
            return None
        return pipe.put(data)

    def readiness(self) -> int:
        if self.write_end:
            return POLLERR if self.pipe.readers == 0 else (
                POLLOUT if len(self.pipe.data) < self.pipe.capacity else 0)
        return (POLLIN if self.pipe.data else 0) | (POLLHUP if self.pipe.writers == 0 else 0)

    def release(self) -> None:
        if self.write_end:
            self.pipe.writers -= 1
        else:
            self.pipe.readers -= 1
        _changed(self.pipe)


class SocketEnd(OpenFile):
    """One end of an AF_UNIX stream socket pair made inside the process (`socketpair`): what
    it reads is `inbox`, what it writes is its peer's; `shut` holds SHUT_RD/SHUT_WR done."""

    kind = "socket"

    def __init__(self, inbox: PipeBuffer, outbox: PipeBuffer, flags: int) -> None:
        super().__init__(flags | os.O_RDWR)
        self.inbox, self.outbox = inbox, outbox
        inbox.readers += 1
        outbox.writers += 1
        self.shut_rd = self.shut_wr = False

    def read(self, length: int) -> bytes | None:
        if not self.inbox.data:
            return b"" if self.inbox.writers == 0 or self.shut_rd else None
        return self.inbox.take(length)

    def write(self, data: bytes) -> int | None:
        if self.shut_wr or self.outbox.readers == 0:
            raise _error(Errno.EPIPE, "the other end of the socket is closed")
        return self.outbox.put(data)

    def shutdown(self, read: bool, write: bool) -> None:
        if read and not self.shut_rd:
            self.shut_rd = True
            self.inbox.readers -= 1
        if write and not self.shut_wr:
            self.shut_wr = True
            self.outbox.writers -= 1

    def readiness(self) -> int:
        closed = self.inbox.writers == 0 or self.shut_rd
        ready = POLLIN if self.inbox.data or closed else 0
        if not self.shut_wr and self.outbox.readers and \
                len(self.outbox.data) < self.outbox.capacity:
            ready |= POLLOUT
        return ready | (POLLHUP if closed and (self.shut_wr or not self.outbox.readers) else 0)

    def release(self) -> None:
        self.shutdown(True, True)


class StdinStream(OpenFile):
    """The standard input fed from outside (`Machine.feed_stdin`), bounded by STDIN_LIMIT.
    `available` False: the driver has no standard input, reads answer EBADF."""

    kind = "standard input"
    # What the stream is outside (a pipe, a terminal): its fstat and terminal answers;
    # None: a pipe of its own. Class-level for images made before it existed.
    outside: StreamIdentity | None = None

    def __init__(self, available: bool = True,
                 outside: StreamIdentity | None = None) -> None:
        super().__init__(os.O_RDONLY)
        self.buffer = bytearray()  # fed by the machine under its lock, read by the process
        self.eof = False  # no more data will come
        self.available = available
        self.outside = outside

    def feed(self, data: bytes, eof: bool) -> int:
        """Buffer data from the feeder; the bytes now buffered."""
        if self.eof and data:
            raise ValueError("standard input already ended (eof was passed): feed nothing more")
        if len(self.buffer) + len(data) > STDIN_LIMIT:
            raise ValueError(f"standard input holds {len(self.buffer)} bytes and at most "
                             f"{STDIN_LIMIT}: feed less, after the process has read some")
        self.buffer.extend(data)
        self.eof = self.eof or eof
        return len(self.buffer)

    def read(self, length: int) -> bytes | None:
        if not self.available:
            raise _error(Errno.EBADF, "this process has no standard input")
        if not self.buffer:
            return b"" if self.eof else None
        data = bytes(self.buffer[:length])
        del self.buffer[:length]
        return data

    def readiness(self) -> int:
        if not self.available:
            return POLLERR
        return (POLLIN if self.buffer or self.eof else 0) | (POLLHUP if self.eof else 0)


class OutputStream(OpenFile):
    """Standard output or error: the kernel streams what is written to the owner
    (`Services.write_output(p, stream, data)`); the description only says which."""

    kind = "output stream"
    # What the owner's stream is (a file, a pipe, a terminal, /dev/null): what fstat and
    # the terminal calls answer; None: a pipe of its own.
    outside: StreamIdentity | None = None

    def __init__(self, stream: int, outside: StreamIdentity | None = None) -> None:
        super().__init__(os.O_WRONLY)
        self.stream = stream  # 1 or 2
        self.outside = outside


@dataclass
class OutputReader:
    """The owner's side of the process's standard output and error, as the writer sees it:
    whether an owner takes the output (from its first take on, a stream holds at most
    OUTPUT_LIMIT untaken bytes and a writer waits for the owner, as on a pipe), whether the
    writer waits for it now, and which streams' readers have gone (a write there raises
    SIGPIPE and fails with EPIPE). Kept by the descriptor table, so it travels."""

    followed: bool = False
    waiting: bool = False  # a writer blocked for room: the owner's next take wakes it
    closed: set[int] = field(default_factory=set)  # 1, 2


class Device(OpenFile):
    """/dev/null, /dev/zero, /dev/urandom, emulated."""

    kind = "device"

    def __init__(self, name: str, flags: int) -> None:
        super().__init__(flags)
        self.name = name  # "null", "zero", "urandom"

    def read(self, length: int) -> bytes | None:
        return self.pread(length, 0)

    def pread(self, length: int, offset: int) -> bytes:
        if self.name == "null":
            return b""
        return bytes(length) if self.name == "zero" else os.urandom(length)

    def write(self, data: bytes) -> int | None:
        return len(data)

    def seek(self, offset: int, whence: int) -> int:
        return 0


@dataclass
class FdEntry:
    """One descriptor: the description it points at and its own FD_CLOEXEC flag."""

    file: OpenFile
    cloexec: bool = False


class FdTable:
    """A process's descriptors, lowest free first; owned by its computation."""

    def __init__(self) -> None:
        self.entries: dict[int, FdEntry] = {}
        # A timed wait in progress (poll, epoll_wait): (the process's call count when it
        # began or was last re-issued, its time.time() deadline), so a call re-issued after
        # an early wake keeps its deadline. It travels with the table.
        self.timed_wait: tuple[int, float] | None = None
        self.limit = MAX_FDS  # RLIMIT_NOFILE's soft limit: descriptors are below it
        # The advisory locks the process holds (kernel/syscalls/locks.py's `Lock`s): replaced
        # as a whole when they change, so a scan from another process reads a consistent list.
        self.locks: list[Any] = []
        self.output_reader = OutputReader()

    def get(self, fd: int) -> OpenFile:
        entry = self.entries.get(fd)
        if entry is None:
            raise _error(Errno.EBADF, f"descriptor {fd} is not open")
        return entry.file

    def install(self, file: OpenFile, *, lowest: int = 0, cloexec: bool = False,
                fd: int | None = None) -> int:
        """Point a descriptor at a description: `fd` exactly (closing what it held), or the
        lowest free one at or above `lowest`."""
        if fd is None:
            fd = lowest
            while fd in self.entries:
                fd += 1
        limit = min(getattr(self, "limit", MAX_FDS), MAX_FDS)
        if fd >= limit or fd < 0:
            raise _error(Errno.EMFILE if fd >= limit else Errno.EBADF,
                         f"descriptor {fd} is out of 0..{limit - 1}")
        file.refs += 1
        if fd in self.entries:
            self.close(fd)
        self.entries[fd] = FdEntry(file, cloexec)
        return fd

    def dup(self, old: int, *, new: int | None = None, lowest: int = 0,
            cloexec: bool = False) -> int:
        return self.install(self.get(old), fd=new, lowest=lowest, cloexec=cloexec)

    def close(self, fd: int) -> None:
        entry = self.entries.pop(fd, None)
        if entry is None:
            raise _error(Errno.EBADF, f"descriptor {fd} is not open")
        entry.file.refs -= 1
        locks = getattr(self, "locks", None)
        if locks:
            # A close drops the process's POSIX locks on the file (whichever descriptor took
            # them), and the last descriptor of a description its flock and OFD locks.
            key = getattr(entry.file, "lock_key", None)
            if key is None and any(lock.owner[0] == "p" for lock in locks):
                key = entry.file.identity()
            mine = ("d", getattr(entry.file, "lock_id", None)) if entry.file.refs == 0 else None
            self.locks = [lock for lock in locks if lock.owner != mine and
                          not (lock.owner[0] == "p" and lock.key == key)]
        if entry.file.refs == 0:
            entry.file.release()

    def close_all(self) -> None:
        for fd in sorted(self.entries):
            self.close(fd)
        self.locks = []

    def attach(self, service: FileService) -> None:
        """After arrival: reopen every host file through this machine's service."""
        seen: set[int] = set()
        for entry in self.entries.values():
            if id(entry.file) not in seen:
                seen.add(id(entry.file))
                entry.file.attach(service)

    def flush(self) -> None:
        """Every write-behind of the open files has landed at its home."""
        for entry in self.entries.values():
            entry.file.flush()

    def output(self) -> OutputReader:
        """The owner's side of the standard outputs (a table from an older image has none
        yet: a fresh one)."""
        reader = self.__dict__.get("output_reader")
        if reader is None:
            reader = self.output_reader = OutputReader()
        return reader

    def stdin(self) -> StdinStream | None:
        """The standard input stream, wherever a descriptor holds it."""
        for entry in self.entries.values():
            if isinstance(entry.file, StdinStream):
                return entry.file
        return None


def standard_files(stdin: StdinStream | None = None,
                   stdio: tuple[StreamIdentity | None, ...] = ()) -> FdTable:
    """Descriptors 0, 1, 2: the standard input (empty and ended unless given), the outputs,
    each output with its identity from `stdio` (indexed by descriptor)."""
    table = FdTable()
    if stdin is None:
        stdin = StdinStream()
        stdin.eof = True  # nothing will come: reads answer end of file
    table.install(stdin)
    for fd in (1, 2):
        table.install(OutputStream(fd, stdio[fd] if len(stdio) > fd else None))
    return table


@dataclass(frozen=True)
class FilesImage:
    """A process's open files as they travel: the descriptor table (offsets, flags, pipe
    contents, the standard input's buffer) and its view, pickled together so shared
    descriptions stay shared. Host fds stay behind: the first file call at the destination
    reopens them through its own service (kernel/syscalls/base.py)."""

    blob: bytes = b""  # empty: the standard descriptors and the default view

    @classmethod
    def of(cls, files: FdTable, view: FileView | None) -> FilesImage:
        files.flush()  # the image says the writes made so far are done: they must be
        return cls(pickle.dumps((files, view)))

    def restore(self) -> tuple[FdTable, FileView | None]:
        if not self.blob:
            return standard_files(), None
        files, view = pickle.loads(self.blob)
        return files, view
