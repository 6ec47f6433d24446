"""What a file is, as stat, fstat, newfstatat, lstat and statx answer: a host file through
the view's service, a file of the image, a /dev device, a pipe or FIFO, a standard stream as
what exec's own descriptor is outside, an event descriptor's anonymous inode. The calls that
open, read and write files are files.py's.
"""

from __future__ import annotations

import os
import stat as stat_mod
import struct
from typing import TYPE_CHECKING

from tender_ray.abi.cpu_state import SyscallArgs, SyscallOutcome
from tender_ray.abi.linux import TCGETS, TIOCGWINSZ
from tender_ray.kernel.syscalls import proc_files
from tender_ray.kernel.syscalls.base import (
    AT_EMPTY_PATH,
    AT_SYMLINK_NOFOLLOW,
    Handler,
    dir_base,
    errno_call,
    read_path,
    resolve_at,
    view_of,
)
from tender_ray.resources import fifo as fifos
from tender_ray.resources.file_view import FileStat, Resolved, StreamIdentity
from tender_ray.resources.image_file import ImageFile
from tender_ray.resources.open_file import (
    Device,
    Directory,
    HostFile,
    OpenFile,
    OutputStream,
    PipeEnd,
    StdinStream,
)
from tender_ray.resources.process import Process

if TYPE_CHECKING:
    from tender_ray.kernel.syscalls.dispatch import SystemCalls

FAMILY = "files"

_STAT = struct.Struct("<QQQIIIIQqqqqqqqqq3q")  # struct stat, 144 bytes on x86-64
# struct statx: the head, four statx_timestamps (atime, btime, ctime, mtime), the devices.
_STATX = struct.Struct("<IIQIIIHHQQQQ" + "qIi" * 4 + "IIII" + "112x")
STATX_BASIC_STATS = 0x7FF  # type, mode, nlink, uid, gid, times but btime, ino, size, blocks

if _STATX.size != 256:  # pragma: no cover - the layout is Linux's, fixed
    raise AssertionError(f"struct statx is 256 bytes, not {_STATX.size}")

def _pack_stat(st: FileStat) -> bytes:
    def split(ns: int) -> tuple[int, int]:
        return ns // 1_000_000_000, ns % 1_000_000_000
    return _STAT.pack(st.dev, st.ino, st.nlink, st.mode, st.uid, st.gid, 0, st.rdev, st.size,
                      st.blksize, st.blocks, *split(st.atime_ns), *split(st.mtime_ns),
                      *split(st.ctime_ns), 0, 0, 0)


DEVICE_NUMBERS = {"null": (4, 0x103), "zero": (5, 0x105), "random": (6, 0x108),
                  "urandom": (7, 0x109)}  # (inode, rdev) of the emulated /dev files
PIPEFS = 0xD  # the device number pipes show


def _device(name: str) -> FileStat:
    ino, rdev = DEVICE_NUMBERS.get(name, (4, 0x103))
    return FileStat(mode=stat_mod.S_IFCHR | 0o666, size=0, ino=ino, dev=5, nlink=1, uid=0,
                    gid=0, rdev=rdev, blksize=4096, blocks=0, atime_ns=0, mtime_ns=0,
                    ctime_ns=0)


def _fifo(owner: object) -> FileStat:
    """A pipe, as every stream of a Tender process is one (its outputs go to its owner, its
    input comes from it): an inode of its own, kept by the description (it travels), so no
    stream looks like /dev/null or like another stream."""
    ino: int | None = getattr(owner, "fifo_ino", None)
    if ino is None:
        ino = int.from_bytes(os.urandom(3), "little") + 1024
        owner.fifo_ino = ino  # type: ignore[attr-defined]
    return FileStat(mode=stat_mod.S_IFIFO | 0o600, size=0, ino=ino, dev=PIPEFS, nlink=1,
                    uid=os.getuid(), gid=os.getgid(), rdev=0, blksize=4096, blocks=0,
                    atime_ns=0, mtime_ns=0, ctime_ns=0)


def stream_stat(identity: StreamIdentity) -> FileStat:
    """A standard stream's fstat: what it is outside (a file, a pipe, a terminal); exec's
    /dev/null is the view's /dev/null, so a program comparing the two finds them one."""
    return _device("null") if identity.kind == "null" else identity.stat


def terminal_ioctl(file: OpenFile, request: int) -> bytes | None:
    """What a terminal request (TCGETS, TIOCGWINSZ) answers on a standard stream that is a
    terminal outside: the terminal's own settings as they were when the process started;
    None when the descriptor is no terminal (the caller answers ENOTTY)."""
    if not isinstance(file, StdinStream | OutputStream) or file.outside is None \
            or file.outside.kind != "terminal":
        return None
    if request == TCGETS:
        return file.outside.termios or None
    if request == TIOCGWINSZ:
        return file.outside.winsize or None
    return None


