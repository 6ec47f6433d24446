"""The file view: the guest's view of a host tree, and the file service every host access uses.

A view has a `root` (a host directory that is the guest's "/"), a guest `cwd` and the guest
directories it may write under. Paths are resolved here, component by component: `..` stops at
the root, symlinks are read and followed inside the view (absolute targets are relative to the
root), /proc and /dev are refused except the few emulated names. The last component is then
opened with O_NOFOLLOW, so a symlink swapped in after resolution cannot lead out.

`FileService` is the seam for host access (large blocks, plain records): the local one here
works on this host's files; `home_files.RemoteFileService` serves a migrated process from the
machine it started on (its `home`).
"""

from __future__ import annotations

import os
import stat as stat_mod
from dataclasses import dataclass
from typing import Protocol

from tender_ray.abi.linux import Errno

MAX_BLOCK = 1 << 20  # one pread/pwrite through a service moves at most 1 MiB
MAX_SYMLINKS = 40  # as Linux's ELOOP limit
TMP = "/tmp"  # where a private temporary directory (FileViewSpec.tmp) is seen
DEVICES = frozenset({"null", "zero", "urandom", "random"})
# The files of /proc/self (and /proc/PID of the process itself) the kernel makes; fd/N and
# fdinfo/N too. Nothing else of /proc is in a view.
PROC_FILES = frozenset({"maps", "status", "stat", "statm", "cmdline", "environ", "limits",
                        "comm", "cwd", "smaps", "mounts", "mountinfo", "fd", "fdinfo"})


@dataclass(frozen=True)
class FileViewSpec:
    """How a process sees the host tree: picklable, given to `Machine.exec`."""

    root: str = "/"  # host directory that is the guest's "/"
    cwd: str = "/"  # guest path
    # Guest directories writes may go under: None means the cwd only, () nowhere.
    writable: tuple[str, ...] | None = None
    # A host directory shown at the guest's /tmp, writable (exec's private /tmp of a run);
    # None: /tmp is the root's, read-only unless listed in `writable`.
    tmp: str | None = None
    # What descriptors 0, 1 and 2 are to whoever started the process (exec's own): a
    # stream's identity per descriptor, or None for a stream of its own (a pipe).
    stdio: tuple[StreamIdentity | None, ...] = ()


@dataclass(frozen=True)
class FileStat:
    """What stat says about a host file, as a plain record (it can cross machines)."""

    mode: int
    size: int
    ino: int
    dev: int
    nlink: int
    uid: int
    gid: int
    rdev: int
    blksize: int
    blocks: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, s: os.stat_result) -> FileStat:
        return cls(s.st_mode, s.st_size, s.st_ino, s.st_dev, s.st_nlink, s.st_uid, s.st_gid,
                   s.st_rdev, s.st_blksize, s.st_blocks, s.st_atime_ns, s.st_mtime_ns,
                   s.st_ctime_ns)


@dataclass(frozen=True)
class StreamIdentity:
    """What a standard stream is outside the process, as its `fstat` answers it: a pipe, a
    terminal (with its termios and window size, for TCGETS and TIOCGWINSZ), a regular file
    (its stat when the process started), or "null" for /dev/null. Plain data: it travels
    in the process image with the descriptor."""

    stat: FileStat
    kind: str  # "pipe", "terminal", "file", "null", "socket", "device"
    termios: bytes = b""  # struct termios as TCGETS gave it (a terminal's)
    winsize: bytes = b""  # struct winsize as TIOCGWINSZ gave it (a terminal's)
    path: str = ""  # what exec's descriptor names (a file's, a terminal's), for /proc/self/fd


@dataclass(frozen=True)
class DirEntry:
    name: str
    ino: int
    kind: int  # DT_* type


