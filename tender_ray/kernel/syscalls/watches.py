"""inotify: the calls that make an instance and set or remove its watches
(resources/watch.py), and how a process's own file calls reach its watches — the calls that
open, read, write or close a file queue what they did, and those that change the tree (make,
remove, rename, link, change attributes or size) make the instance look at its watched paths
again, so its events come in the order the calls were made. Changes by anyone else are found
when the process reads or polls the instance (a look at the watched paths); those have no
OPEN, ACCESS or CLOSE events and changes between two looks are seen as their sum.
"""

from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING

from tender_ray.abi.cpu_state import SyscallArgs, SyscallOutcome
from tender_ray.abi.linux import Errno
from tender_ray.kernel.syscalls import descriptors_events
from tender_ray.kernel.syscalls.base import (
    CWD,
    O_CLOEXEC,
    Handler,
    errno_call,
    file_of,
    resolve_at,
    signed32,
    view_of,
)
from tender_ray.resources.open_file import Directory, HostFile, OpenFile
from tender_ray.resources.process import Process
from tender_ray.resources.watch import (
    ALL_EVENTS,
    IN_ACCESS,
    IN_CLOSE_NOWRITE,
    IN_CLOSE_WRITE,
    IN_DONT_FOLLOW,
    IN_MASK_ADD,
    IN_MASK_CREATE,
    IN_MODIFY,
    IN_OPEN,
    WATCH_FLAGS,
    Inotify,
)

if TYPE_CHECKING:
    from tender_ray.kernel.syscalls.dispatch import SystemCalls

FAMILY = descriptors_events.FAMILY
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = O_CLOEXEC


@errno_call
def inotify_init1(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    if a[0] & ~(IN_NONBLOCK | IN_CLOEXEC):
        return SyscallOutcome(-Errno.EINVAL)
    file = Inotify(a[0] & IN_NONBLOCK)
    file.attach(view_of(sc, p).service)
    return SyscallOutcome(p.files.install(file, cloexec=bool(a[0] & IN_CLOEXEC)))


def inotify_init(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return inotify_init1(sc, p, (0, 0, 0, 0, 0, 0))


def _instance(p: Process, fd: int) -> Inotify:
    return file_of(p, signed32(fd), Inotify, Errno.EINVAL, "an inotify instance")


@errno_call
def inotify_add_watch(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    instance, mask = _instance(p, a[0]), a[2] & 0xFFFFFFFF
    if not mask & ALL_EVENTS or mask & ~(ALL_EVENTS | WATCH_FLAGS):
        return SyscallOutcome(-Errno.EINVAL)
    if mask & IN_MASK_ADD and mask & IN_MASK_CREATE:
        return SyscallOutcome(-Errno.EINVAL)
    r = resolve_at(sc, p, CWD, a[1], follow=not mask & IN_DONT_FOLLOW)
    if r.host is None:
        p.accounting.unsupported["inotify_add_watch (a /proc or /dev file)"] += 1
        return SyscallOutcome(-Errno.EACCES)
    instance.look()  # what changed before this watch is the other watches' news
    return SyscallOutcome(instance.add(r.guest, r.host, mask, view_of(sc, p).service))


@errno_call
def inotify_rm_watch(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    _instance(p, a[0]).remove(signed32(a[1]))
    return SyscallOutcome(0)


HANDLERS: dict[str, Handler] = {
    "inotify_init": inotify_init, "inotify_init1": inotify_init1,
    "inotify_add_watch": inotify_add_watch, "inotify_rm_watch": inotify_rm_watch,
}


# --- the process's own file calls, heard by its watches ---------------------------------------

# Calls that change the tree: after each, the instances look again. Attribute calls make a
# change of times an ATTRIB.
_TREE = frozenset({"mkdir", "mkdirat", "rmdir", "unlink", "unlinkat", "rename", "renameat",
                   "renameat2", "link", "linkat", "symlink", "symlinkat", "mknod", "mknodat",
                   "truncate", "ftruncate", "fallocate"})
_ATTRIBUTES = frozenset({"chmod", "fchmod", "fchmodat", "chown", "fchown", "lchown",
                         "fchownat", "utime", "utimes", "utimensat", "futimesat"})
# Calls that open (the argument holding the flags): a creating or truncating one is looked
# after, then the new descriptor's file hears IN_OPEN.
_OPENS = {"open": 1, "openat": 2, "creat": -1}
# Calls that write or read through descriptors: which argument is the descriptor written to
# (IN_MODIFY) or read from (IN_ACCESS).
_WRITES = {"write": 0, "pwrite64": 0, "writev": 0, "pwritev": 0, "pwritev2": 0,
           "sendfile": 0, "splice": 2, "copy_file_range": 2}
_READS = {"read": 0, "pread64": 0, "readv": 0, "preadv": 0, "preadv2": 0, "sendfile": 1,
          "splice": 0, "copy_file_range": 0, "getdents64": 0}


def _instances(p: Process) -> list[Inotify]:
    found: dict[int, Inotify] = {}
    for entry in p.files.entries.values():
        if isinstance(entry.file, Inotify):
            found.setdefault(id(entry.file), entry.file)
    return list(found.values())


def _made(instances: list[Inotify], file: OpenFile | None, mask: int) -> None:
    if isinstance(file, HostFile | Directory):
        for instance in instances:
            instance.made(file.guest_path, mask, is_dir=isinstance(file, Directory))


def _file(p: Process, fd: int) -> OpenFile | None:
    entry = p.files.entries.get(signed32(fd))
    return None if entry is None else entry.file


def observed(name: str, handler: Handler) -> Handler:
    """`handler`, heard by the calling process's inotify instances when it has any (the
    table wraps every call that touches files with this)."""
    if not (name in _TREE or name in _ATTRIBUTES or name in _OPENS or name in _WRITES
            or name in _READS or name == "close"):
        return handler

    @functools.wraps(handler)
    def call(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
        instances = _instances(p)
        if not instances:
            return handler(sc, p, a)
        closing = _file(p, a[0]) if name == "close" else None
        outcome = handler(sc, p, a)
        result = outcome.result
        if result is None or result < 0:
            return outcome
        if name in _TREE or name in _ATTRIBUTES:
            for instance in instances:
                instance.look(attributes=name in _ATTRIBUTES)
        if name in _OPENS:
            where = _OPENS[name]
            if where < 0 or a[where] & (os.O_CREAT | os.O_TRUNC):
                for instance in instances:
                    instance.look()
            _made(instances, _file(p, result), IN_OPEN)
        if name in _READS and result > 0:
            _made(instances, _file(p, a[_READS[name]]), IN_ACCESS)
        if name in _WRITES and result > 0:
            _made(instances, _file(p, a[_WRITES[name]]), IN_MODIFY)
        if closing is not None and closing.refs == 0:
            _made(instances, closing, IN_CLOSE_WRITE if closing.writable else IN_CLOSE_NOWRITE)
        return outcome
    return call
