"""An inotify instance: the watches a process set on paths of its file view and the events
queued for it to read. A watch keeps what it last saw of its path (and, for a directory, of
each name in it), so changes are found by looking again and comparing: the kernel reports the
watching process's own calls as they happen (kernel/syscalls/watches.py), and a look when
the process reads or polls the instance finds what anyone else changed meanwhile (another
process, a program on the host). Everything here is plain data: the watches, what they saw
and the queued events travel in the process image, and the first look at the destination
reports what changed while it moved.
"""

from __future__ import annotations

import os
import posixpath
import stat as stat_mod
import struct
from dataclasses import dataclass, field
from typing import Any

from tender_ray.abi.linux import Errno
from tender_ray.resources.file_view import FileService, FileStat
from tender_ray.resources.open_file import POLLIN, OpenFile

IN_ACCESS, IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE = 0x1, 0x2, 0x4, 0x8
IN_CLOSE_NOWRITE, IN_OPEN, IN_MOVED_FROM, IN_MOVED_TO = 0x10, 0x20, 0x40, 0x80
IN_CREATE, IN_DELETE, IN_DELETE_SELF, IN_MOVE_SELF = 0x100, 0x200, 0x400, 0x800
IN_Q_OVERFLOW, IN_IGNORED = 0x4000, 0x8000
IN_ONLYDIR, IN_DONT_FOLLOW, IN_EXCL_UNLINK = 0x01000000, 0x02000000, 0x04000000
IN_MASK_CREATE, IN_MASK_ADD, IN_ISDIR, IN_ONESHOT = 0x10000000, 0x20000000, 0x40000000, 1 << 31
ALL_EVENTS = 0xFFF
WATCH_FLAGS = IN_ONLYDIR | IN_DONT_FOLLOW | IN_EXCL_UNLINK | IN_MASK_CREATE | IN_MASK_ADD | \
    IN_ONESHOT
MAX_QUEUED = 16384  # /proc/sys/fs/inotify/max_queued_events
MAX_WATCHES = 8192  # a process's watches (Linux's per-user default is larger)
LOOK_EVERY = 0.1  # seconds between looks while the process waits on the instance
_HEADER = struct.Struct("<iIII")  # struct inotify_event: wd, mask, cookie, len


def _error(errno: Errno, what: str) -> OSError:
    return OSError(int(errno), what)


@dataclass
class Seen:
    """What a look found of one path: enough to tell a new file, a changed one, a moved one.
    Times and size are None right after the process itself wrote (reported already; a write
    still on its way to the file's home must not be reported twice)."""

    ino: int
    is_dir: bool
    mode: int
    nlink: int
    mtime_ns: int | None
    ctime_ns: int | None
    size: int | None

    @classmethod
    def of(cls, s: FileStat) -> Seen:
        return cls(s.ino, stat_mod.S_ISDIR(s.mode), s.mode, s.nlink, s.mtime_ns, s.ctime_ns,
                   s.size)

    def written(self) -> None:
        self.mtime_ns = self.ctime_ns = self.size = None

    def change(self, now: Seen, attributes: bool) -> int:
        """The event a change from this to `now` (the same file) makes, 0 if none. A
        directory's link count and times follow what is made in it, which its watch reports
        by name: only its mode, or an attribute call's times, change it."""
        times = (self.mtime_ns, self.ctime_ns, self.size) != (now.mtime_ns, now.ctime_ns,
                                                              now.size)
        if self.is_dir:
            return IN_ATTRIB if self.mode != now.mode or (attributes and times) else 0
        if self.mode != now.mode or self.nlink != now.nlink:
            return IN_ATTRIB
        if self.mtime_ns is None or self.size is None:
            return 0  # its own write, reported when it was made
        if self.mtime_ns != now.mtime_ns or self.size != now.size:
            return IN_ATTRIB if attributes else IN_MODIFY
        return IN_ATTRIB if self.ctime_ns != now.ctime_ns else 0


@dataclass
class Watch:
    """One watch: its descriptor, the path (guest and host), the events asked for, what the
    last look saw of the path and, for a directory, of every name in it."""

    wd: int
    guest: str
    host: str
    mask: int
    seen: Seen
    names: dict[str, Seen] = field(default_factory=dict)


def _look_at(service: FileService, host: str) -> Seen | None:
    try:
        return Seen.of(service.lstat(host))
    except OSError:
        return None