class FileService(Protocol):
    """Every host file access; errors are OSError with the host's errno."""

    def open(self, host_path: str, flags: int, mode: int) -> int: ...
    def pread(self, handle: int, length: int, offset: int) -> bytes: ...
    def pwrite(self, handle: int, data: bytes, offset: int) -> int: ...
    def fstat(self, handle: int) -> FileStat: ...
    def lstat(self, host_path: str) -> FileStat: ...
    def listdir(self, host_path: str) -> tuple[DirEntry, ...]: ...
    def readlink(self, host_path: str) -> str: ...
    def unlink(self, host_path: str, directory: bool) -> None: ...
    def mkdir(self, host_path: str, mode: int) -> None: ...
    def rename(self, old_host_path: str, new_host_path: str) -> None: ...
    def hardlink(self, old_host_path: str, new_host_path: str) -> None: ...
    def symlink(self, target: str, host_path: str) -> None: ...
    def mknod(self, host_path: str, mode: int) -> None: ...
    def ftruncate(self, handle: int, length: int) -> None: ...
    def fsync(self, handle: int) -> None: ...
    def chmod(self, host_path: str, mode: int) -> None: ...
    def utime(self, host_path: str, times_ns: tuple[int, int] | None) -> None: ...
    def flush(self, handle: int) -> None: ...
    def close(self, handle: int) -> None: ...


_DT = {stat_mod.S_IFDIR: 4, stat_mod.S_IFREG: 8, stat_mod.S_IFLNK: 10, stat_mod.S_IFIFO: 1,
       stat_mod.S_IFCHR: 2, stat_mod.S_IFBLK: 6, stat_mod.S_IFSOCK: 12}


def read_whole(service: FileService, host_path: str, flags: int = os.O_RDONLY) -> bytes:
    """A whole file read through `service` (a program and its loader, read to be loaded)."""
    handle = service.open(host_path, flags, 0)
    try:
        parts, offset = [], 0
        while part := service.pread(handle, 1 << 20, offset):
            parts.append(part)
            offset += len(part)
        return b"".join(parts)
    finally:
        service.close(handle)


class LocalFileService:
    """The file service over this host: real host fds, held by handle id."""

    def __init__(self) -> None:
        self._fds: dict[int, int] = {}  # handle -> host fd; the calling computation's
        self._next = 1

    def open(self, host_path: str, flags: int, mode: int) -> int:
        fd = os.open(host_path, flags | os.O_CLOEXEC, mode)
        handle = self._next
        self._next += 1
        self._fds[handle] = fd
        return handle

    def _fd(self, handle: int) -> int:
        fd = self._fds.get(handle)
        if fd is None:
            raise OSError(int(Errno.EBADF), f"no host file with handle {handle}")
        return fd

    def pread(self, handle: int, length: int, offset: int) -> bytes:
        return os.pread(self._fd(handle), min(length, MAX_BLOCK), offset)

    def pwrite(self, handle: int, data: bytes, offset: int) -> int:
        return os.pwrite(self._fd(handle), data[:MAX_BLOCK], offset)

    def fstat(self, handle: int) -> FileStat:
        return FileStat.of(os.fstat(self._fd(handle)))

    def lstat(self, host_path: str) -> FileStat:
        return FileStat.of(os.lstat(host_path))

    def listdir(self, host_path: str) -> tuple[DirEntry, ...]:
        with os.scandir(host_path) as it:
            return tuple(DirEntry(e.name, e.inode(),
                                  _DT.get(stat_mod.S_IFMT(e.stat(follow_symlinks=False).st_mode),
                                          0))
                         for e in it)

    def readlink(self, host_path: str) -> str:
        return os.readlink(host_path)

    def unlink(self, host_path: str, directory: bool) -> None:
        (os.rmdir if directory else os.unlink)(host_path)

    def mkdir(self, host_path: str, mode: int) -> None:
        os.mkdir(host_path, mode)

    def rename(self, old_host_path: str, new_host_path: str) -> None:
        os.rename(old_host_path, new_host_path)

    def hardlink(self, old_host_path: str, new_host_path: str) -> None:
        os.link(old_host_path, new_host_path, follow_symlinks=False)  # the view followed

    def symlink(self, target: str, host_path: str) -> None:
        os.symlink(target, host_path)  # stored as given; the view resolves it when followed

    def mknod(self, host_path: str, mode: int) -> None:
        if not (stat_mod.S_ISFIFO(mode) or stat_mod.S_ISREG(mode)):
            raise _fail(Errno.EPERM, f"{host_path}: only FIFOs and regular files are made")
        os.mknod(host_path, mode)

    def ftruncate(self, handle: int, length: int) -> None:
        os.ftruncate(self._fd(handle), length)

    def fsync(self, handle: int) -> None:
        os.fsync(self._fd(handle))

    def chmod(self, host_path: str, mode: int) -> None:
        os.chmod(host_path, mode, follow_symlinks=False)  # the view resolved the links

    def utime(self, host_path: str, times_ns: tuple[int, int] | None) -> None:
        if times_ns is None:  # now
            os.utime(host_path, follow_symlinks=False)
        else:
            os.utime(host_path, ns=times_ns, follow_symlinks=False)

    def flush(self, handle: int) -> None:
        self._fd(handle)  # writes are the host's at once: nothing is held here

    def close(self, handle: int) -> None:
        fd = self._fds.pop(handle, None)
        if fd is not None:
            os.close(fd)