def stat_of(sc: SystemCalls, p: Process, file: OpenFile) -> FileStat:
    if isinstance(file, ImageFile):
        return file.body.stat()
    if isinstance(file, HostFile):
        service, handle = file._live()
        return service.fstat(handle)
    if isinstance(file, proc_files.ProcDirectory):
        return proc_files.stat(p, "self/" + file.name, link=False)
    if isinstance(file, Directory):
        return view_of(sc, p).service.lstat(file.host_path)
    if isinstance(file, Device):
        return _device(file.name)
    if isinstance(file, StdinStream | OutputStream) and file.outside is not None:
        return stream_stat(file.outside)
    if isinstance(file, fifos.FifoEnd):
        return file.fifo.inode(view_of(sc, p).service)  # the FIFO's own, as Linux answers
    if isinstance(file, PipeEnd | StdinStream | OutputStream):
        # Both ends of a pipe are one pipe; a standard stream is a pipe of its own.
        return _fifo(file.pipe if isinstance(file, PipeEnd) else file)
    # An eventfd, a timerfd, an epoll set: Linux's one anonymous inode.
    return FileStat(mode=0o600, size=0, ino=1, dev=0xE, nlink=1, uid=os.getuid(),
                    gid=os.getgid(), rdev=0, blksize=4096, blocks=0, atime_ns=0, mtime_ns=0,
                    ctime_ns=0)


def stat_path(sc: SystemCalls, p: Process, r: Resolved, follow: bool = True) -> FileStat:
    if r.device is not None:
        return _device(r.device)
    if r.proc is not None:
        target = proc_files.link_target(sc, p, r.proc)
        if target is None or not follow:
            return proc_files.stat(p, r.proc, link=target is not None)
        if r.proc.split("/")[1] == "fd":
            return stat_of(sc, p, p.files.get(int(r.proc.rsplit("/", 1)[1])))
        return stat_path(sc, p, view_of(sc, p).resolve(target))
    assert r.host is not None
    return view_of(sc, p).service.lstat(r.host)


@errno_call
def fstat(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    assert p.space is not None
    p.space.write(a[1], _pack_stat(stat_of(sc, p, p.files.get(a[0]))))
    return SyscallOutcome(0)


@errno_call
def newfstatat(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    assert p.space is not None
    path = read_path(p, a[1])
    if not path and a[3] & AT_EMPTY_PATH:
        st = stat_of(sc, p, p.files.get(a[0]))
    else:
        follow = not a[3] & AT_SYMLINK_NOFOLLOW
        r = view_of(sc, p).resolve(path, base=dir_base(p, a[0]), follow_last=follow)
        st = stat_path(sc, p, r, follow)
    p.space.write(a[2], _pack_stat(st))
    return SyscallOutcome(0)


@errno_call
def stat(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    assert p.space is not None
    st = stat_path(sc, p, view_of(sc, p).resolve(read_path(p, a[0])))
    p.space.write(a[1], _pack_stat(st))
    return SyscallOutcome(0)


@errno_call
def lstat(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    assert p.space is not None
    st = stat_path(sc, p, view_of(sc, p).resolve(read_path(p, a[0]), follow_last=False),
                   follow=False)
    p.space.write(a[1], _pack_stat(st))
    return SyscallOutcome(0)


def _pack_statx(st: FileStat) -> bytes:
    def ts(ns: int) -> tuple[int, int, int]:
        return ns // 1_000_000_000, ns % 1_000_000_000, 0
    return _STATX.pack(STATX_BASIC_STATS, st.blksize, 0, st.nlink, st.uid, st.gid,
                       st.mode & 0xFFFF, 0, st.ino, st.size, st.blocks, 0,
                       *ts(st.atime_ns), 0, 0, 0, *ts(st.ctime_ns), *ts(st.mtime_ns),
                       os.major(st.rdev), os.minor(st.rdev), os.major(st.dev), os.minor(st.dev))


@errno_call
def statx(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    assert p.space is not None
    path = read_path(p, a[1]) if a[1] else ""
    if not path and a[2] & AT_EMPTY_PATH:
        st = stat_of(sc, p, p.files.get(a[0]))
    else:
        st = stat_path(sc, p,
                        resolve_at(sc, p, a[0], a[1], follow=not a[2] & AT_SYMLINK_NOFOLLOW))
    p.space.write(a[4], _pack_statx(st))
    return SyscallOutcome(0)


HANDLERS: dict[str, Handler] = {
    "fstat": fstat, "newfstatat": newfstatat, "stat": stat, "lstat": lstat, "statx": statx,
}
