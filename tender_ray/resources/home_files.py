"""A process's files at its home, as MOSIX's deputy keeps them: a process that migrated to a
machine without its file system sends every host-file access to the machine it started on.

The messages are declared once (`FileRequest`, `FileReply`, frozen records that cross Ray);
`HomeFiles` serves them at the home over its local file service; `RemoteFileService` is the
`FileService` a migrated process's view uses elsewhere. It moves data in large blocks: reads
are fetched a block at a time with the next block read ahead, writes are gathered and sent
behind the process (one send in flight per file), so a sequential read or write costs a round
trip per block, not per call. A write-behind error is answered at the file's next call, its
`fsync` or its `close`, as NFS does. `HomeLink` is the seam to the home: the cluster layer gives
the Ray one, tests a direct one.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tender_ray.abi.linux import Errno
from tender_ray.resources.file_view import (
    MAX_BLOCK,
    DirEntry,
    FileService,
    FileStat,
)

HOME_BLOCK = 4 << 20  # bytes one read-ahead or write-behind moves between machines

Value = int | bytes | str | FileStat | tuple[DirEntry, ...] | None  # what a call returns


class FileOp(str, enum.Enum):
    """The file service's operations, as a request names them."""

    OPEN = "open"
    PREAD = "pread"
    PWRITE = "pwrite"
    FSTAT = "fstat"
    LSTAT = "lstat"
    LISTDIR = "listdir"
    READLINK = "readlink"
    UNLINK = "unlink"
    MKDIR = "mkdir"
    RENAME = "rename"
    LINK = "link"
    SYMLINK = "symlink"
    MKNOD = "mknod"
    FTRUNCATE = "ftruncate"
    FSYNC = "fsync"
    CHMOD = "chmod"
    UTIME = "utime"
    CLOSE = "close"


@dataclass(frozen=True)
class FileRequest:
    """One file service call for the home; the fields an operation does not use stay unset."""

    op: FileOp
    path: str = ""  # host path (rename, link: the old one)
    new_path: str = ""  # rename's and link's new host path
    target: str = ""  # symlink's target, as the guest gave it
    handle: int = 0
    offset: int = 0
    length: int = 0
    data: bytes = b""
    flags: int = 0
    mode: int = 0
    times_ns: tuple[int, int] | None = None
    directory: bool = False


@dataclass(frozen=True)
class FileReply:
    """What the home answered: a value, or the errno and message of the OSError it raised."""

    value: Value = None
    errno: int = 0
    message: str = ""

    def unwrap(self) -> Value:
        if self.errno:
            raise OSError(self.errno, self.message)
        return self.value


@dataclass(frozen=True)
class HomeFilesStatistics:
    """What a home served its migrated processes (a snapshot)."""

    requests: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    open_handles: int = 0


class HomeFiles:
    """The home's side: requests from machines its processes moved to, served over its own
    host files. Handles are those of `service` (shared with the processes at home)."""

    def __init__(self, service: FileService) -> None:
        self._service = service
        self._lock = threading.Lock()  # guards the counters; the service serves concurrently
        self._requests = 0
        self._read = 0
        self._written = 0
        self._handles: set[int] = set()  # opened for other machines, not yet closed

    def serve(self, request: FileRequest) -> FileReply:
        with self._lock:
            self._requests += 1
        try:
            value = self._call(request)
        except OSError as e:
            return FileReply(errno=e.errno or int(Errno.EIO), message=str(e.strerror or e))
        with self._lock:
            if request.op is FileOp.OPEN:
                assert isinstance(value, int)
                self._handles.add(value)
            elif request.op is FileOp.CLOSE:
                self._handles.discard(request.handle)
            elif request.op is FileOp.PREAD and isinstance(value, bytes):
                self._read += len(value)
            elif request.op is FileOp.PWRITE and isinstance(value, int):
                self._written += value
        return FileReply(value)

    def _call(self, r: FileRequest) -> Value:
        s = self._service
        match r.op:
            case FileOp.OPEN:
                return s.open(r.path, r.flags, r.mode)
            case FileOp.PREAD:  # a whole block: the service moves at most MAX_BLOCK a call
                parts, done = [], 0
                while done < r.length:
                    part = s.pread(r.handle, min(r.length - done, MAX_BLOCK), r.offset + done)
                    if not part:
                        break
                    parts.append(part)
                    done += len(part)
                return b"".join(parts)
            case FileOp.PWRITE:
                done = 0
                while done < len(r.data):
                    n = s.pwrite(r.handle, r.data[done:done + MAX_BLOCK], r.offset + done)
                    if n <= 0:
                        raise OSError(int(Errno.EIO), f"{r.path or 'a file'}: a write of "
                                      f"{len(r.data) - done} bytes wrote nothing")
                    done += n
                return done
            case FileOp.FSTAT:
                return s.fstat(r.handle)
            case FileOp.LSTAT:
                return s.lstat(r.path)
            case FileOp.LISTDIR:
                return s.listdir(r.path)
            case FileOp.READLINK:
                return s.readlink(r.path)
            case FileOp.UNLINK:
                s.unlink(r.path, r.directory)
            case FileOp.MKDIR:
                s.mkdir(r.path, r.mode)
            case FileOp.RENAME:
                s.rename(r.path, r.new_path)
            case FileOp.LINK:
                s.hardlink(r.path, r.new_path)
            case FileOp.SYMLINK:
                s.symlink(r.target, r.path)
            case FileOp.MKNOD:
                s.mknod(r.path, r.mode)
            case FileOp.FTRUNCATE:
                s.ftruncate(r.handle, r.length)
            case FileOp.FSYNC:
                s.fsync(r.handle)
            case FileOp.CHMOD:
                s.chmod(r.path, r.mode)
            case FileOp.UTIME:
                s.utime(r.path, r.times_ns)
            case FileOp.CLOSE:
                s.close(r.handle)
            case _:
                raise OSError(int(Errno.ENOSYS), f"unknown file operation {r.op!r}")
        return None

    def statistics(self) -> HomeFilesStatistics:
        with self._lock:
            return HomeFilesStatistics(self._requests, self._read, self._written,
                                       len(self._handles))


