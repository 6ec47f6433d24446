"""The process's own /proc (/proc/self, /proc/thread-self and /proc/PID of itself): maps,
status, stat, statm, smaps, cmdline, environ, limits, comm, mounts and mountinfo (of the
file view), the directories fd/ and fdinfo/ and the links cwd, exe, fd/N — each made at open
from the Tender process (its areas, signal state, limits, descriptors and view), never read
from the host's, so they say the same on whichever machine it runs. No other process is
visible: another pid is ENOENT."""

from __future__ import annotations

import os
import stat as stat_mod
from typing import TYPE_CHECKING

from tender_ray.abi.linux import Errno
from tender_ray.kernel import signals
from tender_ray.kernel.syscalls.base import view_of
from tender_ray.kernel.syscalls.processes import RLIM_INFINITY, limit
from tender_ray.resources.file_view import TMP, FileStat, FileView
from tender_ray.resources.open_file import Directory, OpenFile, OutputStream, PipeEnd, StdinStream
from tender_ray.resources.process import Process
from tender_ray.resources.virtual_region import RegionKind

if TYPE_CHECKING:
    from tender_ray.kernel.syscalls.dispatch import SystemCalls

LINKS = frozenset({"cwd", "exe", "fd"})
DIRECTORIES = frozenset({"fd", "fdinfo"})  # /proc/self/fd/ and fdinfo/: one entry a descriptor
DT_LNK, DT_REG = 10, 8
_PROC_INO = 0x7E000000  # inode numbers of /proc's made entries (never a host file's)
_LIMIT_NAMES = [("Max cpu time", "seconds"), ("Max file size", "bytes"),
                ("Max data size", "bytes"), ("Max stack size", "bytes"),
                ("Max core file size", "bytes"), ("Max resident set", "bytes"),
                ("Max processes", "processes"), ("Max open files", "files"),
                ("Max locked memory", "bytes"), ("Max address space", "bytes"),
                ("Max file locks", "locks"), ("Max pending signals", "signals"),
                ("Max msgqueue size", "bytes"), ("Max nice priority", ""),
                ("Max realtime priority", ""), ("Max realtime timeout", "us")]


def split(p: Process, proc: str) -> list[str]:
    """The parts after the pid: ENOENT unless it is the process itself."""
    who, *rest = proc.split("/")
    if who not in ("self", "thread-self") and who != str(p.pid):
        raise OSError(int(Errno.ENOENT), f"/proc/{who}: no other process is visible")
    return rest


def link_target(sc: SystemCalls, p: Process, proc: str) -> str | None:
    """Where a link of /proc/self points (None: not a link)."""
    rest = split(p, proc)
    view = view_of(sc, p)
    if rest == ["cwd"]:
        return view.cwd
    if rest == ["exe"]:
        return view.resolve(view.exe).guest
    if rest[0] == "fd" and len(rest) > 1:
        return describe(_open_file(p, rest[1]))
    return None


class ProcDirectory(Directory):
    """/proc/self/fd or fdinfo opened for listing: its entries are the process's descriptors
    when it is read (getdents64), as Linux makes them."""

    kind = "directory"

    def __init__(self, guest_path: str, name: str, flags: int) -> None:
        super().__init__(guest_path, "", flags)
        self.name = name


def directory(p: Process, proc: str, guest: str, flags: int) -> ProcDirectory | None:
    """/proc/self/fd or fdinfo opened (None: not one of them)."""
    rest = split(p, proc)
    if len(rest) != 1 or rest[0] not in DIRECTORIES:
        return None
    if flags & os.O_ACCMODE != os.O_RDONLY:
        raise OSError(int(Errno.EISDIR), f"{guest} is a directory")
    return ProcDirectory(guest, rest[0], flags)


def listing(p: Process, d: ProcDirectory) -> list[tuple[int, int, str]]:
    """(inode, DT_* type, name) of each entry, "." and ".." first."""
    kind = DT_LNK if d.name == "fd" else DT_REG
    return [(_PROC_INO + 1, 4, "."), (_PROC_INO, 4, ".."),
            *((_PROC_INO + 16 + fd, kind, str(fd)) for fd in sorted(p.files.entries))]


def _open_file(p: Process, fd: str) -> OpenFile:
    entry = p.files.entries.get(int(fd))
    if entry is None:
        raise OSError(int(Errno.ENOENT), f"/proc/self/fd/{fd}: no such descriptor")
    return entry.file


