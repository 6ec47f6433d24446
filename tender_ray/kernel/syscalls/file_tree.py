"""The file system calls on names: the working directory, access checks, hard and symbolic
links, FIFOs (mknod), directory listings, creating, removing and renaming names, modes, times
and owners, extended attributes. Every path goes through the process's file view: reads
anywhere in the view, changes only under its writable directories (EROFS elsewhere), and the
host is reached only through the view's file service. Calls on open files are files.py's.
"""

from __future__ import annotations

import os
import stat as stat_mod
import struct
import time
from typing import TYPE_CHECKING

from tender_ray.abi.cpu_state import SyscallArgs, SyscallOutcome
from tender_ray.abi.linux import Errno
from tender_ray.kernel.syscalls import proc_files
from tender_ray.kernel.syscalls.base import (
    AT_EMPTY_PATH,
    AT_SYMLINK_NOFOLLOW,
    CWD,
    Handler,
    dir_base,
    errno_call,
    read_path,
    signed,
    view_of,
)
from tender_ray.kernel.syscalls.file_stat import stat_of, stat_path
from tender_ray.kernel.syscalls.files import (
    of_fd,
    resolve_at,
    take_into_image,
    writable_target,
)
from tender_ray.resources.file_view import FileStat, Resolved
from tender_ray.resources.image_file import ImageFile
from tender_ray.resources.open_file import Directory
from tender_ray.resources.process import Process

if TYPE_CHECKING:
    from tender_ray.kernel.syscalls.dispatch import SystemCalls

FAMILY = "files"

AT_REMOVEDIR = 0x200
AT_SYMLINK_FOLLOW = 0x400
AT_EACCESS = 0x200
F_OK, X_OK, W_OK, R_OK = 0, 1, 2, 4
UTIME_NOW, UTIME_OMIT = (1 << 30) - 1, (1 << 30) - 2


# --- the working directory and the mode mask ------------------------------------------------

