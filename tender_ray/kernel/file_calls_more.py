"""The rest of the file system calls: identity and limits, access, links, directories, statx.

Identity (getuid...) answers the machine process's own ids, so what a guest sees of its files'
owners agrees with what it is. Every path goes through the process's file view: reads anywhere
in the view, changes (unlink, mkdir, rename, chmod, utimensat) only under its writable
directories (EROFS elsewhere), and the host is reached only through the view's file service.
"""

from __future__ import annotations

import os
import stat as stat_mod
import struct
import time
from typing import TYPE_CHECKING

from tender_ray.abi.cpu_state import SyscallArgs, SyscallOutcome
from tender_ray.abi.linux import Errno
from tender_ray.kernel.file_calls import (
    AT_EMPTY_PATH,
    AT_SYMLINK_NOFOLLOW,
    Handler,
    _base,
    _errno_call,
    _path,
    _signed,
    _stat_of,
    _stat_path,
    _view,
)
from tender_ray.resources.file_view import FileStat, Resolved
from tender_ray.resources.open_file import MAX_FDS, Directory, HostFile, OpenFile
from tender_ray.resources.process import Process

if TYPE_CHECKING:
    from tender_ray.kernel.syscalls import SystemCalls

CWD = -100 & 0xFFFFFFFF  # AT_FDCWD as a call's 32-bit argument

AT_REMOVEDIR = 0x200
AT_EACCESS = 0x200
F_OK, X_OK, W_OK, R_OK = 0, 1, 2, 4
UTIME_NOW, UTIME_OMIT = (1 << 30) - 1, (1 << 30) - 2
RLIM_INFINITY = (1 << 64) - 1
RLIMIT_STACK, RLIMIT_NOFILE = 3, 7
# What getrlimit answers: (soft, hard); every other resource is unlimited.
LIMITS = {RLIMIT_STACK: (8 << 20, RLIM_INFINITY), RLIMIT_NOFILE: (MAX_FDS, MAX_FDS)}
_SYSINFO = struct.Struct("<q3Q6QHHI2QI4x")  # struct sysinfo, 112 bytes on x86-64
# struct statx: the head, four statx_timestamps (atime, btime, ctime, mtime), the devices.
_STATX = struct.Struct("<IIQIIIHHQQQQ" + "qIi" * 4 + "IIII" + "112x")
STATX_BASIC_STATS = 0x7FF  # type, mode, nlink, uid, gid, times but btime, ino, size, blocks

if _STATX.size != 256:  # pragma: no cover - the layout is Linux's, fixed
    raise AssertionError(f"struct statx is 256 bytes, not {_STATX.size}")


# --- identity and limits --------------------------------------------------------------------

def _answer(value: int) -> Handler:
    return lambda sc, p, a: SyscallOutcome(value)