def describe(file: OpenFile) -> str:
    """What /proc/self/fd/N says of a description."""
    path = getattr(file, "guest_path", None)
    if path:
        return str(path)
    if isinstance(file, PipeEnd):
        return f"pipe:[{id(file.pipe) & 0xFFFFFF}]"
    if isinstance(file, StdinStream | OutputStream):
        # A standard stream is what exec's own is: its pipe, /dev/null, its socket; one of
        # its own (no outside identity) is a pipe numbered after the stream.
        outside = file.outside
        if outside is None:
            return f"pipe:[{_PROC_INO + getattr(file, 'stream', 0)}]"
        if outside.kind in ("pipe", "socket"):
            return f"{outside.kind}:[{outside.stat.ino}]"
        if outside.kind == "null":
            return "/dev/null"
        if outside.path:  # a file redirected in or out, a terminal: the name exec's has
            return outside.path
    if file.kind == "device":
        return f"/dev/{getattr(file, 'name', 'null')}"
    return f"anon_inode:[{file.kind}]"


def stat(p: Process, proc: str, link: bool) -> FileStat:
    if split(p, proc) in (["fd"], ["fdinfo"]):
        mode = stat_mod.S_IFDIR | 0o500
    else:
        mode = stat_mod.S_IFLNK | 0o777 if link else stat_mod.S_IFREG | 0o444
    return FileStat(mode=mode, size=0, ino=0, dev=0x16, nlink=1, uid=os.getuid(),
                    gid=os.getgid(), rdev=0, blksize=1024, blocks=0, atime_ns=0, mtime_ns=0,
                    ctime_ns=0)


def contents(sc: SystemCalls, p: Process, proc: str) -> bytes:
    rest = split(p, proc)
    name = rest[0]
    view = view_of(sc, p)
    if name == "cmdline":
        return view.cmdline
    if name == "environ":
        return view.environ
    if name == "comm":
        return p.name[:15].encode("utf-8", "surrogateescape") + b"\n"
    if name == "maps":
        return _maps(sc, p).encode()
    if name == "smaps":
        return _smaps(sc, p).encode()
    if name == "mounts":
        return "".join(f"{src} {at} {fs} {opts} 0 0\n"
                       for src, at, fs, opts, _ in _mounts(view)).encode()
    if name == "mountinfo":
        return "".join(f"{i + 20} {19 if i else 1} 0:{i + 20} {root} {at} {opts},relatime "
                       f"- {fs} {src} {opts}\n"
                       for i, (src, at, fs, opts, root) in enumerate(_mounts(view))).encode()
    if name == "status":
        return _status(p).encode()
    if name == "stat":
        return _stat(p).encode()
    if name == "statm":
        size, resident = _pages(p)
        return f"{size} {resident} 0 0 0 0 0\n".encode()
    if name == "limits":
        return _limits(p).encode()
    if name == "fdinfo":
        file = _open_file(p, rest[1])
        return (f"pos:\t{getattr(file, 'offset', 0)}\nflags:\t0{file.flags:o}\n"
                "mnt_id:\t0\nino:\t0\n").encode()
    raise OSError(int(Errno.ENOENT), f"/proc/{proc} is not offered")


def _pages(p: Process) -> tuple[int, int]:
    assert p.space is not None
    areas = p.space.user_spaces
    size = sum(us.npages for us in areas)
    resident = sum(us.region.resident() for us in areas if us.region is not None)
    return size, resident


def _maps(sc: SystemCalls, p: Process) -> str:
    assert p.space is not None
    exe = view_of(sc, p).resolve(view_of(sc, p).exe).guest
    lines = []
    for us in sorted(p.space.user_spaces, key=lambda u: u.start):
        region = us.region
        kind = region.kind if region is not None else RegionKind.MMAP
        name = {RegionKind.TEXT: exe, RegionKind.DATA: exe, RegionKind.BSS: exe,
                RegionKind.HEAP: "[heap]", RegionKind.STACK: "[stack]"}.get(kind, "")
        perms = "".join(c if us.perms & bit else "-" for c, bit in
                        (("r", 1), ("w", 2), ("x", 4))) + "p"
        head = f"{us.start:08x}-{us.end:08x} {perms} 00000000 00:00 0"
        lines.append(f"{head:<73}{name}" if name else head + " ")
    return "".join(line.rstrip() + "\n" for line in lines)