class PendingReply:
    """A request under way to the home (`HomeLink.submit`): `result()` waits for its reply."""

    def __init__(self, wait: Callable[[], FileReply]) -> None:
        self._wait = wait

    def result(self) -> FileReply:
        return self._wait()


class HomeLink:
    """How a machine reaches one home: `send` a request and wait, or `submit` it and wait
    later. A home that is gone answers EIO naming it (the process cannot reach its files)."""

    home: str

    def send(self, request: FileRequest) -> FileReply:
        return self.submit(request).result()

    def submit(self, request: FileRequest) -> PendingReply:
        raise NotImplementedError


class DirectLink(HomeLink):
    """A link to a `HomeFiles` in this process (one host; tests): calls it directly."""

    def __init__(self, home: str, files: HomeFiles) -> None:
        self.home = home
        self._files = files

    def submit(self, request: FileRequest) -> PendingReply:
        reply = self._files.serve(request)
        return PendingReply(lambda: reply)


@dataclass(frozen=True)
class RemoteFilesStatistics:
    """What a machine's processes asked of one home (a snapshot)."""

    home: str
    requests: int = 0  # sent to the home
    reads: int = 0  # pread calls of the processes
    read_hits: int = 0  # of those, served without waiting for the home
    bytes_fetched: int = 0
    writes: int = 0  # pwrite calls of the processes
    bytes_sent: int = 0


@dataclass(frozen=True)
class HostTreeStatistics:
    """A machine's host files: what it served as a home, what its arrivals asked of theirs."""

    served: HomeFilesStatistics = field(default_factory=HomeFilesStatistics)
    remote: tuple[RemoteFilesStatistics, ...] = ()


@dataclass
class _Stream:
    """One open file of the home, as this machine caches it; its lock orders its I/O."""

    path: str
    lock: threading.Lock = field(default_factory=threading.Lock)
    block: tuple[int, bytes] | None = None  # (offset, data): the block read last
    ahead: tuple[int, PendingReply] | None = None  # the next block, being read ahead
    pending: bytearray = field(default_factory=bytearray)  # writes gathered, not yet sent
    pending_at: int = 0  # where `pending` goes in the file
    sending: PendingReply | None = None  # the write-behind in flight
    error: OSError | None = None  # a write-behind that failed: the next call answers it