def _listing(service: FileService, host: str) -> dict[str, Seen]:
    found = {}
    try:
        entries = service.listdir(host)
    except OSError:
        return {}
    for e in entries:
        seen = _look_at(service, os.path.join(host, e.name))
        if seen is not None:
            found[e.name] = seen
    return found


class Inotify(OpenFile):
    """The watches and the event queue of one inotify instance (a description: shared by
    its descriptors, read by whichever reads first)."""

    kind = "inotify"

    def __init__(self, flags: int) -> None:
        super().__init__(flags | os.O_RDONLY)
        self.watches: dict[int, Watch] = {}
        self.next_wd = 1
        self.queue: list[tuple[int, int, int, bytes]] = []  # (wd, mask, cookie, name)
        self.cookies = 0
        self.service: FileService | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["service"] = None  # the destination's is given on arrival (`attach`)
        return state

    def attach(self, service: FileService) -> None:
        self.service = service

    # --- watches ----------------------------------------------------------------------

    def add(self, guest: str, host: str, mask: int, service: FileService) -> int:
        """inotify_add_watch on a resolved path: the watch's descriptor (the same one for a
        path already watched, its mask replaced, or widened with IN_MASK_ADD)."""
        self.service = service
        seen = _look_at(service, host)
        if seen is None:
            raise _error(Errno.ENOENT, f"{guest} does not exist")
        if mask & IN_ONLYDIR and not seen.is_dir:
            raise _error(Errno.ENOTDIR, f"{guest} is not a directory (IN_ONLYDIR)")
        for w in self.watches.values():
            if w.host == host and w.seen.ino == seen.ino:
                if mask & IN_MASK_CREATE:
                    raise _error(Errno.EEXIST, f"{guest} is watched already (IN_MASK_CREATE)")
                w.mask = (w.mask | mask) if mask & IN_MASK_ADD else mask
                return w.wd
        if len(self.watches) >= MAX_WATCHES:
            raise _error(Errno.ENOSPC, f"more than {MAX_WATCHES} watches")
        wd, self.next_wd = self.next_wd, self.next_wd + 1
        names = _listing(service, host) if seen.is_dir else {}
        self.watches[wd] = Watch(wd, guest, host, mask, seen, names)
        return wd

    def remove(self, wd: int) -> None:
        if wd not in self.watches:
            raise _error(Errno.EINVAL, f"{wd} is not a watch of this inotify instance")
        self._drop(self.watches[wd])

    def _drop(self, w: Watch) -> None:
        self.watches.pop(w.wd, None)
        self._queue(w.wd, IN_IGNORED, 0, b"")

    # --- events -----------------------------------------------------------------------

    def _queue(self, wd: int, mask: int, cookie: int, name: bytes) -> None:
        if self.queue and self.queue[-1] == (wd, mask, cookie, name):
            return  # as Linux: an event the same as the last unread one is merged into it
        if len(self.queue) >= MAX_QUEUED:
            if self.queue[-1][1] != IN_Q_OVERFLOW:
                self.queue.append((-1, IN_Q_OVERFLOW, 0, b""))
            return
        self.queue.append((wd, mask, cookie, name))

    def _event(self, w: Watch, mask: int, name: str = "", cookie: int = 0,
               is_dir: bool = False) -> None:
        if not mask & w.mask or w.wd not in self.watches:
            return
        self._queue(w.wd, mask | (IN_ISDIR if is_dir else 0), cookie,
                    name.encode("utf-8", "surrogateescape"))
        if w.mask & IN_ONESHOT:
            self._drop(w)

    def made(self, guest: str, mask: int, is_dir: bool = False) -> None:
        """The process itself did `mask` to `guest` (opened, read, wrote, closed it): the
        watch on its directory hears it with its name, then a watch on the path itself."""
        parent, name = posixpath.split(guest)
        for w in list(self.watches.values()):
            if w.seen.is_dir and w.guest == parent:
                self._event(w, mask, name, is_dir=is_dir)
                if mask & IN_MODIFY and name in w.names:
                    w.names[name].written()
        for w in list(self.watches.values()):
            if w.guest == guest:
                self._event(w, mask, is_dir=is_dir)
                if mask & IN_MODIFY:
                    w.seen.written()

    def look(self, attributes: bool = False) -> None:
        """Compare every watched path with what was last seen and queue the changes, in the
        order Linux reports one change: a move's two halves together (then the moved watch's
        MOVE_SELF), a watch's own end (ATTRIB, DELETE_SELF, IGNORED), then names created,
        deleted or changed. `attributes`: a change of times is an attribute call's (ATTRIB),
        not a write's."""
        service = self.service
        if service is None or not self.watches:
            return
        gone: list[tuple[Watch, str, Seen]] = []
        new: list[tuple[Watch, str, Seen]] = []
        changed: list[tuple[Watch, str, int, bool]] = []
        for w in list(self.watches.values()):
            if not w.seen.is_dir:
                continue
            now = _listing(service, w.host)
            for name, before in w.names.items():
                after = now.get(name)
                if after is None or after.ino != before.ino:
                    gone.append((w, name, before))
                elif (mask := before.change(after, attributes)):
                    changed.append((w, name, mask, after.is_dir))
            new += [(w, name, after) for name, after in now.items()
                    if name not in w.names or w.names[name].ino != after.ino]
            w.names = now
        moved_to: dict[int, tuple[Watch, str, Seen]] = {}
        for n in new:
            moved_to.setdefault(n[2].ino, n)
        moves = [(g, moved_to.pop(g[2].ino)) for g in gone if g[2].ino in moved_to]
        used = {id(t) for _, t in moves}
        targets = {(id(t[0]), t[1]) for _, t in moves}
        for (wf, old, seen), (wt, name, _) in moves:
            self.cookies = (self.cookies + 1) & 0xFFFFFFFF or 1
            self._event(wf, IN_MOVED_FROM, old, self.cookies, seen.is_dir)
            self._event(wt, IN_MOVED_TO, name, self.cookies, seen.is_dir)
            old_path, new_path = os.path.join(wf.host, old), os.path.join(wt.host, name)
            for w in list(self.watches.values()):
                if w.host == old_path and w.seen.ino == seen.ino:
                    w.host, w.guest = new_path, posixpath.join(wt.guest, name)
                    self._event(w, IN_MOVE_SELF)
        self._look_at_selves(service, attributes)
        moved = {id(g) for g, _ in moves}
        for g in gone:
            w, name, before = g
            if id(g) not in moved and (id(w), name) not in targets:
                self._event(w, IN_DELETE, name, is_dir=before.is_dir)
        for n in new:
            if id(n) not in used:
                self._event(n[0], IN_CREATE, n[1], is_dir=n[2].is_dir)
        for w, name, mask, is_dir in changed:
            self._event(w, mask, name, is_dir=is_dir)

    def _look_at_selves(self, service: FileService, attributes: bool) -> None:
        for w in list(self.watches.values()):
            now = _look_at(service, w.host)
            if now is None or now.ino != w.seen.ino:
                if not w.seen.is_dir:
                    self._event(w, IN_ATTRIB)  # its last link went: its link count changed
                if w.wd in self.watches:
                    self._event(w, IN_DELETE_SELF)
                if w.wd in self.watches:
                    self._drop(w)
                continue
            if mask := w.seen.change(now, attributes):
                self._event(w, mask, is_dir=now.is_dir)
            w.seen = now

    # --- reading ----------------------------------------------------------------------

    def read(self, length: int) -> bytes | None:
        self.look()
        if not self.queue:
            return None
        out = bytearray()
        while self.queue:
            wd, mask, cookie, name = self.queue[0]
            padded = b""
            if name:  # NUL-terminated, padded to a multiple of the header's size
                size = -(-(len(name) + 1) // _HEADER.size) * _HEADER.size
                padded = name.ljust(size, b"\0")
            record = _HEADER.pack(wd, mask, cookie, len(padded)) + padded
            if len(out) + len(record) > length:
                if not out:
                    raise _error(Errno.EINVAL, "the buffer is smaller than the next event")
                break
            out += record
            self.queue.pop(0)
        return bytes(out)

    def write(self, data: bytes) -> int | None:
        raise _error(Errno.EINVAL, "an inotify descriptor cannot be written")

    def readiness(self) -> int:
        self.look()
        return POLLIN if self.queue else 0

    def wake_after(self) -> float | None:
        # While it waits, the process looks again now and then for changes made by others.
        return LOOK_EVERY if self.watches and not self.queue else None

    def queued_bytes(self) -> int:
        """FIONREAD: the bytes the queued events take."""
        self.look()
        return sum(_HEADER.size + (-(-(len(n) + 1) // _HEADER.size) * _HEADER.size
                                   if n else 0) for _, _, _, n in self.queue)