def _smaps(sc: SystemCalls, p: Process) -> str:
    """maps, each area followed by the fields programs parse: its size and what of it is
    resident (every resident page is the process's own: private and dirty)."""
    assert p.space is not None
    out = []
    areas = sorted(p.space.user_spaces, key=lambda u: u.start)
    for line, us in zip(_maps(sc, p).splitlines(), areas, strict=True):
        size = us.npages * 4
        region = us.region
        rss = 4 * min(us.npages, region.resident()) if region is not None else 0
        anonymous = rss if region is None or region.kind not in (RegionKind.TEXT,) else 0
        flags = " ".join(f for f, bit in (("rd", 1), ("wr", 2), ("ex", 4)) if us.perms & bit)
        out.append(line + "\n" + "".join(f"{k + ':':<16}{v:>8} kB\n" for k, v in (
            ("Size", size), ("KernelPageSize", 4), ("MMUPageSize", 4), ("Rss", rss),
            ("Pss", rss), ("Pss_Dirty", rss), ("Shared_Clean", 0), ("Shared_Dirty", 0),
            ("Private_Clean", 0), ("Private_Dirty", rss), ("Referenced", rss),
            ("Anonymous", anonymous), ("KSM", 0), ("LazyFree", 0), ("AnonHugePages", 0),
            ("ShmemPmdMapped", 0), ("FilePmdMapped", 0), ("Shared_Hugetlb", 0),
            ("Private_Hugetlb", 0), ("Swap", 0), ("SwapPss", 0), ("Locked", 0)))
                   + f"THPeligible:    0\nVmFlags: {flags} mr mw me ac\n")
    return "".join(out)


def _mounts(view: FileView) -> list[tuple[str, str, str, str, str]]:
    """The file view as mounts: (source, mount point, type, options, root in the source) —
    the root read-only unless written under, each writable directory, /tmp, /proc, /dev."""
    root_rw = "/" in view.writable
    found = [("tender", "/", "tender", "rw" if root_rw else "ro", "/")]
    found += [("tender", w, "tender", "rw", w) for w in view.writable
              if w not in ("/", TMP)]
    if TMP in view.writable:
        found.append(("tmpfs", TMP, "tmpfs", "rw,nosuid,nodev", "/"))
    found += [("proc", "/proc", "proc", "rw,nosuid,nodev,noexec", "/"),
              ("devtmpfs", "/dev", "devtmpfs", "rw,nosuid", "/")]
    return found


def _mask(sigs: int) -> str:
    return f"{sigs:016x}"


def _status(p: Process) -> str:
    state = signals.of(p)
    size, resident = _pages(p)
    pending = sum(signals.bit(s) for s in state.pending)
    ignored = sum(signals.bit(i + 1) for i, a in enumerate(state.actions)
                  if a.handler == signals.SIG_IGN)
    caught = sum(signals.bit(i + 1) for i, a in enumerate(state.actions)
                 if a.handler not in (signals.SIG_IGN, signals.SIG_DFL))
    uid, gid = os.getuid(), os.getgid()
    view = p.view
    umask = view.umask if view is not None else 0o022
    return "".join(f"{k}:\t{v}\n" for k, v in (
        ("Name", p.name[:15]), ("Umask", f"{umask:04o}"), ("State", "R (running)"),
        ("Tgid", p.pid), ("Ngid", 0), ("Pid", p.pid), ("PPid", 1), ("TracerPid", 0),
        ("Uid", f"{uid}\t{uid}\t{uid}\t{uid}"), ("Gid", f"{gid}\t{gid}\t{gid}\t{gid}"),
        ("FDSize", 64 * (1 + max(p.files.entries, default=0) // 64)), ("Groups", ""),
        ("VmPeak", f"{size * 4:8d} kB"), ("VmSize", f"{size * 4:8d} kB"),
        ("VmRSS", f"{resident * 4:8d} kB"), ("Threads", 1),
        ("SigQ", f"{len(state.pending)}/{limit(p, 11)[0]}"), ("SigPnd", _mask(0)),
        ("ShdPnd", _mask(pending)), ("SigBlk", _mask(state.blocked)),
        ("SigIgn", _mask(ignored)), ("SigCgt", _mask(caught)),
        ("NoNewPrivs", int(state.no_new_privs)), ("Seccomp", 0)))


def _stat(p: Process) -> str:
    size, resident = _pages(p)
    ticks = int(p.accounting.cpu_seconds * 100)
    fields = [p.pid, f"({p.name[:15]})", "R", 1, p.pid, p.pid, 0, -1, 0x400000, 0, 0, 0, 0,
              ticks, 0, 0, 0, 20, 0, 1, 0, 0, size * 4096, resident,
              limit(p, 5)[0] if limit(p, 5)[0] != RLIM_INFINITY else 18446744073709551615]
    fields += [0] * (52 - len(fields))
    return " ".join(str(f) for f in fields) + "\n"


def _limits(p: Process) -> str:
    def shown(v: int) -> str:
        return "unlimited" if v == RLIM_INFINITY else str(v)
    lines = [f"{'Limit':<25} {'Soft Limit':<20} {'Hard Limit':<20} {'Units':<10}\n"]
    for resource, (name, unit) in enumerate(_LIMIT_NAMES):
        soft, hard = limit(p, resource)
        lines.append(f"{name:<25} {shown(soft):<20} {shown(hard):<20} {unit:<10}\n")
    return "".join(lines)