def getgroups(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return SyscallOutcome(0)  # no supplementary groups


@_errno_call
def umask(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    view = _view(sc, p)
    old, view.umask = view.umask, a[0] & 0o777
    return SyscallOutcome(old)


def _limits(p: Process, resource: int, new: int, old: int) -> SyscallOutcome:
    if resource >= 16:
        return SyscallOutcome(-Errno.EINVAL)
    soft, hard = LIMITS.get(resource, (RLIM_INFINITY, RLIM_INFINITY))
    assert p.space is not None
    if new:
        new_soft, new_hard = struct.unpack("<QQ", p.space.read(new, 16))
        if new_soft > new_hard:
            return SyscallOutcome(-Errno.EINVAL)
        # Only lowering the soft limit is allowed, and it is not kept: nothing here enforces
        # a limit, so a lowered one would change nothing the guest could see but getrlimit.
        if new_soft > soft or new_hard != hard:
            return SyscallOutcome(-Errno.EPERM)
    if old:
        p.space.write(old, struct.pack("<QQ", soft, hard))
    return SyscallOutcome(0)


def prlimit64(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    if a[0] not in (0, p.pid):
        return SyscallOutcome(-Errno.ESRCH)  # only itself: no other process is visible
    return _limits(p, a[1], a[2], a[3])


def getrlimit(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return _limits(p, a[0], 0, a[1])


def setrlimit(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return _limits(p, a[0], a[1], 0)


def sysinfo(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    memory = sc.managers.memory
    page = memory.size // max(memory.nframes, 1)
    info = _SYSINFO.pack(int(time.monotonic()), 0, 0, 0, memory.size,
                         memory.free_frames * page, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1)
    assert p.space is not None
    p.space.write(a[0], info)
    return SyscallOutcome(0)


@_errno_call
def fadvise64(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    p.files.get(a[0])  # EBADF; the advice itself changes nothing here
    return SyscallOutcome(0)


# --- access and links -----------------------------------------------------------------------

def _resolve(sc: SystemCalls, p: Process, dirfd: int, addr: int, follow: bool = True) -> Resolved:
    return _view(sc, p).resolve(_path(p, addr), base=_base(p, dirfd),
                                follow_last=follow)


def _permits(st: FileStat, mode: int) -> bool:
    uid, gid = os.getuid(), os.getgid()
    if uid == 0:  # root: everything but executing a file no one may execute
        return not mode & X_OK or stat_mod.S_ISDIR(st.mode) or bool(st.mode & 0o111)
    bits = (st.mode >> 6 if st.uid == uid else st.mode >> 3 if st.gid == gid else st.mode) & 7
    return bits & mode == mode


def _access(sc: SystemCalls, p: Process, dirfd: int, addr: int, mode: int,
            flags: int) -> SyscallOutcome:
    if mode & ~7:
        return SyscallOutcome(-Errno.EINVAL)
    r = _resolve(sc, p, dirfd, addr, follow=not flags & AT_SYMLINK_NOFOLLOW)
    st = _stat_path(sc, p, r)
    if mode & W_OK:
        _view(sc, p).check_writable(r)
    if r.device is None and not _permits(st, mode):
        return SyscallOutcome(-Errno.EACCES)
    return SyscallOutcome(0)


@_errno_call
def access(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return _access(sc, p, CWD, a[0], a[1], 0)


@_errno_call
def faccessat(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return _access(sc, p, a[0], a[1], a[2], 0)


@_errno_call
def faccessat2(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    if a[3] & ~(AT_EACCESS | AT_SYMLINK_NOFOLLOW | AT_EMPTY_PATH):
        return SyscallOutcome(-Errno.EINVAL)
    return _access(sc, p, a[0], a[1], a[2], a[3])


def _readlink(sc: SystemCalls, p: Process, dirfd: int, addr: int, buf: int,
              size: int) -> SyscallOutcome:
    if _signed(size) <= 0:
        return SyscallOutcome(-Errno.EINVAL)
    view = _view(sc, p)
    path = _path(p, addr)
    if path.startswith("/") and os.path.normpath(path).lstrip("/") == "proc/self/exe":
        target = view.resolve(view.exe).guest  # the program, its links resolved as Linux's
    else:
        r = view.resolve(path, base=_base(p, dirfd), follow_last=False)
        if r.host is None:
            return SyscallOutcome(-Errno.EINVAL)  # a device is no link
        if not stat_mod.S_ISLNK(view.service.lstat(r.host).mode):
            return SyscallOutcome(-Errno.EINVAL)
        target = view.service.readlink(r.host)  # absolute targets are the guest's already
    data = target.encode("utf-8", "surrogateescape")[:size]  # no NUL, cut like Linux
    assert p.space is not None
    p.space.write(buf, data)
    return SyscallOutcome(len(data))


@_errno_call
def readlink(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return _readlink(sc, p, CWD, a[0], a[1], a[2])


@_errno_call
def readlinkat(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return _readlink(sc, p, a[0], a[1], a[2], a[3])


# --- directories ----------------------------------------------------------------------------

def _dirent(ino: int, offset: int, kind: int, name: bytes) -> bytes:
    size = (19 + len(name) + 1 + 7) & ~7  # ino, off, reclen, type, the name and its NUL
    return struct.pack("<QqHB", ino, offset, size, kind) + name + b"\0" * (size - 19 - len(name))


@_errno_call
def getdents64(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    d = p.files.get(a[0])
    if not isinstance(d, Directory):
        return SyscallOutcome(-Errno.ENOTDIR)
    service = _view(sc, p).service
    here = service.lstat(d.host_path).ino
    parent = service.lstat(os.path.dirname(d.host_path.rstrip("/")) or "/").ino
    # "." and ".." first, as Linux lists them; the position counts entries already given.
    entries = [(here, 4, "."), (parent, 4, ".."),
               *((e.ino, e.kind, e.name) for e in service.listdir(d.host_path))]
    out = bytearray()
    while d.position < len(entries):
        ino, kind, name = entries[d.position]
        record = _dirent(ino, d.position + 1, kind, name.encode("utf-8", "surrogateescape"))
        if len(out) + len(record) > a[2]:
            if not out:
                return SyscallOutcome(-Errno.EINVAL)  # the buffer holds not even one
            break
        out += record
        d.position += 1
    assert p.space is not None
    p.space.write(a[1], bytes(out))
    return SyscallOutcome(len(out))


def _changeable(sc: SystemCalls, p: Process, dirfd: int, addr: int) -> Resolved:
    r = _resolve(sc, p, dirfd, addr, follow=False)
    _view(sc, p).check_writable(r)
    if r.host is None:
        raise OSError(int(Errno.EPERM), f"{r.guest} is an emulated device")
    return r


def _unlink(sc: SystemCalls, p: Process, dirfd: int, addr: int, directory: bool) -> SyscallOutcome:
    r = _changeable(sc, p, dirfd, addr)
    assert r.host is not None
    _view(sc, p).service.unlink(r.host, directory)
    return SyscallOutcome(0)


@_errno_call
def unlink(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return _unlink(sc, p, CWD, a[0], False)


@_errno_call
def rmdir(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return _unlink(sc, p, CWD, a[0], True)


@_errno_call
def unlinkat(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    if a[2] & ~AT_REMOVEDIR:
        return SyscallOutcome(-Errno.EINVAL)
    return _unlink(sc, p, a[0], a[1], bool(a[2] & AT_REMOVEDIR))


def _mkdir(sc: SystemCalls, p: Process, dirfd: int, addr: int, mode: int) -> SyscallOutcome:
    r = _changeable(sc, p, dirfd, addr)
    view = _view(sc, p)
    assert r.host is not None
    view.service.mkdir(r.host, mode & 0o7777 & ~view.umask)
    return SyscallOutcome(0)


@_errno_call
def mkdir(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return _mkdir(sc, p, CWD, a[0], a[1])


@_errno_call
def mkdirat(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return _mkdir(sc, p, a[0], a[1], a[2])


def _rename(sc: SystemCalls, p: Process, olddir: int, old: int, newdir: int,
            new: int) -> SyscallOutcome:
    src = _changeable(sc, p, olddir, old)
    dst = _changeable(sc, p, newdir, new)
    assert src.host is not None and dst.host is not None
    _view(sc, p).service.rename(src.host, dst.host)
    return SyscallOutcome(0)


@_errno_call
def rename(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return _rename(sc, p, CWD, a[0], CWD, a[1])


@_errno_call
def renameat(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return _rename(sc, p, a[0], a[1], a[2], a[3])


@_errno_call
def renameat2(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    if a[4]:  # RENAME_NOREPLACE, _EXCHANGE, _WHITEOUT: not offered
        return SyscallOutcome(-Errno.EINVAL)
    return _rename(sc, p, a[0], a[1], a[2], a[3])


@_errno_call
def fchdir(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    d = p.files.get(a[0])
    if not isinstance(d, Directory):
        return SyscallOutcome(-Errno.ENOTDIR)
    _view(sc, p).cwd = d.guest_path
    return SyscallOutcome(0)


# --- open files -----------------------------------------------------------------------------

def _host_file(p: Process, fd: int, writing: bool) -> HostFile:
    f = p.files.get(fd)
    if not isinstance(f, HostFile) or (writing and not f.writable):
        raise OSError(int(Errno.EINVAL), f"descriptor {fd} is no file open for writing"
                      if writing else f"descriptor {fd} is no regular file")
    return f


@_errno_call
def ftruncate(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    if _signed(a[1]) < 0:
        return SyscallOutcome(-Errno.EINVAL)
    service, handle = _host_file(p, a[0], True)._live()
    service.ftruncate(handle, a[1])
    return SyscallOutcome(0)


@_errno_call
def truncate(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    if _signed(a[1]) < 0:
        return SyscallOutcome(-Errno.EINVAL)
    r = _target(sc, p, CWD, a[0], 0)
    assert r.host is not None
    service = _view(sc, p).service
    handle = service.open(r.host, os.O_WRONLY | os.O_NOFOLLOW, 0)
    try:
        service.ftruncate(handle, a[1])
    finally:
        service.close(handle)
    return SyscallOutcome(0)


@_errno_call
def fsync(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    f = p.files.get(a[0])
    if isinstance(f, Directory):
        return SyscallOutcome(0)
    service, handle = _host_file(p, a[0], False)._live()
    service.fsync(handle)
    return SyscallOutcome(0)


def _of_fd(p: Process, fd: int) -> Resolved:
    f: OpenFile = p.files.get(fd)
    if isinstance(f, HostFile | Directory):
        return Resolved(f.guest_path, host=f.host_path)
    raise OSError(int(Errno.EPERM), f"descriptor {fd} is no file of the view")


def _target(sc: SystemCalls, p: Process, dirfd: int, addr: int, flags: int) -> Resolved:
    if addr == 0 or (flags & AT_EMPTY_PATH and not _path(p, addr)):
        r = _of_fd(p, dirfd)
    else:
        r = _resolve(sc, p, dirfd, addr, follow=not flags & AT_SYMLINK_NOFOLLOW)
    _view(sc, p).check_writable(r)
    if r.host is None:
        raise OSError(int(Errno.EPERM), f"{r.guest} is an emulated device")
    return r


def _chmod(sc: SystemCalls, p: Process, r: Resolved, mode: int) -> SyscallOutcome:
    _view(sc, p).check_writable(r)
    assert r.host is not None
    _view(sc, p).service.chmod(r.host, mode & 0o7777)
    return SyscallOutcome(0)


@_errno_call
def fchmod(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return _chmod(sc, p, _of_fd(p, a[0]), a[1])


@_errno_call
def chmod(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return _chmod(sc, p, _target(sc, p, CWD, a[0], 0), a[1])


@_errno_call
def fchmodat(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return _chmod(sc, p, _target(sc, p, a[0], a[1], 0), a[2])


@_errno_call
def utimensat(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    r = _target(sc, p, a[0], a[1], a[3])
    assert r.host is not None and p.space is not None
    service = _view(sc, p).service
    if not a[2]:
        service.utime(r.host, None)
        return SyscallOutcome(0)
    times = struct.unpack("<qqqq", p.space.read(a[2], 32))
    now = time.time_ns()
    st = service.lstat(r.host)
    chosen = []
    for (sec, nsec), current in zip(((times[0], times[1]), (times[2], times[3])),
                                    (st.atime_ns, st.mtime_ns), strict=True):
        if nsec == UTIME_NOW:
            chosen.append(now)
        elif nsec == UTIME_OMIT:
            chosen.append(current)
        elif not 0 <= nsec < 1_000_000_000:
            return SyscallOutcome(-Errno.EINVAL)
        else:
            chosen.append(sec * 1_000_000_000 + nsec)
    service.utime(r.host, (chosen[0], chosen[1]))
    return SyscallOutcome(0)


def _chown(st: FileStat, uid: int, gid: int) -> SyscallOutcome:
    uid, gid = uid & 0xFFFFFFFF, gid & 0xFFFFFFFF
    # Nothing changes owners here: the same owner is answered 0, any other is refused.
    same = uid in (0xFFFFFFFF, st.uid) and gid in (0xFFFFFFFF, st.gid)
    return SyscallOutcome(0 if same else -Errno.EPERM)


@_errno_call
def fchown(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return _chown(_stat_of(sc, p, p.files.get(a[0])), a[1], a[2])


@_errno_call
def fchownat(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return _chown(_stat_path(sc, p, _target(sc, p, a[0], a[1], a[4])),
                  a[2], a[3])


# --- extended attributes: none --------------------------------------------------------------

def _xattrs(follow: bool, listing: bool) -> Handler:
    """A view's files show no extended attributes (ACLs, security labels): ls asks for them
    on every file and takes ENODATA (none of that name) and an empty list as "plain"."""
    @_errno_call
    def call(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
        _stat_path(sc, p, _resolve(sc, p, CWD, a[0], follow=follow))  # ENOENT as Linux
        return SyscallOutcome(0 if listing else -Errno.ENODATA)
    return call


@_errno_call
def fgetxattr(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    p.files.get(a[0])
    return SyscallOutcome(-Errno.ENODATA)


@_errno_call
def flistxattr(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    p.files.get(a[0])
    return SyscallOutcome(0)


# --- statx ----------------------------------------------------------------------------------

def _pack_statx(st: FileStat) -> bytes:
    def ts(ns: int) -> tuple[int, int, int]:
        return ns // 1_000_000_000, ns % 1_000_000_000, 0
    return _STATX.pack(STATX_BASIC_STATS, st.blksize, 0, st.nlink, st.uid, st.gid,
                       st.mode & 0xFFFF, 0, st.ino, st.size, st.blocks, 0,
                       *ts(st.atime_ns), 0, 0, 0, *ts(st.ctime_ns), *ts(st.mtime_ns),
                       os.major(st.rdev), os.minor(st.rdev), os.major(st.dev), os.minor(st.dev))


@_errno_call
def statx(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    assert p.space is not None
    path = _path(p, a[1]) if a[1] else ""
    if not path and a[2] & AT_EMPTY_PATH:
        st = _stat_of(sc, p, p.files.get(a[0]))
    else:
        st = _stat_path(sc, p,
                        _resolve(sc, p, a[0], a[1], follow=not a[2] & AT_SYMLINK_NOFOLLOW))
    p.space.write(a[4], _pack_statx(st))
    return SyscallOutcome(0)


HANDLERS: dict[str, Handler] = {
    "getuid": _answer(os.getuid()), "geteuid": _answer(os.geteuid()),
    "getgid": _answer(os.getgid()), "getegid": _answer(os.getegid()),
    "getgroups": getgroups, "umask": umask, "prlimit64": prlimit64, "getrlimit": getrlimit,
    "setrlimit": setrlimit, "sysinfo": sysinfo, "fadvise64": fadvise64,
    "access": access, "faccessat": faccessat, "faccessat2": faccessat2,
    "readlink": readlink, "readlinkat": readlinkat, "getdents64": getdents64, "statx": statx,
    "unlink": unlink, "unlinkat": unlinkat, "rmdir": rmdir, "mkdir": mkdir, "mkdirat": mkdirat,
    "rename": rename, "renameat": renameat, "renameat2": renameat2,
    "ftruncate": ftruncate, "truncate": truncate, "fsync": fsync, "fdatasync": fsync,
    "fchdir": fchdir,
    "fchmod": fchmod, "chmod": chmod, "fchmodat": fchmodat, "utimensat": utimensat,
    "fchown": fchown, "fchownat": fchownat,
    "getxattr": _xattrs(True, False), "lgetxattr": _xattrs(False, False),
    "listxattr": _xattrs(True, True), "llistxattr": _xattrs(False, True),
    "fgetxattr": fgetxattr, "flistxattr": flistxattr,
}