@errno_call
def getcwd(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    cwd = view_of(sc, p).cwd.encode() + b"\0"
    if len(cwd) > a[1]:
        return SyscallOutcome(-Errno.ERANGE)
    assert p.space is not None
    p.space.write(a[0], cwd)
    return SyscallOutcome(len(cwd))


@errno_call
def chdir(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    view = view_of(sc, p)
    r = view.resolve(read_path(p, a[0]))
    if r.host is None or not os.path.isdir(r.host):
        return SyscallOutcome(-Errno.ENOTDIR)
    view.cwd = r.guest
    return SyscallOutcome(0)


@errno_call
def fchdir(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    d = p.files.get(a[0])
    if not isinstance(d, Directory):
        return SyscallOutcome(-Errno.ENOTDIR)
    view_of(sc, p).cwd = d.guest_path
    return SyscallOutcome(0)



@errno_call
def umask(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    view = view_of(sc, p)
    old, view.umask = view.umask, a[0] & 0o777
    return SyscallOutcome(old)



# --- access and links -----------------------------------------------------------------------

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
    r = resolve_at(sc, p, dirfd, addr, follow=not flags & AT_SYMLINK_NOFOLLOW)
    st = stat_path(sc, p, r)
    if mode & W_OK:
        view_of(sc, p).check_writable(r)
    if r.device is None and not _permits(st, mode):
        return SyscallOutcome(-Errno.EACCES)
    return SyscallOutcome(0)


@errno_call
def access(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return _access(sc, p, CWD, a[0], a[1], 0)


@errno_call
def faccessat(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return _access(sc, p, a[0], a[1], a[2], 0)


@errno_call
def faccessat2(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    if a[3] & ~(AT_EACCESS | AT_SYMLINK_NOFOLLOW | AT_EMPTY_PATH):
        return SyscallOutcome(-Errno.EINVAL)
    return _access(sc, p, a[0], a[1], a[2], a[3])


def _readlink(sc: SystemCalls, p: Process, dirfd: int, addr: int, buf: int,
              size: int) -> SyscallOutcome:
    if signed(size) <= 0:
        return SyscallOutcome(-Errno.EINVAL)
    view = view_of(sc, p)
    path = read_path(p, addr)
    if path.startswith("/") and os.path.normpath(path).lstrip("/") == "proc/self/exe":
        target = view.resolve(view.exe).guest  # the program, its links resolved as Linux's
    elif (r := view.resolve(path, base=dir_base(p, dirfd), follow_last=False)).proc:
        found = proc_files.link_target(sc, p, r.proc)
        if found is None:
            return SyscallOutcome(-Errno.EINVAL)  # a file of /proc, not a link
        target = found
    else:
        if r.host is None:
            return SyscallOutcome(-Errno.EINVAL)  # a device is no link
        if not stat_mod.S_ISLNK(view.service.lstat(r.host).mode):
            return SyscallOutcome(-Errno.EINVAL)
        target = view.service.readlink(r.host)  # absolute targets are the guest's already
    data = target.encode("utf-8", "surrogateescape")[:size]  # no NUL, cut like Linux
    assert p.space is not None
    p.space.write(buf, data)
    return SyscallOutcome(len(data))


@errno_call
def readlink(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return _readlink(sc, p, CWD, a[0], a[1], a[2])


@errno_call
def readlinkat(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return _readlink(sc, p, a[0], a[1], a[2], a[3])


# --- directories ----------------------------------------------------------------------------

def _dirent(ino: int, offset: int, kind: int, name: bytes) -> bytes:
    size = (19 + len(name) + 1 + 7) & ~7  # ino, off, reclen, type, the name and its NUL
    return struct.pack("<QqHB", ino, offset, size, kind) + name + b"\0" * (size - 19 - len(name))


@errno_call
def getdents64(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    d = p.files.get(a[0])
    if not isinstance(d, Directory):
        return SyscallOutcome(-Errno.ENOTDIR)
    if isinstance(d, proc_files.ProcDirectory):  # /proc/self/fd/: the descriptors now
        entries = proc_files.listing(p, d)
    else:
        service = view_of(sc, p).service
        here = service.lstat(d.host_path).ino
        parent = service.lstat(os.path.dirname(d.host_path.rstrip("/")) or "/").ino
        # "." and ".." first, as Linux lists them; the position counts entries given.
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
    r = resolve_at(sc, p, dirfd, addr, follow=False)
    view_of(sc, p).check_writable(r)
    if r.host is None:
        raise OSError(int(Errno.EPERM), f"{r.guest} is an emulated device")
    return r


def _unlink(sc: SystemCalls, p: Process, dirfd: int, addr: int, directory: bool) -> SyscallOutcome:
    r = _changeable(sc, p, dirfd, addr)
    assert r.host is not None
    view_of(sc, p).service.unlink(r.host, directory)
    if not directory:
        take_into_image(sc, p, r.host)  # a file it holds open and has no name left
    return SyscallOutcome(0)


@errno_call
def unlink(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return _unlink(sc, p, CWD, a[0], False)


@errno_call
def rmdir(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return _unlink(sc, p, CWD, a[0], True)


@errno_call
def unlinkat(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    if a[2] & ~AT_REMOVEDIR:
        return SyscallOutcome(-Errno.EINVAL)
    return _unlink(sc, p, a[0], a[1], bool(a[2] & AT_REMOVEDIR))


def _mkdir(sc: SystemCalls, p: Process, dirfd: int, addr: int, mode: int) -> SyscallOutcome:
    r = _changeable(sc, p, dirfd, addr)
    view = view_of(sc, p)
    assert r.host is not None
    view.service.mkdir(r.host, mode & 0o7777 & ~view.umask)
    return SyscallOutcome(0)


@errno_call
def mkdir(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return _mkdir(sc, p, CWD, a[0], a[1])


@errno_call
def mkdirat(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return _mkdir(sc, p, a[0], a[1], a[2])


def _rename(sc: SystemCalls, p: Process, olddir: int, old: int, newdir: int,
            new: int) -> SyscallOutcome:
    src = _changeable(sc, p, olddir, old)
    dst = _changeable(sc, p, newdir, new)
    assert src.host is not None and dst.host is not None
    view_of(sc, p).service.rename(src.host, dst.host)
    return SyscallOutcome(0)


@errno_call
def rename(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return _rename(sc, p, CWD, a[0], CWD, a[1])


@errno_call
def renameat(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return _rename(sc, p, a[0], a[1], a[2], a[3])


@errno_call
def renameat2(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    if a[4]:  # RENAME_NOREPLACE, _EXCHANGE, _WHITEOUT: not offered
        return SyscallOutcome(-Errno.EINVAL)
    return _rename(sc, p, a[0], a[1], a[2], a[3])


# --- links, symbolic links, FIFOs ----------------------------------------------------------

def _link(sc: SystemCalls, p: Process, olddir: int, old: int, newdir: int, new: int,
          flags: int) -> SyscallOutcome:
    """A second name for a file, in the same writable directory tree (EXDEV otherwise, as
    Linux answers a link across mounts). A symbolic link is linked itself unless
    AT_SYMLINK_FOLLOW; AT_EMPTY_PATH links the file a descriptor holds."""
    if flags & ~(AT_SYMLINK_FOLLOW | AT_EMPTY_PATH):
        return SyscallOutcome(-Errno.EINVAL)
    if flags & AT_EMPTY_PATH and not read_path(p, old):
        held = p.files.get(olddir)
        if isinstance(held, ImageFile):
            raise OSError(int(Errno.EXDEV), f"{held.body.name or 'the file'} lives in the "
                          "process image (it has no name on the host): it cannot be linked")
        if isinstance(held, Directory):
            raise OSError(int(Errno.EPERM), f"{held.guest_path} is a directory")
        src = of_fd(p, olddir)
    else:
        src = resolve_at(sc, p, olddir, old, follow=bool(flags & AT_SYMLINK_FOLLOW))
    view = view_of(sc, p)
    if src.host is not None and not src.proc:
        st = view.service.lstat(src.host)  # ENOENT as Linux, before the new name is looked at
        if stat_mod.S_ISDIR(st.mode):
            raise OSError(int(Errno.EPERM), f"{src.guest} is a directory: no hard links")
    dst = resolve_at(sc, p, newdir, new, follow=False)
    view.check_linkable(src, dst)
    assert src.host is not None and dst.host is not None
    view.service.hardlink(src.host, dst.host)
    return SyscallOutcome(0)


@errno_call
def link(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return _link(sc, p, CWD, a[0], CWD, a[1], 0)


@errno_call
def linkat(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return _link(sc, p, a[0], a[1], a[2], a[3], a[4])


def _symlink(sc: SystemCalls, p: Process, target: int, newdir: int,
             new: int) -> SyscallOutcome:
    """The target is stored as given; following it resolves it inside the view."""
    text = read_path(p, target)
    if not text:
        return SyscallOutcome(-Errno.ENOENT)
    r = _changeable(sc, p, newdir, new)
    assert r.host is not None
    view_of(sc, p).service.symlink(text, r.host)
    return SyscallOutcome(0)


@errno_call
def symlink(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return _symlink(sc, p, a[0], CWD, a[1])


@errno_call
def symlinkat(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return _symlink(sc, p, a[0], a[1], a[2])


def _mknod(sc: SystemCalls, p: Process, dirfd: int, addr: int, mode: int) -> SyscallOutcome:
    """FIFOs and regular files; device nodes are refused as for a user without
    CAP_MKNOD, sockets as no socket is bound to a name here."""
    kind = stat_mod.S_IFMT(mode) or stat_mod.S_IFREG
    if kind not in (stat_mod.S_IFREG, stat_mod.S_IFIFO, stat_mod.S_IFCHR, stat_mod.S_IFBLK,
                    stat_mod.S_IFSOCK):
        return SyscallOutcome(-Errno.EPERM if kind == stat_mod.S_IFDIR else -Errno.EINVAL)
    r = _changeable(sc, p, dirfd, addr)  # EROFS first, as Linux asks the mount first
    if kind not in (stat_mod.S_IFREG, stat_mod.S_IFIFO):
        what = "a socket" if kind == stat_mod.S_IFSOCK else "a device node"
        raise OSError(int(Errno.EPERM), f"{r.guest}: {what} cannot be made by a Tender "
                      "process")
    view = view_of(sc, p)
    assert r.host is not None
    view.service.mknod(r.host, kind | (mode & 0o7777 & ~view.umask))
    return SyscallOutcome(0)


@errno_call
def mknod(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return _mknod(sc, p, CWD, a[0], a[1])


@errno_call
def mknodat(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return _mknod(sc, p, a[0], a[1], a[2])


# --- modes, times, owners ------------------------------------------------------------------

def _chmod(sc: SystemCalls, p: Process, r: Resolved, mode: int) -> SyscallOutcome:
    view_of(sc, p).check_writable(r)
    assert r.host is not None
    view_of(sc, p).service.chmod(r.host, mode & 0o7777)
    return SyscallOutcome(0)


@errno_call
def fchmod(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    file = p.files.get(a[0])
    if isinstance(file, ImageFile):  # no name: the open file itself changes
        file.body.mode = (file.body.mode & ~0o7777) | (a[1] & 0o7777)
        file.body.ctime_ns = time.time_ns()
        return SyscallOutcome(0)
    return _chmod(sc, p, of_fd(p, a[0]), a[1])


@errno_call
def chmod(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return _chmod(sc, p, writable_target(sc, p, CWD, a[0], 0), a[1])


@errno_call
def fchmodat(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return _chmod(sc, p, writable_target(sc, p, a[0], a[1], 0), a[2])


@errno_call
def utimensat(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    r = writable_target(sc, p, a[0], a[1], a[3])
    assert r.host is not None and p.space is not None
    service = view_of(sc, p).service
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


@errno_call
def fchown(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return _chown(stat_of(sc, p, p.files.get(a[0])), a[1], a[2])


@errno_call
def fchownat(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return _chown(stat_path(sc, p, writable_target(sc, p, a[0], a[1], a[4])),
                  a[2], a[3])


@errno_call
def chown(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return _chown(stat_path(sc, p, writable_target(sc, p, CWD, a[0], 0)), a[1], a[2])


@errno_call
def lchown(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    r = writable_target(sc, p, CWD, a[0], AT_SYMLINK_NOFOLLOW)
    return _chown(stat_path(sc, p, r, follow=False), a[1], a[2])


def _old_times(sc: SystemCalls, p: Process, dirfd: int, path: int, times: int,
               timevals: bool) -> SyscallOutcome:
    """utime (struct utimbuf, seconds) and utimes/futimesat (two timevals): set both times."""
    r = writable_target(sc, p, dirfd, path, 0)
    assert r.host is not None and p.space is not None
    service = view_of(sc, p).service
    if not times:
        service.utime(r.host, None)
        return SyscallOutcome(0)
    if timevals:
        a_s, a_us, m_s, m_us = struct.unpack("<qqqq", p.space.read(times, 32))
        if not (0 <= a_us < 1_000_000 and 0 <= m_us < 1_000_000):
            return SyscallOutcome(-Errno.EINVAL)
        chosen = (a_s * 1_000_000_000 + a_us * 1000, m_s * 1_000_000_000 + m_us * 1000)
    else:
        a_s, m_s = struct.unpack("<qq", p.space.read(times, 16))
        chosen = (a_s * 1_000_000_000, m_s * 1_000_000_000)
    service.utime(r.host, chosen)
    return SyscallOutcome(0)


@errno_call
def utime(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return _old_times(sc, p, CWD, a[0], a[1], timevals=False)


@errno_call
def utimes(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return _old_times(sc, p, CWD, a[0], a[1], timevals=True)


@errno_call
def futimesat(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return _old_times(sc, p, a[0], a[1], a[2], timevals=True)


def sync(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    p.files.flush()  # what it wrote is at its home; the host's own sync is the host's
    return SyscallOutcome(0)


@errno_call
def syncfs(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    p.files.get(a[0])
    p.files.flush()
    return SyscallOutcome(0)


# --- extended attributes: none --------------------------------------------------------------

def _xattrs(follow: bool, listing: bool) -> Handler:
    """A view's files show no extended attributes (ACLs, security labels): ls asks for them
    on every file and takes ENODATA (none of that name) and an empty list as "plain"."""
    @errno_call
    def call(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
        stat_path(sc, p, resolve_at(sc, p, CWD, a[0], follow=follow))  # ENOENT as Linux
        return SyscallOutcome(0 if listing else -Errno.ENODATA)
    return call


@errno_call
def fgetxattr(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    p.files.get(a[0])
    return SyscallOutcome(-Errno.ENODATA)


@errno_call
def flistxattr(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    p.files.get(a[0])
    return SyscallOutcome(0)


HANDLERS: dict[str, Handler] = {
    "getcwd": getcwd, "chdir": chdir, "fchdir": fchdir, "umask": umask,
    "access": access, "faccessat": faccessat, "faccessat2": faccessat2,
    "readlink": readlink, "readlinkat": readlinkat, "getdents64": getdents64,
    "unlink": unlink, "unlinkat": unlinkat, "rmdir": rmdir, "mkdir": mkdir, "mkdirat": mkdirat,
    "rename": rename, "renameat": renameat, "renameat2": renameat2,
    "link": link, "linkat": linkat, "symlink": symlink, "symlinkat": symlinkat,
    "mknod": mknod, "mknodat": mknodat,
    "fchmod": fchmod, "chmod": chmod, "fchmodat": fchmodat, "utimensat": utimensat,
    "fchown": fchown, "fchownat": fchownat, "chown": chown, "lchown": lchown,
    "utime": utime, "utimes": utimes, "futimesat": futimesat, "sync": sync, "syncfs": syncfs,
    "getxattr": _xattrs(True, False), "lgetxattr": _xattrs(False, False),
    "listxattr": _xattrs(True, True), "llistxattr": _xattrs(False, True),
    "fgetxattr": fgetxattr, "flistxattr": flistxattr,
}