@dataclass(frozen=True)
class Resolved:
    """A guest path resolved inside the view: the canonical guest path, and what it is —
    a host path, an emulated device ("null"...), the program itself ("exe"), or a file of
    the process's own /proc ("self/maps": made by the kernel from the Tender process)."""

    guest: str
    host: str | None = None
    device: str | None = None
    exe: bool = False
    proc: str | None = None


def _fail(errno: Errno, what: str) -> OSError:
    return OSError(int(errno), what)


class FileView:
    """A process's view (`spec`) resolved against a file service."""

    def __init__(self, spec: FileViewSpec, service: FileService, exe: str = "",
                 home: str = "", home_node: str = "") -> None:
        self.spec = spec
        self.service = service
        # Where the host tree is: the machine the process started on and its Ray node ("":
        # this host). Set at exec, it travels: a machine elsewhere sends file calls home.
        self.home = home
        self.home_node = home_node
        self.root = os.path.realpath(spec.root)
        self.cwd = spec.cwd if spec.cwd.startswith("/") else "/" + spec.cwd  # the process's
        self.exe = exe  # the program's guest path, /proc/self/exe's answer
        self.umask = 0o022  # the process's file mode mask (umask); travels with the view
        # Its arguments and environment as exec gave them (/proc/self/cmdline, environ).
        self.cmdline = b""
        self.environ = b""
        # The private /tmp (spec.tmp): the host directory its guest path leads to.
        self.tmp = os.path.realpath(spec.tmp) if spec.tmp else None
        writable = spec.writable if spec.writable is not None else (self.cwd,)
        self.writable = tuple(self._canonical(w) for w in writable) + (
            (TMP,) if self.tmp and TMP not in writable else ())

    def __getstate__(self) -> dict[str, object]:
        state = dict(self.__dict__)
        state["service"] = None  # the destination's is given on arrival (`attach`)
        return state

    def attach(self, service: FileService) -> None:
        self.service = service

    def _canonical(self, guest: str) -> str:
        try:
            return self.resolve(guest).guest
        except OSError:
            return os.path.normpath("/" + guest)

    def host(self, parts: list[str]) -> str:
        tmp = getattr(self, "tmp", None)  # an image from before /tmp was private has none
        if tmp is not None and parts and parts[0] == TMP[1:] and (
                len(parts) == 1 or self._private(tmp, parts[1])):
            return os.path.join(tmp, *parts[1:])
        return os.path.join(self.root, *parts)

    def _private(self, tmp: str, name: str) -> bool:
        """Whether /tmp/`name` is the private /tmp's: a name it has, or one the root's /tmp
        has not (a new file goes there). A name only the root's /tmp has stays the root's,
        read-only, so a file already in the host's /tmp can still be given to a program."""
        for where in (os.path.join(tmp, name), os.path.join(self.root, TMP[1:], name)):
            try:
                self.service.lstat(where)
            except OSError:
                continue
            return where.startswith(tmp + "/")
        return True

    def resolve(self, path: str, *, base: str | None = None,
                follow_last: bool = True) -> Resolved:
        """Resolve a guest path (relative ones from `base`, else the cwd) inside the view."""
        if not path:
            raise _fail(Errno.ENOENT, "an empty path names nothing")
        start = "/" if path.startswith("/") else (base or self.cwd)
        parts: list[str] = []
        todo = [c for c in start.split("/") if c] + [c for c in path.split("/") if c]
        trailing_slash = path.endswith("/")
        links = 0
        while todo:
            c = todo.pop(0)
            if c == ".":
                continue
            if c == "..":
                if parts:
                    parts.pop()
                continue
            if not parts and c in ("proc", "dev"):
                return self._special(c, todo, path)
            candidate = [*parts, c]
            last = not todo
            if last and not follow_last and not trailing_slash:
                parts = candidate
                break
            try:
                st = self.service.lstat(self.host(candidate))
            except OSError as e:
                if last and e.errno == Errno.ENOENT:
                    parts = candidate  # may be created
                    break
                raise _fail(Errno(e.errno or Errno.ENOENT), f"{path}: {e.strerror}") from None
            if stat_mod.S_ISLNK(st.mode):
                links += 1
                if links > MAX_SYMLINKS:
                    raise _fail(Errno.ELOOP, f"{path}: too many symbolic links")
                target = self.service.readlink(self.host(candidate))
                if target.startswith("/"):
                    parts = []
                todo = [t for t in target.split("/") if t] + todo
                continue
            if not last and not stat_mod.S_ISDIR(st.mode):
                raise _fail(Errno.ENOTDIR, f"{path}: /{'/'.join(candidate)} is not a directory")
            parts = candidate
        return Resolved("/" + "/".join(parts), host=self.host(parts))

    def _special(self, top: str, rest: list[str], path: str) -> Resolved:
        """/proc and /dev: only the emulated names; nothing there leads out of the view."""
        names = [c for c in rest if c not in ("", ".")]
        if top == "proc" and names == ["self", "exe"] and self.exe:
            return self.resolve(self.exe)
        if top == "dev" and len(names) == 1 and names[0] in DEVICES:
            return Resolved(f"/dev/{names[0]}", device=names[0])
        if top == "proc" and names == ["mounts"]:  # /proc/mounts: the process's own
            names = ["self", "mounts"]
        if top == "proc" and len(names) >= 2 and (names[0] in ("self", "thread-self")
                                                  or names[0].isdigit()) and (
                (names[1] in PROC_FILES and len(names) == 2)
                or (names[1] in ("fd", "fdinfo") and len(names) == 3 and names[2].isdigit())):
            # Made by the kernel from the Tender process, never the host's: no host path.
            return Resolved("/proc/" + "/".join(names), proc="/".join(names))
        if top == "proc":
            raise _fail(Errno.EACCES, f"{path}: only the process's own /proc/self is part of "
                        "a Tender process's view")
        raise _fail(Errno.ENOENT, f"{path}: only /dev/null, /dev/zero and /dev/urandom exist")

    def check_linkable(self, old: Resolved, new: Resolved) -> None:
        """A hard link joins two names of one writable directory tree: its new name must be
        writable, and so must the file (a link would otherwise make a read-only file writable
        through a name under a writable directory). As Linux answers a link across mounts,
        EXDEV elsewhere."""
        self.check_writable(new)
        if old.host is None or old.proc is not None or old.exe:
            raise _fail(Errno.EXDEV, f"{old.guest} is not a file of the view's host tree")
        try:
            self.check_writable(old)
        except OSError:
            raise _fail(Errno.EXDEV, f"{old.guest} is outside the writable directories "
                        f"{', '.join(self.writable)}: it cannot be linked to") from None
        if self._writable_root(old.guest) != self._writable_root(new.guest):
            raise _fail(Errno.EXDEV, f"{old.guest} and {new.guest} are under different "
                        "writable directories")

    def _writable_root(self, guest: str) -> str:
        return max((w for w in self.writable
                    if guest == w or guest.startswith(w.rstrip("/") + "/")), key=len,
                   default="")

    def check_writable(self, resolved: Resolved) -> None:
        """Writes go only under a writable directory: EROFS elsewhere in the view."""
        if resolved.device is not None:
            return
        if resolved.host is None or resolved.exe:
            raise _fail(Errno.EACCES, f"{resolved.guest} cannot be written")
        g = resolved.guest
        under = [w for w in self.writable if g == w or g.startswith(w.rstrip("/") + "/")]
        tmp = getattr(self, "tmp", None)
        if tmp is not None and not (resolved.host + "/").startswith(tmp + "/") \
                and TMP not in (self.spec.writable or ()):
            under = [w for w in under if w != TMP]  # the host's /tmp is not the private one
        if not under:
            raise _fail(Errno.EROFS, f"{g} is outside the writable directories "
                        f"{', '.join(self.writable)}")