class RemoteFileService:
    """The `FileService` of processes whose home is elsewhere: every call goes to the home
    through `link`, reads and writes in `block`-sized pieces ahead of and behind the process.
    Shared by this machine's computations (one lock per open file, one for the table)."""

    def __init__(self, link: HomeLink, block: int = HOME_BLOCK) -> None:
        self.link = link
        self.block = block
        self._lock = threading.Lock()
        self._streams: dict[int, _Stream] = {}  # by the home's handle
        self._counts = dict.fromkeys(("requests", "reads", "read_hits", "bytes_fetched",
                                      "writes", "bytes_sent"), 0)

    # --- the link ---------------------------------------------------------------------------

    def _count(self, **more: int) -> None:
        with self._lock:
            for key, n in more.items():
                self._counts[key] += n

    def _send(self, request: FileRequest) -> Value:
        self._count(requests=1)
        return self.link.send(request).unwrap()

    def _submit(self, request: FileRequest) -> PendingReply:
        self._count(requests=1)
        return self.link.submit(request)

    def _stream(self, handle: int) -> _Stream:
        with self._lock:
            stream = self._streams.get(handle)
        if stream is None:
            raise OSError(int(Errno.EBADF), f"no file of home {self.link.home} with handle "
                          f"{handle}")
        return stream

    def _same_path(self, path: str) -> list[_Stream]:
        with self._lock:
            return [s for s in self._streams.values() if s.path == path]

    # --- write-behind -----------------------------------------------------------------------

    def _wait_sent(self, s: _Stream) -> None:
        """The write in flight has landed (or its error is kept). Lock held."""
        if s.sending is not None:
            sending, s.sending = s.sending, None
            try:
                sending.result().unwrap()
            except OSError as e:
                s.error = s.error or e

    def _send_pending(self, s: _Stream, handle: int, wait: bool) -> None:
        """Send the gathered writes: behind the process, or (`wait`) landed. Lock held."""
        self._wait_sent(s)  # one in flight: writes land in the order they were made
        if s.pending:
            data, s.pending = bytes(s.pending), bytearray()
            s.sending = self._submit(FileRequest(FileOp.PWRITE, handle=handle,
                                                 offset=s.pending_at, data=data))
            self._count(bytes_sent=len(data))
        if wait:
            self._wait_sent(s)

    def _raise_error(self, s: _Stream) -> None:
        if s.error is not None:
            error, s.error = s.error, None
            raise error

    def _settle(self, s: _Stream, handle: int) -> None:
        """Before anything that must see the file as written: writes landed, caches dropped,
        a write-behind error answered. Lock held."""
        self._send_pending(s, handle, wait=True)
        s.block = None
        s.ahead = None
        self._raise_error(s)

    def _settle_path(self, path: str) -> None:
        with self._lock:
            handles = [(h, s) for h, s in self._streams.items() if s.path == path]
        for handle, s in handles:
            with s.lock:
                self._send_pending(s, handle, wait=True)
                s.block = None
                s.ahead = None

    def flush(self, handle: int) -> None:
        """Every write made through `handle` is at the home (before the process leaves)."""
        s = self._stream(handle)
        with s.lock:
            self._send_pending(s, handle, wait=True)
            self._raise_error(s)

    # --- the FileService calls --------------------------------------------------------------

    def open(self, host_path: str, flags: int, mode: int) -> int:
        self._settle_path(host_path)
        value = self._send(FileRequest(FileOp.OPEN, path=host_path, flags=flags, mode=mode))
        assert isinstance(value, int)
        with self._lock:
            self._streams[value] = _Stream(host_path)
        return value

    def _fetch(self, handle: int, offset: int) -> PendingReply:
        return self._submit(FileRequest(FileOp.PREAD, handle=handle, offset=offset,
                                        length=self.block))

    def _block_at(self, s: _Stream, handle: int, start: int) -> tuple[bytes, bool]:
        """The block starting at `start` (block-aligned), from the cache, the read-ahead or
        the home, and whether it was there without asking; the next one is read ahead.
        Lock held."""
        hit = True
        if s.block is not None and s.block[0] == start:
            data = s.block[1]
        else:
            if s.ahead is not None and s.ahead[0] == start:
                pending = s.ahead[1]
            else:
                hit = False
                pending = self._fetch(handle, start)
            s.ahead = None
            value = pending.result().unwrap()
            assert isinstance(value, bytes)
            data = value
            s.block = (start, data)
            self._count(bytes_fetched=len(data))
        if len(data) == self.block and s.ahead is None:  # not the end: read the next ahead
            s.ahead = (start + self.block, self._fetch(handle, start + self.block))
        return data, hit

    def pread(self, handle: int, length: int, offset: int) -> bytes:
        s = self._stream(handle)
        with s.lock:
            self._count(reads=1)
            if s.pending or s.sending is not None:
                self._settle(s, handle)  # the process reads what it wrote
            self._raise_error(s)
            parts, done, hits = [], 0, True
            length = min(length, MAX_BLOCK)
            while done < length:
                at = offset + done
                start = at - at % self.block
                data, hit = self._block_at(s, handle, start)
                hits = hits and hit
                part = data[at - start:at - start + length - done]
                if not part:
                    break
                parts.append(part)
                done += len(part)
                if len(data) < self.block:
                    break  # the end of the file (as the home saw it)
            self._count(read_hits=int(hits))
            return b"".join(parts)

    def pwrite(self, handle: int, data: bytes, offset: int) -> int:
        data = data[:MAX_BLOCK]
        for other in self._same_path(self._stream(handle).path):
            with other.lock:  # what is cached of this file is stale from now on
                other.block = None
                other.ahead = None
        s = self._stream(handle)
        with s.lock:
            self._count(writes=1)
            self._raise_error(s)
            if s.pending and s.pending_at + len(s.pending) != offset:
                self._send_pending(s, handle, wait=False)  # not contiguous: a new piece
            if not s.pending:
                s.pending_at = offset
            s.pending.extend(data)
            if len(s.pending) >= self.block:
                self._send_pending(s, handle, wait=False)
            return len(data)

    def fstat(self, handle: int) -> FileStat:
        s = self._stream(handle)
        with s.lock:
            self._send_pending(s, handle, wait=True)
            self._raise_error(s)
        value = self._send(FileRequest(FileOp.FSTAT, handle=handle))
        assert isinstance(value, FileStat)
        return value

    def lstat(self, host_path: str) -> FileStat:
        self._settle_path(host_path)
        value = self._send(FileRequest(FileOp.LSTAT, path=host_path))
        assert isinstance(value, FileStat)
        return value

    def listdir(self, host_path: str) -> tuple[DirEntry, ...]:
        value = self._send(FileRequest(FileOp.LISTDIR, path=host_path))
        assert isinstance(value, tuple)
        return value

    def readlink(self, host_path: str) -> str:
        value = self._send(FileRequest(FileOp.READLINK, path=host_path))
        assert isinstance(value, str)
        return value

    def unlink(self, host_path: str, directory: bool) -> None:
        self._settle_path(host_path)
        self._send(FileRequest(FileOp.UNLINK, path=host_path, directory=directory))

    def mkdir(self, host_path: str, mode: int) -> None:
        self._send(FileRequest(FileOp.MKDIR, path=host_path, mode=mode))

    def rename(self, old_host_path: str, new_host_path: str) -> None:
        self._settle_path(old_host_path)
        self._settle_path(new_host_path)
        self._send(FileRequest(FileOp.RENAME, path=old_host_path, new_path=new_host_path))

    def hardlink(self, old_host_path: str, new_host_path: str) -> None:
        self._settle_path(old_host_path)
        self._send(FileRequest(FileOp.LINK, path=old_host_path, new_path=new_host_path))

    def symlink(self, target: str, host_path: str) -> None:
        self._send(FileRequest(FileOp.SYMLINK, path=host_path, target=target))

    def mknod(self, host_path: str, mode: int) -> None:
        self._send(FileRequest(FileOp.MKNOD, path=host_path, mode=mode))

    def ftruncate(self, handle: int, length: int) -> None:
        s = self._stream(handle)
        with s.lock:
            self._settle(s, handle)
            self._send(FileRequest(FileOp.FTRUNCATE, handle=handle, length=length))

    def fsync(self, handle: int) -> None:
        s = self._stream(handle)
        with s.lock:
            self._settle(s, handle)
            self._send(FileRequest(FileOp.FSYNC, handle=handle))

    def chmod(self, host_path: str, mode: int) -> None:
        self._send(FileRequest(FileOp.CHMOD, path=host_path, mode=mode))

    def utime(self, host_path: str, times_ns: tuple[int, int] | None) -> None:
        self._settle_path(host_path)  # a write landing later would move mtime again
        self._send(FileRequest(FileOp.UTIME, path=host_path, times_ns=times_ns))

    def close(self, handle: int) -> None:
        with self._lock:
            s = self._streams.pop(handle, None)
        if s is None:
            return
        try:
            with s.lock:
                self._send_pending(s, handle, wait=True)
                s.block = None
                s.ahead = None
                self._raise_error(s)
        finally:
            self._send(FileRequest(FileOp.CLOSE, handle=handle))

    def statistics(self) -> RemoteFilesStatistics:
        with self._lock:
            return RemoteFilesStatistics(self.link.home, **self._counts)


class NoHostFiles:
    """The file service of a machine with no host files of its own (`host_files: none`):
    every access answers EACCES; processes that arrived use their home's."""

    def __init__(self, machine: str) -> None:
        self._why = (f"machine {machine} has no host files of its own (host_files: none): "
                     "start the program on a machine that has them")

    def _refuse(self, *args: object) -> Any:
        raise OSError(int(Errno.EACCES), self._why)

    open = pread = pwrite = fstat = lstat = listdir = readlink = unlink = mkdir = _refuse
    rename = ftruncate = fsync = chmod = utime = flush = hardlink = symlink = mknod = _refuse

    def close(self, handle: int) -> None:
        pass
