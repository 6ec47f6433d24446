"""Advisory file locks: flock (per open file description), POSIX record locks (per process)
and OFD record locks (per description), with Linux's conflict rules among the processes of
one machine. A process's locks are its descriptor table's (`FdTable.locks`), so they travel
in its image and are held again where it arrives; the machine finds conflicts by looking at
the tables of the processes that hold locks on it (`SystemCalls.lock_holders`). A lock that
must wait is asked for again every few milliseconds until it is granted or a signal comes.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tender_ray.abi.cpu_state import SyscallArgs, SyscallOutcome
from tender_ray.abi.linux import Errno
from tender_ray.kernel.syscalls.base import Handler, errno_call, view_of, wait_until_ready
from tender_ray.resources.open_file import Directory, HostFile, OpenFile
from tender_ray.resources.process import Process

if TYPE_CHECKING:
    from tender_ray.kernel.syscalls.dispatch import SystemCalls

FAMILY = "files"

LOCK_SH, LOCK_EX, LOCK_NB, LOCK_UN = 1, 2, 4, 8
F_RDLCK, F_WRLCK, F_UNLCK = 0, 1, 2
F_GETLK, F_SETLK, F_SETLKW = 5, 6, 7
F_OFD_GETLK, F_OFD_SETLK, F_OFD_SETLKW = 36, 37, 38
LOCK_CMDS = frozenset({F_GETLK, F_SETLK, F_SETLKW, F_OFD_GETLK, F_OFD_SETLK, F_OFD_SETLKW})
END = 1 << 63  # a lock "to the end of the file, however long"
RETRY = 0.005  # seconds between two asks of a lock that must wait
_FLOCK = struct.Struct("<hhxxxxqqi4x")  # struct flock on x86-64


@dataclass(frozen=True)
class Lock:
    """One held lock: whose (("d", description) or ("p", pid)), on which file, its family
    ("flock" or "record": POSIX and OFD locks are one family), shared or not, its range."""

    owner: tuple[str, int]
    key: tuple[int, int]
    family: str
    write: bool
    start: int
    end: int
    pid: int  # what F_GETLK reports (-1 for an OFD lock)

    def conflicts(self, other: Lock) -> bool:
        return (self.key == other.key and self.family == other.family
                and self.owner != other.owner and (self.write or other.write)
                and self.start < other.end and other.start < self.end)


def _key(sc: SystemCalls, p: Process, file: OpenFile) -> tuple[int, int]:
    key = _file_key(sc, p, file)
    file.lock_key = key  # type: ignore[attr-defined]  # closing it drops POSIX locks there
    return key


def _file_key(sc: SystemCalls, p: Process, file: OpenFile) -> tuple[int, int]:
    if isinstance(file, HostFile):
        service, handle = file._live()
        st = service.fstat(handle)
        return st.dev, st.ino
    if isinstance(file, Directory):
        st = view_of(sc, p).service.lstat(file.host_path)
        return st.dev, st.ino
    return file.identity() or (-1, description_id(file))  # a pipe: its descriptions only


def description_id(file: OpenFile) -> int:
    """A number naming the description for good (it travels with it)."""
    ident: int | None = getattr(file, "lock_id", None)
    if ident is None:
        ident = int.from_bytes(os.urandom(7), "little")
        file.lock_id = ident  # type: ignore[attr-defined]
    return ident


def _conflict(sc: SystemCalls, p: Process, want: Lock) -> Lock | None:
    tables = [p.files, *(t for pid, t in list(sc.lock_holders.items())
                         if pid != p.pid and t is not p.files)]
    found = [held for table in tables for held in table.locks if want.conflicts(held)]
    return min(found, key=lambda held: held.start) if found else None  # the first, as Linux


def _replace(p: Process, owner: tuple[str, int], key: tuple[int, int], family: str,
             start: int, end: int, new: Lock | None) -> None:
    """The owner's locks on [start, end) of the file become `new` (None: none); the parts
    of its other locks outside the range stay."""
    kept: list[Lock] = []
    for held in p.files.locks:
        if held.owner != owner or held.key != key or held.family != family or \
                held.end <= start or end <= held.start:
            kept.append(held)
            continue
        if held.start < start:
            kept.append(Lock(owner, key, family, held.write, held.start, start, held.pid))
        if end < held.end:
            kept.append(Lock(owner, key, family, held.write, end, held.end, held.pid))
    if new is not None:
        # Linux merges the owner's locks of the same kind that touch or overlap the new one.
        same = [h for h in kept if (h.owner, h.key, h.family, h.write) ==
                (owner, key, family, new.write) and h.start <= new.end and new.start <= h.end]
        kept = [h for h in kept if h not in same]
        kept.append(Lock(owner, key, family, new.write, min([new.start] + [h.start for h in same]),
                         max([new.end] + [h.end for h in same]), new.pid))
    p.files.locks = kept  # a new list: other processes' scans read the old one meanwhile


def _register(sc: SystemCalls, p: Process) -> None:
    if p.files.locks:
        sc.lock_holders[p.pid] = p.files


@errno_call
def flock(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    file, op = p.files.get(a[0]), a[1] & 0xFFFFFFFF
    kind = op & ~LOCK_NB
    if kind not in (LOCK_SH, LOCK_EX, LOCK_UN):
        return SyscallOutcome(-Errno.EINVAL)
    owner, key = ("d", description_id(file)), _key(sc, p, file)
    if kind == LOCK_UN:
        _replace(p, owner, key, "flock", 0, END, None)
        return SyscallOutcome(0)
    want = Lock(owner, key, "flock", kind == LOCK_EX, 0, END, p.pid)
    if _conflict(sc, p, want) is not None:
        if op & LOCK_NB:
            return SyscallOutcome(-Errno.EAGAIN)
        return wait_until_ready(sc, p, 73, RETRY)
    _replace(p, owner, key, "flock", 0, END, want)
    _register(sc, p)
    return SyscallOutcome(0)


def _range(sc: SystemCalls, p: Process, file: OpenFile, whence: int, start: int,
           length: int) -> tuple[int, int]:
    if whence == os.SEEK_CUR:
        start += getattr(file, "offset", 0)
    elif whence == os.SEEK_END:
        start += _size(sc, p, file)
    elif whence != os.SEEK_SET:
        raise OSError(int(Errno.EINVAL), f"l_whence {whence} is not SEEK_SET/CUR/END")
    if length < 0:
        start, end = start + length, start
    else:
        end = start + length if length else END
    if start < 0:
        raise OSError(int(Errno.EINVAL), "the lock would start before the file")
    return start, end


def _size(sc: SystemCalls, p: Process, file: OpenFile) -> int:
    if isinstance(file, HostFile):
        service, handle = file._live()
        return service.fstat(handle).size
    body = getattr(file, "body", None)  # a file of the image
    return len(body.data) if body is not None else 0


def fcntl_lock(sc: SystemCalls, p: Process, fd: int, cmd: int, addr: int) -> SyscallOutcome:
    """fcntl's record locks: F_GETLK/SETLK/SETLKW (the process's) and their OFD forms."""
    file = p.files.get(fd)
    assert p.space is not None
    kind, whence, start, length, pid = _FLOCK.unpack(p.space.read(addr, _FLOCK.size))
    ofd = cmd in (F_OFD_GETLK, F_OFD_SETLK, F_OFD_SETLKW)
    if ofd and pid != 0:
        return SyscallOutcome(-Errno.EINVAL)  # as Linux: l_pid must be 0
    if kind not in (F_RDLCK, F_WRLCK, F_UNLCK):
        return SyscallOutcome(-Errno.EINVAL)
    begin, end = _range(sc, p, file, whence, start, length)
    owner = ("d", description_id(file)) if ofd else ("p", p.pid)
    key = _key(sc, p, file)
    want = Lock(owner, key, "record", kind == F_WRLCK, begin, end, -1 if ofd else p.pid)
    if cmd in (F_GETLK, F_OFD_GETLK):
        if kind == F_UNLCK:
            return SyscallOutcome(-Errno.EINVAL)
        held = _conflict(sc, p, want)
        answer = (_FLOCK.pack(F_UNLCK, whence, start, length, pid) if held is None else
                  _FLOCK.pack(F_WRLCK if held.write else F_RDLCK, os.SEEK_SET, held.start,
                              0 if held.end == END else held.end - held.start, held.pid))
        p.space.write(addr, answer)
        return SyscallOutcome(0)
    if kind != F_UNLCK and ((kind == F_WRLCK and not file.writable) or
                            (kind == F_RDLCK and not file.readable)):
        return SyscallOutcome(-Errno.EBADF)  # a lock needs the matching access
    if kind == F_UNLCK:
        _replace(p, owner, key, "record", begin, end, None)
        return SyscallOutcome(0)
    if _conflict(sc, p, want) is not None:
        if cmd in (F_SETLK, F_OFD_SETLK):
            return SyscallOutcome(-Errno.EAGAIN)
        return wait_until_ready(sc, p, 72, RETRY)
    _replace(p, owner, key, "record", begin, end, want)
    _register(sc, p)
    return SyscallOutcome(0)


HANDLERS: dict[str, Handler] = {"flock": flock}
