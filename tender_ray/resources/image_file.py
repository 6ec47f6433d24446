"""A file whose contents are part of the process image rather than of a host tree: what
memfd_create and O_TMPFILE make, and what a host file becomes when the process unlinks it
while it holds it open (its contents taken in then, as CRIU keeps a "ghost" file's in its
image). Descriptions opened on one such file share its `FileBody`; the whole of it pickles
with the descriptor table, so it travels with the process wherever it goes.
"""

from __future__ import annotations

import os
import stat as stat_mod
import time
from dataclasses import dataclass, field

from tender_ray.abi.linux import Errno
from tender_ray.resources.file_view import FileStat
from tender_ray.resources.open_file import OpenFile

MAX_IMAGE_FILE = 256 << 20  # bytes a file may hold in an image (a larger one stays a host file)
IMAGE_DEVICE = 0x2E  # the device number such files show (Linux's tmpfs-like anonymous one)
F_SEAL_SEAL, F_SEAL_SHRINK, F_SEAL_GROW, F_SEAL_WRITE = 1, 2, 4, 8


def _error(errno: Errno, what: str) -> OSError:
    return OSError(int(errno), what)


@dataclass
class FileBody:
    """The file itself: contents, mode, owner, times, links (0: unlinked), memfd seals."""

    name: str  # what /proc/self/fd shows: "memfd:NAME", "/tmp/x (deleted)"
    data: bytearray = field(default_factory=bytearray)
    mode: int = stat_mod.S_IFREG | 0o600
    uid: int = field(default_factory=os.getuid)
    gid: int = field(default_factory=os.getgid)
    nlink: int = 0
    ino: int = field(default_factory=lambda: int.from_bytes(os.urandom(4), "little"))
    atime_ns: int = field(default_factory=time.time_ns)
    mtime_ns: int = field(default_factory=time.time_ns)
    ctime_ns: int = field(default_factory=time.time_ns)
    seals: int = F_SEAL_SEAL  # memfd_create(MFD_ALLOW_SEALING) clears F_SEAL_SEAL

    def stat(self) -> FileStat:
        size = len(self.data)
        return FileStat(mode=self.mode, size=size, ino=self.ino, dev=IMAGE_DEVICE, nlink=self.nlink,
                        uid=self.uid, gid=self.gid, rdev=0, blksize=4096,
                        blocks=(size + 511) // 512, atime_ns=self.atime_ns,
                        mtime_ns=self.mtime_ns, ctime_ns=self.ctime_ns)

    def truncate(self, length: int) -> None:
        if (length < len(self.data) and self.seals & F_SEAL_SHRINK) or \
                (length > len(self.data) and self.seals & F_SEAL_GROW):
            raise _error(Errno.EPERM, f"{self.name} is sealed against resizing")
        if length > MAX_IMAGE_FILE:
            raise _error(Errno.EFBIG, f"{self.name} would pass {MAX_IMAGE_FILE} bytes")
        if length < len(self.data):
            del self.data[length:]
        else:
            self.data.extend(bytes(length - len(self.data)))
        self.mtime_ns = self.ctime_ns = time.time_ns()


class ImageFile(OpenFile):
    """An open description of a `FileBody`, with its own offset and flags."""

    kind = "file"

    def __init__(self, body: FileBody, flags: int, offset: int = 0) -> None:
        super().__init__(flags)
        self.body = body
        self.offset = offset

    def identity(self) -> tuple[int, int] | None:
        return IMAGE_DEVICE, self.body.ino

    @property
    def guest_path(self) -> str:
        return self.body.name

    def read(self, length: int) -> bytes | None:
        if not self.readable:
            raise _error(Errno.EBADF, f"{self.body.name} is not open for reading")
        data = self.pread(length, self.offset)
        self.offset += len(data)
        return data

    def write(self, data: bytes) -> int | None:
        if not self.writable:
            raise _error(Errno.EBADF, f"{self.body.name} is not open for writing")
        if self.flags & os.O_APPEND:
            self.offset = len(self.body.data)
        written = self.pwrite(data, self.offset)
        self.offset += written
        return written

    def pread(self, length: int, offset: int) -> bytes:
        if offset < 0:
            raise _error(Errno.EINVAL, "a negative offset")
        return bytes(self.body.data[offset:offset + length])

    def pwrite(self, data: bytes, offset: int) -> int:
        body = self.body
        if offset < 0:
            raise _error(Errno.EINVAL, "a negative offset")
        if body.seals & F_SEAL_WRITE and data:
            raise _error(Errno.EPERM, f"{body.name} is sealed against writing")
        end = offset + len(data)
        if end > len(body.data):
            body.truncate(end)
        body.data[offset:end] = data
        body.mtime_ns = body.ctime_ns = time.time_ns()
        return len(data)

    def seek(self, offset: int, whence: int) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self.offset, os.SEEK_END: len(self.body.data)}
        if whence == os.SEEK_DATA or whence == os.SEEK_HOLE:
            if offset >= len(self.body.data):
                raise _error(Errno.ENXIO, "past the end of the file")
            self.offset = offset if whence == os.SEEK_DATA else len(self.body.data)
            return self.offset
        if whence not in base:
            raise _error(Errno.EINVAL, f"whence {whence} is not SEEK_SET/CUR/END/DATA/HOLE")
        if base[whence] + offset < 0:
            raise _error(Errno.EINVAL, "the offset would be negative")
        self.offset = base[whence] + offset
        return self.offset
